"""The behavioural adaptation a tuned model carries beside its ONNX graph: pure numpy.

``recstream encoders tune`` learns, on interaction histories, what a text encoder alone
cannot know (what people who watch one film also watch). Its parts:

* inside ``model.onnx``: an item head on the frozen transformer (text → adapted vector), so
  any item, also one never seen in tuning, is embedded from its text;
* here, in ``adapter.npz`` (numpy arrays only, loaded with ``allow_pickle=False``):

  - ``residuals``: a per-item correction for items seen in tuning, added to the text vector;
  - ``fact_keys`` / ``fact_vectors`` (optional): a vector per ``relation\tentity`` pair shared
    by tuned items; an item's vector gets the mean of its known pairs' vectors added, so an
    item never seen in tuning is placed near the seen items it shares a director or cast with;
  - ``half_lives_s`` / ``kind_weights``: the profile horizons and event weights it was
    trained with (they replace the configured ones: the vectors only make sense with them);
  - ``positions``: one or more rows of weights of the user's most recent items by position
    (most recent first), the short-term signal that event time cannot give when a session's
    events share a second; several rows let the query tell the last item from the last
    few and the last fifty (an order-aware summary that is still just weighted sums);
  - a query MLP: ``q = W2·gelu(W1·h + b1) + b2 + S·h`` over ``h`` = the unit horizon vectors
    and the unit position-weighted recent vectors, concatenated.

Scores are ``q · v_item``, so one matrix product ranks the catalogue, as for untuned models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from encoders.manifest import EncoderError

__all__ = ["ADAPTER_FILE", "Adapter", "fact_key", "gelu"]

ADAPTER_FILE = "adapter.npz"
_ARRAYS = ("item_ids", "residuals", "horizons", "half_lives_s", "kind_weights", "positions",
           "q_w1", "q_b1", "q_w2", "q_b2", "q_skip")
_OPTIONAL = ("fact_keys", "fact_vectors")  # adapters tuned without facts lack them


def fact_key(relation: str, entity: str) -> str:
    """The vocabulary key of one fact (tabs are no part of relation names or entity ids here)."""
    return f"{relation}\t{entity}"


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float32), where=norms > 0)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: the form the tuner trains with (torch ``approximate='tanh'``)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclass(frozen=True)
class Adapter:
    """A tuned model's numpy side; see the module docstring for what each array means."""

    item_ids: np.ndarray  # (n,) str
    residuals: np.ndarray  # (n, D) float32
    horizons: np.ndarray  # (H,) str
    half_lives_s: np.ndarray  # (H,) float64
    kind_weights: np.ndarray  # (3,) float64, in EVENT_KINDS order
    positions: np.ndarray  # (M, P) float32, most recent first (adapters before heads: (P,))
    q_w1: np.ndarray  # ((H+M)·D, hidden)
    q_b1: np.ndarray  # (hidden,)
    q_w2: np.ndarray  # (hidden, D)
    q_b2: np.ndarray  # (D,)
    q_skip: np.ndarray  # ((H+M)·D, D)
    fact_keys: np.ndarray | None = None  # (V,) str, "relation\tentity"
    fact_vectors: np.ndarray | None = None  # (V, D) float32

    def __post_init__(self) -> None:
        if self.positions.ndim == 1:  # tuned before position heads: one row
            object.__setattr__(self, "positions", self.positions[None, :])

    @property
    def dim(self) -> int:
        return int(self.q_b2.shape[0])

    @property
    def recent_items(self) -> int:
        """How many of the user's most recent items the query reads."""
        return int(self.positions.shape[1])

    def residual_rows(self) -> dict[str, int]:
        return {str(i): n for n, i in enumerate(self.item_ids)}

    @cached_property
    def fact_rows(self) -> dict[str, int]:
        return {str(k): n for n, k in enumerate(self.fact_keys)} if self.fact_keys is not None else {}

    def fact_part(self, facts: dict[str, list[str]]) -> np.ndarray | None:
        """Mean vector of the item's known facts (None when it has none): the tuner's EmbeddingBag."""
        index = self.fact_rows
        rows = [r for relation, entities in facts.items() for e in entities if (r := index.get(fact_key(relation, e))) is not None]
        return self.fact_vectors[rows].mean(axis=0, dtype=np.float32) if rows else None

    def adapt_items(self, item_ids: list[str], text_vectors: np.ndarray,
                    facts: Sequence[dict[str, list[str]]] | None = None) -> np.ndarray:
        """Item vectors: the adapted text vector, plus the item's residual when it has one, plus
        the mean of its known facts' vectors (``facts`` row-aligned with ``item_ids``)."""
        rows = self.residual_rows()
        out = np.array(text_vectors, np.float32, copy=True)
        for n, item_id in enumerate(item_ids):
            row = rows.get(item_id)
            if row is not None:
                out[n] += self.residuals[row]
            if facts is not None and self.fact_rows and facts[n]:
                part = self.fact_part(facts[n])
                if part is not None:
                    out[n] += part
        return out

    def query(self, profile_vectors: np.ndarray, recent_vectors: np.ndarray, recent_mask: np.ndarray) -> np.ndarray:
        """(U, D) query vectors.

        :param profile_vectors: (U, H, D) decayed sums (any reference time: they are normalised).
        :param recent_vectors: (U, P', D) the user's most recent item vectors, most recent first.
        :param recent_mask: (U, P') True where a recent slot holds an item.
        """
        n_users, heads = profile_vectors.shape[0], self.positions.shape[0]
        p = min(recent_vectors.shape[1], self.recent_items)
        if p:
            weights = self.positions[None, :, :p] * recent_mask[:, None, :p]  # (U, M, p)
            recent = np.einsum("ump,upd->umd", weights, recent_vectors[:, :p])
        else:
            recent = np.zeros((n_users, heads, self.dim), np.float32)
        h = np.concatenate([_unit(profile_vectors).reshape(n_users, -1), _unit(recent).reshape(n_users, -1)], axis=1)
        q = gelu(h @ self.q_w1 + self.q_b1) @ self.q_w2 + self.q_b2 + h @ self.q_skip
        return q.astype(np.float32)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / ADAPTER_FILE
        optional = {name: getattr(self, name) for name in _OPTIONAL if getattr(self, name) is not None}
        np.savez(path, **{name: getattr(self, name) for name in _ARRAYS}, **optional)
        return path

    @classmethod
    def load(cls, directory: Path) -> "Adapter":
        path = Path(directory) / ADAPTER_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in _ARRAYS}
                arrays.update({name: data[name] for name in _OPTIONAL if name in data.files})
        except (OSError, KeyError, ValueError) as exc:
            raise EncoderError(f"{path}: unreadable adapter ({exc})") from None
        adapter = cls(**arrays)
        d, h, m = adapter.dim, len(adapter.horizons), adapter.positions.shape[0]
        if adapter.residuals.shape[1:] != (d,) or adapter.q_skip.shape != ((h + m) * d, d) or len(adapter.half_lives_s) != h:
            raise EncoderError(f"{path}: inconsistent adapter shapes")
        if (adapter.fact_keys is None) != (adapter.fact_vectors is None) or (
                adapter.fact_keys is not None and adapter.fact_vectors.shape != (len(adapter.fact_keys), d)):
            raise EncoderError(f"{path}: inconsistent adapter fact shapes")
        return adapter
