"""MovieLens-100K from the recbole wheel: counts, parsing, ordering, message shapes."""

import zipfile

import pytest

from stream import movielens
from stream.movielens import DatasetError, Rating, fetch_ml100k, item_message, rating_event


def test_counts_and_ordering(ml100k_dir):
    items = movielens.load_items(ml100k_dir)
    ratings = movielens.load_ratings(ml100k_dir)
    users = movielens.load_users(ml100k_dir)
    assert len(items) == 1682 and len(ratings) == 100_000 and len(users) == 943
    assert len({r.user_id for r in ratings}) == 943
    assert len({r.item_id for r in ratings}) == 1682
    keys = [(r.ts_s, r.user_id, r.item_id) for r in ratings]
    assert keys == sorted(keys)
    assert {r.rating for r in ratings} == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert users[0] == movielens.User("1", 24, "M", "technician", "85711")


def test_titles_years_and_genres(ml100k_dir):
    items = {i.item_id: i for i in movielens.load_items(ml100k_dir)}
    toy = items["1"]
    assert (toy.title, toy.year) == ("Toy Story", "1995")
    assert toy.genres == ["Animation", "Children's", "Comedy"]
    assert items["12"].title == "The Usual Suspects"
    assert items["1412"].year == "1995" and "(1995)" not in items["1412"].title  # year misplaced in source
    assert items["267"].year is None and items["267"].genres == []  # the "unkonwn" row
    assert all(i.title and "\t" not in i.title for i in items.values())
    assert sum(i.year is not None for i in items.values()) >= 1680


def test_kg_links_items_to_entities(ml100k_dir):
    triples, links = movielens.load_kg(ml100k_dir)
    assert len(triples) > 90_000 and len(links) > 1500
    assert set(links) <= {i.item_id for i in movielens.load_items(ml100k_dir)}


def test_messages():
    assert item_message(movielens.MovieItem("1", "Toy Story", "1995", ["Animation"])) == {
        "item_id": "1", "title": "Toy Story", "attributes": {"year": "1995", "genres": ["Animation"]}}
    assert "year" not in item_message(movielens.MovieItem("9", "x", None, []))["attributes"]
    kinds = [rating_event(Rating("7", "9", float(s), 881250949))["kind"] for s in (1, 3, 4, 5)]
    assert kinds == ["view", "view", "click", "purchase"]
    assert rating_event(Rating("7", "9", 5.0, 881250949)) == {
        "user_id": "7", "item_id": "9", "ts": 881250949000, "value": 5.0, "event_id": "ml100k-7-9", "kind": "purchase"}


def test_fetch_from_dir_wheel_and_cache(ml100k_dir, tmp_path):
    assert fetch_ml100k(tmp_path / "unused", ml100k_dir) == ml100k_dir
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in ml100k_dir.iterdir():
            zf.write(f, f"recbole/dataset_example/ml-100k/{f.name}")
        zf.writestr("recbole/__init__.py", "")
    cache = tmp_path / "cache"
    got = fetch_ml100k(cache, wheel)
    assert got == cache / "datasets" / "ml-100k"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in ml100k_dir.iterdir())
    assert fetch_ml100k(cache) == got  # cached: no download
    assert len(movielens.load_items(got)) == 1682


def test_fetch_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetError, match="no ml-100k.inter"):
        fetch_ml100k(tmp_path, tmp_path)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a valid wheel") as info:
        fetch_ml100k(tmp_path / "c", bad)
    assert "\n" not in str(info.value)


def test_item_messages_carry_knowledge_graph_facts(ml100k_dir):
    triples, links = movielens.load_kg(ml100k_dir)
    messages = {m["item_id"]: m for m in movielens.item_messages(ml100k_dir)}
    assert len(messages) == 1682
    toy_story = messages["1"]["facts"]
    directors = [t.tail for t in triples if t.head == links["1"] and t.relation == "film.film.directed_by"]
    assert toy_story["director"] == directors and directors  # John Lasseter's entity
    assert set(toy_story) <= set(movielens.FACT_RELATIONS)
    assert max(len(m.get("facts", {}).get("actor", [])) for m in messages.values()) == movielens.MAX_ACTORS
    assert all("facts" not in m for i, m in messages.items() if i not in links)
    # films share directors: what links a new film to seen ones
    by_director = {}
    for m in messages.values():
        for d in m.get("facts", {}).get("director", []):
            by_director.setdefault(d, []).append(m["item_id"])
    assert max(len(v) for v in by_director.values()) >= 5
