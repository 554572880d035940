"""Chat messages and prompts in the transformers / TRL conversational format.

Ground layer: the data schema, the adapters and the collators all read prompts and
responses this way, so it imports nothing else from mmalign.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: LLaVA's image placeholder: in a text prompt, one per image marks where the images go.
IMAGE_PLACEHOLDER = "<image>"

#: A prompt is either plain user text (images go before it in one user turn) or a list of
#: chat messages in the transformers / TRL conversational format.
Prompt = str | list[dict[str, Any]]


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def response_text(value: Any) -> str:
    """A response given as text or as a conversational list ending in the answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        return message_text(value[-1])
    raise TypeError(f"a response must be a string or a list of messages, got {type(value).__name__}")


def user_turn(prompt: Prompt, n_images: int) -> list[dict[str, Any]]:
    """Plain text becomes one user message: images go where the text has ``<image>``
    placeholders (one per image, as in LLaVA data), otherwise before the text.

    With one image the chat template decides where it goes (LLaVA's put it first, as
    LLaVA was trained); with several, text between placeholders is kept as written, so the
    images stay in the order and place the text refers to them (see :func:`interleaves`).
    Left in the text, a placeholder would be expanded by the processor on top of the
    image parts, so a count that does not match the images is an error.
    """
    if not isinstance(prompt, str):
        return list(prompt)
    placed = prompt.count(IMAGE_PLACEHOLDER)
    if placed == 0:
        return [{"role": "user", "content": [{"type": "image"} for _ in range(n_images)]
                 + [{"type": "text", "text": prompt}]}]
    if placed != n_images:
        raise ValueError(f"a prompt has {placed} {IMAGE_PLACEHOLDER} placeholder(s) but its row has "
                         f"{n_images} image(s)")
    in_order = {"role": "user", "content": _placeholder_parts(prompt.strip(), lambda piece, _: piece)}
    if interleaves(in_order):
        return [in_order]
    # templates that put images first join the text parts as they are
    return [{"role": "user", "content": _placeholder_parts(
        prompt, lambda piece, text_before: (" " if text_before else "") + piece.strip())}]


def _placeholder_parts(prompt: str, text: Callable[[str, bool], str]) -> list[dict[str, Any]]:
    """Image and text parts of a text with placeholders; ``text(piece, text_before)`` writes a
    non-blank piece between placeholders."""
    content, text_before = [], False
    for j, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        if j:
            content.append({"type": "image"})
        if piece.strip():
            content.append({"type": "text", "text": text(piece, text_before)})
            text_before = True
    return content


def image_slots(prompt: Prompt) -> int:
    """How many images a prompt places: its ``<image>`` placeholders, or its image parts."""
    if isinstance(prompt, str):
        return prompt.count(IMAGE_PLACEHOLDER)
    return sum(sum(p.get("type") == "image" for p in m["content"]) for m in prompt if not isinstance(m["content"], str))


def interleaves(message: dict[str, Any]) -> bool:
    """Whether a message's images must stay between its texts: several image parts and
    text before one of them. Templates that write a message's images first (LLaVA's) would
    lose which image the text means, so the adapters render such messages in order."""
    content = message.get("content")
    if isinstance(content, str):
        return False
    kinds = [p.get("type") for p in content if p.get("type") == "image" or (p.get("type") == "text" and p.get("text"))]
    images = [i for i, kind in enumerate(kinds) if kind == "image"]
    return len(images) > 1 and "text" in kinds[: images[-1]]


def inline_images(message: dict[str, Any], slot: str) -> dict[str, Any]:
    """The message as one text part with ``slot`` where each image part was."""
    text = "".join(slot if p.get("type") == "image" else p.get("text") or "" for p in message["content"]
                   if p.get("type") in ("image", "text"))
    return {**message, "content": [{"type": "text", "text": text}]}


_WORD = re.compile(r"[A-Za-z]+")


def first_word(text: str) -> str:
    """The first word of an answer, lowercased, punctuation and digits skipped ("Yes." -> "yes"):
    how yes/no answers are read everywhere (benchmarks, reward shaping, the scene world)."""
    match = _WORD.search(text)
    return match.group(0).lower() if match else ""
