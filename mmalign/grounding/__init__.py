"""Which objects a text names: CHAIR's synonym table, phrase rules and singulariser.

One definition shared by the hallucination benchmarks (CHAIR, Object HalBench, AMBER, the
scene judge) and the RL rewards that check a description against the annotated objects,
so a reward cannot be gamed by a wording the benchmark reads differently.
"""

from mmalign.grounding.objects import COCO_SYNONYMS, Mention, ObjectVocabulary, find_mentions
from mmalign.grounding.text import normalize_phrase, singularize, tokenize

__all__ = ["COCO_SYNONYMS", "Mention", "ObjectVocabulary", "find_mentions", "normalize_phrase", "singularize",
           "tokenize"]
