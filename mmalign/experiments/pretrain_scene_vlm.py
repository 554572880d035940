"""The scene world as a whole: write benchmark files, and pretrain the tiny scene VLM.

``pretrain_scene_vlm`` is the script that made the shipped weights. Like LLaVA, which
starts from a pretrained CLIP and aligns its features with the language model's word
embeddings, it first teaches the vision tower and the projector to see: every image patch
is classified by the object, colour and size covering it (dense labels from the scene
annotations), against the language model's own embeddings of those words, a few minutes
on a CPU. Then the projector and language model are trained, tower frozen, with the same
SFT trainer users run, on instruction data from the world's training split, where
co-occurring objects appear together 90% of the time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.io import MODEL, atomic_dir, check_output
from mmalign.scene.ranges import PRETRAIN
from mmalign.scene.text import world_vocabulary
from mmalign.scene.world import WorldConfig

#: PretrainConfig fields that are stage 2's instruction mix (``scene_sft_dataset`` keywords)
STAGE2_MIX = ("describe_share", "existence_share", "facts_share", "reading_share")


@dataclass
class PretrainConfig:
    """Everything that determines the shipped scene VLM's weights."""

    seed: int = 0
    n_scenes: int = 40000
    turns: int = 3
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    save_dtype: str = "float16"
    vision_steps: int = 1000  # stage 1: dense patch classification of the vision tower
    vision_batch_size: int = 64
    vision_learning_rate: float = 2e-3
    vision_object_weight: float = 10.0  # stage-1 loss weight of a patch an object covers (background: 1)
    # Stage 1 also trains the projector, classifying each projected patch against the language
    # model's own (frozen, random) embeddings of the category, colour and size words: an image
    # token then looks like the words that name it, so "is there a cup?" becomes a match of
    # the question's word against the image tokens, which the language model learns quickly.
    vision_word_aligned: bool = True
    vision_word_temperature: float = 0.05
    # Stage 2's instruction mix (``scene_sft_dataset``): shares of description rows, of
    # existence drills (the question-to-image lookup a description does not teach: learned
    # slowly, so half the rows), of fact checking, of fact reading (facts that may be another
    # scene's, so only reading answers), the rest mixed questions.
    describe_share: float = 0.3
    existence_share: float = 0.5
    facts_share: float = 0.05
    reading_share: float = 0.0
    # Stage 3 (none with 0 scenes): one pass over ``stage3_scenes`` rows of another mix from
    # the stage-2 model. Reading rows must be many to teach reading: at 15 % of stage 2 (half
    # of them another scene's facts) a model had not learnt it after 1,500 of 2,500 steps.
    stage3_scenes: int = 0
    stage3_learning_rate: float = 5e-4
    stage3_warmup_steps: int = 20
    stage3_mix: dict = field(default_factory=lambda: {"describe_share": 0.2, "existence_share": 0.2,
                                                      "facts_share": 0.05, "reading_share": 0.5})
    # Stage 2 keeps the stage-1 tower frozen: trained at the language model's learning rate
    # it forgets what it saw (a linear probe of object presence on its features fell to chance).
    train_vision: bool = False
    model: dict = field(default_factory=dict)  # SceneVLMConfig overrides

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stage3_mix) - set(STAGE2_MIX))
        if unknown:
            raise ValueError(f"stage3_mix: unknown share(s) {', '.join(unknown)}; known: {', '.join(STAGE2_MIX)}")


