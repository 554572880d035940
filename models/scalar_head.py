"""Scalar-head variant of an adapter: reward, cost or value models.

A linear head reads the final hidden state of the last real token of each row (found
from the attention mask, so left and right padding both work and pad tokens are never
scored). The base stays shared: the head sits beside the adapter's (possibly 4-bit +
LoRA) model rather than copying it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmalign.io import OutputKind, atomic_dir
from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import (
    EncodedBatch,
    last_token_index,
    predicting_positions,
    unflatten_rows,
)

HEAD_FILE = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"
#: Marks a folder of several scalar-head models scored as one (``mmalign.reward.RewardEnsemble``).
ENSEMBLE_CONFIG = "ensemble.json"
#: What ``save_pretrained`` replaces: a saved reward / cost model (recognised by its head config).
SCALAR_MODEL = OutputKind("reward / cost model", (HEAD_CONFIG,))


def _load_head(head: torch.nn.Module, file: Path, adapter: VLMAdapter) -> None:
    """The head's weights from ``file``; a truncated file or a head made for another base
    (another hidden size) is a ``ValueError`` naming the file."""
    try:
        weights = load_file(file, device=str(adapter.device))
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' errors are not one type; all mean a bad file
        raise ValueError(f"{file}: not a readable safetensors file, truncated or corrupt "
                         f"({' '.join(str(exc).split())})") from None
    try:
        head.load_state_dict(weights)
    except RuntimeError as exc:
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in weights.items()}
        raise ValueError(f"{file}: the head does not fit the base {adapter._base_name()} (it holds {found}, "
                         f"this base needs {expected})") from exc


class ScalarHeadModel(torch.nn.Module):
    """``adapter`` + a ``Linear(hidden, 1)`` head; ``forward(batch) -> (batch,)`` scores.

    The adapter's model is registered as a submodule (``backbone``), so a trainer that
    wraps this module (DDP, FSDP) sees the LoRA weights and the head together. Build it
    after ``adapter.add_lora`` so the registered model is the one with the adapters.
    """

    def __init__(self, adapter: VLMAdapter, kind: str = "reward", head_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.adapter = adapter
        self.backbone = adapter.model
        self.kind = kind
        self.template: dict[str, Any] | None = None  # scoring prompt it was trained with (saved)
        self.adapter_name: str | None = None  # its LoRA adapter, when several share the base
        hidden = adapter.base_model.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, 1, device=adapter.device, dtype=head_dtype)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)

    def _hidden(self, batch: EncodedBatch, image_features: dict[str, Any] | None) -> torch.Tensor:
        if self.backbone is not self.adapter.model:
            raise RuntimeError("the adapter's model changed after the head was built; build the head after add_lora")
        if self.adapter_name is not None:
            self.adapter.use_adapter(self.adapter_name)
        return self.adapter.hidden_states(batch, image_features)

    def values(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None):
        """Per-token values ``(batch, response_len)`` + mask, aligned with the response tokens.

        The value of token t is read at the position that predicts it (the state before
        the token is chosen), as PPO's critic needs.
        """
        hidden = self._hidden(batch, image_features)
        predicts = predicting_positions(batch.response_mask)
        flat = self.head(hidden[predicts.to(hidden.device)].to(self.head.weight.dtype)).squeeze(-1)
        return unflatten_rows(flat, batch.response_lengths.to(flat.device))

    def forward(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> torch.Tensor:
        hidden = self._hidden(batch, image_features)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(batch.attention_mask).to(hidden.device)]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1)

    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """PEFT adapter (if any) + the head in safetensors + a small JSON config, atomically.

        An existing ``path`` is replaced if it is a saved reward / cost model (or empty);
        any other folder only with ``overwrite``; a file never."""
        with atomic_dir(path, replaces=SCALAR_MODEL, overwrite=overwrite) as tmp:
            self.write_files(tmp)
        return Path(path)

    def write_files(self, folder: str | Path) -> None:
        """Write the adapter, head and config into an existing folder (a trainer checkpoint)."""
        from peft import PeftModel

        folder = Path(folder)
        if isinstance(self.adapter.model, PeftModel):
            self.adapter.model.save_pretrained(folder, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, folder / HEAD_FILE)
        (folder / HEAD_CONFIG).write_text(json.dumps({
            "kind": self.kind,
            "family": self.adapter.family,
            "card": self.adapter.card.name,
            "hidden_size": self.head.in_features,
            "dtype": str(self.head.weight.dtype).removeprefix("torch."),
            "template": self.template,
        }, indent=2))

    def load_files(self, folder: str | Path) -> None:
        """Restore adapter and head weights written by :meth:`write_files` (trainer resume)."""
        from peft import PeftModel, set_peft_model_state_dict

        folder = Path(folder)
        if isinstance(self.adapter.model, PeftModel):
            weights = load_file(folder / "adapter_model.safetensors", device=str(self.adapter.device))
            set_peft_model_state_dict(self.adapter.model, weights, adapter_name=self.adapter.model.active_adapter)
        self.head.load_state_dict(load_file(folder / HEAD_FILE, device=str(self.adapter.device)))

    @classmethod
    def from_pretrained(cls, path: str | Path, adapter: VLMAdapter, *, is_trainable: bool = False,
                        adapter_name: str | None = None) -> ScalarHeadModel:
        """Attach a saved head (and its LoRA adapter, if saved) to a loaded base adapter.

        The LoRA adapter is loaded under ``adapter_name`` (default: the model's kind), so a
        reward and a cost model can share one base with the policy.
        """
        from mmalign.io import read_json

        path = Path(path)
        config = read_json(path / HEAD_CONFIG)
        if not isinstance(config, dict) or not all(isinstance(config.get(k), str) for k in ("family", "kind", "dtype")) \
                or not isinstance(getattr(torch, config["dtype"], None), torch.dtype):
            raise ValueError(f"{path / HEAD_CONFIG}: not a scalar head config (expected family, kind and a torch dtype)")
        if config["family"] != adapter.family:
            raise ValueError(f"{path}: head was trained on family {config['family']!r}, not {adapter.family!r}")
        name = adapter_name or config["kind"]
        if (path / "adapter_config.json").exists():
            adapter.load_adapter(path, adapter_name=name, is_trainable=is_trainable)
        model = cls(adapter, kind=config["kind"], head_dtype=getattr(torch, config["dtype"]))
        if (path / "adapter_config.json").exists():
            model.adapter_name = name
        _load_head(model.head, path / HEAD_FILE, adapter)
        model.head.requires_grad_(is_trainable)
        model.template = config.get("template")
        return model
