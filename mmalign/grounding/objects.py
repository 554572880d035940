"""Object vocabularies and the caption -> object-mention parser shared by CHAIR and Object HalBench.

Three COCO word lists:

- ``chair``: the official CHAIR synonym list (Rohrbach et al., 2018), shipped verbatim as
  ``chair_synonyms.txt`` beside this module, with the official special rules only;
- ``coco`` (the default): the official list plus mmalign's own everyday words for the same 80
  categories (:data:`COCO_SYNONYMS`; none of them names another category in the official
  list), with the special rules extended to every animal word;
- any list in the CHAIR format read from a file (:func:`load_synonyms`).

The report names the vocabulary used.

Parsing a caption (``ObjectVocabulary.mentions``):

1. tokenize and singularise every word (lowercase);
2. merge two-word phrases left to right: every two-word synonym maps to itself (so "hot dog"
   is not a dog and "teddy bear" not a bear), "baby"/"adult" + animal -> the animal (not a
   person), "passenger jet"/"passenger train" -> jet/train, "bow tie" -> tie, "toilet seat"
   -> toilet, and "home plate" / "train track" become non-objects (blocking "plate" and
   "train");
3. if "toilet" occurs, every "seat" is dropped (it is the toilet's seat, not a chair);
4. keep the words in the vocabulary, each mapped to its category; duplicates are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmalign.grounding.text import normalize_phrase, singularize, tokenize

#: The official CHAIR synonym list, verbatim: ``data/synonyms.txt`` of the CHAIR code of
#: Rohrbach et al., "Object Hallucination in Image Captioning" (EMNLP 2018),
#: https://github.com/LisaAnne/Hallucination, which RLHF-V's Object HalBench, OPERA and
#: lmms-eval's coco_cap_chair embed unchanged. Public data: one category a line, its name first.
CHAIR_SYNONYMS_FILE = Path(__file__).with_name("chair_synonyms.txt")

#: mmalign's own words per COCO category, added to the official list by the ``coco``
#: vocabulary (the category name itself is always included).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "person", "people", "human", "man", "woman", "boy", "girl", "child", "kid", "baby",
        "toddler", "infant", "adult", "teenager", "teen", "guy", "gentleman", "lady", "dude",
        "player", "athlete", "skier", "snowboarder", "surfer", "skateboarder", "skater",
        "rider", "biker", "cyclist", "bicyclist", "motorcyclist", "driver", "passenger",
        "pedestrian", "walker", "jogger", "runner", "hiker", "tourist", "traveler", "shopper",
        "customer", "vendor", "worker", "chef", "cook", "baker", "waiter", "waitress",
        "officer", "policeman", "policewoman", "cop", "soldier", "pitcher", "batter",
        "catcher", "umpire", "fielder", "referee", "spectator", "mother", "father", "mom",
        "dad", "parent", "son", "daughter", "brother", "sister", "grandmother",
        "grandfather", "bride", "groom", "student", "teacher", "doctor", "nurse", "farmer",
        "fisherman", "cowboy", "businessman", "tennis player",
    ),
    "bicycle": ("bicycle", "bike", "cycle", "bmx"),
    "car": (
        "car", "automobile", "sedan", "suv", "van", "minivan", "taxi", "cab", "jeep", "coupe",
        "hatchback", "limousine", "limo", "police car",
    ),
    "motorcycle": (
        "motorcycle", "motorbike", "motor bike", "motor cycle", "scooter", "moped",
        "dirt bike",
    ),
    "airplane": (
        "airplane", "aeroplane", "plane", "jet", "airliner", "aircraft", "jetliner",
        "air plane",
    ),
    "bus": ("bus", "minibus", "double decker", "school bus"),
    "train": ("train", "locomotive", "tram", "streetcar", "subway"),
    "truck": (
        "truck", "pickup", "pickup truck", "lorry", "fire engine", "dump truck", "fire truck",
    ),
    "boat": (
        "boat", "ship", "yacht", "sailboat", "canoe", "kayak", "ferry", "raft", "vessel",
        "rowboat", "speedboat", "gondola", "barge", "catamaran", "tugboat",
    ),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "pew", "park bench"),
    "bird": (
        "bird", "pigeon", "dove", "seagull", "gull", "duck", "goose", "swan", "parrot",
        "eagle", "hawk", "owl", "sparrow", "crow", "robin", "pelican", "flamingo", "hen",
        "rooster", "penguin", "heron", "finch", "ostrich",
    ),
    "cat": ("cat", "kitten", "kitty"),
    "dog": (
        "dog", "puppy", "pup", "doggy", "hound", "terrier", "poodle", "retriever", "bulldog",
        "collie", "beagle", "dachshund", "chihuahua", "spaniel", "corgi", "pug",
    ),
    "horse": ("horse", "pony", "foal", "colt", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ram", "ewe"),
    "cow": ("cow", "cattle", "bull", "calf", "ox", "heifer"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly", "cub", "polar bear"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "rucksack", "daypack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "tote", "pocketbook", "hand bag"),
    "tie": ("tie", "necktie", "cravat"),
    "suitcase": ("suitcase", "suit case", "luggage"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("ski",),
    "snowboard": ("snowboard",),
    "sports ball": (
        "sports ball", "ball", "football", "soccer ball", "basketball", "baseball",
        "softball", "volleyball", "tennis ball", "golf ball", "beach ball",
    ),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "paddleboard", "bodyboard", "boogie board"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle", "flask", "thermos"),
    "wine glass": ("wine glass", "wineglass", "goblet"),
    "cup": ("cup", "mug", "teacup", "coffee cup", "tumbler", "paper cup"),
    "fork": ("fork",),
    "knife": ("knife", "cleaver", "steak knife"),
    "spoon": ("spoon", "teaspoon", "tablespoon"),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "panini", "hoagie"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "frankfurter"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake", "birthday cake"),
    "chair": ("chair", "seat", "stool", "armchair", "high chair", "folding chair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "settee"),
    "potted plant": (
        "potted plant", "plant", "houseplant", "house plant", "flowerpot", "flower pot",
    ),
    "bed": ("bed", "bunk bed"),
    "dining table": (
        "dining table", "table", "desk", "coffee table", "kitchen table", "picnic table",
        "dinner table",
    ),
    "toilet": ("toilet", "urinal", "commode", "toilet bowl"),
    "tv": ("tv", "television", "monitor", "television set", "tv set"),
    "laptop": ("laptop", "laptop computer", "netbook", "macbook"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard", "keypad"),
    "cell phone": (
        "cell phone", "cellphone", "phone", "smartphone", "mobile phone", "iphone",
    ),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove", "stovetop"),
    "toaster": ("toaster",),
    "sink": ("sink", "washbasin"),
    "refrigerator": ("refrigerator", "fridge", "freezer", "icebox"),
    "book": ("book", "novel", "textbook", "paperback"),
    "clock": ("clock", "alarm clock", "wall clock", "clock tower"),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

#: Animal categories whose words, after "baby" or "adult", name the animal and not a person.
COCO_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")


def chair_phrase_rules(synonyms: Mapping[str, Sequence[str]], every_animal_word: bool) -> dict[str, str | None]:
    """The CHAIR special two-word rules for the categories of ``synonyms``. ``None`` marks a
    phrase that names no object. The official scripts put "baby"/"adult" before the animal
    category names only; ``every_animal_word`` extends that to their one-word synonyms
    ("baby goat" is a goat, not a person)."""
    rules: dict[str, str | None] = {}
    for category in COCO_ANIMALS:
        if category not in synonyms:
            continue
        words = (category, *synonyms[category]) if every_animal_word else (category,)
        for word in words:
            if " " not in word:
                rules[f"baby {word}"] = word
                rules[f"adult {word}"] = word
    for word in ("animal", "cub"):
        rules.setdefault(f"baby {word}", None)
        rules.setdefault(f"adult {word}", None)
    rules["passenger jet"] = "jet"
    rules["passenger train"] = "train"
    rules["bow tie"] = "tie"
    rules["toilet seat"] = "toilet"
    rules["home plate"] = None
    rules["train track"] = None
    return rules


def load_synonyms(path: str | Path = CHAIR_SYNONYMS_FILE) -> dict[str, tuple[str, ...]]:
    """category -> words, from a synonyms file in the CHAIR format: one category a line, its
    name first, then its words, comma-separated.

    Words are stripped and lowercased: the official scripts split on ", " and so never match
    " motor bike" and " cheesecake" (their lines have a double space), nor "iPhone" in
    lowercased captions; here they count. Words of three or more words are left out: the
    CHAIR parser merges two-word phrases only, so the official "stove top oven" never
    matches there either. A word repeated in one line counts once.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synonyms file {path} not found")
    synonyms: dict[str, tuple[str, ...]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        words = [w.strip().lower() for w in line.split(",")]
        words = [w for w in words if w]
        if not words:
            continue
        category = words[0]
        if len(category.split()) > 2:
            raise ValueError(f"{path} line {line_no}: category {category!r} has more than two words")
        if category in synonyms:
            raise ValueError(f"{path} line {line_no}: category {category!r} is listed twice")
        synonyms[category] = tuple(dict.fromkeys(w for w in words[1:] if len(w.split()) <= 2))
    if not synonyms:
        raise ValueError(f"synonyms file {path} lists no category")
    return synonyms


@dataclass(frozen=True)
class Mention:
    """One object word found in a text: the (normalised) word, its category, its position."""

    word: str
    category: str
    position: int  # index in the merged word sequence


@dataclass
class ObjectVocabulary:
    """Categories, the words naming them, and the phrase rules of the mention parser.

    ``synonyms`` maps a category to its words (one or two words each); ``phrase_rules`` maps
    a two-word phrase to the word it stands for (or ``None``: no object); ``drop_if_present``
    maps a word to a word whose presence removes it ("seat" is dropped when "toilet" occurs).
    All keys are normalised (lowercase, singular) on construction.
    """

    name: str
    synonyms: Mapping[str, Sequence[str]]
    phrase_rules: Mapping[str, str | None] = field(default_factory=dict)
    drop_if_present: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._word_to_category: dict[str, str] = {}
        phrases: dict[tuple[str, str], str | None] = {}
        for category, words in self.synonyms.items():
            for word in (category, *words):
                key = normalize_phrase(word)
                if not key or len(key.split()) > 2:
                    raise ValueError(
                        f"vocabulary {self.name!r}, category {category!r}: synonym {word!r} "
                        "must have one or two words"
                    )
                owner = self._word_to_category.setdefault(key, category)
                if owner != category:
                    raise ValueError(
                        f"vocabulary {self.name!r}: word {word!r} names both {owner!r} and "
                        f"{category!r}"
                    )
                if " " in key:
                    first, second = key.split()
                    phrases[(first, second)] = key
        for phrase, target in self.phrase_rules.items():
            key = normalize_phrase(phrase)
            if len(key.split()) != 2:
                raise ValueError(f"vocabulary {self.name!r}: phrase rule {phrase!r} needs two words")
            first, second = key.split()
            phrases[(first, second)] = normalize_phrase(target) if target else None
        self._phrases = phrases
        self._drops = {normalize_phrase(k): normalize_phrase(v) for k, v in self.drop_if_present.items()}

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """mmalign's COCO vocabulary: the official CHAIR list plus mmalign's own words, with
        the special rules extended to every animal word."""
        official = load_synonyms()
        if set(official) != set(COCO_SYNONYMS):
            raise ValueError(f"{CHAIR_SYNONYMS_FILE} does not list the 80 COCO categories")
        synonyms = {c: tuple(dict.fromkeys((*words, *COCO_SYNONYMS[c]))) for c, words in official.items()}
        return cls("mmalign-coco-v2", synonyms,
                   chair_phrase_rules(synonyms, every_animal_word=True), {"seat": "toilet"})

    @classmethod
    def chair(cls, path: str | Path = CHAIR_SYNONYMS_FILE) -> ObjectVocabulary:
        """The words of a CHAIR-format synonyms file (by default the official list) with the
        official special rules, as the CHAIR scripts apply them."""
        synonyms = load_synonyms(path)
        name = "chair-official" if Path(path) == CHAIR_SYNONYMS_FILE else f"synonyms file {Path(path).name}"
        return cls(name, synonyms, chair_phrase_rules(synonyms, every_animal_word=False), {"seat": "toilet"})

    @classmethod
    def from_categories(cls, categories: Iterable[str], name: str = "instances") -> ObjectVocabulary:
        """A vocabulary whose only words are the category names (e.g. a synthetic dataset)."""
        return cls(name, {c: (c,) for c in categories})

    @property
    def categories(self) -> list[str]:
        return list(self.synonyms)

    def category_of(self, word: str) -> str | None:
        """The category a word or phrase names, or ``None``."""
        return self._word_to_category.get(normalize_phrase(word))

    def merged_words(self, text: str) -> list[str]:
        """Singular lowercase words of ``text`` with the two-word phrases merged (step 1-3)."""
        words = [singularize(w) for w in tokenize(text.lower())]
        merged: list[str] = []
        i = 0
        while i < len(words):
            pair = (words[i], words[i + 1]) if i + 1 < len(words) else None
            if pair is not None and pair in self._phrases:
                target = self._phrases[pair]
                merged.append(target if target is not None else " ".join(pair))
                i += 2
            else:
                merged.append(words[i])
                i += 1
        present = set(merged)
        return [w for w in merged if not (w in self._drops and self._drops[w] in present)]

    def mentions(self, text: str) -> list[Mention]:
        """Every object word of ``text`` in order, duplicates kept."""
        out = []
        for position, word in enumerate(self.merged_words(text)):
            category = self._word_to_category.get(word)
            if category is not None:
                out.append(Mention(word, category, position))
        return out

    def describe(self) -> dict[str, object]:
        """What a report records about the vocabulary."""
        return {
            "name": self.name,
            "categories": len(self.synonyms),
            "words": len(self._word_to_category),
            "phrase_rules": len(self.phrase_rules),
        }


#: The vocabulary choices of :func:`resolve_vocabulary` (and of the benchmarks' --vocabulary).
VOCABULARY_CHOICES = ("auto", "coco", "chair", "instances")


def resolve_vocabulary(choice: str | ObjectVocabulary, category_names: Sequence[str]) -> ObjectVocabulary:
    """"coco" (the official CHAIR list + mmalign's words), "chair" (the official list only),
    "instances" (the instance category names only), "auto" (coco if every instance category
    is a COCO category, else instances), or a vocabulary."""
    if isinstance(choice, ObjectVocabulary):
        return choice
    if choice == "chair":
        return ObjectVocabulary.chair()
    if choice == "coco":
        return ObjectVocabulary.coco()
    if choice == "instances":
        if not category_names:
            raise ValueError("vocabulary 'instances' needs an instances file with categories")
        return ObjectVocabulary.from_categories(category_names)
    if choice == "auto":
        if all(name in COCO_SYNONYMS for name in category_names):
            return ObjectVocabulary.coco()
        return ObjectVocabulary.from_categories(category_names)
    raise ValueError(f"unknown vocabulary {choice!r}; expected one of {', '.join(VOCABULARY_CHOICES)}")


#: An object extractor (e.g. an LLM): response text -> the object words or phrases it names.
ObjectExtractor = Callable[[str], Sequence[str]]


def find_mentions(
    text: str, vocabulary: ObjectVocabulary, extract_objects: ObjectExtractor | None = None
) -> list[Mention]:
    """Mentions of ``text`` by the parser, or of the phrases an extractor lists (each phrase
    then goes through the same parser, so synonyms and rules still apply)."""
    if extract_objects is None:
        return vocabulary.mentions(text)
    found: list[Mention] = []
    for phrase in extract_objects(text):
        if not isinstance(phrase, str):
            raise TypeError(f"object extractor returned {phrase!r}; expected strings")
        found += vocabulary.mentions(phrase)
    return found


def extractor_label(extract_objects: ObjectExtractor | None, name: str | None = None) -> str:
    """How a report names the object-extraction step."""
    if name:
        return name
    if extract_objects is None:
        return "none (the parser on the response)"
    return getattr(extract_objects, "name", None) or getattr(extract_objects, "__name__", None) or type(
        extract_objects).__name__