def read_pretrain_recipe(path: str | Path) -> tuple[PretrainConfig, WorldConfig]:
    """The settings a ``pretrain_recipe.yaml`` (written next to pretrained weights) records:
    one flat mapping of pretraining, world and model fields. Passing them back to
    :func:`pretrain_scene_vlm` repeats that pretraining; an unknown key is an error."""
    import dataclasses

    import yaml

    from mmalign.io import read_text
    from mmalign.models.scene_vlm import SceneVLMConfig

    data = yaml.safe_load(read_text(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a pretraining recipe is a mapping of settings, got {type(data).__name__}")
    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (PretrainConfig, WorldConfig, SceneVLMConfig)}
    unknown = sorted(set(data) - set().union(*names.values()))
    if unknown:
        raise ValueError(f"{path}: unknown recipe setting(s) {', '.join(unknown)}")
    # settings added later: a recipe written before them used none of what they add
    data = {"reading_share": 0.0, "stage3_scenes": 0, **data}
    model_defaults = SceneVLMConfig()
    model = dict(data.get("model") or {})
    model.update({k: data[k] for k in names[SceneVLMConfig] if k in data and data[k] != getattr(model_defaults, k)})
    config = PretrainConfig(**{k: data[k] for k in names[PretrainConfig] - {"model"} if k in data}, model=model)
    return config, WorldConfig.from_dict({k: data[k] for k in names[WorldConfig] if k in data})


def patch_labels(scene, image_size: int, patch: int, categories: list[str], colors: list[str],
                 backgrounds: list[str] = ()):
    """Per-patch targets: category, colour and size of the object covering most of the patch.

    Category 0 is background (no object covers a quarter of the patch, nor has its centre
    in it); a background patch's colour target is the background's own colour, numbered
    after the object colours (``len(colors) + 1 + i``), so the tower also learns to see it.
    Sizes are 1 + the index in ``SIZES`` (0 for background). An object hidden behind
    another labels nothing: the tower is taught what shows.
    """
    import torch

    from mmalign.scene.world import SIZES

    grid = image_size // patch
    cat = torch.zeros(grid * grid, dtype=torch.long)
    background = len(colors) + 1 + list(backgrounds).index(scene.background) if backgrounds else 0
    col = torch.full((grid * grid,), background, dtype=torch.long)
    size = torch.zeros(grid * grid, dtype=torch.long)

    def label(at: int, obj) -> None:
        cat[at] = categories.index(obj.category) + 1
        col[at] = colors.index(obj.color) + 1
        size[at] = SIZES.index(obj.size) + 1

    visible = [obj for obj in scene.objects if not obj.behind]  # a hidden object labels nothing
    for row in range(grid):
        for column in range(grid):
            px, py = column * patch, row * patch
            best = patch * patch / 4
            for obj in visible:
                x, y, w, h = obj.bbox
                overlap = max(0, min(px + patch, x + w) - max(px, x)) * max(0, min(py + patch, y + h) - max(py, y))
                if overlap > best:
                    best = overlap
                    label(row * grid + column, obj)
    for obj in visible:  # a small object still labels the patch holding its centre
        x, y, w, h = obj.bbox
        at = min((y + h // 2) // patch, grid - 1) * grid + min((x + w // 2) // patch, grid - 1)
        if cat[at] == 0:
            label(at, obj)
    return cat, col, size


def pretrain_vision_tower(model, processor, world: WorldConfig, config: PretrainConfig) -> list[float]:
    """Stage 1: dense patch classification (object category, colour, size) of the vision tower.

    With ``vision_word_aligned`` the classifier is the projector followed by cosine
    similarity with the language model's (frozen) embeddings of the class words, so image
    tokens enter the language model looking like the words that name them; otherwise
    linear heads on the tower, discarded afterwards. Returns the loss every 50 steps.
    """
    import torch
    from tqdm.auto import tqdm

    from mmalign.scene.render import render
    from mmalign.scene.world import SIZES, scene_at

    tower = model.model.vision_tower
    vision = model.config.vision_config
    categories, colors, backgrounds = list(world.categories), list(world.colors), list(world.backgrounds)
    if config.vision_word_aligned:
        heads = _word_heads(model, processor.tokenizer, {
            "category": ["background", *categories],
            "color": ["nothing", *colors, *backgrounds],
            "size": ["nothing", *SIZES],
        }, config.vision_word_temperature)
        params = [*tower.parameters(), *model.model.multi_modal_projector.parameters()]
    else:
        linear = torch.nn.ModuleDict({
            "category": torch.nn.Linear(vision.hidden_size, len(categories) + 1),
            "color": torch.nn.Linear(vision.hidden_size, len(colors) + 1 + len(backgrounds)),
            "size": torch.nn.Linear(vision.hidden_size, len(SIZES) + 1),
        })
        heads = dict(linear.items())
        params = [*tower.parameters(), *linear.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.vision_learning_rate, total_steps=config.vision_steps,
                                                   pct_start=0.05)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    tower.train()
    for step in tqdm(range(config.vision_steps), desc="vision tower: patch classification"):
        ids = torch.randint(PRETRAIN.start, PRETRAIN.start + config.n_scenes, (config.vision_batch_size,),
                            generator=generator).tolist()
        scenes = [scene_at(world, i, PRETRAIN.split) for i in ids]
        pixels = processor.image_processor([render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        targets = [patch_labels(s, vision.image_size, vision.patch_size, categories, colors, backgrounds)
                   for s in scenes]
        hidden = tower(pixels).last_hidden_state[:, 1:]  # drop CLS, as LLaVA's "default" strategy does
        # object patches weigh vision_object_weight times a background patch: averaged over all
        # patches the loss is mostly background, and an unweighted tower recognised only about
        # half of the object patches (52 % after 800 steps; 94 % with weight 10)
        weight = torch.where(torch.stack([t[0] for t in targets]) > 0, config.vision_object_weight, 1.0).flatten()
        loss = sum(
            (torch.nn.functional.cross_entropy(heads[name](hidden).flatten(0, 1),
                                               torch.stack([t[k] for t in targets]).flatten(), reduction="none")
             * weight).sum() / weight.sum()
            for k, name in enumerate(("category", "color", "size"))
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.vision_steps - 1:
            losses.append(round(loss.item(), 4))
    return losses


def _word_heads(model, tokenizer, words: dict[str, list[str]], temperature: float) -> dict:
    """Stage-1 classifiers of projected patches whose class vectors are the language model's
    (frozen) embeddings of the class words: logits = cosine similarity / temperature."""
    import torch

    normalize = torch.nn.functional.normalize
    projector = model.model.multi_modal_projector
    embeddings = model.get_input_embeddings().weight

    def head(ids: list[int]):
        def logits(hidden):
            return normalize(projector(hidden), dim=-1) @ normalize(embeddings[ids].detach(), dim=-1).T / temperature
        return logits

    return {name: head([tokenizer.convert_tokens_to_ids(w) for w in ws]) for name, ws in words.items()}


def scene_vlm_vocabulary(world: WorldConfig) -> list[str]:
    """The world's words plus those of the reward models' scoring prompt, so a reward or
    cost model built on the scene VLM reads its instructions instead of unknown tokens."""
    from mmalign.reward.template import RewardTemplate
    from mmalign.scene.text import tokenize

    template = RewardTemplate()
    texts = [template.evaluation, template.accurate, template.accurate_with_facts,
             template.score_prefix, template.facts_header, template.accurate_given_facts]
    return sorted(set(world_vocabulary(world)) | {t for text in texts for t in tokenize(text)} - {"{", "}"})


def pretrain_work_dir(out_dir: str | Path) -> Path:
    """Where an unfinished pretraining into ``out_dir`` keeps its progress: ``<out_dir>.pretraining``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.pretraining")


def _check_work_recipe(work: Path, recipe: dict[str, Any]) -> None:
    """Refuse to resume progress that other settings made (it would mix two recipes)."""
    import yaml

    from mmalign.training import format_changes

    stored_file = work / "pretrain_recipe.yaml"
    if not stored_file.is_file():
        if any(work.iterdir()):
            raise ValueError(f"{work} holds files but no pretrain_recipe.yaml: not an unfinished pretraining; "
                             "move it away or choose another --out")
        return
    stored = yaml.safe_load(stored_file.read_text())
    changes = {k: (stored.get(k), recipe.get(k)) for k in sorted(stored.keys() | recipe.keys())
               if stored.get(k) != recipe.get(k)}
    if changes:
        raise ValueError(f"{work} holds an unfinished pretraining with other settings ({format_changes(changes)}); "
                         "run again with its settings to finish it, or remove the folder to start afresh")


def _train_stage(init: Path, data, run_dir: Path, config: PretrainConfig, max_length: int, save_steps: int, *,
                 learning_rate: float, warmup_steps: int, epochs: float):
    """One SFT stage of projector and language model from the model at ``init``, with the
    SFT trainer users run; resumes from the newest checkpoint in ``run_dir``."""
    from mmalign.model_config import ModelConfig
    from mmalign.sft import SFTConfig, SFTTrainer
    from mmalign.training import latest_valid_checkpoint

    adapter = ModelConfig(model_name_or_path=str(init), use_peft=False, train_projector=True,
                          train_vision=config.train_vision).load()
    args = SFTConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=50,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,  # the newest may be half-written when the run is killed
        max_length=max_length,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
    )
    trainer = SFTTrainer(adapter, args, train_dataset=data)
    trainer.train(resume_from_checkpoint=latest_valid_checkpoint(args.output_dir))
    return adapter, trainer.state.log_history


def _save_stage(adapter, folder: Path, dtype: str, log: dict[str, Any]) -> None:
    """A finished stage's model as shipped (weights in ``dtype``, processor, log), atomically:
    the next stage starts from exactly these weights, whether or not the run was resumed."""
    import torch

    with atomic_dir(folder, replaces=MODEL) as tmp:
        adapter.model.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
        adapter.processor.save_pretrained(tmp)
        (tmp / "pretrain_log.json").write_text(json.dumps(log, indent=1))


def pretrain_scene_vlm(out_dir: str | Path, config: PretrainConfig | None = None,
                       world: WorldConfig | None = None, *, overwrite: bool = False,
                       save_steps: int = 250) -> Path:
    """Build and pretrain a scene VLM; write it (weights, processor, recipe) to ``out_dir``.

    ``out_dir`` is checked first: an existing folder is replaced if it is a model (or
    empty), any other only with ``overwrite``. Progress is kept in ``<out_dir>.pretraining``
    (the stage-1 model, stage-2 checkpoints every ``save_steps`` steps, the stage-2 model,
    then stage-3 checkpoints), so a run that was killed resumes where it stopped when called
    again with the same settings, and ends with the same weights; the folder is removed once
    the model is written.
    """
    check_output(out_dir, replaces=MODEL, overwrite=overwrite)
    import shutil

    from transformers import set_seed

    from mmalign.config_io import resolved_config, write_resolved_config
    from mmalign.models.scene_vlm import SceneVLMConfig, build_scene_vlm
    from mmalign.scene.sft import scene_sft_dataset

    config = config or PretrainConfig()
    world = world or WorldConfig(seed=config.seed)
    model_cfg = SceneVLMConfig(**config.model)
    work = pretrain_work_dir(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    _check_work_recipe(work, resolved_config(config, world, model_cfg))
    write_resolved_config(work / "pretrain_recipe.yaml", config, world, model_cfg)

    def instructions(n_scenes: int, mix: dict[str, float]):
        return scene_sft_dataset(world, n_scenes, split=PRETRAIN.take(n_scenes)["split"], turns=config.turns,
                                 seed=config.seed, **mix)

    stage1, stage2, stage3 = work / "stage1", work / "stage2", work / "stage3"  # each written atomically
    if not stage2.is_dir():
        if not stage1.is_dir():
            set_seed(config.seed)
            model, processor = build_scene_vlm(scene_vlm_vocabulary(world), model_cfg)
            vision_losses = pretrain_vision_tower(model, processor, world, config) if config.vision_steps else []
            with atomic_dir(stage1, replaces=MODEL) as tmp:
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                (tmp / "vision_losses.json").write_text(json.dumps(vision_losses))
            del model
        data = instructions(config.n_scenes, {name: getattr(config, name) for name in STAGE2_MIX})
        adapter, log = _train_stage(stage1, data, work / "run", config, model_cfg.max_positions, save_steps,
                                    learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
                                    epochs=config.epochs)
        vision_losses = json.loads((stage1 / "vision_losses.json").read_text())
        _save_stage(adapter, stage2, config.save_dtype, {"vision_losses": vision_losses, "sft_log": log})
        del adapter
    final = stage2
    if config.stage3_scenes:
        if not stage3.is_dir():
            data = instructions(config.stage3_scenes, config.stage3_mix)
            adapter, log = _train_stage(stage2, data, work / "run3", config, model_cfg.max_positions, save_steps,
                                        learning_rate=config.stage3_learning_rate,
                                        warmup_steps=config.stage3_warmup_steps, epochs=1.0)
            earlier = json.loads((stage2 / "pretrain_log.json").read_text())
            _save_stage(adapter, stage3, config.save_dtype, {**earlier, "stage3_log": log})
            del adapter
        final = stage3
    with atomic_dir(out_dir, replaces=MODEL, overwrite=overwrite) as tmp:
        for file in final.iterdir():
            shutil.copy2(file, tmp / file.name)
        write_resolved_config(tmp / "pretrain_recipe.yaml", config, world, model_cfg)
    shutil.rmtree(work, ignore_errors=True)
    return Path(out_dir)


def fact_reading_accuracy(adapter, world: WorldConfig | None = None, n_scenes: int = 200, *,
                          seed: int = 0, batch_size: int = 32) -> dict[str, float]:
    """How well a model answers from facts listed in its prompt, on held-out ``eval`` scenes.

    Per scene one statement to check ("Is this statement true according to the facts? ...")
    and one existence question ("According to the facts, is there a ...?"), greedy yes /
    no, first against the pictured scene's own facts (``own``: the image could answer as
    well), then against another scene's (``other``: only reading answers). Accuracy and
    yes-ratio in percent, over both kinds and per kind (``other_existence_accuracy``: the
    lookup a factually augmented reward model needs for yes/no answers; statements also
    bind colours, counts and positions). A model that does not read sits at its prior.
    """
    import random

    import torch

    from mmalign.scene.ranges import BENCHMARK
    from mmalign.scene.render import render
    from mmalign.scene.text import (
        fact_check_questions,
        facts_block,
        facts_existence_questions,
        scene_facts,
    )
    from mmalign.scene.world import scene_at

    world = world or WorldConfig()
    rng = random.Random(f"fact-reading-{seed}")
    rows: dict[str, list[tuple[Any, str, str, bool]]] = {"own": [], "other": []}
    for i in range(n_scenes):
        scene = scene_at(world, BENCHMARK.start + i, BENCHMARK.split)
        for kind, listed in (("own", scene), ("other", scene_at(world, BENCHMARK.start + n_scenes + i, BENCHMARK.split))):
            checks = [("statement", *rng.sample(fact_check_questions(listed, world, rng), 1)[0]),
                      ("existence", *rng.sample(facts_existence_questions(listed, world, rng), 1)[0])]
            block = facts_block(scene_facts(listed))
            rows[kind] += [(scene, question_kind, f"{block}\n{question}", true) for question_kind, question, true in checks]
    result: dict[str, float] = {}
    with torch.no_grad():
        for kind, kind_rows in rows.items():
            said = []
            for lo in range(0, len(kind_rows), batch_size):
                batch = kind_rows[lo : lo + batch_size]
                answers = adapter.generate([[render(scene)] for scene, *_ in batch], [p for _, _, p, _ in batch],
                                           max_new_tokens=2)
                said += [a.strip().lower().startswith("yes") for a in answers]
            right = [s == row[3] for s, row in zip(said, kind_rows)]
            result[f"{kind}_accuracy"] = 100 * sum(right) / len(right)
            result[f"{kind}_yes_ratio"] = 100 * sum(said) / len(said)
            for question_kind in ("existence", "statement"):
                mine = [r for r, row in zip(right, kind_rows) if row[1] == question_kind]
                result[f"{kind}_{question_kind}_accuracy"] = 100 * sum(mine) / len(mine)
    return result
