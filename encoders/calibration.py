"""Texts whose activations set the int8 graph's smoothing scales (``encoders.graph``).

Varied on purpose, and none from the datasets we evaluate on: product titles, reviews, news,
queries, film facts, other languages and scripts, a long paragraph, one word and the empty
string (two tokens, the int8 graph's worst case). Changing them changes every int8 export.
"""

CALIBRATION_TEXTS: tuple[str, ...] = (
    'Spirited Away (2001). Genres: Animation, Adventure, Family, Fantasy',
    'A wireless noise-cancelling headphone with 30 hours of battery life and a carrying case.',
    'The central bank raised interest rates by a quarter point on Tuesday, citing persistent inflation.',
    'I bought this blender last month and it already stopped working. Very disappointed with the quality.',
    'Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours. Colour: forest green.',
    'Director: Christopher Nolan. Starring: Leonardo DiCaprio, Joseph Gordon-Levitt. Genre: science fiction, thriller.',
    'How to make sourdough bread at home without a stand mixer',
    'Ein kurzer deutscher Satz über das Wetter in Berlin.',
    "Le film raconte l'histoire d'une famille qui déménage à Paris.",
    '東京の映画館で新しいアニメ映画が公開された',
    'Breaking: heavy snow closes schools across the northern region; travel is not advised.',
    "Men's running shoes, breathable mesh upper, cushioned sole, sizes 7-13.",
    'best laptop for students under 800 dollars',
    'The quarterly report shows revenue growth of 12% driven by cloud services and advertising.',
    'A gripping documentary about climbers attempting the first winter ascent of K2.',
    'Organic green tea, 100 bags. Attributes: caffeine: low; origin: Japan; flavour: jasmine.',
    'She scored twice in the second half as the home side came back to win 3-2.',
    'Watched: The Matrix (1999). Genres: Action, Sci-Fi; Amélie (2001). Genres: Comedy, Romance; Gladiator (2000). '
    'Genres: Action, Drama; Memento (2000). Genres: Mystery, Thriller; Shrek (2001). Genres: Animation, Comedy, Family; '
    'Spirited Away (2001). Genres: Animation, Fantasy; Mulholland Drive (2001). Genres: Drama, Mystery; Up (2009). Genres: '
    'Animation, Adventure; Inception (2010). Genres: Action, Sci-Fi, Thriller; Parasite (2019). Genres: Drama, Thriller',
    'A podcast episode on the history of jazz in New Orleans, with interviews and archival recordings.',
    "Kids' building blocks set, 500 pieces, compatible with major brands, ages 4 and up.",
    'Новый фильм о космосе выйдет в кинотеатрах этой осенью.',
    'مراجعة: الكتاب ممتع لكن النهاية مخيبة للآمال',
    'यह फ़ोन बहुत तेज़ है और बैटरी पूरे दिन चलती है',
    '배송이 빨랐고 품질도 좋아요',
    'Ελληνική σαλάτα με φέτα και ελιές',
    '🔥 50% off today only!!! 🎉',
    '',
    'one',
)


def calibration_feeds(tokenizer, inputs: list[str], batch_size: int = 8, max_length: int = 128) -> list[dict]:
    """The texts as onnxruntime feeds, tokenised by a Hugging Face ``tokenizer``, in padded
    batches as the runtime sends them."""
    feeds = []
    for start in range(0, len(CALIBRATION_TEXTS), batch_size):
        batch = tokenizer(list(CALIBRATION_TEXTS[start : start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="np")
        feeds.append({name: batch[name].astype("int64") for name in inputs})
    return feeds
