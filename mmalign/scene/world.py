"""The scene world: seeded synthetic scenes of coloured icons with complete annotations.

Why it exists: no real dataset can be downloaded here, yet every alignment method and
hallucination benchmark in mmalign needs images whose content is known exactly. The world
has a controllable co-occurrence bias (when a *trigger* object appears, its *partner*
appears with probability ``p``), so a model trained where ``p`` is high learns to "see" the
partner even when it is absent: the object hallucination that POPE and CHAIR measure and
that preference training should remove. Hazardous objects (knife, fire, pills) give safety
prompts with labelled responses, so reward and cost models can be trained on the same images.

Every scene is a pure function of (config, split, index): scene 7 is identical whether 10 or
10,000 scenes are generated, and ``render`` gives identical PNG bytes for identical scenes.
All text comes from the templates and word lists of :mod:`mmalign.scene.text`, so
``world_vocabulary`` lists every word a prompt, answer or caption can contain (for the tiny
model's tokenizer).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

Color = tuple[int, int, int]


@dataclass(frozen=True)
class CategorySpec:
    """What the world knows about one object category besides how to draw it."""

    plural: str
    supercategory: str
    aspect: float  # width / height of the drawn icon
    use: str  # what a person can do with it ("You can <use> the <name>."), for benign prompts


CATEGORY_SPECS: dict[str, CategorySpec] = {
    "ball": CategorySpec("balls", "sports", 1.0, "kick"),
    "boat": CategorySpec("boats", "vehicle", 1.2, "sail"),
    "book": CategorySpec("books", "indoor", 0.8, "read"),
    "bottle": CategorySpec("bottles", "kitchen", 0.5, "drink from"),
    "car": CategorySpec("cars", "vehicle", 1.6, "drive"),
    "cup": CategorySpec("cups", "kitchen", 1.0, "drink from"),
    "fire": CategorySpec("fires", "outdoor", 0.75, "warm your hands near"),
    "fish": CategorySpec("fish", "animal", 1.6, "feed"),
    "flower": CategorySpec("flowers", "plant", 0.7, "smell"),
    "house": CategorySpec("houses", "building", 1.0, "live in"),
    "knife": CategorySpec("knives", "kitchen", 2.0, "cut bread with"),
    "moon": CategorySpec("moons", "sky", 1.0, "look at"),
    "pill": CategorySpec("pills", "indoor", 2.0, "ask a doctor about"),
    "star": CategorySpec("stars", "sky", 1.0, "look at"),
    "table": CategorySpec("tables", "furniture", 1.4, "eat at"),
    "tree": CategorySpec("trees", "plant", 0.75, "climb"),
}


@dataclass(frozen=True)
class HazardSpec:
    """How safety texts talk about a hazardous category."""

    harm_category: str  # coarse harm label, in the spirit of BeaverTails-V categories
    phrase: str  # how the texts name it ("the knife", "the pills")
    warning: str  # one sentence saying why it is dangerous


HAZARD_SPECS: dict[str, HazardSpec] = {
    "knife": HazardSpec("violence", "the knife", "The knife is sharp and can cut people."),
    "fire": HazardSpec("dangerous_behavior", "the fire", "The fire is hot and can burn people."),
    "pill": HazardSpec(
        "drug_misuse", "the pill", "The pill is medicine and can make people very sick."
    ),
}

COLORS: dict[str, Color] = {
    "red": (214, 39, 40),
    "orange": (245, 133, 24),
    "yellow": (232, 200, 30),
    "green": (44, 160, 44),
    "blue": (31, 95, 214),
    "purple": (140, 70, 190),
}
BACKGROUNDS: dict[str, Color] = {
    "white": (246, 246, 244),
    "gray": (196, 198, 200),
    "beige": (236, 224, 196),
}
SIZES = ("small", "large")
_SIZE_FRACTION = {"small": 0.5, "large": 0.85}  # icon side as a share of its grid cell

#: The canvas is a 3x3 grid; each object sits in its own cell (row-major index 0..8).
GRID = 3
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "middle",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
MAX_COUNT = 3  # a category appears 1..3 times in a scene


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a world. Saved in ``world.json`` so a world can be rebuilt.

    ``cooccurrence`` lists (trigger, partner) pairs; when any of a partner's triggers is in a
    scene, the partner is put in with probability ``cooccurrence_p[split]`` and otherwise kept
    out, so P(partner | a trigger) equals that number exactly in expectation. A partner may
    have several triggers (COCO's dining table comes with cups, bottles and books alike), a
    trigger has one partner, and no category is both, which keeps the draws independent.
    """

    seed: int = 0
    image_size: int = 96  # pixels, square
    categories: tuple[str, ...] = tuple(CATEGORY_SPECS)
    colors: tuple[str, ...] = tuple(COLORS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    # Three hub partners with three triggers each, as COCO's dining table, person and car
    # come with many objects; the four other categories (the hazards and the ball) stand alone.
    cooccurrence: tuple[tuple[str, str], ...] = (
        ("cup", "table"),
        ("bottle", "table"),
        ("book", "table"),
        ("tree", "house"),
        ("flower", "house"),
        ("car", "house"),
        ("moon", "boat"),
        ("fish", "boat"),
        ("star", "boat"),
    )
    # The training split carries the bias; the held-out split breaks it more often than not,
    # so a model that learned "trigger => partner" names absent partners there.
    cooccurrence_p: dict[str, float] = field(default_factory=lambda: {"train": 0.9, "eval": 0.35})
    hazards: tuple[str, ...] = ("fire", "knife", "pill")
    max_categories: int = 3  # distinct categories drawn before partners are added
    max_objects: int = 6  # instances per scene, at most GRID * GRID
    count_weights: tuple[float, ...] = (0.7, 0.2, 0.1)  # P(count = 1, 2, 3)
    # A partner brought in by its trigger is drawn small with this probability (else either
    # size): the partner is then the harder object to see, as a dining table behind the
    # cups often is in COCO, so a model leans on the trigger to "see" it.
    partner_small_p: float = 0.8
    # A single partner brought in by its trigger sits behind it with this probability: drawn
    # small inside the trigger's box, under it, so little or nothing of it shows, yet it is
    # annotated (COCO's captions name the dining table under the plates). A model then learns
    # that the trigger implies its partner, and names the partner where it is absent: the
    # co-occurrence hallucination POPE's adversarial split and CHAIR measure.
    partner_hidden_p: float = 0.5
    # Relative weights for drawing a scene's categories (a category not listed weighs 1;
    # empty draws uniformly). Real datasets are long-tailed, and the objects a model has
    # seen most are the ones it names when unsure: POPE's "popular" split asks about them.
    # Triggers weigh 2.5, so the hubs they bring are the most frequent objects of all.
    category_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("cup", "bottle", "book", "tree", "flower", "car", "moon", "fish", "star"), 2.5))

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"WorldConfig: {message}")

        check(self.image_size >= 32, f"image_size {self.image_size} is below 32 pixels")
        check(len(set(self.categories)) == len(self.categories) >= 2, "categories must be unique")
        check(set(self.categories) <= set(CATEGORY_SPECS), f"unknown categories {self.categories}")
        check(bool(self.colors) and set(self.colors) <= set(COLORS), f"bad colors {self.colors}")
        check(
            bool(self.backgrounds) and set(self.backgrounds) <= set(BACKGROUNDS),
            f"bad backgrounds {self.backgrounds}",
        )
        check(
            set(self.hazards) <= set(self.categories) & set(HAZARD_SPECS),
            f"hazards {self.hazards} must be categories among {sorted(HAZARD_SPECS)}",
        )
        triggers = [a for a, _ in self.cooccurrence]
        partners = {b for _, b in self.cooccurrence}
        check(
            set(triggers) | partners <= set(self.categories),
            f"pairs use unknown categories {self.cooccurrence}",
        )
        check(len(set(triggers)) == len(triggers), "a trigger may have only one partner")
        check(not partners & set(triggers), "a category cannot be both a trigger and a partner")
        check(
            set(self.category_weights) <= set(self.categories)
            and all(w > 0 for w in self.category_weights.values()),
            f"category_weights must give positive weights to categories: {self.category_weights}",
        )
        check(
            bool(self.cooccurrence_p)
            and all(0.0 <= p <= 1.0 for p in self.cooccurrence_p.values()),
            f"cooccurrence_p must map split names to probabilities: {self.cooccurrence_p}",
        )
        check(0.0 <= self.partner_small_p <= 1.0, "partner_small_p must be a probability")
        check(0.0 <= self.partner_hidden_p <= 1.0, "partner_hidden_p must be a probability")
        check(
            len(self.count_weights) == MAX_COUNT and min(self.count_weights) >= 0,
            f"count_weights needs {MAX_COUNT} non-negative weights",
        )
        check(1 <= self.max_categories <= len(self.categories), "max_categories out of range")
        check(
            2 * self.max_categories <= self.max_objects <= GRID * GRID,
            f"need 2 * max_categories <= max_objects <= {GRID * GRID} (partners need room)",
        )

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.cooccurrence_p)

    @property
    def partner_triggers(self) -> dict[str, tuple[str, ...]]:
        """Each partner with its triggers, in the order the pairs first name them."""
        grouped: dict[str, tuple[str, ...]] = {}
        for trigger, partner in self.cooccurrence:
            grouped[partner] = grouped.get(partner, ()) + (trigger,)
        return grouped

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"WorldConfig: unknown fields {sorted(unknown)}")
        values = dict(data)
        for key in ("categories", "colors", "backgrounds", "hazards", "count_weights"):
            if key in values:
                values[key] = tuple(values[key])
        if "cooccurrence" in values:
            values["cooccurrence"] = tuple(tuple(pair) for pair in values["cooccurrence"])
        return cls(**values)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. ``bbox`` is (x, y, width, height) in pixels, inside the image."""

    category: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]
    cell: int  # grid cell, row-major 0..8
    behind: bool = False  # hidden behind the other object of its cell (drawn first, inside its box)

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    """A scene's full ground truth; ``render`` turns it into the image."""

    id: str  # "<split>-<image_id:06d>", stable for a given seed
    image_id: int  # 1-based index within the split
    split: str
    seed: int  # the world seed (drives the background texture and text choices)
    image_size: int
    background: str
    objects: tuple[SceneObject, ...]  # in reading order (by grid cell)
    hazards: tuple[str, ...]  # hazardous categories present

    @property
    def file_name(self) -> str:
        return f"{self.id}.png"

    @property
    def categories(self) -> list[str]:
        """Distinct categories in reading order."""
        return list(dict.fromkeys(obj.category for obj in self.objects))

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for obj in self.objects:
            counts[obj.category] = counts.get(obj.category, 0) + 1
        return counts

    @property
    def is_hazardous(self) -> bool:
        return bool(self.hazards)

    def instances(self, category: str) -> list[SceneObject]:
        return [obj for obj in self.objects if obj.category == category]

    def to_dict(self) -> dict[str, Any]:
        """The annotation record written to ``scenes.jsonl``."""
        return {
            "id": self.id,
            "image_id": self.image_id,
            "image": self.file_name,
            "split": self.split,
            "seed": self.seed,
            "width": self.image_size,
            "height": self.image_size,
            "background": self.background,
            "objects": [
                {**asdict(obj), "bbox": list(obj.bbox), "position": obj.position}
                for obj in self.objects
            ],
            "counts": self.counts,
            "hazards": list(self.hazards),
            "is_hazardous": self.is_hazardous,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        objects = tuple(
            SceneObject(o["category"], o["color"], o["size"], tuple(o["bbox"]), o["cell"], o.get("behind", False))
            for o in data["objects"]
        )
        return cls(
            id=data["id"],
            image_id=data["image_id"],
            split=data["split"],
            seed=data["seed"],
            image_size=data["width"],
            background=data["background"],
            objects=objects,
            hazards=tuple(data["hazards"]),
        )


# --------------------------------------------------------------------------- generation


def scene_at(config: WorldConfig, image_id: int, split: str = "train") -> Scene:
    """Scene number ``image_id`` (1-based) of ``split``, independent of any other scene."""
    if split not in config.cooccurrence_p:
        raise ValueError(f"unknown split {split!r}; the config defines {list(config.splits)}")
    p = config.cooccurrence_p[split]
    rng = random.Random(f"mmalign-scene/{config.seed}/{split}/{image_id}")

    present = _draw_categories(config, rng)
    brought: set[str] = set()  # partners present because of their trigger
    for partner, triggers in config.partner_triggers.items():
        if any(trigger in present for trigger in triggers):
            if rng.random() < p:
                if partner not in present:
                    present.append(partner)
                    brought.add(partner)
            elif partner in present:
                present.remove(partner)

    counts = {
        c: rng.choices(range(1, MAX_COUNT + 1), weights=config.count_weights)[0] for c in present
    }
    excess = max(0, sum(counts.values()) - config.max_objects)
    for category in sorted(present, key=lambda c: -counts[c]):  # trim the most repeated first
        cut = min(excess, counts[category] - 1)
        counts[category] -= cut
        excess -= cut

    instances = [c for c in present for _ in range(counts[c])]
    cells = rng.sample(range(GRID * GRID), len(instances))
    objects = []
    for category, cell in zip(instances, cells, strict=True):
        color, size = rng.choice(config.colors), rng.choice(SIZES)
        if category in brought and rng.random() < config.partner_small_p:
            size = "small"
        bbox = _place(cell, size, CATEGORY_SPECS[category].aspect, config.image_size, rng)
        objects.append(SceneObject(category, color, size, bbox, cell))
    objects = _hide_partners(config, objects, brought, f"{config.seed}/{split}/{image_id}")
    objects.sort(key=lambda obj: (obj.cell, not obj.behind))
    return Scene(
        id=f"{split}-{image_id:06d}",
        image_id=image_id,
        split=split,
        seed=config.seed,
        image_size=config.image_size,
        background=rng.choice(config.backgrounds),
        objects=tuple(objects),
        hazards=tuple(c for c in config.hazards if c in counts),
    )


def _draw_categories(config: WorldConfig, rng: random.Random) -> list[str]:
    """The 1..max_categories categories a scene starts from, by ``category_weights``."""
    n = rng.randint(1, config.max_categories)
    if not config.category_weights:
        return rng.sample(config.categories, n)
    pool = list(config.categories)
    weights = [config.category_weights.get(c, 1.0) for c in pool]
    drawn = []
    for _ in range(n):
        i = rng.choices(range(len(pool)), weights=weights)[0]
        drawn.append(pool.pop(i))
        weights.pop(i)
    return drawn


def _hide_partners(config: WorldConfig, objects: list[SceneObject], brought: set[str], key: str) -> list[SceneObject]:
    """Put each single brought partner behind the first instance of one of its triggers with
    ``partner_hidden_p``: small, centred in the trigger's box, in the trigger's cell (its own
    cell is freed). A separate random stream, so scenes without hidden partners are the same
    as before the option."""
    if not config.partner_hidden_p:
        return objects
    rng = random.Random(f"mmalign-hidden/{key}")
    for partner, triggers in config.partner_triggers.items():
        mine = [o for o in objects if o.category == partner]
        front = next((o for o in objects if o.category in triggers), None)
        if partner not in brought or len(mine) != 1 or front is None or rng.random() >= config.partner_hidden_p:
            continue
        x, y, w, h = front.bbox
        side_w, side_h = max(3, w // 2), max(3, h // 2)
        hidden = replace(mine[0], size="small", cell=front.cell, behind=True,
                         bbox=(x + (w - side_w) // 2, y + (h - side_h) // 2, side_w, side_h))
        objects = [hidden if o is mine[0] else o for o in objects]
    return objects


def generate_scenes(
    config: WorldConfig, n: int, split: str = "train", start: int = 1
) -> list[Scene]:
    """Scenes ``start`` .. ``start + n - 1`` of ``split``; prefixes agree across ``n``."""
    return [scene_at(config, image_id, split) for image_id in range(start, start + n)]


def _place(
    cell: int, size: str, aspect: float, image_size: int, rng: random.Random
) -> tuple[int, int, int, int]:
    """A box inside ``cell`` (so objects never overlap), jittered so positions vary."""
    row, col = divmod(cell, GRID)
    x0, x1 = round(col * image_size / GRID), round((col + 1) * image_size / GRID)
    y0, y1 = round(row * image_size / GRID), round((row + 1) * image_size / GRID)
    side = round(min(x1 - x0, y1 - y0) * _SIZE_FRACTION[size])
    if aspect >= 1:
        w, h = side, max(3, round(side / aspect))
    else:
        w, h = max(3, round(side * aspect)), side
    return (rng.randint(x0, x1 - w), rng.randint(y0, y1 - h), w, h)
