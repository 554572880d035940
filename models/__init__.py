"""Model adapters: one contract (``VLMAdapter``) over several VLM families.

>>> from mmalign.models import load_adapter
>>> adapter = load_adapter("llava-hf/llava-1.5-7b-hf", quantization=QuantizationConfig())
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from mmalign.models.adapter import VLMAdapter
from mmalign.models.batch import EncodedBatch, last_token_index
from mmalign.models.cards import ModelCard, get_card, list_cards
from mmalign.models.gemma3 import Gemma3Adapter
from mmalign.models.internvl import InternVLAdapter
from mmalign.models.llava import LlavaAdapter
from mmalign.models.llava_next import LlavaNextAdapter
from mmalign.models.llava_onevision import LlavaOnevisionAdapter
from mmalign.models.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from mmalign.models.qwen3_vl import Qwen3VLAdapter
from mmalign.models.scalar_head import ScalarHeadModel
from mmalign.models.smolvlm import Idefics3Adapter, SmolVLMAdapter
from mmalign.qlora import LoraSettings

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

#: What a trainer's ``model`` may be (TRL's forms and mmalign's): see :func:`as_adapter`.
ModelLike: TypeAlias = "VLMAdapter | str | Path | PreTrainedModel | PeftModel"

ADAPTERS: dict[str, type[VLMAdapter]] = {
    cls.family: cls for cls in (
        LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter,
        Qwen3VLAdapter, Gemma3Adapter, InternVLAdapter, SmolVLMAdapter, Idefics3Adapter,
    )
}


def detect_family(name_or_path: str | Path, trust_remote_code: bool = False) -> str:
    """The adapter family of a checkpoint, from its config's ``model_type``."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    return adapter_class(model_type, str(name_or_path)).family


def adapter_class(model_type: str, where: str) -> type[VLMAdapter]:
    """The adapter of a config's ``model_type``; an unsupported one is an error naming ``where``
    it came from and the supported families."""
    if model_type not in ADAPTERS:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; "
                         f"supported families: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_type]


def _named_card(name: str) -> ModelCard | None:
    """The card ``name`` names (a card name or hub id that is not a local folder), or None;
    a missing local path is an error rather than a hub id to look up."""
    if Path(name).exists():
        return None
    try:
        return get_card(name)
    except KeyError:
        if Path(name).is_absolute() or name.startswith((".", "~")):  # a path, not a hub id
            raise FileNotFoundError(f"model folder {name} does not exist (nor is it a model card name)") from None
        return None


def card_for(name_or_path: str | Path, *, trust_remote_code: bool = False) -> ModelCard:
    """The card that describes a checkpoint: its own (by card name or hub id), else its
    family's default card; :func:`load_adapter` gives the adapter the same one."""
    return _named_card(str(name_or_path)) or ADAPTERS[detect_family(name_or_path, trust_remote_code)].default_card()


def load_adapter(name_or_path: str | Path, *, family: str | None = None, **kwargs) -> VLMAdapter:
    """Load any supported checkpoint: a model card name, a hub id or a local folder.

    Keyword arguments go to :meth:`VLMAdapter.from_pretrained` (``dtype``,
    ``quantization``, ``device_map``, ``train_projector``...).
    """
    name = str(name_or_path)
    card = kwargs.get("card")
    if card is None and (card := _named_card(name)) is not None:
        kwargs["card"] = card
        name = str(card.local_path() or card.hub_id)
    family = family or (card.family if isinstance(card, ModelCard) else None) or detect_family(
        name, kwargs.get("trust_remote_code", False)
    )
    if family not in ADAPTERS:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family].from_pretrained(name, **kwargs)


