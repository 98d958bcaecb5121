"""Adapt a text encoder to behaviour: a two-tower next-item model over the frozen transformer.

What it learns (the item tower and the user tower the worker and replay then use unchanged):

* item: ``v_i = head(text_i) + r_i + mean_f e_f``: an MLP head on the frozen encoder's text
  vector, plus a residual ``r_i`` for items seen in tuning, plus the mean of learned vectors
  of the item's facts (``relation, entity`` pairs such as its director, shared by at least
  ``tune.fact_min_items`` tuned items). Items never seen in tuning are embedded from their
  text and facts (cold start).
* user: the worker's own profile state. Each horizon ``h`` is the decayed sum
  ``sum_k w_kind(k) 2^(-(t - t_k)/tau_h) v_k`` (half-lives and kind weights learned), and
  ``tune.position_heads`` sums of the most recent items, each with its own learned weights
  by position (the last item, the last few, …), give the short-term, order-aware signal; a
  query MLP maps all their unit vectors to ``q``. Score: ``q · v_i``.

Objective: next-item prediction with a full softmax over the catalogue (seen items masked,
as ranking excludes them), contexts taken strictly before each target. Split: each user's
last event (test) and the one before it (validation) never enter training, as in the
replay's leave-last-out protocol; the validation HR@K picks the best epoch.

Output: a model directory that ``--model`` loads like any export: ``model.onnx`` (encoder,
pooling, normalisation and item head in one graph), ``adapter.npz``, ``tokenizer.json`` and a
manifest naming the base export and the adapter's checksum. Needs torch (the ``export`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from encoders.adapter import ADAPTER_FILE, Adapter, fact_key
from encoders.manifest import EncoderError, file_sha256, read_manifest, verify, write_manifest

__all__ = ["TrainingData", "TuneReport", "build_training_data", "fact_vocabulary", "tune"]

log = logging.getLogger(__name__)

N_KINDS = 3


@dataclass
class TrainingData:
    """Next-item examples as fixed-width context windows (numpy; the torch side wraps them).

    Row ``r`` predicts ``target[r]`` from the events before it: ``ctx_rows`` (catalogue rows,
    -1 = empty, most recent last), ``ctx_age_s`` (seconds before the newest context event)
    and ``ctx_kind``. ``seen[r]`` lists every earlier item of that user (masked in the softmax).
    """

    ctx_rows: np.ndarray
    ctx_age_s: np.ndarray
    ctx_kind: np.ndarray
    target: np.ndarray
    seen: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class TuneReport:
    out_dir: Path
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    train_examples: int = 0
    items_seen: int = 0
    items_held_out: list[str] = field(default_factory=list)
    fact_vocabulary: int = 0
    elapsed_s: float = 0.0


def _user_sequences(events: Sequence[Any], index: dict[str, int], drop_items: set[str]) -> dict[str, list[tuple[int, int, int]]]:
    """(row, ts_ms, kind) per user, in the given (event-time) order; unknown items skipped."""
    seqs: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for e in events:
        row = index.get(e.item_id)
        if row is not None and e.item_id not in drop_items:
            seqs[e.user_id].append((row, e.ts_ms, e.kind))
    return seqs


def build_training_data(
    events: Sequence[Any], index: dict[str, int], context: int, drop_items: set[str] = frozenset()
) -> tuple[TrainingData, TrainingData]:
    """(train, validation) examples; each user's last event is never used at all.

    Users with at least three events give their second-to-last event as validation target
    and their earlier events as training targets; shorter histories are training only.
    ``events`` must be in event-time order (as replay sources return them).
    """
    train, valid = defaultdict(list), defaultdict(list)
    for seq in _user_sequences(events, index, drop_items).values():
        rows = np.array([s[0] for s in seq], np.int64)
        ts = np.array([s[1] for s in seq], np.int64)
        kinds = np.array([s[2] for s in seq], np.int64)
        n = len(seq)
        held = 2 if n >= 3 else 0
        roles = [(t, train) for t in range(n - held)] + ([(n - 2, valid)] if held else [])
        for t, out in roles:
            lo = max(0, t - context)
            width = t - lo
            ctx_rows = np.full(context, -1, np.int64)
            ctx_age = np.zeros(context, np.float32)
            ctx_kind = np.zeros(context, np.int64)
            if width:
                ctx_rows[context - width :] = rows[lo:t]
                ctx_age[context - width :] = (ts[t - 1] - ts[lo:t]) / 1000.0
                ctx_kind[context - width :] = kinds[lo:t]
            out["rows"].append(ctx_rows)
            out["age"].append(ctx_age)
            out["kind"].append(ctx_kind)
            out["target"].append(rows[t])
            out["seen"].append(rows[:t])

    def pack(d: dict[str, list]) -> TrainingData:
        if not d:
            empty = np.zeros((0, context))
            return TrainingData(empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.int64),
                                np.zeros(0, np.int64), [])
        return TrainingData(np.stack(d["rows"]), np.stack(d["age"]), np.stack(d["kind"]), np.array(d["target"]),
                            d["seen"])

    return pack(train), pack(valid)


def fact_vocabulary(item_facts: Sequence[dict[str, list[str]]], trainable: np.ndarray, min_items: int) -> list[str]:
    """Fact keys shared by at least ``min_items`` tuned items, sorted (a fact of one item only
    would be a second residual; one of held-out items only would never be trained)."""
    counts: dict[str, int] = defaultdict(int)
    for row in np.flatnonzero(trainable):
        for key in {fact_key(r, e) for r, entities in item_facts[row].items() for e in entities}:
            counts[key] += 1
    return sorted(k for k, c in counts.items() if c >= min_items)


def _fact_bags(item_facts: Sequence[dict[str, list[str]]], vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """EmbeddingBag input over the whole catalogue: flat vocabulary rows and per-item offsets."""
    index = {k: n for n, k in enumerate(vocabulary)}
    flat, offsets = [], []
    for facts in item_facts:
        offsets.append(len(flat))
        flat.extend(r for relation, entities in facts.items() for e in entities if (r := index.get(fact_key(relation, e))) is not None)
    return np.array(flat, np.int64), np.array(offsets, np.int64)


def _model(torch, text: np.ndarray, trainable_items: np.ndarray, cfg: Any,
           bags: tuple[np.ndarray, np.ndarray] | None = None, n_facts: int = 0):
    """The two towers as one torch module (built lazily: importing this file needs no torch)."""
    nn = torch.nn
    n_items, width = text.shape
    horizons = list(cfg.half_lives_s)

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("text", torch.tensor(text, dtype=torch.float32))
            self.register_buffer("trainable", torch.tensor(trainable_items, dtype=torch.float32)[:, None])
            self.head = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.hidden, cfg.dim))
            self.skip = nn.Linear(width, cfg.dim, bias=False)
            self.residuals = nn.Parameter(torch.zeros(n_items, cfg.dim))
            self.facts = None
            if n_facts:
                self.facts = nn.EmbeddingBag(n_facts, cfg.dim, mode="mean")
                nn.init.zeros_(self.facts.weight)  # untrained facts change nothing
                self.register_buffer("fact_flat", torch.from_numpy(bags[0]))
                self.register_buffer("fact_offsets", torch.from_numpy(bags[1]))
            self.log_half_lives = nn.Parameter(torch.log(torch.tensor([cfg.half_lives_s[h] for h in horizons])))
            self.log_kind_weights = nn.Parameter(torch.zeros(N_KINDS))
            self.log_positions = nn.Parameter(_initial_log_positions(torch, cfg.position_heads, max(cfg.positions, 1)))
            features = (len(horizons) + cfg.position_heads) * cfg.dim
            self.query_mlp = nn.Sequential(nn.Linear(features, cfg.hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.hidden, cfg.dim))
            self.query_skip = nn.Linear(features, cfg.dim, bias=False)

        def text_vectors(self, text):
            return self.head(text) + self.skip(text)

        def items(self):
            keep = self.trainable
            if self.training and cfg.residual_dropout > 0:
                # drop some items' residuals each step (DropoutNet): the text head must then
                # stand on its own, which is all an item never seen in tuning has
                keep = keep * (torch.rand_like(keep) >= cfg.residual_dropout)
            vectors = self.text_vectors(self.text) + self.residuals * keep
            if self.facts is not None:  # an item without known facts gets an empty bag: zeros
                vectors = vectors + self.facts(self.fact_flat, self.fact_offsets)
            return vectors

        def query(self, items, rows, age_s, kind):
            present = (rows >= 0).to(items.dtype)
            w_kind = torch.exp(self.log_kind_weights)[kind] * present
            weights = [torch.exp2(-age_s / torch.exp(self.log_half_lives[h])) * w_kind for h in range(len(horizons))]
            context, heads = rows.shape[1], cfg.position_heads
            p = min(cfg.positions, context)
            pos = torch.zeros(heads, context, dtype=items.dtype)
            if p:  # contexts hold the most recent item last; the weights are most recent first
                pos = torch.cat([torch.zeros(heads, context - p), torch.exp(self.log_positions[:, :p]).flip(1)], dim=1)
            weights = torch.cat([torch.stack(weights, dim=1), pos[None] * present[:, None, :]], dim=1)  # (B, H+M, C)
            pooled = _weighted_sums(torch, items, rows.clamp(min=0), weights)
            h = nn.functional.normalize(pooled, dim=-1).flatten(1)
            return self.query_mlp(h) + self.query_skip(h)

    return TwoTower()


def _weighted_sums(torch, items, rows, weights):
    """(B, K, D) ``sum_c weights[b, k, c] · items[rows[b, c]]``: the context summaries.

    One batched product over an embedding lookup: autograd then scatters the gathered rows'
    gradients back with ``embedding``'s backward, about twice as fast on CPU as indexing
    (``items[rows]``), whose backward accumulates one row at a time.
    """
    return torch.bmm(weights, torch.nn.functional.embedding(rows, items))


def _initial_log_positions(torch, heads: int, positions: int):
    """(heads, positions) starting log weights: head ``m`` of ``M`` halves every ``4^m``
    positions and the last head is flat, so the heads start as the last item, the last few,
    the last dozens… and one head is the plain mean of the recent items."""
    p = torch.arange(positions, dtype=torch.float32)
    rows = [-p * math.log(2.0) / 4.0**m for m in range(heads - 1)] + [torch.zeros(positions)]
    return torch.stack(rows)


def _logits(torch, model, items, data: TrainingData, sel: np.ndarray, unknown=None):
    q = model.query(items, torch.from_numpy(data.ctx_rows[sel]), torch.from_numpy(data.ctx_age_s[sel]),
                    torch.from_numpy(data.ctx_kind[sel]))
    logits = q @ items.T
    if unknown is not None:  # items absent from tuning are no negatives either (see tune)
        logits[:, unknown] = float("-inf")
    seen = [data.seen[i] for i in sel]
    rows = np.repeat(np.arange(len(sel)), [len(s) for s in seen])
    if len(rows):
        logits[torch.from_numpy(rows), torch.from_numpy(np.concatenate(seen))] = float("-inf")
    return logits, torch.from_numpy(data.target[sel])


def _evaluate(torch, model, data: TrainingData, k: int) -> dict[str, float]:
    if len(data) == 0:
        return {"hr": 0.0, "ndcg": 0.0}
    hits = ndcg = 0.0
    with torch.no_grad():
        items = model.items()
        for start in range(0, len(data), 1024):
            sel = np.arange(start, min(start + 1024, len(data)))
            logits, target = _logits(torch, model, items, data, sel)
            rank = (logits > logits[torch.arange(len(sel)), target][:, None]).sum(dim=1)
            hit = rank < k
            hits += float(hit.sum())
            ndcg += float((hit / torch.log2(rank.to(torch.float32) + 2)).sum())
    return {"hr": hits / len(data), "ndcg": ndcg / len(data)}


def tune(
    events: Sequence[Any],
    item_ids: list[str],
    text_vectors: np.ndarray,
    base_dir: Path,
    out_dir: Path,
    settings: Any,
    k: int = 10,
    progress: Callable[[dict[str, float]], None] | None = None,
    item_facts: Sequence[dict[str, list[str]]] | None = None,
) -> TuneReport:
    """Train on ``events`` and write a tuned model directory to ``out_dir``.

    :param item_ids: catalogue item ids, row-aligned with ``text_vectors``.
    :param text_vectors: (N, E) the base encoder's vectors of the items' texts.
    :param base_dir: the base encoder's fp32 export (its graph gets the item head appended).
    :param settings: :class:`stream.config.TuneSettings`.
    :param item_facts: each item's facts (``relation → entity ids``), row-aligned; used when
        ``settings.facts``.
    """
    import torch

    started = time.monotonic()
    cfg = settings
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    index = {item_id: row for row, item_id in enumerate(item_ids)}
    n_held = int(round(cfg.holdout_items * len(item_ids)))
    held_out = sorted(rng.choice(np.array(item_ids, dtype=object), size=n_held, replace=False).tolist()) if n_held else []
    train, valid = build_training_data(events, index, cfg.context, set(held_out))
    if len(train) == 0:
        raise EncoderError("no training examples: the events name no catalogue item")
    trainable = np.zeros(len(item_ids), bool)
    trainable[np.unique(train.target)] = True
    trainable[np.unique(train.ctx_rows[train.ctx_rows >= 0])] = True
    report = TuneReport(Path(out_dir), train_examples=len(train), items_seen=int(trainable.sum()), items_held_out=held_out)

    # An item that never occurs in the tuning data would only ever be a negative: the shared
    # text head would learn to push exactly those texts down, and a new item would start
    # buried. Leave them out of the softmax, as if the catalogue did not have them yet.
    unknown = torch.from_numpy(np.flatnonzero(~trainable)) if not trainable.all() else None
    vocabulary = fact_vocabulary(item_facts, trainable, cfg.fact_min_items) if cfg.facts and item_facts is not None else []
    report.fact_vocabulary = len(vocabulary)
    bags = _fact_bags(item_facts, vocabulary) if vocabulary else None
    model = _model(torch, np.asarray(text_vectors, np.float32), trainable, cfg, bags, len(vocabulary))
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_hr = None, -1.0
    deadline = started + cfg.max_minutes * 60
    schedule = _lr_schedule(cfg, time.monotonic(), deadline, cfg.epochs * -(-len(train) // cfg.batch_size))
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train))
        total, examples = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            logits, target = _logits(torch, model, model.items(), train, sel, unknown)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimiser.zero_grad()
            loss.backward()
            for group in optimiser.param_groups:
                group["lr"] = schedule(step)
            optimiser.step()
            step += 1
            total += loss.item() * len(sel)
            examples += len(sel)
            if time.monotonic() > deadline:
                break
        model.eval()
        scores = _evaluate(torch, model, valid, k)  # every catalogue item competes, as when serving
        row = {"epoch": epoch, "loss": total / max(examples, 1), "valid_hr": scores["hr"], "valid_ndcg": scores["ndcg"],
               "elapsed_s": time.monotonic() - started}
        report.epochs.append(row)
        if progress is not None:
            progress(row)
        log.info("tune epoch %d: loss %.3f, validation HR@%d %.4f NDCG %.4f", epoch, row["loss"], k, scores["hr"], scores["ndcg"])
        if scores["hr"] > best_hr:
            best_hr, report.best_epoch = scores["hr"], epoch
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        if time.monotonic() > deadline:
            log.info("tune: time budget of %.1f min reached after epoch %d", cfg.max_minutes, epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    _write_model(torch, model, item_ids, trainable, cfg, Path(base_dir), Path(out_dir), vocabulary)
    report.elapsed_s = time.monotonic() - started
    (Path(out_dir) / "tuning.json").write_text(json.dumps({  # how it was made, for whoever deploys it
        "settings": cfg.model_dump(), "epochs": report.epochs, "best_epoch": report.best_epoch,
        "train_examples": report.train_examples, "items_seen": report.items_seen,
        "items_held_out": report.items_held_out, "fact_vocabulary": report.fact_vocabulary,
        "elapsed_s": round(report.elapsed_s, 1),
        "newest_event_ms": max(e.ts_ms for e in events),  # evaluations after this are out of sample
    }, indent=2))
    return report


def _lr_schedule(cfg: Any, train_start: float, deadline: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate at a step: ``cfg.lr`` throughout, or a cosine from ``cfg.lr`` to 0
    over the run's progress, the larger of its share of the steps and of the time budget."""
    if cfg.lr_schedule == "constant":
        return lambda step: cfg.lr

    def cosine(step: int) -> float:
        progress = max(step / max(total_steps, 1), (time.monotonic() - train_start) / max(deadline - train_start, 1e-9))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return cosine


