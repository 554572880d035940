"""The adapter contract: the one place that knows a model family's quirks.

Everything above this layer (collators, losses, trainers, benchmarks) talks to a
``VLMAdapter``: it loads a checkpoint (fp32 / bf16 / 4-bit NF4), attaches LoRA to the
language model only, turns (images, prompt, response) into model inputs with the
response tokens marked and mapped to character offsets, computes image features once,
returns per-token response log-probs, and generates.

Family subclasses only declare module names and which processor outputs feed the vision
encoder; the shared logic lives here, loading in :mod:`~mmalign.models.loading` and
LoRA in :mod:`~mmalign.models.lora`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmalign.chat import (
    IMAGE_PLACEHOLDER,
    Prompt,
    image_slots,
    inline_images,
    interleaves,
    message_text,
    user_turn,
)
from mmalign.models.batch import (
    EncodedBatch,
    ModelInputsSpec,
    Samples,
    entropy_from_logits,
    gather_logprobs,
    pad_rows,
    predicting_positions,
    unflatten_rows,
)
from mmalign.models.cards import ModelCard
from mmalign.models.loading import LoadingMixin
from mmalign.models.lora import LoraMixin


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


def images_by_text(texts: Sequence[str], images: Sequence[Image.Image], placeholder: str) -> list[list[Image.Image]] | None:
    """Images grouped by the text whose placeholders they fill (processors that pair each text
    with its own images: Gemma 3, SmolVLM, Idefics3)."""
    if not images:
        return None
    counts = [text.count(placeholder) for text in texts]
    if sum(counts) != len(images):
        raise ValueError(f"{sum(counts)} {placeholder} placeholders for {len(images)} images")
    it = iter(images)
    return [[next(it) for _ in range(n)] for n in counts]


def image_token_runs(batch: EncodedBatch, image_id: int) -> list[int]:
    """Lengths of the runs of image tokens, row by row: one per image for families that
    write each image as one contiguous run (InternVL's tiles sit between ``<img>`` and ``</img>``)."""
    runs: list[int] = []
    for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist()):
        n = 0
        for token, real in zip(ids, mask):
            if real and token == image_id:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        if n:
            runs.append(n)
    return runs


def regroup_per_image(out: BaseModelOutputWithPooling, counts: Sequence[int]) -> BaseModelOutputWithPooling:
    """Encoder output whose entries are tiles or texts (InternVL, SmolVLM) as one entry per image:
    all tokens in order, cut at the images' token counts."""
    tokens = torch.cat([entry.reshape(-1, entry.shape[-1]) for entry in out.pooler_output])
    return BaseModelOutputWithPooling(pooler_output=list(torch.split(tokens, list(counts))))


def joined_features(features: dict[str, Any]) -> dict[str, Any]:
    """Per-image cached features as the one ``(1, tokens, hidden)`` tensor the forward of Gemma 3
    and InternVL takes (they count and scatter image tokens over the flattened tensor)."""
    return {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(list(features["image"].pooler_output))[None])}


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(rows, 1, q, k)`` additive attention mask: 0 where allowed, the dtype's minimum elsewhere."""
    mask = torch.zeros((allowed.shape[0], 1, *allowed.shape[1:]), dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)


def pick_features(features: dict[str, Any], images: Sequence[int]) -> dict[str, Any]:
    """Cached features of some images, in the order given: the per-image outputs
    (``pooler_output``) and, for Qwen3-VL, the per-layer DeepStack features."""
    out = features["image"]
    picked = BaseModelOutputWithPooling(pooler_output=[out.pooler_output[j] for j in images])
    if getattr(out, "deepstack_features", None) is not None:
        picked["deepstack_features"] = [[layer[j] for j in images] for layer in out.deepstack_features]
    return {"image": picked}