#: LoraConfig fields ``as_adapter`` carries over (the rest must keep peft's defaults) and
#: fields that only describe the config, not the LoRA it makes.
_LORA_CARRIED = frozenset({"r", "lora_alpha", "lora_dropout", "target_modules", "bias"})
_LORA_DESCRIPTIVE = frozenset({"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                               "revision", "megatron_core", "runtime_config"})


def lora_settings_from_peft(peft_config: Any, adapter: VLMAdapter) -> LoraSettings:
    """A peft ``LoraConfig`` as the LoRA mmalign attaches: rank, alpha, dropout, bias and leaf
    target names, on the language model only. Anything mmalign would not honour (DoRA,
    rsLoRA, ``modules_to_save``, a regex or a vision-tower target...) is refused by name
    rather than silently dropped."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"peft_config must be a peft LoraConfig, got {type(peft_config).__name__}: mmalign "
                        "trains LoRA adapters (or, without peft_config, the model you pass as it is)")
    defaults = LoraConfig()
    odd = [f for f in vars(defaults) if f not in _LORA_CARRIED | _LORA_DESCRIPTIVE
           and getattr(peft_config, f, None) != getattr(defaults, f)]
    if odd:
        raise ValueError(f"peft_config: {', '.join(f'{f}={getattr(peft_config, f)!r}' for f in odd)} "
                         f"{'is' if len(odd) == 1 else 'are'} not supported; mmalign attaches plain LoRA "
                         "(r, lora_alpha, lora_dropout, bias, target_modules) to the language model")
    targets = peft_config.target_modules
    parts = {s.rsplit(".", 1)[-1] for s in (adapter.vision_scope, *adapter.projector_scopes)}
    named = [targets] if isinstance(targets, str) else sorted(targets or ())
    vision = [t for t in named if any(part in t for part in parts)]
    if vision:
        raise ValueError(f"peft_config.target_modules names the vision tower or projector ({', '.join(vision)}): "
                         "mmalign never puts LoRA there (train the projector with train_projector, the vision "
                         "tower in full with ModelConfig.train_vision); give leaf module names (e.g. ['q_proj', "
                         f"'v_proj']), which get LoRA in the language model ({adapter.language_scope}) only")
    if isinstance(targets, str) and targets != "all-linear":
        raise ValueError(f"peft_config.target_modules={targets!r}: a regex is not supported; give leaf module "
                         "names (e.g. ['q_proj', 'v_proj']) or 'all-linear', which mmalign matches inside the "
                         f"language model ({adapter.language_scope}) only")
    dotted = [t for t in named if "." in t]
    if not isinstance(targets, str) and dotted:
        raise ValueError(f"peft_config.target_modules holds qualified names ({', '.join(dotted)}); give leaf module "
                         f"names (e.g. ['q_proj', 'v_proj']): mmalign puts LoRA in the language model "
                         f"({adapter.language_scope}) only")
    if targets is not None and not isinstance(targets, str):
        targets = named
    return LoraSettings(r=peft_config.r, alpha=peft_config.lora_alpha, dropout=peft_config.lora_dropout,
                        target_modules=targets, bias=peft_config.bias)


def _processor(processing_class: Any, name: str) -> Any:
    """The processor to pair with a model: the one given, else the checkpoint's own (as TRL does)."""
    if processing_class is None:
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ValueError(f"no processor for the model {name!r} ({' '.join(str(err).split())[:200]}): pass "
                             "processing_class=AutoProcessor.from_pretrained(...)") from None
    if not hasattr(processing_class, "tokenizer") or not hasattr(processing_class, "image_processor"):
        raise TypeError(f"processing_class must be the model's processor (AutoProcessor.from_pretrained(...)), got "
                        f"{type(processing_class).__name__}: a vision-language model needs the image processor too")
    return processing_class


def as_adapter(model: ModelLike, *, processing_class: Any = None, peft_config: Any = None,
               gradient_checkpointing: bool = False, **load_kwargs: Any) -> VLMAdapter:
    """What a trainer's ``model`` may be, as in TRL, turned into a :class:`VLMAdapter`.

    ``model`` is an adapter (used as it is), a model card name / hub id / local folder
    (:func:`load_adapter` with ``load_kwargs``), a transformers ``PreTrainedModel`` or a peft
    ``PeftModel`` on one (the adapter family is its config's ``model_type``; vision tower
    and projector are frozen as :func:`load_adapter` does). ``processing_class`` replaces
    the checkpoint's processor; ``peft_config`` (a ``LoraConfig``) attaches fresh LoRA
    exactly as :meth:`VLMAdapter.add_lora` does (:func:`lora_settings_from_peft`).
    """
    from peft import PeftModel
    from transformers import PreTrainedModel

    if isinstance(model, VLMAdapter):
        if processing_class is not None and processing_class is not model.processor:
            raise ValueError("processing_class: an mmalign adapter brings its own processor (adapter.processor); "
                             "pass the model itself (a PreTrainedModel or its folder) to use another one")
        adapter = model
    elif isinstance(model, str | Path):
        adapter = load_adapter(model, **load_kwargs)
        if processing_class is not None:  # the same model and card, the user's processor
            projector = adapter.train_projector
            adapter = type(adapter)(adapter.model, _processor(processing_class, str(model)), adapter.card)
            adapter.train_projector = projector
    elif isinstance(model, PreTrainedModel | PeftModel):
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        model_type = base.config.model_type
        cls = adapter_class(model_type, "model")
        if not isinstance(base, cls.model_class):
            raise TypeError(f"model: a {model_type} model is trained as {cls.model_class.__name__} (with its "
                            f"language-model head), got {type(base).__name__}")
        name = base.config._name_or_path or model_type
        adapter = _wrap(cls, model, _processor(processing_class, name), name)
    else:
        raise TypeError(f"model must be a model card name, hub id or local folder (str), a transformers "
                        f"PreTrainedModel (with processing_class=its processor), a peft PeftModel or an mmalign "
                        f"adapter (mmalign.models.load_adapter), got {type(model).__name__}")
    if peft_config is not None:
        if isinstance(adapter.model, PeftModel):
            raise ValueError("peft_config: the model already carries LoRA adapters; pass it without peft_config "
                             "(or the base model with it)")
        adapter.add_lora(lora_settings_from_peft(peft_config, adapter), gradient_checkpointing=gradient_checkpointing)
    return adapter


def _wrap(cls: type[VLMAdapter], model: Any, processor: Any, name: str) -> VLMAdapter:
    """An adapter around a loaded model; a plain model gets mmalign's frozen vision tower and
    projector, a PeftModel keeps peft's trainable flags."""
    from peft import PeftModel

    adapter = cls(model, processor, cls._card_for(name))
    if isinstance(model, PeftModel):
        adapter.train_projector = any(p.requires_grad for _, p in adapter.projector_parameters())
    else:
        adapter.freeze()
    return adapter


__all__ = [
    "ADAPTERS",
    "adapter_class",
    "EncodedBatch",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "ModelCard",
    "ModelLike",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "SmolVLMAdapter",
    "ScalarHeadModel",
    "VLMAdapter",
    "as_adapter",
    "card_for",
    "detect_family",
    "get_card",
    "last_token_index",
    "list_cards",
    "load_adapter",
    "lora_settings_from_peft",
]
