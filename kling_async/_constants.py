"""Constants spelled once: defaults, environment variable names, limits and header names."""

from __future__ import annotations

from typing import Final

DEFAULT_BASE_URL: Final = "https://api.deerapi.com"
ENV_API_KEY: Final = "DEERAPI_KEY"
ENV_BASE_URL: Final = "DEERAPI_BASE_URL"

DEFAULT_MODEL: Final = "kling-v2"
DEFAULT_ASPECT_RATIO: Final = "16:9"
ASPECT_RATIOS: Final = frozenset({"16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"})
MIN_SUBJECTS: Final = 2
MAX_SUBJECTS: Final = 4
MAX_PROMPT_CHARS: Final = 2500
MIN_N: Final = 1
MAX_N: Final = 9

MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
MIN_IMAGE_SIDE: Final = 300
MAX_ASPECT: Final = 2.5

DEFAULT_TIMEOUT: Final = 60.0
#: Create requests one client has under way at once (the rest queue before building bodies).
MAX_CONCURRENT_CREATES: Final = 32
#: Status queries one client has under way at once (the connection pool's size).
MAX_CONCURRENT_QUERIES: Final = 100
#: Largest image the client will download (generated images are a few MB).
MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024
#: How many characters of an unparseable body an error quotes.
BODY_EXCERPT_CHARS: Final = 200

HEADER_REQUEST_ID: Final = "X-Request-Id"
HEADER_RETRY_AFTER: Final = "Retry-After"
HEADER_RETRY_AFTER_MS: Final = "retry-after-ms"
