"""The scene world as a whole: write benchmark files, and pretrain the tiny scene VLM.

``pretrain_scene_vlm`` is the script that made the shipped weights: it builds a fresh
LLaVA over the world's vocabulary and trains every part of it (vision tower, projector,
language model) with the same SFT trainer users run, on instruction data from the
world's training split, where co-occurring objects appear together 90% of the time.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmalign.data_builders.scene_world import WorldConfig, world_vocabulary
from mmalign.io import atomic_dir


@dataclass
class PretrainConfig:
    """Everything that determines the shipped scene VLM's weights."""

    seed: int = 0
    n_scenes: int = 24000
    turns: int = 3
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    save_dtype: str = "float16"
    model: dict = field(default_factory=dict)  # SceneVLMConfig overrides


def pretrain_scene_vlm(out_dir: str | Path, config: PretrainConfig | None = None,
                       world: WorldConfig | None = None) -> Path:
    """Build and pretrain a scene VLM; write it (weights, processor, recipe) to ``out_dir``."""
    from transformers import set_seed

    from mmalign.config_io import write_resolved_config
    from mmalign.data_builders.scene_sft import scene_sft_dataset
    from mmalign.model_config import ModelConfig
    from mmalign.models.scene_vlm import SceneVLMConfig, build_scene_vlm
    from mmalign.sft import SFTConfig, SFTTrainer

    config = config or PretrainConfig()
    world = world or WorldConfig(seed=config.seed)
    set_seed(config.seed)
    model_cfg = SceneVLMConfig(**config.model)
    model, processor = build_scene_vlm(world_vocabulary(world), model_cfg)
    data = scene_sft_dataset(world, config.n_scenes, split="train", turns=config.turns, seed=config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init"
        model.save_pretrained(init)
        processor.save_pretrained(init)
        model_config = ModelConfig(
            model_name_or_path=str(init), use_peft=False, train_projector=True, train_vision=True
        )
        adapter = model_config.load()
        args = SFTConfig(
            output_dir=str(Path(tmp) / "run"),
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            lr_scheduler_type="cosine",
            logging_steps=50,
            save_strategy="no",
            max_length=model_cfg.max_positions,
            seed=config.seed,
            data_seed=config.seed,
            report_to="none",
        )
        trainer = SFTTrainer(adapter, args, train_dataset=data)
        trainer.train()
        trained = adapter.model.to(getattr(torch, config.save_dtype))
        with atomic_dir(out_dir) as final:
            trained.save_pretrained(final, safe_serialization=True)
            adapter.processor.save_pretrained(final)
            write_resolved_config(final / "pretrain_recipe.yaml", config, world, model_cfg)
    return Path(out_dir)
