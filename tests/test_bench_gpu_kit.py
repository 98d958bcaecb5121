"""bench/gpu_kit.py: the wheel travels to the GPU machine in parts that rejoin exactly."""

from __future__ import annotations

import os

from bench.gpu_kit import _split


def test_parts_are_at_most_the_size_and_rejoin_to_the_same_bytes(tmp_path):
    wheel = tmp_path / "big.whl"
    data = os.urandom(2_500_001)
    wheel.write_bytes(data)
    parts = _split(wheel, tmp_path / "parts", size=1_000_000)
    assert [p.name for p in parts] == ["part-00", "part-01", "part-02"]  # names sort in order for `cat part-*`
    assert [p.stat().st_size for p in parts] == [1_000_000, 1_000_000, 500_001]
    assert b"".join(p.read_bytes() for p in sorted(parts)) == data
