"""The ``recstream`` command line: one click group, errors as one line with a non-zero exit.

Every setting can also come from a TOML file (``--config``) or a ``RECSTREAM_*`` environment
variable; flags given here win over both (see :mod:`stream.config`).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from stream.config import Settings, load_settings

__all__ = ["cli", "main"]


class _Obj:
    def __init__(self, config: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def settings(self, **more: Any) -> Settings:
        if self._settings is None or more:
            merged = dict(self.overrides)
            for key, value in more.items():
                merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
            self._settings = load_settings(self.config, **merged)
        return self._settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file.")
@click.option("--broker", help="Kafka broker, kafka://host:port (default kafka://127.0.0.1:9092).")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), help="Local Hugging Face encoder directory.")
@click.option("--store", type=click.Path(path_type=Path), help="LMDB store directory.")
@click.option("--topic-prefix", help="Prefix of every topic name (default 'recstream.').")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
@click.version_option(package_name="recstream")
@click.pass_context
def cli(ctx: click.Context, config, broker, model, store, topic_prefix, log_level) -> None:
    """recstream: streaming LLM-based user profiles and recommendations on Kafka."""
    overrides = {
        "broker": {"url": broker},
        "encoder": {"model": model},
        "store": {"path": store},
        "topics": {"prefix": topic_prefix},
        "log_level": log_level,
    }
    ctx.obj = _Obj(config, overrides)


def _configure_logging(level: str, fmt: str = "text") -> None:
    from stream.logs import configure_logging

    configure_logging(level, fmt)


@cli.command()
@click.option("--port", type=int, help="Port to listen on (default: the --broker URL's port).")
@click.pass_obj
def broker(obj: _Obj, port: int | None) -> None:
    """Run the embedded Tansu broker (memory storage) until interrupted."""
    from stream.broker import EmbeddedBroker

    settings = obj.settings()
    host = settings.broker.bootstrap.split(",")[0].rsplit(":", 1)[0]
    with EmbeddedBroker(host=host, port=port or settings.broker.port) as b:
        click.echo(f"broker ready on {b.url} (memory storage; Ctrl-C stops it)")
        _wait_for_signal()
    click.echo("broker stopped")


def _wait_for_signal() -> None:
    stop = {"now": False}

    def handler(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--web-port", type=int, help="HTTP port (0 disables the web server).")
@click.pass_obj
def worker(obj: _Obj, web_port: int | None) -> None:
    """Run a stream worker: events in, profiles updated, recommendations out."""
    from stream.kafka_io import ensure_topics
    from stream.worker import run_worker

    settings = obj.settings(web_port=web_port)
    ensure_topics(settings)
    run_worker(settings)


@cli.group()
def topics() -> None:
    """Manage recstream's topics."""


@topics.command("create")
@click.pass_obj
def topics_create(obj: _Obj) -> None:
    """Create the input, items (compacted), recommendations and DLQ topics if missing."""
    from stream.kafka_io import ensure_topics

    settings = obj.settings()
    ensure_topics(settings)
    t = settings.topics
    click.echo(f"topics ready: {', '.join([*t.inputs.values(), t.items, t.recommendations, t.dlq])}")


@cli.group()
def encoders() -> None:
    """Export, tune and inspect text encoders."""


@encoders.command("export")
@click.option("--variant", type=click.Choice(["fp32", "int8", "fp16"]), help="Graph precision (default: encoder.variant).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Export here instead of the cache.")
@click.pass_obj
def encoders_export(obj: _Obj, variant: str | None, out: Path | None) -> None:
    """Export --model (default all-MiniLM-L6-v2) to ONNX with pooling and normalisation inside."""
    from encoders import default_model_dir, ensure_exported, export_onnx
    from encoders.manifest import verify

    settings = obj.settings(encoder={"variant": variant})
    enc = settings.encoder
    if out is not None:
        path = export_onnx(enc.model or default_model_dir(), out, enc.variant)
    else:
        path = ensure_exported(enc.model, enc.cache_dir, enc.variant)
    manifest = verify(path)
    recipe = manifest.exporter.get("quantization")
    click.echo(f"{path}: {manifest.variant}, dim {manifest.dim}, max length {manifest.max_length}, "
               f"sha256 {manifest.onnx_sha256[:12]}" + (f", {recipe}" if recipe else ""))


