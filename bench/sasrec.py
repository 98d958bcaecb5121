"""SASRec (RecBole 1.2.1, its default settings) on recstream's ml-100k leave-last-out split.

Runs in its own virtualenv with ``recbole==1.2.1`` (not a recstream dependency; see
BENCHMARKS.md "SASRec (RecBole 1.2.1) on our split" for how to build it)::

    python bench/sasrec.py --out /work/sasrec-run              # export, check split, train, test
    python bench/sasrec.py --out /work/sasrec-run --evaluate   # test the best checkpoint so far
    python bench/sasrec.py --out /work/sasrec-run --resume     # go on exactly where it stopped

After every epoch the run writes ``OUT/latest.pth``: weights, Adam state, early-stopping
counters, the best epoch's checkpoint and every random state (torch's, which also seeds
inductor's dropout, and the shuffling generator of the training loader). Resuming from it
continues the very same run, so hours of CPU training can be spread over machines that do not
outlive a session: copy that one file into the next machine's ``OUT``.

The events are exported in exactly the order ``recstream replay --dataset ml-100k`` replays
them (``stream.movielens.load_ratings``: event time, then user and item id as strings). The
exported timestamp is the event's position in that order: RecBole keeps float fields as
float32, whose spacing at ml-100k's epoch seconds (~8.8e8) is 64 s, so real timestamps would
reorder events within a minute; positions (< 2**24) are exact and give the same order.

Test figures are reported twice: RecBole's own (a sequential model's full ranking in RecBole
does not exclude the user's earlier items) and recstream's protocol (seen items excluded,
ties counted at half, ``stream.metrics``), which is the one comparable with BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script: bench/ first on sys.path would shadow the stdlib's ``profile``
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from stream import movielens  # noqa: E402  (stdlib + numpy only: importable from the RecBole venv)
from stream.metrics import metrics_from_ranks, rank_of_targets  # noqa: E402

__all__ = ["config_dict", "export", "main"]

DATASET = "ml-100k-recstream"
K = 10


def _shims() -> None:
    """RecBole 1.2.1 predates numpy 2 and torch's ``weights_only=True`` default (torch 2.6).

    Its ``Config.compatibility_settings`` re-creates ``np.float``/``np.int``/… from
    ``np.float_``/``np.complex_``/``np.unicode_``, which numpy 2 removed: give those back.
    """
    import torch

    for name, alias in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if name not in np.__dict__:
            setattr(np, name, alias)
    load = torch.load

    def trusted_load(*args, **kwargs):  # our own checkpoints: they pickle RecBole's Config
        kwargs.setdefault("weights_only", False)
        return load(*args, **kwargs)

    torch.load = trusted_load


def export(cache_dir: Path, data_dir: Path) -> list[movielens.Rating]:
    """Write ``<data_dir>/<DATASET>/<DATASET>.inter`` in replay order; return that order."""
    ratings = movielens.load_ratings(movielens.fetch_ml100k(cache_dir))
    target = data_dir / DATASET
    target.mkdir(parents=True, exist_ok=True)
    with open(target / f"{DATASET}.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for position, r in enumerate(ratings):
            f.write(f"{r.user_id}\t{r.item_id}\t{position}\n")
    return ratings


def config_dict(data_dir: Path, out: Path, epochs: int | None, gpu: bool = False) -> dict:
    """RecBole defaults except what this split and CPU need (each delta said in BENCHMARKS.md)."""
    cfg = {
        "data_path": str(data_dir),
        "checkpoint_dir": str(out / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},  # default loads no timestamp
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["Hit", "NDCG"],
        "topk": [K],
        "valid_metric": "NDCG@10",
        "train_neg_sample_args": None,  # required by loss_type CE (SASRec's default)
        "use_gpu": gpu,
        "show_progress": False,
        "seed": 2020,
        "reproducibility": True,
    }
    if epochs is not None:
        cfg["epochs"] = epochs
    return cfg


def _user_sequences(ratings: list[movielens.Rating]) -> dict[str, list[str]]:
    seqs: dict[str, list[str]] = defaultdict(list)
    for r in ratings:
        seqs[r.user_id].append(r.item_id)
    return seqs


def check_split(dataset, valid_data, test_data, seqs: dict[str, list[str]], max_len: int) -> dict:
    """RecBole's valid/test rows are exactly our leave-last-out targets and histories."""
    uid, iid = dataset.uid_field, dataset.iid_field
    list_field, len_field = iid + dataset.config["LIST_SUFFIX"], dataset.config["ITEM_LIST_LENGTH_FIELD"]
    assert dataset.item_num - 1 == 1682, dataset.item_num  # 1,682 items + RecBole's padding id 0
    out = {}
    for name, data, back in (("valid", valid_data, 2), ("test", test_data, 1)):
        inter = data._dataset.inter_feat
        users = dataset.id2token(uid, inter[uid].numpy())
        targets = dataset.id2token(iid, inter[iid].numpy())
        lists, lengths = inter[list_field].numpy(), inter[len_field].numpy()
        assert len(users) == len(set(users)) == len(seqs) == 943, (name, len(users))
        for u, t, row, n in zip(users, targets, lists, lengths):
            ours = seqs[u]
            assert t == ours[-back], (name, u, t, ours[-back])
            history = list(dataset.id2token(iid, row[:n]))
            assert history == ours[:-back][-max_len:], (name, u)
        out[name] = len(users)
    return out


