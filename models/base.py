"""The adapter contract: the one place that knows a model family's quirks.

Everything above this layer (collators, losses, trainers, benchmarks) talks to a
``VLMAdapter``: it loads a checkpoint (fp32 / bf16 / 4-bit NF4), attaches LoRA to the
language model only, turns (images, prompt, response) into model inputs with the
response tokens marked and mapped to character offsets, computes image features once,
returns per-token response log-probs, and generates.

Family subclasses only declare module names and which processor outputs feed the vision
encoder; the shared logic lives here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.data_builders.schema import IMAGE_PLACEHOLDER
from mmalign.models.cards import ModelCard, get_card, list_cards
from mmalign.qlora import (
    LoraSettings,
    QuantizationConfig,
    keep_training_layout,
    lora_target_regex,
    resolve_dtype,
)

#: A prompt is either plain user text (images go before it in one user turn) or a list of
#: chat messages in the transformers / TRL conversational format.
Prompt = str | list[dict[str, Any]]


@dataclass
class EncodedBatch:
    """Model inputs for a batch of (images, prompt[, response]) rows.

    ``input_ids``, ``attention_mask`` and ``response_mask`` are ``(batch, seq)``;
    ``response_mask`` marks the response tokens (including the end-of-turn token).
    ``image_inputs`` feed the vision encoder (pixel values, sizes, grids, one entry per
    image across the batch); ``text_inputs`` are extra per-token tensors the language
    model needs even when image features are cached (e.g. Qwen2-VL's token types).
    ``response_offsets[b][j]`` is the character span of response token ``j`` of row ``b``
    in that row's response string, so character spans map to token weights.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    text_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    response_offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    images_per_row: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> EncodedBatch:
        def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return EncodedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
            image_inputs=move(self.image_inputs),
            text_inputs=move(self.text_inputs),
            response_offsets=self.response_offsets,
            images_per_row=self.images_per_row,
        )

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def as_features(self) -> dict[str, torch.Tensor]:
        """A flat dict of tensors, the shape data collators hand to ``Trainer``."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "response_mask": self.response_mask,
            **self.image_inputs,
            **self.text_inputs,
        }

    @classmethod
    def from_features(cls, features: dict[str, torch.Tensor], spec: ModelInputsSpec) -> EncodedBatch:
        """Inverse of :meth:`as_features` (offsets are not carried through a trainer)."""
        return cls(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            response_mask=features["response_mask"].bool(),
            image_inputs={k: features[k] for k in spec.image_keys if k in features},
            text_inputs={k: features[k] for k in spec.text_keys if k in features},
        )


@dataclass
class Samples:
    """Sampled responses: the right-padded ``batch`` (prompt + response), their text,
    whether each reached the stop token, and their length in tokens."""

    batch: EncodedBatch
    texts: list[str]
    ended: torch.Tensor
    lengths: torch.Tensor


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, ``(batch,)``, under left or right padding."""
    seq = attention_mask.shape[-1]
    return seq - 1 - attention_mask.flip(-1).long().argmax(-1)


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, ``(n, vocab), (n,) -> (n,)``, in float32.

    Uses logsumexp instead of a full log_softmax so only one extra ``(n,)`` vector is kept.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def user_turn(prompt: Prompt, n_images: int) -> list[dict[str, Any]]:
    """Plain text becomes one user message: images go where the text has ``<image>``
    placeholders (one per image, as in LLaVA data), otherwise before the text.

    Left in the text, a placeholder would be expanded by the processor on top of the
    image parts, so a count that does not match the images is an error.
    """
    if not isinstance(prompt, str):
        return list(prompt)
    placed = prompt.count(IMAGE_PLACEHOLDER)
    if placed == 0:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    elif placed == n_images:
        content, text_before = [], False
        for j, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if j:
                content.append({"type": "image"})
            if piece.strip():  # templates that put images first join the text parts as they are
                content.append({"type": "text", "text": (" " if text_before else "") + piece.strip()})
                text_before = True
    else:
        raise ValueError(f"a prompt has {placed} {IMAGE_PLACEHOLDER} placeholder(s) but its row has "
                         f"{n_images} image(s)")
    return [{"role": "user", "content": content}]


