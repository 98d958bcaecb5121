"""Run benchmarks and print one JSON line per benchmark: ``python -m bench [NAME ...]``
(names: scoring, store, encoders; default: all)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from bench import encoders, scoring, store

BENCHMARKS = {"scoring": scoring.run, "store": store.run, "encoders": encoders.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for result in (BENCHMARKS[name]() for name in names):
        print(json.dumps({**result, **machine}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