@encoders.command("prune")
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.pass_obj
def encoders_prune(obj: _Obj, dry_run: bool) -> None:
    """Remove cached exports this version no longer uses (older graph recipes), and the
    leftovers of interrupted exports, from encoder.cache_dir."""
    import shutil

    from encoders.export import stale_exports

    cache_dir = obj.settings().encoder.cache_dir
    total = 0
    for path in stale_exports(cache_dir):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        total += size
        if not dry_run:
            shutil.rmtree(path)
        click.echo(f"{'would remove' if dry_run else 'removed'} {path} ({size / 1e6:.0f} MB)")
    click.echo(f"{total / 1e6:.0f} MB {'to free' if dry_run else 'freed'} in {cache_dir / 'models'}")


@encoders.command("tune")
@click.option("--dataset", type=click.Choice(["ml-100k"]), help="Tune on a bundled dataset.")
@click.option("--events", "events_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL/CSV event file.")
@click.option("--items", "items_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL item file (with --events).")
@click.option("--from", "source", type=click.Path(exists=True, path_type=Path), help="Local copy of the dataset.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Model directory to write (default: in the cache).")
@click.option("--epochs", type=int, help="Most epochs (default: tune.epochs).")
@click.option("--max-minutes", type=float, help="Time budget (default: tune.max_minutes).")
@click.option("--holdout-items", type=float, help="Fraction of items kept out of tuning (cold-start checks).")
@click.option("--seed", type=int, help="Random seed (default: tune.seed).")
@click.option("--until", help="Tune only on events before this time (epoch ms or RFC 3339): a global time split.")
@click.option("--json", "as_json", is_flag=True, help="Print the tuning report as one JSON object.")
@click.pass_obj
def encoders_tune(obj: _Obj, dataset, events_path, items_path, source, out, epochs, max_minutes, holdout_items, seed,
                  until, as_json) -> None:
    """Adapt the encoder to behaviour: learn an item head, residuals, horizons and a query MLP."""
    from rich.console import Console

    from encoders import CachedEncoder, EmbeddingCache, load_encoder
    from encoders.tune import tune
    from stream.catalog import item_text
    from stream.sources import dataset_source, file_source

    _one_source(dataset, events_path, items_path)
    settings = obj.settings(tune={"epochs": epochs, "max_minutes": max_minutes, "holdout_items": holdout_items, "seed": seed})
    events, items = dataset_source(dataset, settings, source) if dataset else file_source(events_path, items_path, settings)
    if until is not None:
        from stream.events import parse_ts_ms

        until_ms = parse_ts_ms(_ts_arg(until))
        events = [e for e in events if e.ts_ms < until_ms]  # nothing at or after the split reaches tuning
        if not events:
            raise click.UsageError(f"no events before --until {until}")
    console = Console(stderr=True, quiet=as_json)
    base = load_encoder(settings.encoder)
    if base.adapter is not None:
        raise click.UsageError(f"{base.export_dir} is already tuned: tune from a base model (--model)")
    with console.status(f"Embedding {len(items)} item texts with the base encoder…"):
        vectors = CachedEncoder(base, EmbeddingCache(settings.encoder.cache_dir / "embeddings.lmdb")).encode([item_text(i) for i in items])
    name = dataset or events_path.stem
    out = out or settings.encoder.cache_dir / "models" / f"tuned-{name}-{base.model_id[:12]}"

    def progress(row: dict) -> None:
        console.print(f"epoch {row['epoch']:>3}  loss {row['loss']:.3f}  validation HR@{settings.ranking.k} "
                      f"{row['valid_hr']:.4f}  NDCG {row['valid_ndcg']:.4f}  ({row['elapsed_s']:.0f} s)")

    report = tune(events, [i.item_id for i in items], vectors, base.export_dir, out, settings.tune,
                  k=settings.ranking.k, progress=progress, item_facts=[i.facts for i in items])
    if as_json:
        click.echo(orjson.dumps({"out": str(report.out_dir), "best_epoch": report.best_epoch, "epochs": report.epochs,
                                 "train_examples": report.train_examples, "items_seen": report.items_seen,
                                 "items_held_out": report.items_held_out, "fact_vocabulary": report.fact_vocabulary,
                                 "elapsed_s": round(report.elapsed_s, 1)}).decode())
        return
    best = report.epochs[report.best_epoch]
    click.echo(f"tuned model written to {report.out_dir} (best epoch {report.best_epoch}: validation HR@{settings.ranking.k} "
               f"{best['valid_hr']:.4f}, {report.train_examples} training examples, {report.elapsed_s:.0f} s)")
    click.echo(f"use it with: recstream --model {report.out_dir} replay --dataset ml-100k   (or worker, demo)")
