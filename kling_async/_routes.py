"""The API routes, spelled once."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

CREATE_TASK: Final = "/kling/v1/images/generations"


def get_task(task_id: str) -> str:
    """Return the path that queries one task by its task id or external task id."""
    return f"{CREATE_TASK}/{quote(task_id, safe='')}"
