"""Topics, event files, publishing and tailing against the real (embedded) broker."""

import threading
import time

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from stream.config import EVENT_KINDS, load_settings
from stream.kafka_io import (
    TopicError,
    client_config,
    ensure_topics,
    make_producer,
    publish_events,
    publish_items,
    read_event_file,
    tail,
)


def _all_topics(settings):
    t = settings.topics
    return [*t.inputs.values(), t.items, t.recommendations, t.dlq, t.changelog]


def _read_all(settings, topics, expected: int, timeout_s: float = 15) -> list:
    """Every record of ``topics`` from the start (direct assignment: no group join)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.broker.bootstrap, group_id=None, auto_offset_reset="earliest")
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
    consumer.assign(partitions)
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    consumer.close()
    return records


# --- topics -------------------------------------------------------------------------------


@pytest.mark.integration
def test_ensure_topics_is_idempotent_with_partitions_and_compaction(settings):
    ensure_topics(settings)
    ensure_topics(settings)  # second run: all exist, no error
    admin = KafkaAdminClient(**client_config(settings))
    try:
        described = {t["name"]: t for t in admin.describe_topics(_all_topics(settings))}
        assert set(described) == set(_all_topics(settings))
        for name, topic in described.items():
            assert topic["error_code"] == 0
            assert len(topic["partitions"]) == settings.topics.partitions, name
        # Tansu reports the configs it was given with source DEFAULT_CONFIG, so the
        # default "modified" filter hides them: ask for all.
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topics.items),
             ConfigResource(ConfigResourceType.TOPIC, settings.topics.recommendations),
             ConfigResource(ConfigResourceType.TOPIC, settings.topics.changelog)],
            config_filter="all",
        )["topic"]
        assert configs[settings.topics.items]["cleanup.policy"]["value"] == "compact"
        assert configs[settings.topics.changelog]["cleanup.policy"]["value"] == "compact"
        assert configs[settings.topics.recommendations].get("cleanup.policy", {}).get("value", "delete") == "delete"
    finally:
        admin.close()


@pytest.mark.integration
def test_ensure_topics_refuses_input_topics_that_are_not_co_partitioned(settings):
    admin = KafkaAdminClient(**client_config(settings))
    admin.create_topics({settings.topics.inputs["click"]: {"num_partitions": 1, "replication_factor": 1}})
    admin.close()
    with pytest.raises(TopicError, match=r"not co-partitioned .*clicks=1"):
        ensure_topics(settings)


@pytest.mark.integration
def test_existing_equal_partition_counts_are_kept(settings):
    ensure_topics(settings)
    grown = load_settings(**{**settings.model_dump(), "topics": {"prefix": settings.topics.prefix, "partitions": 8}})
    ensure_topics(grown)  # different setting, same topics: accepted as they are, not changed
    admin = KafkaAdminClient(**client_config(settings))
    counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(settings.topics.inputs.values()))}
    admin.close()
    assert set(counts.values()) == {settings.topics.partitions}


@pytest.mark.integration
def test_the_changelog_is_partitioned_like_existing_inputs(settings):
    admin = KafkaAdminClient(**client_config(settings))
    admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1} for name in settings.topics.inputs.values()})
    ensure_topics(settings)  # settings say 4; the inputs have 3
    (changelog,) = admin.describe_topics([settings.topics.changelog])
    assert len(changelog["partitions"]) == 3
    other = load_settings(**{**settings.model_dump(), "topics": {"prefix": settings.topics.prefix + "x."}})
    admin.create_topics({other.topics.changelog: {"num_partitions": 2, "replication_factor": 1}})
    admin.close()
    with pytest.raises(TopicError, match=r"profiles-changelog has 2 partitions, the input topics 4"):
        ensure_topics(other)


# --- publishing ---------------------------------------------------------------------------


@pytest.mark.integration
def test_publish_events_routes_by_kind_and_keys_by_user(settings):
    ensure_topics(settings)
    events = [
        {"user_id": f"u{n % 7}", "item_id": f"i{n}", "ts": 1_700_000_000_000 + n, "kind": EVENT_KINDS[n % 3], "value": n}
        for n in range(60)
    ]
    events.append({"user_id": 42, "item_id": "no-kind", "ts": 1_700_000_000_000})  # kind defaults to view
    producer = make_producer(settings)
    try:
        assert publish_events(producer, settings.topics, events) == len(events)
    finally:
        producer.close()

    records = _read_all(settings, list(settings.topics.inputs.values()), len(events))
    assert len(records) == len(events)
    topic_kind = {topic: kind for kind, topic in settings.topics.inputs.items()}
    by_item = {orjson.loads(r.value)["item_id"]: r for r in records}
    for event in events:
        record = by_item[event["item_id"]]
        assert topic_kind[record.topic] == event.get("kind", "view")
        assert record.key == str(event["user_id"]).encode()
        assert orjson.loads(record.value) == {k: v for k, v in event.items() if k != "kind"}
    # one user's events share a partition number on every input topic (co-partitioning)
    partitions = {}
    for r in records:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())


def test_publish_events_rejects_unknown_kind_and_missing_user():
    sent = []

    class _Future:
        def add_errback(self, fn):
            return self

    class _Producer:
        def send(self, topic, key, value):
            sent.append(topic)
            return _Future()

        def flush(self):
            pass

    topics = load_settings().topics
    with pytest.raises(ValueError, match="event 2: unknown kind 'like'"):
        publish_events(_Producer(), topics, [{"user_id": "u", "item_id": "i"}, {"user_id": "u", "kind": "like"}])
    with pytest.raises(ValueError, match="event 1: missing user_id"):
        publish_events(_Producer(), topics, [{"item_id": "i"}])
    assert sent == [topics.inputs["view"]]


@pytest.mark.integration
def test_publish_items_to_the_compacted_topic_keyed_by_item(settings):
    ensure_topics(settings)
    items = [{"item_id": str(n), "title": f"Movie {n}", "attributes": {"genres": ["Drama"]}} for n in range(20)]
    producer = make_producer(settings)
    try:
        assert publish_items(producer, settings.topics, items) == 20
    finally:
        producer.close()
    records = _read_all(settings, [settings.topics.items], 20)
    assert sorted((r.key, orjson.loads(r.value)["title"]) for r in records) == sorted(
        (str(n).encode(), f"Movie {n}") for n in range(20)
    )


@pytest.mark.integration
def test_tail_filters_by_user_and_stops(settings):
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap)
    topic = settings.topics.recommendations
    for n in range(10):
        user = "alice" if n % 2 else "bob"
        producer.send(topic, key=user.encode(), value=orjson.dumps({"user_id": user, "n": n}))
    producer.send(topic, key=b"x", value=b"not json")
    producer.flush()

    got = list(tail(settings, user="alice", from_beginning=True, max_messages=3, timeout_s=10))
    assert [r["n"] for r in got] == [1, 3, 5]  # one key, one partition: in order
    started = time.monotonic()
    everything = list(tail(settings, from_beginning=True, timeout_s=1.0))
    assert len(everything) == 10 and time.monotonic() - started < 8  # undecodable one skipped

    # from the end: only what arrives after the start is seen
    seen: list = []
    thread = threading.Thread(target=lambda: seen.extend(tail(settings, max_messages=1, timeout_s=10)))
    thread.start()
    time.sleep(1.5)
    producer.send(topic, key=b"carol", value=orjson.dumps({"user_id": "carol", "n": 99}))
    producer.flush()
    thread.join(15)
    producer.close()
    assert seen == [{"user_id": "carol", "n": 99}]


@pytest.mark.integration
def test_tail_with_a_group_resumes_after_its_commits(settings):
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap)
    for n in range(6):
        producer.send(settings.topics.recommendations, key=b"u", value=orjson.dumps({"user_id": "u", "n": n}))
    producer.flush()
    producer.close()
    group = f"{settings.topics.prefix}tail"
    first = list(tail(settings, from_beginning=True, max_messages=4, timeout_s=20, group_id=group))
    rest = list(tail(settings, from_beginning=True, timeout_s=2, group_id=group))
    assert sorted(r["n"] for r in first + rest) == list(range(6))
    assert len(first) == 4 and len(rest) == 2


# --- event files --------------------------------------------------------------------------


def test_read_jsonl(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u1", "item_id": "i1", "ts": 1, "kind": "click"}\n\n{"user_id": 2, "item_id": "i2"}\n')
    assert list(read_event_file(path)) == [
        {"user_id": "u1", "item_id": "i1", "ts": 1, "kind": "click"},
        {"user_id": 2, "item_id": "i2"},
    ]


def test_read_csv_omits_empty_cells_and_converts_numbers(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,ts,kind,value,text,event_id\n"
        "u1,i1,1700000000000,purchase,4.5,\"great, really\",e1\n"
        "u2,i2,2024-01-01T00:00:00Z,,,,\n"
        "u3,i3,5,view,n/a,,\n"
    )
    assert list(read_event_file(path)) == [
        {"user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000, "kind": "purchase", "value": 4.5,
         "text": "great, really", "event_id": "e1"},
        {"user_id": "u2", "item_id": "i2", "ts": "2024-01-01T00:00:00Z"},
        {"user_id": "u3", "item_id": "i3", "ts": 5, "kind": "view", "value": "n/a"},  # the worker dead-letters it
    ]


def test_format_is_sniffed_without_a_known_suffix(tmp_path):
    jsonl, csv_ = tmp_path / "a.txt", tmp_path / "b.txt"
    jsonl.write_text('{"user_id": "u", "item_id": "i"}\n')
    csv_.write_text("user_id,item_id\nu,i\n")
    assert list(read_event_file(jsonl)) == list(read_event_file(csv_)) == [{"user_id": "u", "item_id": "i"}]
    array = tmp_path / "c.json"
    array.write_text('[{"user_id": "u", "item_id": "i"}]')
    assert list(read_event_file(array)) == [{"user_id": "u", "item_id": "i"}]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.jsonl", '{"user_id": "u", "item_id": "i"}\n{"user_id": \n', r"bad.jsonl:2: malformed JSON"),
        ("list.jsonl", '{"user_id": "u"}\n\n[1, 2]\n', r"list.jsonl:3: expected a JSON object, got list"),
        ("cells.csv", "user_id,item_id\nu,i\nu,i,extra\n", r"cells.csv:3: expected 2 cells, got 3"),
        ("header.csv", "user,item_id\nu,i\n", r"header.csv:1: unknown column\(s\) \['user'\]"),
        ("missing.csv", "user_id,ts\nu,1\n", r"missing.csv:1: missing column\(s\) \['item_id'\]"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        list(read_event_file(path))
    assert "\n" not in str(info.value)
