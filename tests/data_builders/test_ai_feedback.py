import json
import math
from collections import Counter

import pytest
import torch
from PIL import Image

from mmalign.data_builders.ai_feedback import (
    AIFeedbackBuilder,
    AIFeedbackConfig,
    build_ai_feedback,
    read_prompts,
    score_responses,
    select_pairs,
)
from mmalign.data_builders.claims import (
    AdapterJudge,
    EndpointJudge,
    EndpointSplitter,
    SentenceSplitter,
    Verdict,
)
from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
from mmalign.judge_client import JudgeClient, JudgeEndpoint


def client(url, model="m", **settings):
    """A judge client whose retries cost no time (the waits are not slept)."""
    return JudgeClient(JudgeEndpoint(url, model, **settings), sleep=lambda s: None, progress=False)


class WordJudge:
    """A stand-in judge: a claim passes when its question mentions ``word``."""

    def __init__(self, word="red"):
        self.word = word
        self.calls = []

    def judge(self, images, questions):
        self.calls.append((len(images), list(questions)))
        return [Verdict(0.0, -1.0) if self.word in q.lower() else Verdict(-1.0, 0.0) for q in questions]


# ---------------------------------------------------------------------------- pairing rules
def test_pairs_need_a_score_gap():
    assert select_pairs([-1, -1, -1], [5, 6, 7]) == ([], 0)
    assert select_pairs([0, -1], [5, 5], min_gap=2) == ([], 0)
    pairs, _ = select_pairs([0, -1, -1, -3], [10, 5, 12, 8])
    assert pairs == [(0, 3)]  # largest gap first; what is left (1 and 2) is tied


def test_at_most_max_pairs_each_response_once():
    scores = [0, 0, -1, -1, -2, -2]
    pairs, _ = select_pairs(scores, [10] * 6)
    assert pairs == [(0, 4), (1, 5)]
    assert all(scores[i] - scores[j] >= 1 for i, j in pairs)
    # A third pair would have to join the two responses scored -1: equal scores never pair.
    assert select_pairs(scores, [10] * 6, max_pairs=3)[0] == [(0, 4), (1, 5)]
    pairs, _ = select_pairs([0, -1, -2, -3, -4, -5], [10] * 6, max_pairs=3)
    assert pairs == [(0, 5), (1, 4), (2, 3)]
    assert select_pairs(scores, [10] * 6, max_pairs=1)[0] == [(0, 4)]


def test_length_balance_steers_the_choice():
    scores, lengths = [0, -1, -1], [20, 10, 30]  # (0,1): chosen longer, (0,2): chosen shorter
    assert select_pairs(scores, lengths, balance=+1) == ([(0, 2)], 0)
    assert select_pairs(scores, lengths, balance=-1) == ([(0, 1)], 0)
    assert select_pairs(scores, lengths, balance=0) == ([(0, 1)], 1)
    assert select_pairs(scores, lengths, balance=+1, balance_lengths=False) == ([(0, 1)], 2)


def test_length_balance_over_a_build():
    balance, longer = 0, 0
    for _ in range(20):
        [(i, j)], balance = select_pairs([0, -1, -1], [20, 10, 30], balance=balance)
        longer += [20, 10, 30][i] > [20, 10, 30][j]
        assert abs(balance) <= 1
    assert longer == 10
    unbalanced = 0
    for _ in range(20):
        _, unbalanced = select_pairs([0, -1, -1], [20, 10, 30], balance=unbalanced, balance_lengths=False)
    assert unbalanced == 20  # without balancing the longer answer would always be chosen


def test_equal_lengths_never_hurt_the_balance():
    pairs, balance = select_pairs([0, -1, -1], [10, 10, 30], balance=+3)
    assert pairs == [(0, 1)] and balance == 3


# ---------------------------------------------------------------------------- claims and scores
def test_sentence_splitter():
    claims = SentenceSplitter().split("q", "The cup is red. The plate is blue; a fork lies left!\nYes. The cup is red.")
    assert [c.text for c in claims] == ["The cup is red.", "The plate is blue", "a fork lies left!"]
    assert claims[0].question == "Is the following statement about the image true? The cup is red. Please answer yes or no."


def test_score_is_minus_failed_claims():
    judge = WordJudge("red")
    scored = score_responses([Image.new("RGB", (4, 4))], "What is there?",
                             ["The cup is red. The plate is blue. The fork is green.", "A red cup. A red plate."],
                             SentenceSplitter(), judge)
    assert [s.score for s in scored] == [-2, 0]
    assert scored[0].failed == ["The plate is blue.", "The fork is green."]
    assert len(judge.calls) == 1 and len(judge.calls[0][1]) == 5  # all claims judged in one call


# ---------------------------------------------------------------------------- local judge
def _manual_answer_logprob(adapter, image, question, answer):
    batch = adapter.encode([[image]], [question], [answer])
    with torch.no_grad():
        logits = adapter.model(**adapter.forward_kwargs(batch)).logits[0]
    first = int(batch.response_mask[0].nonzero()[0])
    assert adapter.tokenizer.convert_ids_to_tokens(int(batch.input_ids[0, first])) == answer
    return torch.log_softmax(logits[first - 1].float(), dim=-1)[batch.input_ids[0, first]].item()


