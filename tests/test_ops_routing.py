"""Two worker processes: a user request to either worker is answered by the user's owner."""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka.partitioner import murmur2

from stream import movielens
from stream.broker import free_port
from stream.config import load_settings
from stream.kafka_io import ensure_topics, make_producer, publish_items
from tests.test_ops_http import get_json, start_worker, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_TS = 1_700_000_000_000


def test_user_requests_are_routed_to_the_partition_owner(broker_url, ml100k_dir, tmp_path):
    common = {"broker": {"url": broker_url}, "topics": {"prefix": f"t{uuid.uuid4().hex[:8]}."},
              "app_id": f"test-{uuid.uuid4().hex[:8]}"}
    settings = [load_settings(**common, store={"path": tmp_path / f"store-{n}.lmdb"}) for n in range(2)]
    items = movielens.load_items(ml100k_dir)
    ensure_topics(settings[0])
    producer = make_producer(settings[0])
    publish_items(producer, settings[0].topics, [movielens.item_message(i) for i in items])
    producer.flush()
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    procs = []
    try:
        for s, port, log in zip(settings, ports, logs):
            procs.append(start_worker(s, port, log))
        views = settings[0].topics.inputs["view"]

        def owned() -> list[set[int]] | None:
            out = []
            for base in bases:
                status, health = get_json(f"{base}/healthz")
                parts = {int(tp.rsplit(":", 1)[1]) for tp in health["consumer"]["assigned_partitions"] if tp.startswith(views + ":")}
                if status != 200 or not parts or health["consumer"]["rebalancing"]:
                    return None
                out.append(parts)
            return out if sum(map(len, out)) == settings[0].topics.partitions else None

        for proc, log in zip(procs, logs):
            owners = wait_until(owned, "both workers own partitions", proc, log, 240)
        owners = wait_until(owned, "a stable assignment", procs[0], logs[0], 60)

        users = [f"user-{n}" for n in range(12)]
        partition_of = {u: (murmur2(u.encode()) & 0x7FFFFFFF) % settings[0].topics.partitions for u in users}
        by_worker = [{u for u in users if partition_of[u] in parts} for parts in owners]
        assert all(by_worker), f"users all on one worker: {partition_of}, {owners}"
        for n, user in enumerate(users):
            for k in range(n % 3 + 1):
                value = orjson.dumps({"user_id": user, "item_id": items[k + n].item_id, "ts": BASE_TS + k})
                producer.send(settings[0].topics.inputs["click"], key=user.encode(), value=value)
        producer.flush()

        for n, user in enumerate(users):
            answers = []
            for base, proc, log in zip(bases, procs, logs):
                status, body = wait_until(lambda: (r := get_json(f"{base}/users/{user}/profile"))[0] == 200 and r,
                                          f"{user}'s profile", proc, log, 60)
                answers.append(body)
            assert answers[0] == answers[1] and answers[0]["event_count"] == n % 3 + 1
            recs = [get_json(f"{base}/users/{user}/recommendations") for base in bases]
            assert recs[0] == recs[1] and recs[0][0] == 200 and len(recs[0][1]["items"]) == settings[0].ranking.k
        assert all(get_json(f"{base}/users/nobody/profile")[0] == 404 for base in bases)
    finally:
        producer.close()
        for proc in procs:
            stop(proc)
