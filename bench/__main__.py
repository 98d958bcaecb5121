"""Run benchmarks and print one JSON line per benchmark: ``python -m bench [NAME ...]``
(names: scoring, store, encoders, flush, e2e, e2e-large, soak; default: all; ``latency``
runs only e2e's 50%-load phase, at ``--rate``, ``broker`` the embedded broker's own cost
as it fills, and ``int8-parity`` int8's backtest against fp32's over several call sizes;
none of these three is part of the default)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from pathlib import Path

from bench import broker, e2e, encoders, flush, int8_parity, scoring, soak, store

ON_REQUEST = {
    "latency": lambda a: e2e.run_latency(a.rate, a.latency_seconds),
    "broker": lambda a: broker.run(seconds=a.broker_seconds, size=a.broker_record_bytes, linger_ms=a.broker_linger_ms,
                                  consume=not a.broker_no_consumer),
    "int8-parity": lambda a: int8_parity.run(caps=tuple(a.caps)),
}
BENCHMARKS = {
    "scoring": lambda a: scoring.run(),
    "store": lambda a: store.run(),
    "encoders": lambda a: encoders.run(),
    "flush": lambda a: flush.run(per_flush=a.flush_users, events_per_user=a.flush_events_per_user),
    "e2e": lambda a: e2e.run(events=a.events, latency_seconds=a.latency_seconds, profile=a.profile),
    "e2e-large": lambda a: e2e.run(events=a.events, latency_seconds=a.latency_seconds, profile=a.profile,
                                   catalogue="synthetic", n_items=a.items),
    "soak": lambda a: soak.run(seconds=a.soak_seconds, rate=a.soak_rate, users=a.soak_users),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all), or latency")
    parser.add_argument("--events", type=int, default=200_000, help="e2e: events through the pipeline (default 200,000)")
    parser.add_argument("--items", type=int, default=100_000, help="e2e-large: products in the synthetic catalogue")
    parser.add_argument("--rate", type=float, default=400.0, help="latency: events/s to feed the worker")
    parser.add_argument("--latency-seconds", type=float, default=60.0, help="e2e: length of the 50%%-load phase (0: skip it)")
    parser.add_argument("--profile", type=Path, help="e2e: py-spy the worker; top-N summary to this path")
    parser.add_argument("--flush-events-per-user", type=int, default=1,
                        help="flush: events in each flushed user's window (1: a latency flush; ~10: a catch-up slice)")
    parser.add_argument("--flush-users", type=int, default=625, help="flush: users per measured flush")
    parser.add_argument("--broker-seconds", type=float, default=120.0, help="broker: how long to fill it")
    parser.add_argument("--broker-record-bytes", type=int, default=3000, help="broker: size of each record")
    parser.add_argument("--broker-no-consumer", action="store_true", help="broker: produce only, no tail consumer")
    parser.add_argument("--broker-linger-ms", type=int, default=5, help="broker: the producer's linger (longer: fewer, larger batches)")
    parser.add_argument("--soak-seconds", type=float, default=180.0, help="soak: duration (600 for the 10-minute soak)")
    parser.add_argument("--soak-users", type=int, default=10_000,
                        help="soak: user population (fewer users fill their bounded histories sooner, and the heap then stays flat)")
    parser.add_argument("--soak-rate", type=float, default=300.0, help="soak: events/s published (below the worker's sustained rate, else the backlog grows)")
    parser.add_argument("--caps", type=int, nargs="+", default=list(int8_parity.DEFAULT_CAPS),
                        help="int8-parity: the encoder.max_batch_tokens values to replay with")
    args = parser.parse_args()
    names = args.names or list(BENCHMARKS)
    known = {**BENCHMARKS, **ON_REQUEST}
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for result in (known[name](args) for name in names):
        print(json.dumps({**result, **machine}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
