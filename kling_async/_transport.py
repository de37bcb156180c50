"""HTTP transport: the session, authentication, one request attempt, and error mapping."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import attrs
from yarl import URL

from kling_async._constants import HEADER_REQUEST_ID
from kling_async._errors import TransportError, UnexpectedResponseError, error_from_reply
from kling_async._retry import parse_retry_after
from kling_async._serde import Envelope, ShapeError, excerpt, load_json, read_envelope
from kling_async._version import __version__

_log = logging.getLogger("kling_async")
_USER_AGENT = f"kling-async/{__version__} aiohttp/{aiohttp.__version__}"
#: Errors raised before a request could be written: the server never saw it.
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.InvalidURL,
)


@attrs.frozen
class Reply:
    """A decoded successful API reply."""

    http_status: int
    envelope: Envelope


class Transport:
    """Sends API requests on one connection pool and turns failures into typed errors.

    The API key lives only here; it is sent in the ``Authorization`` header to the API's own
    origin and appears in no repr, log line or error.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self._api_key = api_key
        self.base_url = URL(base_url.rstrip("/"))
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._prefix = str(self.base_url)
        self._api_headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {api_key}",
        }
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"<Transport base_url={str(self.base_url)!r}>"

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session in use, created on first use when none was lent."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, limit_per_host=100),
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if this transport created it (a lent one is left open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _auth_headers(self, url: URL) -> dict[str, str]:
        # The key goes to the API's origin only, never to an image host.
        if url.origin() != self.base_url.origin():
            return {}
        return {"Authorization": f"Bearer {self._api_key}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        task_lookup: bool = False,
        task_id: str | None = None,
    ) -> Reply:
        """Send one request (no retry) and decode the reply.

        Raises:
            TransportError: The request failed on the way (``maybe_delivered`` tells if the
                server may have seen it).
            APIError: The API answered with an error, or with something unreadable.
        """
        # Plain string joining: this runs for every status check of every task.
        url = self._prefix + path
        started = time.monotonic()
        try:
            async with self.session.request(
                method, url, json=json, headers=self._api_headers, timeout=self.timeout
            ) as response:
                raw = await response.read()
                status = response.status
                response_headers = response.headers
        except _NOT_SENT as exc:
            raise TransportError(
                f"cannot connect to {self.base_url.host}: {type(exc).__name__}",
                maybe_delivered=False,
                task_id=task_id,
            ) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransportError(
                f"{method} {path} failed: {type(exc).__name__}: {exc}".rstrip(": "),
                task_id=task_id,
            ) from exc
        header_request_id = response_headers.get(HEADER_REQUEST_ID)
        _log.debug(
            "%s %s -> %d in %.3f s (request_id=%s)",
            method,
            path,
            status,
            time.monotonic() - started,
            header_request_id,
        )
        try:
            envelope = read_envelope(load_json(raw))
        except (ValueError, ShapeError) as exc:
            raise UnexpectedResponseError(
                f"the API sent a reply that is not the expected JSON (HTTP {status}): "
                f"{excerpt(raw)!r}",
                http_status=status,
                request_id=header_request_id,
                body=excerpt(raw),
                task_id=task_id,
            ) from exc
        request_id = envelope.request_id or header_request_id
        if status >= 400 or envelope.code != 0:
            raise error_from_reply(
                http_status=status,
                # An error status with no code in the body (a router's own page) has no code.
                code=envelope.code or None,
                message=envelope.message,
                request_id=request_id,
                body=load_json(raw),
                retry_after=parse_retry_after(response_headers),
                task_lookup=task_lookup,
                task_id=task_id,
            )
        if envelope.request_id is None and request_id is not None:
            envelope = attrs.evolve(envelope, request_id=request_id)
        return Reply(status, envelope)

    async def fetch(self, url: str, *, max_bytes: int) -> tuple[bytes, str | None]:
        """Download a URL (an image) with at most ``max_bytes`` of body.

        Returns:
            The body and its content type.

        Raises:
            TransportError: The download failed on the way or was too large.
            APIError: The server answered with an error status.
        """
        target = URL(url)
        try:
            async with self.session.get(
                target, headers=self._auth_headers(target), timeout=self.timeout
            ) as response:
                if response.status >= 400:
                    raw = await response.content.read(4096)
                    raise error_from_reply(
                        http_status=response.status,
                        code=None,
                        message=f"image download failed with HTTP {response.status}",
                        request_id=response.headers.get(HEADER_REQUEST_ID),
                        body=excerpt(raw),
                        retry_after=parse_retry_after(response.headers),
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(256 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise TransportError(
                            f"image at {target.host} is larger than {max_bytes} bytes"
                        )
                return bytes(body), response.content_type
        except _NOT_SENT as exc:
            raise TransportError(
                f"cannot connect to {target.host}: {type(exc).__name__}", maybe_delivered=False
            ) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransportError(
                f"download from {target.host} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc
