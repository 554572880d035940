"""The scene world: seeded synthetic scenes of coloured icons whose content is known exactly.

It is the ground truth every other part of mmalign can lean on without downloads: the
world (``world``), its pictures (``render``), its language (``text``), its safety prompts
(``safety``), which scene indices each use draws (``ranges``), and, built on those, the
benchmark files of a world (``exports``), the world as annotator (``feedback``), the
scene VLM's instruction data (``sft``) and counterfactual scenes with their image-contrast
pairs (``counterfactual``).
"""

from mmalign.scene.counterfactual import (
    Counterfactual,
    contrast_records,
    counterfactual_scene,
    save_counterfactual_dataset,
)
from mmalign.scene.render import render, render_png
from mmalign.scene.safety import SafetyPrompt, SafetyResponse, safety_prompts
from mmalign.scene.text import QA, captions, questions, tokenize, world_vocabulary
from mmalign.scene.world import Scene, SceneObject, WorldConfig, generate_scenes, scene_at

__all__ = [
    "QA",
    "Counterfactual",
    "SafetyPrompt",
    "SafetyResponse",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "captions",
    "contrast_records",
    "counterfactual_scene",
    "generate_scenes",
    "questions",
    "render",
    "render_png",
    "safety_prompts",
    "save_counterfactual_dataset",
    "scene_at",
    "tokenize",
    "world_vocabulary",
]
