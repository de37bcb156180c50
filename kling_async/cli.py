"""The ``kling-async`` command line (``pip install 'kling-async[cli]'``).

Subcommands: ``generate``, ``status``, ``wait``, ``download``, ``batch``, ``demo`` and
``fake-server``; ``kling-async --help`` lists them and ``docs/cli.md`` describes them.
It is also reachable as ``python -m kling_async``.

Exit codes: 0 success, 1 a task or batch job failed, 2 bad input or usage, 3 configuration or
API error, 130 interrupted.

The command is built on click and rich, which only the ``cli`` extra installs; the rest of the
package never imports them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["main"]

#: The packages the ``cli`` extra installs.
_CLI_PACKAGES: Final = frozenset({"click", "rich"})
_HINT: Final = "kling-async: the command line needs the 'cli' extra: pip install 'kling-async[cli]'"


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``kling-async`` command; it always ends by raising ``SystemExit``.

    Args:
        args: The command-line arguments (default ``sys.argv[1:]``).

    Raises:
        SystemExit: With the command's exit code (2 when the ``cli`` extra is missing).
    """
    try:
        from kling_async._cli_app import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_PACKAGES:
            raise
        print(_HINT, file=sys.stderr)
        raise SystemExit(2) from None
    app.main(args=list(args) if args is not None else None, prog_name=None)
