"""Texts shared by the encoder tests."""

#: Real, varied texts: catalogue items, a query, a long review, other scripts.
SENTENCES = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "GoldenEye (1995). Genres: Action, Adventure, Thriller",
    "Four Rooms (1995). Genres: Thriller",
    "Get Shorty (1995). Genres: Action, Comedy, Drama",
    "Copycat (1995). Genres: Crime, Drama, Thriller",
    "Twelve Monkeys (1995). Genres: Drama, Sci-Fi",
    "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War",
    "Fargo (1996). Genres: Crime, Drama, Thriller",
    "Schindler's List (1993). Genres: Drama, War",
    "Wallace & Gromit: The Best of Aardman Animation (1996). Genres: Animation",
    "funny animated movie for kids and parents",
    "a dark thriller set in a snowy small town",
    "What should I watch tonight if I liked Alien?",
    "I went in expecting a light comedy and came out having watched one of the most quietly "
    "devastating films of the decade. The performances are restrained, the cinematography is "
    "patient, and the score never tells you how to feel. The second act drags a little, and a "
    "subplot about the brother's debts goes nowhere, but the final twenty minutes earn every "
    "slow scene before them. " * 3,
    "Le fabuleux destin d'Amélie Poulain (2001). Genres: Comedy, Romance",
    "Das Leben der Anderen (2006). Genres: Drama, Thriller",
    "千与千寻 (2001). 类型: 动画, 奇幻",
    "فيلم درامي عن عائلة في القاهرة",
    "🍿🎬 best movie night ever!!!",
    "",
]
