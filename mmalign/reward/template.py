"""The scoring prompt of reward and cost models (Fact-RLHF's factually augmented template).

After the conversation the model reads one more user turn asking it to judge its last
answer on four criteria, then a fixed assistant prefix ("... the quality score of my last
answer is"); the scalar head reads the hidden state of that prefix's last token. The
factually augmented variant lists what is known about the image under "accurate", so the
model can check the answer against it instead of guessing from the pixels; the plain
variant is the same text without the facts. Every string is a field, so YAML configs can
change the wording.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmalign.chat import Prompt, interleaves, user_turn
from mmalign.models.adapter import VLMAdapter, normalise_images
from mmalign.models.batch import EncodedBatch


@dataclass
class RewardTemplate:
    """Wording of the evaluation turn and the scoring prefix."""

    evaluation: str = (
        "Now judge your last answer. Take these criteria into account:\n"
        "1. Accurate: {accurate}\n"
        "2. Helpful: the answer gives the user what was asked for.\n"
        "3. Natural: the answer reads as fluent, natural language.\n"
        "4. Concise: the answer says what is needed, without filler or repetition."
    )
    accurate: str = "every statement about the image is true."
    accurate_with_facts: str = (
        "every statement about the image is true, and nothing is claimed that the following "
        "facts about the image do not support:\n{facts}"
    )
    fact_line: str = "- {fact}"
    score_prefix: str = "Judged by these criteria, the quality score of my last answer is"
    use_facts: bool = False
    # Where the facts go: "evaluation" (Fact-RLHF: under "accurate", after the answer) or
    # "prompt" (before the user's question, so each answer token can already see them).
    facts_position: str = "evaluation"
    facts_header: str = "Facts about the image:\n{facts}\n"
    accurate_given_facts: str = "every statement about the image is true and supported by the facts given."

    def __post_init__(self):
        if self.facts_position not in ("evaluation", "prompt"):
            raise ValueError(f"facts_position must be 'evaluation' or 'prompt', got {self.facts_position!r}")

    def _lines(self, facts: Sequence[str]) -> str:
        return "\n".join(self.fact_line.format(fact=f) for f in facts)

    def evaluation_turn(self, facts: Sequence[str] | None = None) -> str:
        """The evaluation question; with ``use_facts`` the facts are listed as given."""
        if self.use_facts and facts:
            accurate = (self.accurate_with_facts.format(facts=self._lines(facts))
                        if self.facts_position == "evaluation" else self.accurate_given_facts)
        else:
            accurate = self.accurate
        return self.evaluation.format(accurate=accurate)

    def conversation(
        self, prompt: Prompt, response: str, n_images: int, facts: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Messages up to the evaluation turn (the score prefix is the open assistant turn)."""
        messages = user_turn(prompt, n_images)
        if self.use_facts and facts and self.facts_position == "prompt":
            header = self.facts_header.format(facts=self._lines(facts))
            at = next(i for i, m in enumerate(messages) if m["role"] == "user")
            content = messages[at]["content"]
            if isinstance(content, str):
                content = header + content
            else:  # copies: the caller's messages stay as they were
                content = [dict(p) for p in content]
                text = next((p for p in content if p.get("type") == "text"), None)
                if interleaves(messages[at]):  # before the first image, not inside its caption
                    content.insert(0, {"type": "text", "text": header})
                elif text is None:
                    content.append({"type": "text", "text": header})
                else:
                    text["text"] = header + (text.get("text") or "")
            messages[at] = {**messages[at], "content": content}
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": self.evaluation_turn(facts)}]})
        return messages


def encode_for_scoring(
    adapter: VLMAdapter,
    template: RewardTemplate,
    images: Sequence[Any] | None,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    facts: Sequence[Sequence[str] | None] | None = None,
    *,
    rng: random.Random | None = None,
    max_length: int | None = None,
) -> EncodedBatch:
    """Scoring sequences (conversation, evaluation turn, open score prefix) for a batch.

    The head reads the last real token, which is the prefix's last token. A row longer
    than ``max_length`` loses words from the end of its response (never image tokens,
    the evaluation turn or the prefix), the way reward models truncate long answers.
    With ``rng`` the facts of every row are shuffled (once per call): shuffling at every
    use keeps the model from reading a fact's position instead of its content.
    """
    rows_images = normalise_images(images, len(prompts))
    facts = facts if facts is not None else [None] * len(prompts)
    responses = list(responses)

    def conversation(i: int) -> list[dict[str, Any]]:
        try:
            return template.conversation(prompts[i], responses[i], len(rows_images[i]), facts[i])
        except ValueError as err:  # a placeholder count that does not match the images
            raise ValueError(f"row {i}, field 'prompt': {err}") from None

    def encode(rows: Sequence[int]) -> EncodedBatch:
        convs = [conversation(i) for i in rows]
        return adapter.encode([rows_images[i] for i in rows], convs, [template.score_prefix] * len(rows),
                              end_of_turn=False)

    if rng is not None:  # once per call, so re-encoding a shortened row keeps its order
        facts = [None if f is None else rng.sample(list(f), len(f)) for f in facts]
    batch = encode(range(len(prompts)))
    if max_length is None:
        return batch
    lengths = batch.attention_mask.sum(-1).tolist()
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    for i in too_long:
        words = responses[i].split()
        lo, hi, best = 0, len(words) - 1, None
        while lo <= hi:  # keep as many leading words as fit
            keep = (lo + hi) // 2
            responses[i] = " ".join(words[:keep])
            if int(encode([i]).attention_mask.sum()) <= max_length:
                best, lo = responses[i], keep + 1
            else:
                hi = keep - 1
        if best is None:
            raise ValueError(
                f"row {i}: the scoring prompt (images, question, evaluation turn) is longer than "
                f"max_length={max_length} even without the response; raise max_length"
            )
        responses[i] = best
    return encode(range(len(prompts))) if too_long else batch