@encoders.command("encode")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["ml-100k"]), help="Encode a bundled dataset's items.")
@click.option("--chunk-size", type=click.IntRange(1), default=1024, show_default=True, help="Items per committed chunk.")
@click.pass_obj
def encoders_encode(obj: _Obj, file: Path | None, dataset: str | None, chunk_size: int) -> None:
    """Encode a catalogue (JSONL FILE of item messages, or --dataset) into the embedding cache.

    Shows items/s and an ETA; an interrupted run resumes where it stopped. The worker and
    the replay tool then find every item's vector in the cache.
    """
    from encoders import CachedEncoder, EmbeddingCache, load_encoder
    from encoders.catalogue import encode_in_chunks, progress_bar
    from stream.catalog import item_text
    from stream.sources import item_file, dataset_source

    if (file is None) == (dataset is None):
        raise click.UsageError("give either FILE or --dataset")
    settings = obj.settings()
    items = dataset_source(dataset, settings)[1] if dataset else item_file(file, settings)
    texts = [item_text(i) for i in items]
    cache = EmbeddingCache(settings.encoder.cache_dir / "embeddings.lmdb")
    encoder = CachedEncoder(load_encoder(settings.encoder), cache)
    started = time.perf_counter()
    with progress_bar("encoding", len(texts)) as bar:
        encode_in_chunks(encoder, texts, chunk_size, progress=bar)
    cache.close()
    click.echo(f"{len(texts)} items: {encoder.encoded} encoded, {len(texts) - encoder.encoded} from the cache "
               f"({time.perf_counter() - started:.1f} s)")


@encoders.command("bench")
@click.option("--variants", default="fp32,int8", show_default=True, help="ONNX variants (fp16 needs CUDA).")
@click.option("--batch-sizes", default="32,256", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", type=click.IntRange(1), help="Threads for torch and onnxruntime (default: all CPUs).")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Turns per engine; the best counts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
@click.pass_obj
def encoders_bench(obj: _Obj, variants: str, batch_sizes: str, threads: int | None, rounds: int, as_json: bool) -> None:
    """Sentences/s of the torch original vs the ONNX variants, side by side in one run."""
    from encoders.bench import check_variants, format_table, rows_as_dicts, run_bench

    enc = obj.settings().encoder
    names = [v.strip() for v in variants.split(",") if v.strip()]
    provider = "cpu" if enc.provider == "auto" and "fp16" not in names else enc.provider
    check_variants(names, provider)
    rows = run_bench(enc.model, enc.cache_dir, names, [int(b) for b in batch_sizes.split(",")], max_length=enc.max_length,
                     threads=threads, provider=provider, rounds=rounds, progress=lambda m: click.echo(m, err=True))
    click.echo(orjson.dumps(rows_as_dicts(rows)).decode() if as_json else format_table(rows))


@cli.group()
def catalog() -> None:
    """Manage the item catalogue topic."""


@catalog.command("load")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["ml-100k"]), help="Load a bundled dataset's items.")
@click.option("--from", "source", type=click.Path(exists=True, path_type=Path), help="Local copy of the dataset (dir or wheel).")
@click.pass_obj
def catalog_load(obj: _Obj, file: Path | None, dataset: str | None, source: Path | None) -> None:
    """Publish items (a JSONL FILE of item messages, or --dataset) to the items topic."""
    from stream.kafka_io import publish_items

    if (file is None) == (dataset is None):
        raise click.UsageError("give either FILE or --dataset")
    settings = obj.settings()
    if dataset:
        from stream import movielens

        directory = movielens.fetch_ml100k(settings.encoder.cache_dir, source)
        items = movielens.item_messages(directory)
    else:
        items = [_json_line(file, n, line) for n, line in enumerate(file.read_text("utf-8").splitlines(), 1) if line.strip()]
    count = _produce(settings, publish_items, items)
    click.echo(f"published {count} items to {settings.topics.items}")