def test_adapter_judge_matches_a_manual_computation(tiny_llava):
    from mmalign.models import load_adapter

    adapter = load_adapter(tiny_llava)
    judge = AdapterJudge(adapter, batch_size=2)
    image = Image.new("RGB", (32, 32), "red")
    questions = [f"Is the following statement about the image true? {c} Please answer yes or no."
                 for c in ("a red square.", "a blue circle.", "there is a dog.")]
    verdicts = judge.judge([image], questions)
    for question, verdict in zip(questions, verdicts):
        yes = _manual_answer_logprob(adapter, image, question, "yes")
        no = _manual_answer_logprob(adapter, image, question, "no")
        assert verdict.logp_yes == pytest.approx(yes, abs=1e-5)
        assert verdict.logp_no == pytest.approx(no, abs=1e-5)
        assert verdict.passed == (yes > no)
    # Batching does not change the answers.
    single = AdapterJudge(adapter, batch_size=1).judge([image], questions)
    assert [v.logp_yes for v in single] == pytest.approx([v.logp_yes for v in verdicts], abs=1e-5)


# ---------------------------------------------------------------------------- endpoint judge
def test_endpoint_judge_uses_top_logprobs(chat_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-local-test")
    judge = EndpointJudge(client(chat_server.url, "judge-vlm", api_key_env="TEST_JUDGE_KEY"))
    image = Image.new("RGB", (8, 8), "red")
    yes, no = judge.judge([image], ["Is this true? The cup is red.", "Is this true? The cup is blue."])
    assert yes.logp_yes == pytest.approx(math.log(math.exp(-0.2) + math.exp(-2.0)))
    assert yes.logp_no == pytest.approx(-1.9) and yes.passed
    assert no.logp_no == pytest.approx(math.log(math.exp(-0.4) + math.exp(-3.0))) and not no.passed
    assert len(chat_server.requests) == 2  # sent together, so in either order
    request = next(r for r in chat_server.requests if "red" in r["body"]["messages"][0]["content"][1]["text"])
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-local-test"
    body = request["body"]
    assert body["model"] == "judge-vlm" and body["max_tokens"] == 1 and body["logprobs"] is True
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == {"type": "text", "text": "Is this true? The cup is red."}


def test_endpoint_key_only_from_the_environment(chat_server, monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    EndpointJudge(client(chat_server.url, api_key_env="TEST_JUDGE_KEY")).judge([], ["red?"])
    assert chat_server.requests[-1]["auth"] is None


def test_endpoint_judge_falls_back_to_the_reply_text(chat_server):
    chat_server.mode = "text"
    verdicts = EndpointJudge(client(chat_server.url)).judge([], ["red cup?", "blue cup?"])
    assert [v.passed for v in verdicts] == [True, False]
    assert verdicts[1].logp_yes == -math.inf


def test_endpoint_retries_busy_and_reports_errors(chat_server):
    chat_server.fail_next = 1
    endpoint = client(chat_server.url, max_attempts=2)
    assert EndpointJudge(endpoint).judge([], ["red?"])[0].passed
    assert len(chat_server.requests) == 2
    chat_server.fail_next = 5
    with pytest.raises(RuntimeError, match="claim question 'blue\\?'.*gave up after 2 attempt.*HTTP 503"):
        EndpointJudge(endpoint).judge([], ["blue?"])
    chat_server.fail_next = 0
    chat_server.mode = "bad-request"
    with pytest.raises(RuntimeError, match="HTTP 400.*unknown model"):
        EndpointJudge(endpoint).judge([], ["green?"])


def test_endpoint_unreachable_and_bad_urls():
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = client(f"http://127.0.0.1:{port}/v1", max_attempts=1, timeout=2)
    with pytest.raises(RuntimeError, match="cannot reach"):
        endpoint.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="base URL"):
        JudgeEndpoint("ftp://127.0.0.1/v1", "m")


def test_endpoint_splitter(chat_server):
    claims = EndpointSplitter(client(chat_server.url)).split("q?", "The cup is red and the plate blue.")
    assert [c.text for c in claims] == ["The cup is red.", "The plate is blue."]
    assert chat_server.requests[0]["body"]["messages"][0]["content"].endswith("The cup is red and the plate blue.")


# ---------------------------------------------------------------------------- the builder
def test_config_rejects_unknown_settings():
    assert AIFeedbackConfig.from_dict({"num_samples": 3}).num_samples == 3
    with pytest.raises(ValueError, match="num_sample"):
        AIFeedbackConfig.from_dict({"num_sample": 3})


class ScriptedPolicy:
    """Returns fixed samples, so the pairing on real claims can be checked exactly."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def generate(self, images, prompts, **kwargs):
        self.calls.append(kwargs)
        return [a for _ in prompts for a in self.answers]


def test_builder_pairs_on_scripted_samples(png):
    answers = ["A red cup. A red plate.",            # score 0, 5 words
               "A red cup. A blue plate.",           # score -1
               "A green cup. A blue plate on it.",   # score -2
               "", "A red cup. A red plate.", "ok"]  # empty, duplicate, no claims
    config = AIFeedbackConfig(num_samples=6, temperature=0.7, max_new_tokens=20)
    builder = AIFeedbackBuilder(ScriptedPolicy(answers), WordJudge("red"), config=config)
    prompts = [{"images": [{"bytes": png(), "path": None}], "prompt": "What is on the table?", "source": "p",
                "meta": '{"id": 7}'}]
    records = list(builder.records(prompts))
    assert [(r["chosen"], r["rejected"]) for r in records] == [
        ("A red cup. A red plate.", "A green cup. A blue plate on it.")]
    meta = json.loads(records[0]["meta"])
    assert meta["chosen_score"] == 0 and meta["rejected_score"] == -2 and meta["id"] == 7
    assert meta["rejected_failed"] == ["A green cup.", "A blue plate on it."]
    stats = builder.stats
    assert (stats.dropped_empty, stats.duplicates, stats.dropped_no_claims, stats.pairs) == (1, 1, 1, 1)
    assert builder.policy.calls[0] == {"do_sample": True, "temperature": 0.7, "top_p": 1.0,
                                       "num_return_sequences": 6, "max_new_tokens": 20}


def test_builder_end_to_end_with_a_tiny_policy(tiny_llava, png, tmp_path):
    from mmalign.models import load_adapter

    prompts = [{"images": [png(c, (32, 32))], "prompt": p} for c, p in
               [((255, 0, 0), "what is in the image?"), ((0, 0, 255), "describe the picture."),
                ((0, 255, 0), "what color is the object?")]]
    save_preference_dataset(prompts, tmp_path / "prompts", kind="prompts")
    config = AIFeedbackConfig(num_samples=8, max_new_tokens=24, prompts_per_batch=2)
    builder = AIFeedbackBuilder(load_adapter(tiny_llava), WordJudge("red"), config=config)
    report = build_ai_feedback(tmp_path / "prompts", tmp_path / "pairs", builder)
    ds = load_preference_dataset(tmp_path / "pairs")
    assert report.rows == len(ds) == builder.stats.pairs >= 1
    per_prompt = Counter(ds["prompt"])
    assert max(per_prompt.values()) <= 2
    for row in ds:
        meta = json.loads(row["meta"])
        assert meta["chosen_score"] - meta["rejected_score"] >= 1
        assert meta["chosen_score"] == -len(meta["chosen_failed"])
        assert row["chosen"] != row["rejected"] and row["source"] == "ai-feedback"
    assert builder.stats.prompts == 3 and builder.stats.samples == 24


def test_read_prompts_from_files_and_datasets(png, record, tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"image": "a.png", "question": "<image>\nWhat is it?"}, {"images": ["a.png"], "prompt": "Describe."}]))
    assert [r["prompt"] for r in read_prompts(tmp_path / "q.jsonl")] == ["What is it?", "Describe."]
    save_preference_dataset([record(), record(chosen="Other."), record(prompt="Another?")], tmp_path / "pref")
    assert [r["prompt"] for r in read_prompts(tmp_path / "pref")] == ["What is on the table?", "Another?"]
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red."}]}]))
    [rec] = read_prompts(tmp_path / "llava.json")
    assert rec["prompt"] == "What?" and rec["reference"] == "Red."


# ---------------------------------------------------------------------------- the command and its judge cache
def test_ai_feedback_command_resumes_from_the_judge_cache(tiny_llava, png, chat_server, tmp_path, monkeypatch,
                                                          capsys):
    from mmalign.cli import main

    monkeypatch.setenv("CLI_JUDGE_KEY", "sk-cli")
    save_preference_dataset([{"images": [png(size=(32, 32))], "prompt": "what is in the image?"}],
                            tmp_path / "prompts", kind="prompts")
    argv = ["data", "build", "ai-feedback", "--prompts", tmp_path / "prompts", "--policy", tiny_llava,
            "--judge-url", chat_server.url, "--judge-model", "judge-vlm", "--api-key-env", "CLI_JUDGE_KEY",
            "--judge-concurrency", "3", "--samples", "6", "--max-new-tokens", "16",
            "--out", tmp_path / "pairs"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr()
    sent = len(chat_server.requests)
    assert sent >= 2 and all(r["auth"] == "Bearer sk-cli" for r in chat_server.requests)
    assert all(r["body"]["logprobs"] for r in chat_server.requests)  # claim verdicts
    cache = tmp_path / "pairs.judge-cache.jsonl"  # beside the output folder, which is replaced
    lines = cache.read_text().splitlines()
    assert len(lines) == sent
    first = load_preference_dataset(tmp_path / "pairs")[:]

    assert main([str(a) for a in argv]) == 0  # a rerun: every reply is cached
    assert len(chat_server.requests) == sent

    cache.write_text("".join(line + "\n" for line in lines[: sent // 2]))  # as if cut short halfway
    assert main([str(a) for a in argv]) == 0
    assert len(chat_server.requests) == sent + (sent - sent // 2)
    assert load_preference_dataset(tmp_path / "pairs")[:] == first