def evaluate_ours(model, data, seqs: dict[str, list[str]]) -> dict:
    """HR/NDCG@10 with recstream's protocol: every earlier item of the user excluded."""
    import torch

    dataset = data._dataset
    uid, iid = dataset.uid_field, dataset.iid_field
    ranks = []
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for interaction, _, _, _ in data:
            scores = model.full_sort_predict(interaction.to(device)).view(len(interaction), -1).double().cpu().numpy()
            scores[:, 0] = -np.inf  # padding id
            users = dataset.id2token(uid, interaction[uid].numpy())
            targets = interaction[iid].numpy()
            for row, (u, t) in enumerate(zip(users, dataset.id2token(iid, targets))):
                seq = seqs[u]
                seen = seq[: seq.index(t)]
                if seen:
                    scores[row, dataset.token2id(iid, seen)] = -np.inf
            ranks.extend(rank_of_targets(scores, targets))
    m = metrics_from_ranks(np.asarray(ranks), K)
    return {"n": len(ranks), "hr@10": round(m["hr"], 4), "ndcg@10": round(m["ndcg"], 4), "mrr": round(m["mrr"], 4)}


def save_state(path: Path, trainer, train_data, epoch: int, valid_curve: list[float]) -> None:
    """Everything ``restore_state`` needs to continue this run bit for bit, written atomically."""
    import random

    import torch

    best = torch.load(trainer.saved_model_file, map_location="cpu")
    best.pop("optimizer", None)  # the best epoch is kept for testing, not for training on
    state = {
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": trainer.best_valid_score,
        "best_valid_result": dict(trainer.best_valid_result),
        "valid_curve": list(valid_curve),
        "state_dict": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "best": best,
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": train_data.generator.get_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial, pickle_protocol=4)
    os.replace(partial, path)


def restore_state(path: Path, trainer, train_data) -> list[float]:
    """Put the trainer, its best checkpoint and the random states back as ``save_state`` left them."""
    import random

    import torch

    state = torch.load(path, map_location="cpu")
    trainer.model.load_state_dict(state["state_dict"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    best = dict(state["best"], optimizer=state["optimizer"])  # RecBole's checkpoint format
    torch.save(best, trainer.saved_model_file, pickle_protocol=4)
    torch.set_rng_state(state["rng"]["torch"])
    train_data.generator.set_state(state["rng"]["loader"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return list(state["valid_curve"])


def _checkpoint(out: Path, name: str) -> str:
    if name != "latest":
        return name
    saved = list((out / "saved").glob("*.pth"))
    if not saved:
        raise SystemExit(f"error: no checkpoint under {out / 'saved'}")
    return str(max(saved, key=lambda p: p.stat().st_mtime))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run directory: data, checkpoints, RecBole logs, result.json")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "recstream", help="where ml-100k is cached")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, help="override RecBole's default (300, early stopping after 10)")
    parser.add_argument("--gpu", action="store_true", help="train on CUDA (a run resumed there goes on with the "
                                                           "GPU's random numbers, so no longer bit for bit)")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile (same model and settings; about 2.5x faster on CPU, "
                             "dropout masks from inductor's RNG, so not bit-identical to an eager run)")
    parser.add_argument("--evaluate", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="only evaluate a checkpoint (default: the newest under OUT/saved) on valid and test")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="go on training: by default exactly where the run stopped (OUT/latest.pth); given a "
                             "RecBole checkpoint, from its epoch, weights, optimizer state and best valid score")
    args = parser.parse_args()

    _shims()
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # RecBole writes ./log and ./log_tensorboard
    ratings = export(args.cache_dir, out / "data")
    seqs = _user_sequences(ratings)

    config = Config(model="SASRec", dataset=DATASET, config_dict=config_dict(out / "data", out, args.epochs, args.gpu))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    split = check_split(dataset, valid_data, test_data, seqs, config["MAX_ITEM_LIST_LENGTH"])
    logger.info(f"split check: RecBole's valid/test rows equal recstream's leave-last-out targets and histories {split}")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    if args.compile:  # the trainer calls model.calculate_loss: compile that, the module (and checkpoints) stay as they are
        model.calculate_loss = torch.compile(model.calculate_loss)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result: dict = {"split": split, "compiled": args.compile}
    started = time.perf_counter()
    if args.evaluate:
        ckpt = _checkpoint(out, args.evaluate)
        state = torch.load(ckpt, map_location="cpu")
        result.update(checkpoint=ckpt, epoch=state["epoch"], best_valid_score=state["best_valid_score"])
        test_recbole = trainer.evaluate(test_data, load_best_model=True, model_file=ckpt, show_progress=False)
        name = "result-evaluate.json"
    else:
        latest = out / "latest.pth"
        valid_curve: list[float] = []
        if args.resume == "latest" and latest.exists():
            valid_curve = restore_state(latest, trainer, train_data)
            logger.info(f"resumed exactly from {latest} at epoch {trainer.start_epoch}")
        elif args.resume:
            trainer.resume_checkpoint(_checkpoint(out, args.resume))
            logger.info(f"resumed from {trainer.saved_model_file} at epoch {trainer.start_epoch}")

        def after_epoch(epoch: int, valid_score: float) -> None:
            valid_curve.append(valid_score)
            save_state(latest, trainer, train_data, epoch, valid_curve)

        best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                             callback_fn=after_epoch)
        result["valid_curve"] = valid_curve
        result.update(best_valid_score=best_score, best_valid_recbole=dict(best_valid),
                      checkpoint=trainer.saved_model_file, train_s=round(time.perf_counter() - started, 1))
        test_recbole = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        name = "result.json"
    result["test_recbole_seen_included"] = dict(test_recbole)
    result["valid_ours"] = evaluate_ours(trainer.model, valid_data, seqs)
    result["test_ours"] = evaluate_ours(trainer.model, test_data, seqs)
    logger.info(f"result: {json.dumps(result)}")
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