def pad_rows(rows: Sequence[torch.Tensor], value: int, side: str = "right") -> torch.Tensor:
    """Stack 1-D tensors into ``(len(rows), max_len)``, padding on ``side``."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if side == "right":
            out[i, : len(r)] = r
        else:
            out[i, width - len(r) :] = r
    return out


def predicting_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose output predicts a response token (the one before each of them)."""
    predicts = torch.zeros_like(response_mask)
    predicts[:, :-1] = response_mask[:, 1:]
    return predicts


def pad_cat(tensors: Sequence[torch.Tensor], value: float | int | bool) -> torch.Tensor:
    """Concatenate ``(b_i, w_i)`` tensors along rows, right-padding to the widest with ``value``."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), value)], 1) for t in tensors])


def concat_batches(batches: Sequence[EncodedBatch], pad_id: int) -> EncodedBatch:
    """One right-padded batch from several (images in row order, one entry per image)."""
    return EncodedBatch(
        input_ids=pad_cat([b.input_ids for b in batches], pad_id),
        attention_mask=pad_cat([b.attention_mask for b in batches], 0),
        response_mask=pad_cat([b.response_mask for b in batches], False),
        image_inputs={k: torch.cat([b.image_inputs[k] for b in batches]) for k in batches[0].image_inputs},
        text_inputs={k: pad_cat([b.text_inputs[k] for b in batches], 0) for k in batches[0].text_inputs},
        response_offsets=[o for b in batches for o in b.response_offsets],
        images_per_row=[n for b in batches for n in b.images_per_row],
    )


def concat_features(features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Cached image features of several batches, in the same order as :func:`concat_batches`."""
    if features[0] is None:
        return None
    return {"image": BaseModelOutputWithPooling(
        pooler_output=[x for f in features for x in f["image"].pooler_output])}


def normalise_images(images: Sequence[Any] | None, batch: int) -> list[list[Image.Image]]:
    """Accept one image, ``None`` or a list of images per row; return lists of RGB images."""
    if images is None:
        return [[] for _ in range(batch)]
    if len(images) != batch:
        raise ValueError(f"got {len(images)} image entries for {batch} prompts")
    rows: list[list[Image.Image]] = []
    for i, entry in enumerate(images):
        if entry is None:
            entry = []
        elif isinstance(entry, Image.Image):
            entry = [entry]
        for img in entry:
            if not isinstance(img, Image.Image):
                raise TypeError(f"row {i}: images must be PIL images, got {type(img).__name__}")
        rows.append([img.convert("RGB") for img in entry])
    return rows


@dataclass
class ModelInputsSpec:
    """Which processor outputs go where, declared per family."""

    image_keys: tuple[str, ...]  # arguments of ``get_image_features``
    text_keys: tuple[str, ...] = ()  # per-token tensors the forward needs (padded like input_ids)
    forward_image_keys: tuple[str, ...] = ()  # image tensors the forward needs with cached features


