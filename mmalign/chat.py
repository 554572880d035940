"""Chat messages and prompts in the transformers / TRL conversational format.

Ground layer: the data schema, the adapters and the collators all read prompts and
responses this way, so it imports nothing else from mmalign.
"""

from __future__ import annotations

import re
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


_WORD = re.compile(r"[A-Za-z]+")


def first_word(text: str) -> str:
    """The first word of an answer, lowercased, punctuation and digits skipped ("Yes." -> "yes"):
    how yes/no answers are read everywhere (benchmarks, reward shaping, the scene world)."""
    match = _WORD.search(text)
    return match.group(0).lower() if match else ""
