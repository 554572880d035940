"""Reward and cost model ensembles: K LoRA adapters + heads on one shared base.

One reward model can be fooled: RL finds answers it over-rates (over-optimisation). K
members trained with different seeds on bootstrap samples of the pairs disagree where the
pairs say little, so a pessimistic aggregate (the worst member, or the mean minus the
variance) leaves the policy nothing to exploit there (Coste et al., ICLR 2024).

An ensemble folder holds ``ensemble.json`` and ``member-0`` … ``member-{K-1}``, each an
ordinary reward / cost model folder (PEFT adapter, head, template), so one member also
loads alone. Reward members are standardised with their mean and std on the training
answers (their offsets and scales are arbitrary, and the worst case and variance compare
members); cost members keep their raw scores, whose sign is the safe / unsafe boundary a
cost budget refers to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmalign.io import OutputKind, read_json
from mmalign.losses.reward import ENSEMBLE_AGGREGATIONS, aggregate_ensemble
from mmalign.models.batch import EncodedBatch
from mmalign.models.scalar_head import ENSEMBLE_CONFIG, HEAD_CONFIG, ScalarHeadModel

#: What writing an ensemble replaces: an earlier ensemble (or a single model) at that path.
ENSEMBLE = OutputKind("reward / cost model ensemble", (ENSEMBLE_CONFIG,))


def member_dir(folder: str | Path, k: int) -> Path:
    return Path(folder) / f"member-{k}"


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_CONFIG).is_file()


def read_ensemble_config(path: str | Path) -> dict[str, Any]:
    """``ensemble.json``, checked: its members exist and its numbers are what they claim."""
    path = Path(path)
    config = read_json(path / ENSEMBLE_CONFIG)
    size = config.get("size") if isinstance(config, dict) else None
    if not isinstance(size, int) or size < 1 or config.get("aggregation") not in ENSEMBLE_AGGREGATIONS:
        raise ValueError(f"{path / ENSEMBLE_CONFIG}: not an ensemble config (expected size >= 1 and an "
                         f"aggregation of {', '.join(ENSEMBLE_AGGREGATIONS)})")
    norm = config.get("normalisation")
    if norm is not None and (not isinstance(norm, list) or len(norm) != size
                             or not all(isinstance(m, list) and len(m) == 2 and m[1] > 0 for m in norm)):
        raise ValueError(f"{path / ENSEMBLE_CONFIG}: normalisation must hold one [mean, std > 0] per member")
    for k in range(size):
        if not (member_dir(path, k) / HEAD_CONFIG).is_file():
            raise ValueError(f"{path}: ensemble member {member_dir(path, k).name} is missing or not a reward model")
    return config


def scoring_model_path(path: str | Path) -> Path:
    """A single model's folder: the model itself, or an ensemble's first member (to start a
    PPO critic from)."""
    return member_dir(path, 0) if is_ensemble(path) else Path(path)


class RewardEnsemble:
    """K :class:`ScalarHeadModel` members on one adapter, scored as one model.

    ``ensemble(batch)`` is the aggregated score (``aggregation``: mean, worst_case,
    uncertainty_weighted with ``uncertainty_weight`` λ); :meth:`member_scores` gives the
    K standardised scores. It stands wherever a reward or cost model is scored
    (:class:`~mmalign.reward.RewardScorer`, PPO, GRPO): ``kind``, ``template``, ``adapter``
    and ``eval`` / ``train`` behave as a single model's.
    """

    def __init__(self, members: Sequence[ScalarHeadModel], *, normalisation: Sequence[Sequence[float]] | None = None,
                 aggregation: str = "mean", uncertainty_weight: float = 1.0):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if aggregation not in ENSEMBLE_AGGREGATIONS:
            raise ValueError(f"unknown ensemble aggregation {aggregation!r}; choose from "
                             f"{', '.join(ENSEMBLE_AGGREGATIONS)}")
        if uncertainty_weight < 0:
            raise ValueError(f"uncertainty_weight must be >= 0, got {uncertainty_weight}")
        first = members[0]
        for k, member in enumerate(members):
            if member.adapter is not first.adapter:
                raise ValueError(f"ensemble member {k} sits on another base: members share one adapter")
            if (member.kind, member.template) != (first.kind, first.template):
                raise ValueError(f"ensemble member {k} differs in kind or scoring template from member 0")
        if normalisation is not None and len(normalisation) != len(members):
            raise ValueError(f"{len(normalisation)} normalisation entries for {len(members)} members")
        self.members = list(members)
        self.normalisation = [tuple(map(float, m)) for m in normalisation] if normalisation is not None else None
        self.aggregation = aggregation
        self.uncertainty_weight = float(uncertainty_weight)

    # ------------------------------------------------------------ a model's face
    @property
    def adapter(self):
        return self.members[0].adapter

    @property
    def kind(self) -> str:
        return self.members[0].kind

    @property
    def template(self) -> dict[str, Any] | None:
        return self.members[0].template

    @property
    def backbone(self):
        return self.members[0].backbone

    @backbone.setter
    def backbone(self, model) -> None:  # rebound after more adapters are loaded on the base
        for member in self.members:
            member.backbone = model

    @property
    def training(self) -> bool:
        return self.members[0].training

    def train(self, mode: bool = True) -> RewardEnsemble:
        for member in self.members:
            member.train(mode)
        return self

    def eval(self) -> RewardEnsemble:
        return self.train(False)

    def __len__(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ scoring
    def member_scores(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> torch.Tensor:
        """``(K, batch)``: each member's score, standardised for reward ensembles."""
        scores = torch.stack([member(batch, image_features).float() for member in self.members])
        if self.normalisation is not None:
            stats = torch.tensor(self.normalisation, dtype=scores.dtype, device=scores.device)
            scores = (scores - stats[:, :1]) / stats[:, 1:]
        return scores

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        return aggregate_ensemble(scores, self.aggregation, uncertainty_weight=self.uncertainty_weight,
                                  higher_is_better=self.kind != "cost")

    def __call__(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> torch.Tensor:
        return self.aggregate(self.member_scores(batch, image_features))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, adapter, *, adapter_name: str | None = None,
                        aggregation: str | None = None, uncertainty_weight: float | None = None) -> RewardEnsemble:
        """Every member of a saved ensemble on ``adapter`` (LoRA adapters
        ``<adapter_name>-0`` …, default the kind); ``aggregation`` and ``uncertainty_weight``
        default to the saved ones."""
        config = read_ensemble_config(path)
        return cls.from_members([member_dir(path, k) for k in range(config["size"])], adapter,
                                adapter_name=adapter_name or config["kind"], normalisation=config.get("normalisation"),
                                aggregation=aggregation or config["aggregation"],
                                uncertainty_weight=config["uncertainty_weight"] if uncertainty_weight is None
                                else uncertainty_weight)

    @classmethod
    def from_members(cls, folders: Sequence[str | Path], adapter, *, adapter_name: str,
                     **options: Any) -> RewardEnsemble:
        """Saved reward / cost models as one ensemble on ``adapter`` (LoRA adapters
        ``<adapter_name>-0`` …), in eval mode; ``options`` as the constructor's."""
        members = [ScalarHeadModel.from_pretrained(folder, adapter, adapter_name=f"{adapter_name}-{k}")
                   for k, folder in enumerate(folders)]
        for member in members:  # loading later members may rewrap the base
            member.backbone = adapter.model
        return cls(members, **options).eval()


def load_scoring_model(path: str | Path, adapter, *, adapter_name: str | None = None, aggregation: str | None = None,
                       uncertainty_weight: float | None = None) -> ScalarHeadModel | RewardEnsemble:
    """A saved reward / cost model or ensemble, attached to ``adapter``, in eval mode.

    ``aggregation`` / ``uncertainty_weight`` apply to an ensemble; asking for one of a
    single model is an error (its score has no spread to aggregate)."""
    if is_ensemble(path):
        return RewardEnsemble.from_pretrained(path, adapter, adapter_name=adapter_name, aggregation=aggregation,
                                              uncertainty_weight=uncertainty_weight)
    if aggregation not in (None, "mean"):
        raise ValueError(f"{path}: aggregation {aggregation!r} needs an ensemble (train one with ensemble_size > 1)")
    model = ScalarHeadModel.from_pretrained(path, adapter, adapter_name=adapter_name)
    model.eval()
    return model