class VLMAdapter:
    """Base class of all model-family adapters. Use :func:`mmalign.models.load_adapter`."""

    family: ClassVar[str]
    model_class: ClassVar[type]
    vision_scope: ClassVar[str]  # qualified name of the vision tower
    projector_scopes: ClassVar[tuple[str, ...]]  # modules / parameters of the projector
    language_scope: ClassVar[str]  # qualified name of the language model
    inputs: ClassVar[ModelInputsSpec]
    default_card_name: ClassVar[str | None] = None  # card used for local folders of this family

    def __init__(self, model: torch.nn.Module, processor: Any, card: ModelCard):
        self.model = model
        self.processor = processor
        self.card = card
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if processor.chat_template is None:
            processor.chat_template = card.chat_template
        self.end_of_turn_ids = self._token_ids(card.end_of_turn)
        # What the tokenizer puts in front of a text (BOS for Llama / Mistral, nothing for Qwen).
        self.bos_ids = [
            t for t in self.tokenizer("x", add_special_tokens=True)["input_ids"]
            if t in self.tokenizer.all_special_ids
        ][:1]

    # ------------------------------------------------------------------ loading
    @classmethod
    def default_card(cls) -> ModelCard:
        if cls.default_card_name:
            return get_card(cls.default_card_name)
        for card in list_cards():
            if card.family == cls.family:
                return card
        raise LookupError(f"no model card for family {cls.family!r}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        card: ModelCard | str | None = None,
        dtype: str | torch.dtype = "float32",
        quantization: QuantizationConfig | None = None,
        device_map: str | dict | None = None,
        train_projector: bool = False,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
    ) -> VLMAdapter:
        """Load model and processor exactly as a user would, from a folder or hub id.

        With ``quantization`` the language model is loaded in 4 bits; the vision tower,
        projector and output head stay in ``dtype``. Vision tower and projector are frozen
        (``train_projector=True`` unfreezes the projector).
        """
        from transformers import AutoProcessor

        if isinstance(card, str):
            card = get_card(card)
        card = card or cls._card_for(str(name_or_path))
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
        if quantization is not None and quantization.load_in_4bit:
            skip = [cls.vision_scope, *cls.projector_scopes, "lm_head"]
            kwargs["quantization_config"] = quantization.to_bitsandbytes(skip)
        if device_map is not None:
            kwargs["device_map"] = device_map
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        folder = Path(name_or_path)
        if folder.is_dir() and not any(folder.glob("*.safetensors")):  # never unpickle a checkpoint
            raise FileNotFoundError(f"{folder}: no .safetensors weights (checkpoints are read from "
                                    "safetensors only, never from pickle files)")
        model = cls.model_class.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **kwargs
        )
        if quantization is not None and quantization.load_in_4bit:
            keep_training_layout(model)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        adapter = cls(model, processor, card)
        adapter.freeze(train_projector=train_projector)
        return adapter

    @classmethod
    def _card_for(cls, name_or_path: str) -> ModelCard:
        try:
            card = get_card(name_or_path)
            if card.family == cls.family:
                return card
        except KeyError:
            pass
        return cls.default_card()

    # ------------------------------------------------------------------ modules
    @property
    def base_model(self) -> torch.nn.Module:
        """The transformers model underneath any peft wrapper."""
        from peft import PeftModel

        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def quantized(self) -> bool:
        return bool(getattr(self.base_model, "is_loaded_in_4bit", False))

    def _is_under(self, name: str, scopes: Sequence[str]) -> bool:
        name = re.sub(r"^base_model\.model\.", "", name)
        return any(name == s or name.startswith(s + ".") for s in scopes)

    def vision_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.base_model.named_parameters()
            if self._is_under(n, [self.vision_scope])
            and not self._is_under(n, self.projector_scopes)
        ]

    def projector_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.base_model.named_parameters()
            if self._is_under(n, self.projector_scopes)
        ]

    def freeze(self, train_projector: bool = False, train_vision: bool = False) -> None:
        """Freeze the vision tower and the projector unless asked to train them."""
        self.train_projector = train_projector
        for _, p in self.vision_parameters():
            p.requires_grad_(train_vision)
        for _, p in self.projector_parameters():
            p.requires_grad_(train_projector)

    # ------------------------------------------------------------------ LoRA
    def lora_config(self, settings: LoraSettings):
        from peft import LoraConfig

        targets = settings.target_modules or self.card.lora_targets
        scopes = [self.language_scope] + ([self.vision_scope] if settings.include_vision else [])
        if targets == "all-linear":
            targets = sorted(self._linear_leaf_names(scopes))
        elif isinstance(targets, str):
            targets = [targets]
        modules_to_save = None
        if self.train_projector:
            # Projector trained in full; peft saves it with the adapter.
            modules_to_save = [s.rsplit(".", 1)[-1] for s in self.projector_scopes]
        return LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            bias=settings.bias,
            target_modules=lora_target_regex(scopes, list(targets)),
            modules_to_save=modules_to_save,
        )

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

        settings = settings or LoraSettings(
            r=self.card.lora_r, alpha=self.card.lora_alpha, dropout=self.card.lora_dropout
        )
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

    def save_adapter(self, path: str | Path) -> Path:
        """Save LoRA weights in the standard PEFT format (safetensors), written atomically."""
        from mmalign.io import atomic_dir

        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            (tmp / "mmalign_adapter.json").write_text(
                json.dumps({"family": self.family, "card": self.card.name}, indent=2)
            )
        return Path(path)

    def load_adapter(self, path: str | Path, *, adapter_name: str = "default", is_trainable: bool = False) -> None:
        """Attach a saved PEFT adapter and make it active.

        A second call adds another named adapter beside the first; adapters already there
        keep their trainable flags (the new one is trainable only with ``is_trainable``).
        """
        from peft import PeftModel

        if Path(path).is_dir() and not (Path(path) / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: no adapter_model.safetensors (adapters are read from safetensors "
                                    "only, never from pickle files)")
        if isinstance(self.model, PeftModel):
            with self._trainable_kept():
                self.model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
                self.model.set_adapter(adapter_name)
            self._mark_trainable(adapter_name, is_trainable)
        else:
            self.model = PeftModel.from_pretrained(
                self.model, str(path), adapter_name=adapter_name, is_trainable=is_trainable
            )

    @contextmanager
    def adapters_disabled(self):
        """Run the frozen base (the usual DPO / PPO reference) without copying weights."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            with self._trainable_kept(), self.model.disable_adapter():
                yield
        else:
            yield

    # ------------------------------------------------------------------ inputs
    def _token_ids(self, text: str) -> list[int]:
        tid = self.tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
            return [tid]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def format_prompt(self, prompt: Prompt, n_images: int) -> str:
        """Render the chat template up to the start of the assistant's answer."""
        return self._render(user_turn(prompt, n_images), add_generation_prompt=True)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def conversation_segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """Split a rendered conversation into (text, is_assistant) pieces.

        Each assistant message becomes its bare content (tokenized alone, followed by the
        end-of-turn token, exactly like a single-turn response); the text the template
        puts between assistant turns is recovered by rendering growing prefixes, which
        works for any template whose renderings extend each other.
        """
        eot = self.card.end_of_turn
        segments: list[tuple[str, bool]] = []
        rendered, carry = "", ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], add_generation_prompt=True)
            if not prefix.startswith(rendered):
                raise ValueError(f"message {i}: the chat template does not render prefixes stably")
            content = message_text(message)
            full = self._render(messages[: i + 1], add_generation_prompt=False)
            at = full.find(content, len(prefix))
            tail = full[at + len(content):] if at >= 0 else ""
            if at < 0 or not tail.startswith(eot):
                raise ValueError(
                    f"message {i}: the chat template must render an assistant turn as its content "
                    f"followed by {eot!r}"
                )
            segments += [(carry + prefix[len(rendered):], False), (content, True)]
            rendered, carry = full, tail[len(eot):]
        if not segments or messages[-1]["role"] != "assistant":
            raise ValueError("a conversation for training must end with an assistant message")
        return segments

    def encode(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Prompt],
        responses: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        padding_side: str = "right",
        end_of_turn: bool = True,
    ) -> EncodedBatch:
        """Tokenize rows of (images, prompt[, response]) with the chat template.

        The response is tokenized on its own (with character offsets) and followed by the
        card's end-of-turn token, so a response's tokens are identical whatever the prompt.
        ``end_of_turn=False`` leaves the response open (a scoring prefix whose last token a
        reward head reads).
        ``max_length`` cuts the response tail; image tokens are never cut (a row that
        cannot keep its image tokens and at least one response token is an error naming
        the row).
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list, one per row")
        if responses is not None and len(responses) != len(prompts):
            raise ValueError(f"got {len(responses)} responses for {len(prompts)} prompts")
        rows_images = normalise_images(images, len(prompts))
        rows = []
        for i, (prompt, imgs) in enumerate(zip(prompts, rows_images)):
            segs = [(self.format_prompt(prompt, len(imgs)), False)]
            if responses is not None:
                segs.append((responses[i], True))
            rows.append(segs)
        return self._encode_segments(rows_images, rows, max_length, padding_side, end_of_turn)

    def encode_conversations(
        self,
        images: Sequence[Any] | None,
        conversations: Sequence[list[dict[str, Any]]],
        *,
        max_length: int | None = None,
        padding_side: str = "right",
    ) -> EncodedBatch:
        """Tokenize multi-turn conversations; ``response_mask`` marks every assistant turn.

        Messages use the transformers / TRL format (``{"role", "content"}``, content a
        string or a list of ``{"type": "image"}`` / ``{"type": "text", "text"}`` parts);
        images fill the image parts in order. ``response_offsets[b]`` lists the character
        offsets of the response tokens of all assistant turns, each relative to its turn.
        """
        rows_images = normalise_images(images, len(conversations))
        rows = []
        for i, conv in enumerate(conversations):
            n_parts = sum(
                sum(p.get("type") == "image" for p in m["content"])
                for m in conv if not isinstance(m["content"], str)
            )
            if n_parts != len(rows_images[i]):
                raise ValueError(f"row {i}: {n_parts} image placeholders but {len(rows_images[i])} images")
            try:
                rows.append(self.conversation_segments(conv))
            except ValueError as err:
                raise ValueError(f"row {i}: {err}") from None
        return self._encode_segments(rows_images, rows, max_length, padding_side)

    def _encode_segments(
        self,
        rows_images: list[list[Image.Image]],
        rows: list[list[tuple[str, bool]]],
        max_length: int | None,
        padding_side: str,
        end_of_turn: bool = True,
    ) -> EncodedBatch:
        # All non-assistant texts of the batch go through the processor in one call: it
        # expands each image placeholder for the next image in order and builds pixels.
        texts = [text for segs in rows for text, is_resp in segs if not is_resp and text]
        flat = [img for row in rows_images for img in row]
        out = self.processor(images=flat or None, text=texts, return_tensors="pt", padding=True,
                             add_special_tokens=False)
        keep = out["attention_mask"].bool()
        text_ids = iter([out["input_ids"][j][keep[j]] for j in range(len(texts))])
        text_extras = {k: iter([out[k][j][keep[j]] for j in range(len(texts))])
                       for k in self.inputs.text_keys if k in out}
        image_id = getattr(self.base_model.config, "image_token_id", None)
        ids_rows, resp_rows, offsets_all = [], [], []
        extra_rows: dict[str, list[torch.Tensor]] = {k: [] for k in text_extras}
        for i, segs in enumerate(rows):
            pieces = [torch.tensor(self.bos_ids, dtype=torch.long)]
            is_resp = [torch.zeros(len(self.bos_ids), dtype=torch.bool)]
            extras = {k: [torch.zeros(len(self.bos_ids), dtype=torch.long)] for k in text_extras}
            offsets: list[tuple[int, int]] = []
            for text, resp in segs:
                if resp:
                    enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                    closing = self.end_of_turn_ids if end_of_turn else []
                    ids = torch.tensor(list(enc["input_ids"]) + closing, dtype=torch.long)
                    offsets += [tuple(o) for o in enc["offset_mapping"]]
                    offsets += [(len(text), len(text))] * len(closing)
                    for k in extras:
                        extras[k].append(torch.zeros(len(ids), dtype=torch.long))
                elif text:
                    ids = next(text_ids)
                    for k in extras:
                        extras[k].append(next(text_extras[k]).long())
                else:
                    continue
                pieces.append(ids)
                is_resp.append(torch.full((len(ids),), resp, dtype=torch.bool))
            ids, resp_mask = torch.cat(pieces), torch.cat(is_resp)
            row_extras = {k: torch.cat(v) for k, v in extras.items()}
            if max_length is not None and len(ids) > max_length:
                images_cut = image_id is not None and bool((ids[max_length:] == image_id).any())
                if images_cut or (resp_mask.any() and not resp_mask[:max_length].any()):
                    raise ValueError(
                        f"row {i}: {int((~resp_mask).sum())} prompt and image tokens leave no room for "
                        f"the response within max_length={max_length}; image tokens are never truncated"
                    )
                offsets = offsets[: int(resp_mask[:max_length].sum())]
                ids, resp_mask = ids[:max_length], resp_mask[:max_length]
                row_extras = {k: v[:max_length] for k, v in row_extras.items()}
            ids_rows.append(ids)
            resp_rows.append(resp_mask)
            offsets_all.append(offsets)
            for k, v in row_extras.items():
                extra_rows[k].append(v)
        pad = self.tokenizer.pad_token_id
        return EncodedBatch(
            input_ids=pad_rows(ids_rows, pad, padding_side),
            attention_mask=pad_rows([torch.ones_like(r) for r in ids_rows], 0, padding_side),
            response_mask=pad_rows(resp_rows, False, padding_side),
            image_inputs={k: out[k] for k in self.inputs.image_keys if k in out and flat},
            text_inputs={k: pad_rows(v, 0, padding_side) for k, v in extra_rows.items()},
            response_offsets=offsets_all,
            images_per_row=[len(r) for r in rows_images],
        )

    # ------------------------------------------------------------------ forward
    def image_features(self, batch: EncodedBatch, *, grad: bool | None = None) -> dict[str, Any] | None:
        """Vision encoder + projector output for every image of the batch, computed once.

        Pass the result as ``image_features=`` to the forward methods to skip the vision
        tower. Without gradients by default when vision tower and projector are frozen.
        """
        if not batch.image_inputs:
            return None
        if grad is None:
            grad = any(p.requires_grad for _, p in self.projector_parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out = self.base_model.get_image_features(**batch.image_inputs, return_dict=True)
        return {"image": out}

    def select(self, batch: EncodedBatch, rows: Sequence[int], image_features: dict[str, Any] | None = None):
        """Rows ``rows`` of a batch and of its cached image features (a PPO minibatch).

        Padding columns no selected row uses are dropped. Pixel inputs are left out when
        features are given, since the forward then does not read them.
        """
        rows = list(rows)
        starts = [0]
        for n in batch.images_per_row:
            starts.append(starts[-1] + n)
        images = [j for r in rows for j in range(starts[r], starts[r + 1])]
        width = int(batch.attention_mask[rows].sum(-1).max())
        keys = self.inputs.forward_image_keys if image_features is not None else tuple(batch.image_inputs)
        if any(batch.image_inputs[k].shape[0] != starts[-1] for k in keys if k in batch.image_inputs):
            raise ValueError("select needs cached image features: this family's pixels are not one row per image")
        sub = EncodedBatch(
            input_ids=batch.input_ids[rows, :width],
            attention_mask=batch.attention_mask[rows, :width],
            response_mask=batch.response_mask[rows, :width],
            image_inputs={k: batch.image_inputs[k][images] for k in keys if k in batch.image_inputs},
            text_inputs={k: v[rows, :width] for k, v in batch.text_inputs.items()},
            response_offsets=[batch.response_offsets[r] for r in rows] if batch.response_offsets else [],
            images_per_row=[batch.images_per_row[r] for r in rows],
        )
        if image_features is None:
            return sub, None
        pooled = image_features["image"].pooler_output
        return sub, {"image": BaseModelOutputWithPooling(pooler_output=[pooled[j] for j in images])}

    def forward_kwargs(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            **batch.text_inputs,
        }
        if image_features is not None:
            kwargs["mm_encoder_outputs"] = image_features
            kwargs.update({k: batch.image_inputs[k] for k in self.inputs.forward_image_keys if k in batch.image_inputs})
        else:
            kwargs.update(batch.image_inputs)
        return kwargs

    def response_logprobs(
        self,
        batch: EncodedBatch,
        image_features: dict[str, Any] | None = None,
        *,
        model: torch.nn.Module | None = None,
        with_entropy: bool = False,
    ):
        """Per-token log-probs of the response tokens: ``(batch, max_response_len)`` plus mask.

        Only positions that predict a response token are projected to the vocabulary,
        so no ``(batch, seq, vocab)`` tensor is built. ``model`` overrides ``self.model``
        with a wrapped copy (DDP / FSDP / DeepSpeed engine) inside a trainer.
        ``with_entropy`` also returns the policy's entropy at each response position
        (detached, for logging), as a third tensor.
        """
        predicts = predicting_positions(batch.response_mask)
        out = (model or self.model)(
            **self.forward_kwargs(batch, image_features), logits_to_keep=predicts, use_cache=False
        )
        targets = batch.input_ids[batch.response_mask]
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        logps, mask = unflatten_rows(gather_logprobs(logits, targets), batch.response_lengths)
        if not with_entropy:
            return logps, mask
        with torch.no_grad():
            flat = torch.log_softmax(logits.float(), dim=-1)
            entropy = -(flat.exp() * flat).sum(-1)
        return logps, mask, unflatten_rows(entropy, batch.response_lengths)[0]

    @torch.no_grad()
    def sample(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> Samples:
        """Sample one response per prompt and return it as a training batch (for RL).

        Generation runs left-padded; the result is re-packed right-padded, each row
        [prompt, response up to and including the stop token], with ``response_mask`` on
        exactly the sampled tokens, so log-probs computed later score what was sampled.
        ``top_k=0`` and ``top_p=1`` sample from the full distribution (as PPO assumes).
        """
        batch = self.encode(images, prompts, padding_side="left").to(self.device)
        stop = list(dict.fromkeys([*self.end_of_turn_ids, self.tokenizer.eos_token_id]))
        # a sampled image placeholder would make the sequence unreadable for the model
        placeholders = [getattr(self.base_model.config, k, None) for k in ("image_token_id", "video_token_id")]
        out = self.model.generate(
            **self.forward_kwargs(batch), max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
            top_p=top_p, top_k=top_k, eos_token_id=stop, pad_token_id=self.tokenizer.pad_token_id,
            suppress_tokens=[t for t in placeholders if t is not None] or None,
        )
        new = out[:, batch.input_ids.shape[1]:].cpu()
        is_stop = torch.isin(new, torch.tensor(stop))
        ended = is_stop.any(-1)
        lengths = torch.where(ended, is_stop.int().argmax(-1) + 1, torch.tensor(new.shape[1]))
        keep = batch.attention_mask.bool().cpu()
        ids, resp, extras = [], [], {k: [] for k in batch.text_inputs}
        for i in range(new.shape[0]):
            prompt = batch.input_ids[i].cpu()[keep[i]]
            answer = new[i, : lengths[i]]
            ids.append(torch.cat([prompt, answer]))
            resp.append(torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(answer), dtype=torch.bool)]))
            for k, v in batch.text_inputs.items():
                extras[k].append(torch.cat([v[i].cpu()[keep[i]], torch.zeros(len(answer), dtype=v.dtype)]))
        packed = EncodedBatch(
            input_ids=pad_rows(ids, self.tokenizer.pad_token_id),
            attention_mask=pad_rows([torch.ones_like(r, dtype=torch.long) for r in ids], 0),
            response_mask=pad_rows(resp, False),
            image_inputs={k: v.cpu() for k, v in batch.image_inputs.items()},
            text_inputs={k: pad_rows(v, 0) for k, v in extras.items()},
            images_per_row=batch.images_per_row,
        )
        texts = [self.tokenizer.decode(new[i, : lengths[i]], skip_special_tokens=True) for i in range(len(ids))]
        return Samples(packed, texts, ended, lengths)

    def hidden_states(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> torch.Tensor:
        """Final (normed) hidden states of the language model, ``(batch, seq, hidden)``."""
        kwargs = self.forward_kwargs(batch, image_features)
        return self.base_model.model(**kwargs, use_cache=False).last_hidden_state

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
    ) -> list[str]:
        """Batched generation with left padding; returns decoded answers, prompt removed.

        With ``num_return_sequences=n`` the answers of row ``i`` are ``out[i*n:(i+1)*n]``.
        """
        batch = self.encode(images, prompts, padding_side="left").to(self.device)
        stop = list(dict.fromkeys([*self.end_of_turn_ids, self.tokenizer.eos_token_id]))
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            eos_token_id=stop,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p)
        out = self.model.generate(**self.forward_kwargs(batch), **gen_kwargs)
        new = out[:, batch.input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        """Counts of parameters by part, for logs and tests."""
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        return {"family": self.family, "card": self.card.name, "trainable": trainable, "total": total,
                "quantized": self.quantized}


def unflatten_rows(flat: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a row-major flat vector into a right-padded ``(rows, max_len)`` tensor + mask."""
    rows = len(lengths)
    width = int(lengths.max()) if rows else 0
    mask = torch.arange(width, device=flat.device)[None, :] < lengths.to(flat.device)[:, None]
    out = flat.new_zeros(rows, width)
    out[mask] = flat
    return out, mask


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' Linear4bit subclasses nn.Linear, so 4-bit layers count too.
    return isinstance(module, torch.nn.Linear)