def concat_features(features: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Cached image features of several batches, in the same order as
    :func:`~mmalign.models.batch.concat_batches`; a text-only batch has none to add."""
    features = [f for f in features if f is not None]
    if not features:
        return None
    pooled = [x for f in features for x in f["image"].pooler_output]
    out = BaseModelOutputWithPooling(pooler_output=pooled)
    if getattr(features[0]["image"], "deepstack_features", None) is not None:
        layers = zip(*(f["image"].deepstack_features for f in features))
        out["deepstack_features"] = [[x for part in layer for x in part] for layer in layers]
    return {"image": out}


def leading_special_ids(tokenizer) -> list[int]:
    """What the tokenizer puts in front of every text: BOS for Llama / Mistral, nothing for Qwen.

    Read from what it adds to the empty text, so no probe word can come back as ``<unk>``
    and be taken for a BOS (a word-level tokenizer that does not know the probe and adds
    no BOS would otherwise get ``<unk>`` in front of every sequence). An EOS, UNK or PAD a
    tokenizer appends is not a prefix.
    """
    not_prefix = {tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id} - {tokenizer.bos_token_id}
    special = set(tokenizer.all_special_ids)
    lead = []
    for token in tokenizer("", add_special_tokens=True)["input_ids"]:
        if token in not_prefix or token not in special:
            break
        lead.append(token)
    return lead[:1]


#: A private-use character that stands for an image while a chat template renders text.
_SLOT = "\ue000"


class VLMAdapter(LoadingMixin, LoraMixin):
    """Base class of all model-family adapters. Use :func:`mmalign.models.load_adapter`."""

    family: ClassVar[str]
    model_class: ClassVar[type]
    vision_scope: ClassVar[str]  # qualified name of the vision tower
    projector_scopes: ClassVar[tuple[str, ...]]  # modules / parameters of the projector
    language_scope: ClassVar[str]  # qualified name of the language model
    inputs: ClassVar[ModelInputsSpec]
    default_card_name: ClassVar[str | None] = None  # card used for local folders of this family
    # the disk feature cache splits pixel inputs one entry per image; a family whose pixels or
    # features are not laid out that way says why here
    disk_cache_refusal: ClassVar[str | None] = None
    multi_image: ClassVar[bool] = True  # several images in one row (a family that cannot says so here)

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
        self.bos_ids = leading_special_ids(self.tokenizer)

    # ------------------------------------------------------------------ inputs
    def _token_ids(self, text: str) -> list[int]:
        tid = self.tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
            return [tid]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a generated answer: the card's end of turn, then EOS."""
        return list(dict.fromkeys([*self.end_of_turn_ids, self.tokenizer.eos_token_id]))

    def format_prompt(self, prompt: Prompt, n_images: int) -> str:
        """Render the chat template up to the start of the assistant's answer."""
        return self._render(user_turn(prompt, n_images), add_generation_prompt=True)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The chat template's text; a message with images between its texts keeps them there
        (:func:`~mmalign.chat.interleaves`) even when the template writes images first."""
        expected = sum(image_slots([m]) for m in messages if interleaves(m))
        if not expected or self._image_markup is None:
            return self._apply_template(messages, add_generation_prompt)
        messages = [inline_images(m, _SLOT) if interleaves(m) else m for m in messages]
        text = self._apply_template(messages, add_generation_prompt)
        if text.count(_SLOT) != expected:
            raise ValueError("the chat template did not keep the text of a message with several images")
        return text.replace(_SLOT, self._image_markup)

    def _apply_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """The template's text without a BOS it writes itself (Gemma's does): every sequence
        gets the tokenizer's BOS once, in :meth:`_encode_segments`."""
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        bos = self.tokenizer.bos_token
        return text[len(bos):] if self.bos_ids and bos and text.startswith(bos) else text

    @cached_property
    def _image_markup(self) -> str | None:
        """What the chat template writes for one image if it moves images before a message's
        text (LLaVA's templates), ``None`` if it keeps image and text parts in order (Qwen's)."""
        def render(content: list[dict[str, Any]]) -> str:
            return self._apply_template([{"role": "user", "content": content}], add_generation_prompt=False)

        bare = render([{"type": "text", "text": _SLOT}])
        after = render([{"type": "text", "text": _SLOT}, {"type": "image"}])
        head, tail = bare.split(_SLOT)
        middle = after[len(head): len(after) - len(tail)]
        if not (after.startswith(head) and after.endswith(tail)) or _SLOT not in (middle[:1], middle[-1:]):
            raise ValueError(f"{self.family}: cannot tell where the chat template writes an image")
        return None if middle.startswith(_SLOT) else middle[:-1]

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
        rows_images = self._row_images(images, len(prompts))
        rows = []
        for i, (prompt, imgs) in enumerate(zip(prompts, rows_images)):
            placed = image_slots(prompt)
            if placed != len(imgs) and (placed or not isinstance(prompt, str)):
                what = f"{IMAGE_PLACEHOLDER} placeholder(s)" if isinstance(prompt, str) else "image part(s)"
                raise ValueError(f"row {i}, field 'prompt': has {placed} {what} but the row has {len(imgs)} image(s)")
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
        rows_images = self._row_images(images, len(conversations))
        rows = []
        for i, conv in enumerate(conversations):
            n_parts = image_slots(conv)
            if n_parts != len(rows_images[i]):
                raise ValueError(
                    f"row {i}, field 'messages': {n_parts} image placeholders but {len(rows_images[i])} images")
            try:
                rows.append(self.conversation_segments(conv))
            except ValueError as err:
                raise ValueError(f"row {i}: {err}") from None
        return self._encode_segments(rows_images, rows, max_length, padding_side)

    def _row_images(self, images: Sequence[Any] | None, batch: int) -> list[list[Image.Image]]:
        rows = normalise_images(images, batch)
        if not self.multi_image:
            for i, row in enumerate(rows):
                if len(row) > 1:
                    raise ValueError(f"row {i}, field 'images': {len(row)} images, but {self.family} takes one per row")
        return rows

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
        out = self.processor(images=self._processor_images(texts, flat), text=texts, return_tensors="pt", padding=True,
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
                ids, resp_mask, offsets, row_extras = _truncate_row(
                    i, ids, resp_mask, offsets, row_extras, max_length, image_id
                )
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
        return {"image": self._per_image(out, batch)}

    # Families differ in how the processor takes images and the vision encoder returns them;
    # these three hooks keep cached features one entry per image for everything above.
    def _processor_images(self, texts: list[str], images: list[Image.Image]) -> Any:
        """Images as this family's processor takes them: one flat list in text order."""
        return images or None

    def _per_image(self, out: BaseModelOutputWithPooling, batch: EncodedBatch) -> BaseModelOutputWithPooling:
        """The encoder output with ``pooler_output`` one entry per image (already so by default)."""
        return out

    def image_token_counts(self, batch: EncodedBatch) -> list[int]:
        """Language-model tokens of each image of a batch, in order (row by row): one run of
        image tokens per image unless the family frames tiles otherwise (SmolVLM)."""
        return image_token_runs(batch, self.base_model.config.image_token_id)

    def encoder_outputs(self, features: dict[str, Any]) -> dict[str, Any]:
        """Per-image cached features in the form the model's forward takes (``mm_encoder_outputs``)."""
        return features

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
        if not images:  # text-only rows: no image inputs or features at all (an empty set breaks the forward)
            keys, image_features = (), None
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
        return sub, pick_features(image_features, images)

    def forward_kwargs(self, batch: EncodedBatch, image_features: dict[str, Any] | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            **batch.text_inputs,
        }
        if image_features is not None:
            kwargs["mm_encoder_outputs"] = self.encoder_outputs(image_features)
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
            entropy = entropy_from_logits(logits)
        return logps, mask, unflatten_rows(entropy, batch.response_lengths)[0]

    # ------------------------------------------------------------------ shared prefix
    @classmethod
    def supports_shared_prefix(cls) -> bool:
        """Whether a prompt's positions can be restarted per answer (:mod:`~mmalign.models.prefix`,
        ``sample(prefill_once=True)``). The default :meth:`position_ids` are right for families
        whose forward reads no per-token inputs besides the ids; a family with some (token types
        that steer positions or attention) overrides both once it has its own rule."""
        return not cls.inputs.text_keys

    @classmethod
    def shared_prefix_refusal(cls) -> str:
        """Why :meth:`supports_shared_prefix` is false, for error messages."""
        return (f"its per-token inputs ({', '.join(cls.inputs.text_keys)}) need a position rule of their own "
                f"(VLMAdapter.position_ids)")

    def branch_attention_mask(self, allowed: torch.Tensor, positions: torch.Tensor,
                              per_token: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
        """The ``attention_mask`` of a shared-prefix forward from which token may attend to which
        (``allowed``, ``(rows, width, width)``): a 4-D additive mask, which the forward uses as is."""
        return additive_mask(allowed, dtype)

    def position_ids(self, batch: EncodedBatch) -> torch.Tensor:
        """The rotary positions the model's own forward gives the real tokens of a left- or
        right-padded batch, ``(rows, seq)``: 1-D, counting real tokens (padding gets 0). A
        shared prefix keeps them and each answer continues from their maximum + 1."""
        mask = batch.attention_mask
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)

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
        num_samples: int = 1,
        prefill_once: bool = False,
    ) -> Samples:
        """Sample ``num_samples`` responses per prompt and return them as a training batch (for RL).

        Rows ``i * num_samples .. (i + 1) * num_samples - 1`` answer prompt ``i``. Generation
        runs left-padded; the result is re-packed right-padded, each row [prompt, response up
        to and including the stop token], with ``response_mask`` on exactly the sampled
        tokens, so log-probs computed later score what was sampled. ``top_k=0`` and
        ``top_p=1`` sample from the full distribution (as PPO assumes).

        With ``prefill_once`` each prompt's images go through the vision tower once and its
        image + prompt tokens through the language model once; the samples continue from
        copies of that key/value cache (the group rollouts of GRPO), and the image features
        come back in ``Samples.image_features``. Same tokens as the plain path for the same
        seed (tested). The samples continue from the prompt's positions as the model computes
        them (:meth:`position_ids`: 1-D, or Qwen's 3-D M-RoPE ones), passed to ``generate``,
        which extends them by one per token. Refused for a family that does not
        :meth:`supports_shared_prefix`.
        """
        if prefill_once and not self.supports_shared_prefix():
            raise ValueError(f"prefill_once is not available for {self.family}: {self.shared_prefix_refusal()}")
        images = list(images) if images is not None else [None] * len(prompts)
        if prefill_once:
            once = self.encode(images, prompts, padding_side="left").to(self.device)
            features = self.image_features(once, grad=False)
            cache, positions = self._prefill(once, features, num_samples)
            batch, features = self.select(once, [i for i in range(len(prompts)) for _ in range(num_samples)],
                                          features)
            inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                      "position_ids": positions, "cache": cache}
        else:
            batch = self.encode([x for x in images for _ in range(num_samples)],
                                [p for p in prompts for _ in range(num_samples)], padding_side="left").to(self.device)
            features, inputs = None, self.forward_kwargs(batch)
        stop = self.stop_ids
        # a sampled image placeholder would make the sequence unreadable for the model
        placeholders = [getattr(self.base_model.config, k, None) for k in ("image_token_id", "video_token_id")]
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
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
        return Samples(packed, texts, ended, lengths, features)

    def _prefill(self, batch: EncodedBatch, features: dict[str, Any] | None, copies: int):
        """The key/value cache of every left-padded prompt but its last token, and the positions
        of all its tokens (:meth:`position_ids`), each row repeated ``copies`` times: generate
        reads the last token at its position and continues from there."""
        positions = self.position_ids(batch)
        kwargs = self.forward_kwargs(batch, features)
        kwargs.update({k: v[:, :-1] for k, v in batch.text_inputs.items()})
        kwargs.update(input_ids=batch.input_ids[:, :-1], attention_mask=batch.attention_mask[:, :-1],
                      position_ids=positions[..., :-1])
        cache = self.model(**kwargs, use_cache=True, logits_to_keep=1).cache
        cache.batch_repeat_interleave(copies)
        return cache, positions.repeat_interleave(copies, dim=-2)

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
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            eos_token_id=self.stop_ids,
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


def _truncate_row(
    row: int,
    ids: torch.Tensor,
    resp_mask: torch.Tensor,
    offsets: list[tuple[int, int]],
    extras: dict[str, torch.Tensor],
    max_length: int,
    image_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], dict[str, torch.Tensor]]:
    """Cut encoded row ``row`` to ``max_length`` tokens, from the response's tail.

    Cutting an image token would leave the processor's pixels without their slots, so a
    row whose images or first response token fall past the limit is an error instead.
    """
    images_cut = image_id is not None and bool((ids[max_length:] == image_id).any())
    if images_cut or (resp_mask.any() and not resp_mask[:max_length].any()):
        raise ValueError(
            f"row {row}: {int((~resp_mask).sum())} prompt and image tokens leave no room for "
            f"the response within max_length={max_length}; image tokens are never truncated"
        )
    offsets = offsets[: int(resp_mask[:max_length].sum())]
    return ids[:max_length], resp_mask[:max_length], offsets, {k: v[:max_length] for k, v in extras.items()}

