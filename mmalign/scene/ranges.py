"""Named ranges of scene indices: which scenes each use of the world draws from.

A scene is a pure function of (config, split, index), so two uses that draw overlapping
indices of one split see the same images. Each use below owns a disjoint range, so held-out
benchmark scenes never leak into training data and an experiment's reward-model pairs never
repeat its policy's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SceneRange:
    """Scenes ``start .. stop - 1`` of ``split``."""

    name: str
    split: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def take(self, n: int) -> dict[str, Any]:
        """``split`` and ``start`` for the first ``n`` scenes of the range (keyword arguments of
        the world's builders); an error if ``n`` does not fit."""
        if not 0 <= n <= len(self):
            raise ValueError(f"scene range {self.name!r} holds {len(self)} scenes, {n} asked for")
        return {"split": self.split, "start": self.start}


#: held-out scenes of the benchmark files (``mmalign world make``) and the demo's evaluation
BENCHMARK = SceneRange("benchmark", "eval", 1, 100_001)
#: the scene VLM's pretraining data (instruction conversations and the vision tower's patches)
PRETRAIN = SceneRange("pretrain", "train", 1, 50_001)
#: supervised safety conversations that teach a policy to refuse before RL
SAFETY_SFT = SceneRange("safety-sft", "train", 50_001, 100_001)
#: the model's own answers corrected by the world (the demo's Dense-DPO pairs)
FEEDBACK = SceneRange("feedback", "eval", 100_001, 300_001)
#: reward- and cost-model training pairs
REWARD_TRAIN = SceneRange("reward-train", "train", 300_001, 400_001)
#: held-out reward- and cost-model pairs
REWARD_EVAL = SceneRange("reward-eval", "eval", 400_001, 500_001)
#: RL prompts (PPO, GRPO)
RL_PROMPTS = SceneRange("rl-prompts", "train", 600_001, 700_001)
#: held-out RL prompts
RL_EVAL = SceneRange("rl-eval", "eval", 700_001, 800_001)

RANGES: dict[str, SceneRange] = {
    r.name: r
    for r in (BENCHMARK, PRETRAIN, SAFETY_SFT, FEEDBACK, REWARD_TRAIN, REWARD_EVAL, RL_PROMPTS, RL_EVAL)
}
