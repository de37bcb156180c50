"""Run every benchmark and print its figures (`nox -s bench`; `--quick` for a short run)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent
BENCHMARKS = ["bench_fanout.py", "bench_webhooks.py"]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        args = [sys.executable, str(HERE / name)]
        if quick and name == "bench_fanout.py":
            args.append("--quick")
        failed += subprocess.run(args, check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
