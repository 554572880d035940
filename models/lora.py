"""LoRA adapters on a ``VLMAdapter``: attach, switch, save, load and disable them.

A mixin so peft's state handling (which resets trainable flags on every adapter switch)
stays in one place. The adapter class provides ``model``, ``card``, ``family`` and the
module scopes; :class:`~mmalign.models.loading.LoadingMixin` provides ``base_model``,
``quantized``, ``freeze``, ``train_projector`` and ``_is_under``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from mmalign.io import ADAPTER, atomic_dir
from mmalign.qlora import LoraSettings, lora_target_regex


class LoraMixin:
    """LoRA / peft state of an adapter (peft is imported only when LoRA is used)."""

    def lora_config(self, settings: LoraSettings):
        from peft import LoraConfig

        targets = settings.target_modules or self.card.lora.target_modules
        scopes = [self.language_scope] + ([self.vision_scope] if settings.include_vision else [])
        if targets == "all-linear":
            targets = sorted(self._linear_leaf_names(scopes))
        elif isinstance(targets, str):
            targets = [targets]
        modules_to_save = None
        if self.train_projector:
            # Projector trained in full; peft saves it with the adapter.
            modules_to_save = self._projector_save_names()
        return LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            bias=settings.bias,
            target_modules=lora_target_regex(scopes, list(targets)),
            modules_to_save=modules_to_save,
        )

    def _projector_save_names(self) -> list[str]:
        """Names peft saves the projector under: each scope's last name part, or for a list of
        modules (Qwen3-VL's DeepStack mergers) each member, since peft cannot wrap a list."""
        modules = dict(self.base_model.named_modules())
        names = []
        for scope in self.projector_scopes:
            module, leaf = modules[scope], scope.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.ModuleList):
                names += [f"{leaf}.{i}" for i in range(len(module))]
            else:
                names.append(leaf)
        return names

    def _linear_leaf_names(self, scopes: Sequence[str]) -> set[str]:
        names = set()
        for name, module in self.base_model.named_modules():
            if self._is_under(name, scopes) and _is_linear(module):
                names.add(name.rsplit(".", 1)[-1])
        return names

    def add_lora(self, settings: LoraSettings | None = None, *, gradient_checkpointing: bool = False,
                 adapter_name: str = "default") -> None:
        """Wrap the model with fresh, trainable LoRA adapters (QLoRA when 4-bit).

        On a model that already has adapters, ``adapter_name`` adds another trainable one
        beside them on the same base (PPO's critics); the active adapter does not change.
        """
        from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

        settings = settings or self.card.lora
        was_training = self.model.training
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(adapter_name, self.lora_config(settings))
            self._mark_trainable(adapter_name, True)  # peft leaves a non-active adapter frozen
            self.model.train(was_training)
            return
        if self.quantized:
            self.model = prepare_model_for_kbit_training(
                self.model, use_gradient_checkpointing=gradient_checkpointing
            )
            self.freeze(self.train_projector)  # it may upcast and re-enable the projector
        elif gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model = get_peft_model(self.model, self.lora_config(settings), adapter_name=adapter_name)
        self.model.train(was_training)  # new LoRA dropout layers start in training mode

    def use_adapter(self, name: str) -> None:
        """Make adapter ``name`` the active one without changing which weights are trainable.

        (peft's ``set_adapter`` also freezes every other adapter, which would stop the
        policy from training while a critic or the reward model runs.)
        """
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            raise ValueError(f"no adapters on this model; cannot activate {name!r}")
        if self.model.active_adapter == name:
            return
        with self._trainable_kept():
            self.model.set_adapter(name)

    def _mark_trainable(self, adapter_name: str, trainable: bool) -> None:
        for name, p in self.model.named_parameters():
            if f".{adapter_name}." in name and "lora_" in name:
                p.requires_grad_(trainable)

    @contextmanager
    def _trainable_kept(self):
        """Restore every parameter's ``requires_grad`` on exit (peft resets them on adapter switches)."""
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def save_adapter(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save LoRA weights in the standard PEFT format (safetensors), written atomically.

        An existing ``path`` is replaced if it is an adapter folder (or empty); any other
        folder only with ``overwrite``; a file never."""
        with atomic_dir(path, replaces=ADAPTER, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            (tmp / "mmalign_adapter.json").write_text(
                json.dumps({"family": self.family, "card": self.card.name}, indent=2)
            )
        return Path(path)

    def load_adapter(self, path: str | Path, *, adapter_name: str = "default", is_trainable: bool = False) -> None:
        """Attach a saved PEFT adapter and make it active.

        A second call adds another named adapter beside the first; adapters already there
        keep their trainable flags (the new one is trainable only with ``is_trainable``).
        A local adapter is checked first and after loading: an unreadable or truncated file,
        an adapter saved for another model family, layer shapes that differ from this base's,
        or weights for modules this base lacks are a ``ValueError`` naming the adapter, this
        base and, when the adapter's ``adapter_config.json`` tells, the base it was made for.
        """
        from peft import PeftModel

        folder = Path(path)
        if not folder.exists() and (folder.is_absolute() or str(path).startswith((".", "~"))):
            raise FileNotFoundError(f"adapter folder {path} does not exist")
        keys, made_for = _adapter_files(folder, self.family, self._base_name()) if folder.is_dir() else (None, None)

        def unfit(reason: str) -> ValueError:
            made = f" (it was made for {made_for})" if made_for else ""
            return ValueError(f"adapter {path} does not fit the base {self._base_name()}{made}: {reason}")

        try:
            if isinstance(self.model, PeftModel):
                with self._trainable_kept():
                    self.model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
                    self.model.set_adapter(adapter_name)
                self._mark_trainable(adapter_name, is_trainable)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(path), adapter_name=adapter_name, is_trainable=is_trainable
                )
        except RuntimeError as exc:
            if "size mismatch" not in str(exc):
                raise
            first = next((line.strip() for line in str(exc).split("size mismatch for ")[1:2]), str(exc))
            raise unfit(f"layer shapes differ, e.g. {' '.join(first.split())}") from None
        if keys is not None:
            from peft import get_peft_model_state_dict

            loaded = set(get_peft_model_state_dict(self.model, adapter_name=adapter_name))
            stray = [k for k in keys if k not in loaded]
            if stray:
                raise unfit(f"{len(stray)} of its {len(keys)} weights have no module in this base, e.g. {stray[0]}")

    def _base_name(self) -> str:
        config = getattr(self.base_model, "config", None)
        return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or "model")

    @contextmanager
    def adapters_disabled(self):
        """Run the frozen base (the usual DPO / PPO reference) without copying weights."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            with self._trainable_kept(), self.model.disable_adapter():
                yield
        else:
            yield


def _adapter_files(folder: Path, family: str, base: str) -> tuple[list[str], str | None]:
    """The weight names of a saved adapter folder and the base it names, checked before peft
    reads it: safetensors only, every file readable (a truncated file is named), and the
    model family it was saved from (``mmalign_adapter.json``) is this base's."""
    from safetensors import safe_open

    from mmalign.io import read_json

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no adapter_model.safetensors (adapters are read from safetensors "
                                "only, never from pickle files)")
    config = read_json(folder / "adapter_config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'adapter_config.json'}: not a PEFT adapter config (expected a JSON object)")
    made_for = config.get("base_model_name_or_path") if isinstance(config.get("base_model_name_or_path"), str) else None
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors' errors are not one type; all mean a bad file
        raise ValueError(f"{weights}: not a readable safetensors file, truncated or corrupt "
                         f"({' '.join(str(exc).split())})") from None
    saved = folder / "mmalign_adapter.json"
    if saved.is_file():
        info = read_json(saved)
        saved_family = info.get("family") if isinstance(info, dict) else None
        if saved_family is not None and saved_family != family:
            made = f" {made_for}" if made_for else ""
            raise ValueError(f"adapter {folder} was made for the {saved_family} model{made}, not for the "
                             f"{family} model {base}")
    return keys, made_for


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' Linear4bit subclasses nn.Linear, so 4-bit layers count too.
    return isinstance(module, torch.nn.Linear)
