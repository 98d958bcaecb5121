"""A synthetic shop catalogue with sentence-like item text, for benchmarks at scale.

ml-100k has 1,682 items; a shop or a news site has 10^5 and more. ``synthetic_items(n)``
makes ``n`` product messages (title, description, category, brand) from word pools, so
every text is different, 20-40 tokens long and reads like a product listing, and the
encoder sees real sentence work (the figures would be flattered by repeated or random
token texts). Popularity follows a Zipf law over a shuffled order, as item traffic does.
Deterministic for a seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["synthetic_items"]

CATEGORIES = {
    "Outdoor": ["jacket", "tent", "backpack", "sleeping bag", "trail shoe", "headlamp", "water filter", "trekking pole"],
    "Kitchen": ["chef's knife", "frying pan", "coffee grinder", "stand mixer", "cutting board", "kettle", "dutch oven"],
    "Home": ["table lamp", "throw blanket", "bookshelf", "desk chair", "rug", "wall clock", "storage basket"],
    "Electronics": ["wireless earbuds", "power bank", "mechanical keyboard", "webcam", "smart speaker", "e-reader"],
    "Fashion": ["wool sweater", "denim jacket", "leather belt", "sneaker", "rain coat", "linen shirt", "scarf"],
    "Toys": ["building set", "puzzle", "plush bear", "board game", "remote control car", "craft kit"],
    "Sports": ["yoga mat", "running shoe", "kettlebell", "tennis racket", "cycling helmet", "swim goggles"],
    "Beauty": ["face serum", "hair dryer", "moisturiser", "electric toothbrush", "sunscreen", "shaving kit"],
    "Garden": ["pruning shears", "garden hose", "raised bed", "bird feeder", "watering can", "compost bin"],
    "Books": ["cookbook", "travel guide", "crime novel", "field guide", "picture book", "history of science"],
}
ADJECTIVES = [
    "lightweight", "waterproof", "compact", "durable", "foldable", "classic", "ergonomic", "quiet", "rechargeable",
    "handmade", "organic", "insulated", "breathable", "adjustable", "minimalist", "heavy-duty", "portable", "vintage",
    "stainless", "cordless", "recycled", "slim", "oversized", "non-stick", "soft", "rugged", "modular", "premium",
]
MATERIALS = ["cotton", "merino wool", "bamboo", "aluminium", "oak", "ceramic", "recycled polyester", "cast iron",
             "silicone", "leather", "glass", "carbon fibre", "linen", "walnut", "nylon"]
COLOURS = ["black", "navy", "forest green", "sand", "charcoal", "red", "white", "sky blue", "olive", "mustard"]
AUDIENCES = ["for beginners", "for families", "for travel", "for small spaces", "for everyday use", "for kids",
             "for professionals", "for cold weather", "for long trips", "as a gift"]
FEATURES = [
    "with a two-year warranty", "that packs down small", "with an easy-clean finish", "with a magnetic closure",
    "that charges over USB-C", "with reinforced seams", "that fits in a carry-on", "with a lifetime guarantee",
    "with replaceable parts", "that works without tools", "with a non-slip base", "with a quiet motor",
    "made from sustainable sources", "with room for a laptop", "that stacks for storage", "rated for heavy use",
]
BRAND_SYLLABLES = ["nor", "vik", "ala", "sol", "tre", "ka", "lum", "oro", "fen", "dal", "mi", "ro", "sen", "tek", "wa"]


def _brands(rng: np.random.Generator, n: int = 400) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(BRAND_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize())
    return sorted(names)


def synthetic_items(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` item messages (ids ``p000000``…) and their popularity weights (Zipf, s = 0.9)."""
    rng = np.random.default_rng(seed)
    brands = _brands(rng)
    categories = list(CATEGORIES)
    items = []
    for i in range(n):
        category = categories[int(rng.integers(len(categories)))]
        noun = CATEGORIES[category][int(rng.integers(len(CATEGORIES[category])))]
        adjective, other = rng.choice(ADJECTIVES, size=2, replace=False)
        brand = brands[int(rng.integers(len(brands)))]
        material, colour = MATERIALS[int(rng.integers(len(MATERIALS)))], COLOURS[int(rng.integers(len(COLOURS)))]
        audience, feature = AUDIENCES[int(rng.integers(len(AUDIENCES)))], FEATURES[int(rng.integers(len(FEATURES)))]
        model = f"{rng.choice(list('ABCDEFGHKLMPRSTVX'))}{int(rng.integers(10, 999))}"
        items.append({
            "item_id": f"p{i:06d}",
            "title": f"{brand} {adjective} {noun} {model}",
            "description": f"{'An' if other[0] in 'aeiou' else 'A'} {other} {colour} {noun} in {material} {audience}, {feature}.",
            "attributes": {"category": category, "brand": brand},
        })
    weights = 1.0 / np.arange(1, n + 1) ** 0.9
    return items, weights[rng.permutation(n)]
