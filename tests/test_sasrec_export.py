"""bench/sasrec.py's export: RecBole must see exactly the replay's leave-last-out split."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench.sasrec import DATASET, export
from stream.config import Settings
from stream.replay import _roles
from stream.sources import dataset_source


def test_export_keeps_the_replay_order_and_targets(ml100k_dir, tmp_path):
    export(ml100k_dir.parent.parent, tmp_path)
    lines = (tmp_path / DATASET / f"{DATASET}.inter").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [line.split("\t") for line in lines[1:]]
    positions = np.array([float(t) for _, _, t in rows])
    # RecBole stores float fields as float32: positions must survive that and stay distinct.
    assert np.array_equal(positions.astype(np.float32).astype(np.float64), np.arange(len(rows)))

    events, _ = dataset_source("ml-100k", Settings())
    assert [(u, i) for u, i, _ in rows] == [(e.user_id, e.item_id) for e in events]
    roles = _roles(events, "leave-last-out")
    replay_targets: dict[str, dict[str, str]] = defaultdict(dict)
    for index, role in roles.items():
        replay_targets[role][events[index].user_id] = events[index].item_id
    by_user: dict[str, list[str]] = defaultdict(list)
    for u, i, _ in rows:
        by_user[u].append(i)
    assert len(replay_targets["test"]) == len(by_user) == 943
    assert {u: seq[-1] for u, seq in by_user.items()} == replay_targets["test"]
    assert {u: seq[-2] for u, seq in by_user.items()} == replay_targets["valid"]
