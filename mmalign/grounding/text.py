"""Offline word handling for the caption benchmarks: a tokenizer and an English singulariser.

Why: the official CHAIR and AMBER scripts singularise with pattern.en / NLTK WordNet, whose
data cannot be downloaded here. Object words are a small, regular part of English, so a
rule-based singulariser with an irregulars table covers them; the rules below are tested on
every COCO category word and the usual irregular plurals.
"""

from __future__ import annotations

import re

#: Words that look plural but are not (or are the same in both numbers).
UNINFLECTED = frozenset(
    """
    aircraft bison canvas cattle chassis clothes corps deer does fish headquarters jeans
    lens luggage moose news pants perhaps salmon scissors series sheep shorts shrimp
    species swine tennis trousers trout tuna always whereas
    """.split()
)

#: Irregular plural -> singular.
IRREGULAR = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "people": "person",
    "persons": "person",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "mice": "mouse",
    "lice": "louse",
    "oxen": "ox",
    "dice": "die",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "leaves": "leaf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "shelves": "shelf",
    "wolves": "wolf",
    "scarves": "scarf",
    "thieves": "thief",
    "elves": "elf",
    "selves": "self",
    "hooves": "hoof",
    "buses": "bus",
    "busses": "bus",
    "gases": "gas",
    "lenses": "lens",
    "skis": "ski",
    "taxis": "taxi",
    "cacti": "cactus",
    "fungi": "fungus",
    "octopi": "octopus",
    "radii": "radius",
    "criteria": "criterion",
    "phenomena": "phenomenon",
    "data": "datum",
    "indices": "index",
    "matrices": "matrix",
    "vertices": "vertex",
    "analyses": "analysis",
    "axes": "axe",
    "crises": "crisis",
    "oases": "oasis",
}

#: Plurals in "-ies" whose singular ends in "-ie" (the default turns "-ies" into "-y").
IE_SINGULARS = frozenset(
    """
    brownie calorie cookie goalie hoodie movie pie rookie selfie smoothie tie zombie
    birdie veggie genie lie magpie pixie prairie sweetie walkie talkie
    """.split()
)

#: Plurals in "-oes" whose singular ends in "-oe" (the default drops "-es": tomatoes).
OE_SINGULARS = frozenset("shoe toe canoe hoe oboe horseshoe tiptoe floe foe".split())

#: Plurals in "-ches"/"-ses" etc. whose singular keeps the "e" (the default drops "-es").
E_SINGULARS = frozenset(
    """
    ache headache moustache mustache niche cache avalanche microfiche
    """.split()
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text``, punctuation dropped, case kept.

    Hyphens and slashes separate words ("hot-dog" -> "hot", "dog") so hyphenated
    compounds meet the two-word rules; a contraction stays one token ("don't"); a
    possessive loses its "'s" ("dog's" -> "dog").
    """
    return [w[:-2] if w.lower().endswith("'s") else w for w in _WORD.findall(text)]


def singularize(word: str) -> str:
    """The singular of an English noun (``word`` returned unchanged if it is not plural).

    Rules, first match wins: the irregulars table; words of three letters or fewer,
    uninflected words and words not ending in ``s`` stay; ``-ies`` -> ``-y``
    (``-ie`` for a short list); ``-ves`` -> ``-f``/``-fe`` only through the table, else drop
    ``s``; ``-oes`` -> ``-o`` (``-oe`` for a short list); ``-sses``/``-shes``/``-ches``/
    ``-xes``/``-zzes`` drop ``es``; ``-ss``/``-us``/``-is`` stay; otherwise a final ``s``
    is dropped. Case is kept; the rules look at the lowercase form.
    """
    lower = word.lower()
    if lower in IRREGULAR:
        return _match_case(word, IRREGULAR[lower])
    if len(lower) <= 3 or lower in UNINFLECTED or not lower.endswith("s"):
        return word
    if lower.endswith("ies"):
        stem = lower[:-3]
        return _match_case(word, stem + "ie" if stem + "ie" in IE_SINGULARS else stem + "y")
    if lower.endswith("oes"):
        stem = lower[:-3]
        return _match_case(word, stem + "oe" if stem + "oe" in OE_SINGULARS else stem + "o")
    if lower.endswith(("sses", "shes", "ches", "xes", "zzes")):
        if lower[:-1] in E_SINGULARS:
            return word[:-1]
        return word[:-2]
    if lower.endswith(("ss", "us", "is")):
        return word
    return word[:-1]


def _match_case(original: str, singular: str) -> str:
    if original.isupper():
        return singular.upper()
    if original[:1].isupper():
        return singular[:1].upper() + singular[1:]
    return singular


def normalize_phrase(phrase: str) -> str:
    """Lowercase, tokenized, singularised form of a word or phrase, words joined by a space."""
    return " ".join(singularize(w) for w in tokenize(phrase.lower()))