def _produce(settings: Settings, publish: Any, records: list) -> int:
    """Create the topics if needed and send ``records`` with ``publish``; returns the count."""
    from stream.kafka_io import ensure_topics, make_producer

    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        return publish(producer, settings.topics, records)
    finally:
        producer.close()


def _json_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({exc})") from None


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def publish(obj: _Obj, file: Path) -> None:
    """Publish events from a JSONL or CSV FILE to the input topics (by each row's kind)."""
    from stream.kafka_io import publish_events, read_event_file

    settings = obj.settings()
    events = list(read_event_file(file))  # validate the whole file before sending any of it
    count = _produce(settings, publish_events, events)
    click.echo(f"published {count} events")


@cli.command()
@click.option("--user", help="Only this user's recommendations.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest recommendation.")
@click.option("--max", "max_messages", type=int, help="Stop after this many.")
@click.option("--timeout", "timeout_s", type=float, help="Stop after this many idle seconds.")
@click.pass_obj
def tail(obj: _Obj, user, as_json, from_beginning, max_messages, timeout_s) -> None:
    """Print recommendations as they arrive."""
    from stream import kafka_io

    settings = obj.settings()
    for rec in kafka_io.tail(settings, user=user, from_beginning=from_beginning, max_messages=max_messages, timeout_s=timeout_s):
        if as_json:
            click.echo(orjson.dumps(rec).decode())
        else:
            items = ", ".join(f"{i['item_id']} ({i['score']:.3f})" for i in rec.get("items", []))
            click.echo(f"user {rec.get('user_id')} v{rec.get('profile_version')} [{rec.get('event_count')} events]: {items}")


@cli.command()
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def profile(obj: _Obj, user: str, as_json: bool) -> None:
    """Summarise USER's profile: horizons, top interests, recent history."""
    from stream.inspect import profile_summary

    summary = profile_summary(obj.settings(), user)
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"user {summary['user_id']}: {summary['event_count']} events, version {summary['profile_version']}, "
               f"last event {summary['last_event']}")
    click.echo("  events by kind: " + ", ".join(f"{k} {n}" for k, n in summary["kinds"].items()))
    for horizon in summary["horizons"]:
        interests = "; ".join(f"{i['title']} ({i['similarity']:.2f})" for i in horizon["top_interests"])
        click.echo(f"  {horizon['name']} (half-life {horizon['half_life_h']:g} h, weight {horizon['weight']:.3f}): {interests}")
    click.echo("  recent: " + "; ".join(h["title"] for h in summary["recent"]))


@cli.group("store")
def store_group() -> None:
    """Operate on the LMDB store (--store): stats, compact, export, import."""


