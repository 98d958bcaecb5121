"""Run benchmarks and print one JSON line per benchmark: ``python -m bench [NAME ...]``
(names: scoring, encoders; default: all)."""

from __future__ import annotations

import json
import os
import platform
import sys

from bench import encoders, scoring

BENCHMARKS = {"scoring": scoring.run, "encoders": encoders.run}


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for name in names:
        print(json.dumps({**BENCHMARKS[name](), **machine}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
