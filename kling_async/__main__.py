"""``python -m kling_async``: the ``kling-async`` command line."""

from kling_async.cli import main

if __name__ == "__main__":
    main()
