"""Run the benchmark suite and print one JSON line per benchmark."""

from __future__ import annotations

import json
import platform
import sys

from bench import scoring


def main() -> None:
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    for result in (scoring.run(),):
        print(json.dumps({**result, **machine}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
