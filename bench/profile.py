"""Top-N hot spots from a py-spy ``--format raw`` profile (collapsed stacks).

``self``: samples whose innermost frame is the function; ``total``: samples with the
function anywhere on the stack (counted once per sample). Idle threads are not sampled
(py-spy's default), so shares are of busy time across all threads.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["summarise"]

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:  # a git worktree of the project (/work/wt-NAME/stream/...)
        path = re.sub(r"^.*/wt-[^/]+/", "", path)
    return f"{m['fn']} ({path})"


def summarise(raw: Path, out: Path, top: int = 25) -> dict:
    """Write the top-``top`` functions by self and total samples to ``out``; return them."""
    self_n: Counter[str] = Counter()
    total_n: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        samples += n
        self_n[frames[-1]] += n
        for f in set(frames):
            total_n[f] += n
    lines = [f"py-spy samples: {samples}", "", f"top {top} by self time (% of busy samples):"]
    lines += [f"{100 * c / samples:5.1f}%  {f}" for f, c in self_n.most_common(top)]
    lines += ["", f"top {top} by total time (function on the stack):"]
    lines += [f"{100 * c / samples:5.1f}%  {f}" for f, c in total_n.most_common(top)]
    out.write_text("\n".join(lines) + "\n")
    return {"samples": samples, "summary": str(out),
            "top_self": [[f, round(100 * c / samples, 1)] for f, c in self_n.most_common(8)]}