@store_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def store_stats(obj: _Obj, as_json: bool) -> None:
    """Entries per database, map size, used and file bytes (read-only; safe beside a worker)."""
    from store.dump import store_stats as stats

    out = stats(obj.settings().store.path)
    click.echo(orjson.dumps(out).decode() if as_json else "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in out.items()))


@store_group.command("compact")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write the compacted copy here.")
@click.option("--in-place", is_flag=True, help="Replace the store's data file (stop its worker first).")
@click.pass_obj
def store_compact(obj: _Obj, out: Path | None, in_place: bool) -> None:
    """Copy the store without free pages (purges forgotten users' old bytes)."""
    from store.dump import compact

    if (out is None) == (not in_place):
        raise click.ClickException("give exactly one of --out DIR or --in-place")
    before, after = compact(obj.settings().store.path, out)
    click.echo(f"compacted {before} -> {after} bytes into {out or obj.settings().store.path}")


@store_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.pass_obj
def store_export(obj: _Obj, file: Path) -> None:
    """Write the store as JSON Lines to FILE ('-': stdout); lossless, safe beside a worker."""
    from store.dump import export_jsonl

    path = obj.settings().store.path
    with click.open_file(str(file), "wb") as out:
        counts = export_jsonl(path, out)
    click.echo("exported " + ", ".join(f"{n} {k}" for k, n in counts.items()), err=True)


@store_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.pass_obj
def store_import(obj: _Obj, file: Path) -> None:
    """Load a JSON Lines export from FILE into the store (stop its worker first)."""
    from store.dump import import_jsonl

    settings = obj.settings()
    if str(file) != "-" and not file.is_file():
        raise click.ClickException(f"no such file: {file}")
    with click.open_file(str(file), "rb") as lines:
        counts = import_jsonl(settings.store.path, lines, str(file), settings.store.map_size_mb)
    click.echo("imported " + ", ".join(f"{n} {k}" for k, n in counts.items()))


@cli.command()
@click.argument("user")
@click.option("--offline", is_flag=True, help="Erase from the local --store now (its worker must be stopped).")
@click.pass_obj
def forget(obj: _Obj, user: str, offline: bool) -> None:
    """Erase USER: profile, history, seen items, counts; tombstones on keyed topics.

    By default a command goes to the control topic and the worker that owns USER executes
    it. What is and is not erased: see stream/control.py and the README.
    """
    from stream.control import forget_locally, request_forget

    settings = obj.settings()
    if offline:
        erased, topics = forget_locally(settings, user)
        click.echo(f"{'erased' if erased else 'nothing stored for'} {user!r} in {settings.store.path}; "
                   f"tombstones sent to {', '.join(topics) or 'no topic'}")
    else:
        topic = request_forget(settings, user)
        click.echo(f"forget request for {user!r} sent to {topic}; the worker that owns the user erases it")


@cli.command()
@click.option("--limit", type=int, help="Publish only the first N ratings (time order).")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Events per second to publish (0: as fast as possible).")
@click.option("--from", "source", type=click.Path(exists=True, path_type=Path), help="Local copy of ml-100k (dir or wheel).")
@click.option("--port", type=int, help="Embedded broker port (default: a free port).")
@click.pass_obj
def demo(obj: _Obj, limit: int | None, rate: float, source: Path | None, port: int | None) -> None:
    """Everything on embedded defaults: broker, ml-100k catalogue, a worker, live events."""
    from stream.demo import run_demo

    run_demo(obj.settings(), limit=limit, rate=rate, source=source, port=port)


@cli.command()
@click.option("--dataset", type=click.Choice(["ml-100k"]), help="Replay a bundled dataset.")
@click.option("--events", "events_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL/CSV event file.")
@click.option("--items", "items_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL item file (with --events).")
@click.option("--from", "source", type=click.Path(exists=True, path_type=Path), help="Local copy of the dataset.")
@click.option("--protocol", type=click.Choice(["leave-last-out", "prequential"]), default="leave-last-out", show_default=True)
@click.option("-k", "k", type=int, help="Cut-off K (default: ranking.k).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), help="Write a Markdown/HTML report with plots here.")
@click.option("--from-kafka", is_flag=True, help="Read events and items from the broker's recstream topics.")
@click.option("--since", help="With --from-kafka: events at or after this time (epoch ms or RFC 3339).")
@click.option("--until", help="With --from-kafka: events before this time (epoch ms or RFC 3339).")
@click.option("--to-kafka", is_flag=True, help="Republish the history to the input topics instead of measuring.")
@click.option("--speed", type=float, default=0.0, show_default=True, help="With --to-kafka: N× real time (0: as fast as possible).")
@click.option("--fit-hybrid", is_flag=True,
              help="Choose ranking.hybrid's weights on the validation targets (leave-last-out) and report them on test.")
@click.pass_obj
def replay(obj: _Obj, dataset, events_path, items_path, source, protocol, k, as_json, report_dir,
           from_kafka, since, until, to_kafka, speed, fit_hybrid) -> None:
    """Backtest: replay history through the worker's own code and measure it."""
    from stream.events import parse_ts_ms
    from stream.report import print_report
    from stream.sources import dataset_source, file_source, kafka_source

    _one_source(dataset, events_path, items_path, from_kafka)
    if to_kafka and from_kafka:
        raise click.UsageError("--to-kafka republishes a dataset or file, not the broker's own topics")
    if fit_hybrid and protocol != "leave-last-out":
        raise click.UsageError("--fit-hybrid needs the leave-last-out protocol (its validation targets)")
    settings = obj.settings(ranking={"k": k} if k else {})
    if from_kafka:
        events, items, skipped = kafka_source(settings, parse_ts_ms(_ts_arg(since)) if since else None,
                                              parse_ts_ms(_ts_arg(until)) if until else None)
        if skipped:
            click.echo(f"skipped {skipped} invalid records on the input topics", err=True)
    elif dataset:
        events, items = dataset_source(dataset, settings, source)
    else:
        events, items = file_source(events_path, items_path, settings)
    if to_kafka:
        from stream.republish import republish

        sent = republish(settings, events, items, speed)
        click.echo(f"republished {len(items)} items and {sent} events to {settings.broker.url}")
        return
    fit = None
    if fit_hybrid:
        from stream.hybrid import HybridFit

        fit = HybridFit(settings.ranking.k)
    result = _run_with_progress(settings, events, items, protocol, quiet=as_json, keep_ranks=report_dir is not None,
                                observe_parts=fit.observe if fit else None)
    if fit is not None:
        result["hybrid_fit"] = fit.fit(cold="item" in result["segments"])  # a tuned model: it has cold items
    if report_dir is not None:
        from stream.report import write_report

        path = write_report(result, report_dir)
        for key in ("ranks", "eval_months", "scores"):
            result.pop(key)
        click.echo(f"report written to {path}", err=True)
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        print_report(result)


def _one_source(dataset: str | None, events_path: Path | None, items_path: Path | None, from_kafka: bool | None = None) -> None:
    """Exactly one history source (``from_kafka`` None: the command has no ``--from-kafka``)."""
    names = ["--dataset", "--events (with --items)"] + (["--from-kafka"] if from_kafka is not None else [])
    if sum((dataset is not None, events_path is not None, bool(from_kafka))) != 1:
        raise click.UsageError(f"give exactly one of {', '.join(names[:-1])} or {names[-1]}")
    if events_path is not None and items_path is None:
        raise click.UsageError("--events needs --items (the catalogue)")


def _ts_arg(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _run_with_progress(settings: Settings, events, items, protocol: str, quiet: bool, keep_ranks: bool = False,
                       observe_parts=None) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    from encoders import CachedEncoder, EmbeddingCache, load_encoder
    from encoders.catalogue import progress_bar
    from stream.catalog import Catalogue
    from stream.replay import run_replay

    console = Console(stderr=True, quiet=quiet)
    with console.status("Loading the encoder…"):
        encoder = CachedEncoder(load_encoder(settings.encoder), EmbeddingCache(settings.encoder.cache_dir / "embeddings.lmdb"))
    with progress_bar("embedding the catalogue", len(items), console) as bar:
        catalogue = Catalogue.from_items(items, encoder, progress=bar)
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task(f"replaying {protocol}", total=len(events))
        return run_replay(settings, events, catalogue, protocol=protocol, encoder=encoder, keep_ranks=keep_ranks,
                          progress=lambda n: bar.advance(task, n), observe_parts=observe_parts)


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"invalid setting {where}: {err['msg']}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main() -> None:
    """Console entry point: no tracebacks for expected errors, exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # one line for the operator; --log-level debug logs the trace
        logging.getLogger("recstream").debug("error", exc_info=True)
        click.echo(f"recstream: error: {_one_line(exc)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
