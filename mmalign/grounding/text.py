"""Offline word handling for the caption benchmarks: a tokenizer and an English singulariser.

Why inflect: the official CHAIR and AMBER scripts singularise with NLTK's WordNet lemmatiser
(earlier, pattern.en), whose WordNet data is not on any package registry and cannot be
downloaded at run time here. ``inflect`` is a maintained, pure-Python library with its
rules built in; its ``singular_noun`` handles the irregular and compound plurals the
CHAIR words need (policemen, collies, TVs, minibuses, corgis, oxen, knives...). It
singularises any word ending in "s", though, so the words a lemmatiser leaves alone
(singular words in "-s": bus, glass, tennis, this) are guarded first. Importing inflect
takes seconds (it type-checks its API), so it is imported on the first plural met.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

#: Words that end in "s" but are not plurals (or are the same in both numbers), which a
#: lemmatiser leaves alone and ``inflect`` would cut.
UNINFLECTED = frozenset(
    """
    aircraft bison canvas cattle chassis clothes corps deer does fish gas headquarters jeans
    lens luggage moose news pants perhaps salmon scissors series sheep shorts shrimp
    species swine tennis trousers trout tuna always whereas
    is this his was has as its yes
    """.split()
)

#: Singular endings in "-s" (bus, glass, octopus, analysis); "-is" also ends plurals of
#: "-i" nouns (corgis, skis, taxis), which ``inflect`` knows, so only "-sis" is guarded.
_SINGULAR_ENDINGS = ("ss", "us", "sis")

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text``, punctuation dropped, case kept.

    Hyphens and slashes separate words ("hot-dog" -> "hot", "dog") so hyphenated
    compounds meet the two-word rules; a contraction stays one token ("don't"); a
    possessive loses its "'s" ("dog's" -> "dog").
    """
    return [w[:-2] if w.lower().endswith("'s") else w for w in _WORD.findall(text)]


def singularize(word: str) -> str:
    """The singular of an English noun (``word`` unchanged if it is not plural).

    The :data:`UNINFLECTED` words and the singular endings "-ss", "-us", "-sis" stay;
    anything else goes through ``inflect`` (which also knows the plurals without "s":
    men, policemen, geese, oxen). Case is kept; the rules look at the lowercase form.
    """
    lower = word.lower()
    if lower in UNINFLECTED or lower.endswith(_SINGULAR_ENDINGS):
        return word
    singular = _singular_noun(lower)
    return _match_case(word, singular) if singular else word


@lru_cache(maxsize=1 << 16)
def _singular_noun(word: str) -> str | None:
    """``inflect``'s singular of a lowercase word (``None`` if it finds none), cached: a
    benchmark meets the same few thousand words again and again."""
    return _inflect_engine().singular_noun(word) or None


@cache
def _inflect_engine() -> Any:
    import inflect

    return inflect.engine()


def _match_case(original: str, singular: str) -> str:
    if original.isupper():
        return singular.upper()
    if original[:1].isupper():
        return singular[:1].upper() + singular[1:]
    return singular


def normalize_phrase(phrase: str) -> str:
    """Lowercase, tokenized, singularised form of a word or phrase, words joined by a space."""
    return " ".join(singularize(w) for w in tokenize(phrase.lower()))