def _adapter(model, item_ids: list[str], trainable: np.ndarray, cfg: Any, vocabulary: list[str]) -> Adapter:
    sd = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    rows = np.flatnonzero(trainable)
    facts = {}
    if vocabulary:
        facts = {"fact_keys": np.array(vocabulary, dtype=str), "fact_vectors": sd["facts.weight"].astype(np.float32)}
    return Adapter(
        item_ids=np.array([item_ids[r] for r in rows], dtype=str),
        residuals=sd["residuals"][rows].astype(np.float32),
        horizons=np.array(list(cfg.half_lives_s), dtype=str),
        half_lives_s=np.exp(sd["log_half_lives"]).astype(np.float64),
        kind_weights=np.exp(sd["log_kind_weights"]).astype(np.float64),
        positions=np.exp(sd["log_positions"][:, : cfg.positions]).astype(np.float32),
        q_w1=sd["query_mlp.0.weight"].T.copy(), q_b1=sd["query_mlp.0.bias"].copy(),
        q_w2=sd["query_mlp.2.weight"].T.copy(), q_b2=sd["query_mlp.2.bias"].copy(),
        q_skip=sd["query_skip.weight"].T.copy(), **facts,
    )


def _write_model(torch, model, item_ids, trainable, cfg, base_dir: Path, out_dir: Path, vocabulary: list[str]) -> None:
    """model.onnx = base graph + item head; adapter.npz; manifest. Atomic (temp dir, rename)."""
    import onnx
    from onnx import compose

    base = verify(base_dir, "fp32")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        head_path = tmp / "head.onnx"

        class Head(torch.nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, text):
                return self.inner.text_vectors(text)

        sample = torch.randn(2, model.text.shape[1])
        with torch.no_grad():
            torch.onnx.export(Head(model).eval(), (sample,), str(head_path), input_names=["text"], output_names=["embeddings"],
                              dynamic_shapes={"text": {0: torch.export.Dim("batch")}}, dynamo=True,
                              external_data=False, opset_version=18, verbose=False)
        base_graph = onnx.load(str(base_dir / "model.onnx"))
        head_graph = onnx.load(str(head_path))
        head_graph = compose.add_prefix(head_graph, "head/")
        base_graph = compose.add_prefix(base_graph, "base/", rename_inputs=False)
        head_graph.ir_version = base_graph.ir_version
        merged = compose.merge_models(base_graph, head_graph, io_map=[("base/embeddings", "head/text")],
                                      outputs=["head/embeddings"])
        _rename_output(merged, "head/embeddings", "embeddings")
        onnx.checker.check_model(merged)
        onnx.save(merged, str(tmp / "model.onnx"))
        head_path.unlink()
        shutil.copyfile(base_dir / base.tokenizer, tmp / base.tokenizer)
        _adapter(model, item_ids, trainable, cfg, vocabulary).save(tmp)
        manifest = replace(
            base, variant="fp32", dim=int(cfg.dim), onnx_sha256=file_sha256(tmp / "model.onnx"), source_stat="",
            adapter=ADAPTER_FILE, adapter_sha256=file_sha256(tmp / ADAPTER_FILE), base_onnx_sha256=base.onnx_sha256,
        )
        write_manifest(tmp, manifest)
        _check_head_parity(torch, model, base_dir, tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_output(model, old: str, new: str) -> None:
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    for out in model.graph.output:
        if out.name == old:
            out.name = new


def _check_head_parity(torch, model, base_dir: Path, tuned_dir: Path) -> None:
    """The merged graph must give torch's head(base vector) (cosine >= 0.9999)."""
    from encoders.runtime import OnnxTextEncoder

    texts = ["Toy Story (1995). Genres: Animation, Children's, Comedy", "", "Ein kurzer deutscher Satz.", "東京の映画"]
    base = OnnxTextEncoder(base_dir, provider="cpu").encode(texts)
    tuned = OnnxTextEncoder(tuned_dir, provider="cpu", normalise=False).encode(texts)
    with torch.no_grad():
        want = model.text_vectors(torch.from_numpy(base)).numpy()
    cosine = (tuned * want).sum(1) / np.maximum(np.linalg.norm(tuned, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    if float(cosine.min()) < 0.9999 or not np.allclose(tuned, want, rtol=1e-3, atol=1e-4):
        raise EncoderError(f"tuned graph disagrees with torch (min cosine {cosine.min():.6f})")
