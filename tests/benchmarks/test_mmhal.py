"""MMHal-Bench: rating extraction, metrics, record order, and the pluggable judges."""

import json
import re

import pytest

from mmalign.benchmarks.judges import GenerativeJudge, HTTPJudge
from mmalign.benchmarks.mmhal import (
    MMHalBenchmark,
    MMHalConfig,
    extract_rating,
    mmhal_metrics,
    run_mmhal,
)
from mmalign.judge_client import JudgeClient, JudgeEndpoint


def http_judge(base_url, model="m", **settings):
    """An HTTP judge whose retries cost no time (the waits are recorded, not slept)."""
    return HTTPJudge(JudgeClient(JudgeEndpoint(base_url, model, **settings), sleep=lambda s: None, progress=False))


@pytest.mark.parametrize(
    "judgement, rating",
    [
        ("The answer is accurate and detailed.\nRating: 5", 5),
        ("rating: 4. To repeat, Rating: 4", 4),  # one distinct rating, twice
        ("RATING: 6", 6),
        ("Rating: 3 or Rating: 4", None),  # two ratings
        ("I would give it a 5.", None),  # no rating
        ("Rating:5", None),  # the official pattern needs "rating: k"
        ("Rating: 0", 0),
    ],
)
def test_extract_rating(judgement, rating):
    assert extract_rating(judgement) == rating


def test_metrics_by_hand():
    m = mmhal_metrics([6, 2, 0, 3], ["attribute", "counting", "attribute", "counting"])
    assert m["score"] == pytest.approx(2.75)
    assert m["hallucination_rate"] == pytest.approx(0.5)
    assert m["per_type"]["attribute"] == {"score": 3.0, "hallucination_rate": 0.5, "n": 2}
    assert m["per_type"]["counting"] == {"score": 2.5, "hallucination_rate": 0.5, "n": 2}


def answers(n=8):
    return [{"question_id": i, "model_answer": f"answer {i}"} for i in range(n)]


class ScriptedJudge:
    """Rates record i with i % 7 from the prompt; record 5 gets an invalid judgement."""

    name = "scripted-judge"

    def __init__(self):
        self.prompts = []

    def __call__(self, prompts):
        self.prompts += prompts
        out = []
        for p in prompts:
            i = int(re.search(r"Question (\d+)", p).group(1))
            out.append("Rating: 1 and Rating: 2" if i == 5 else f"Fine.\nRating: {i % 7}")
        return out


def test_scores_types_and_order(mmhal_template, tmp_path):
    judge = ScriptedJudge()
    result = run_mmhal(MMHalConfig(mmhal_template, judge=judge), answers=answers()[::-1], out=tmp_path / "r",
                       progress=False)
    # ratings by index: 0 1 2 3 4 (5: invalid -> 0) 6 (7 % 7 = 0)
    assert [d["score"] for d in result.details] == [0, 1, 2, 3, 4, 0, 6, 0]
    assert [d["question_id"] for d in result.details] == list(range(8))  # record order kept
    assert result.metrics["score"] == pytest.approx(16 / 8)
    assert result.metrics["hallucination_rate"] == pytest.approx(5 / 8)  # 0, 1, 2, 0, 0
    assert result.metrics["invalid_judgements"] == 1
    # records 6 and 7 have no question_type: the official index rule gives holistic / other
    assert result.metrics["per_type"]["holistic"]["score"] == 6.0
    assert result.metrics["per_type"]["other"]["n"] == 1
    assert result.protocol["judge"] == "scripted-judge"
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["protocol"]["judge"] == "scripted-judge"
    prompt = judge.prompts[0]
    assert "dog, ball" in prompt and "Question 0 about the dog?" in prompt and "Reference 0." in prompt
    assert "answer 0" in prompt


def test_judgements_are_cached_per_answer(mmhal_template, tmp_path):
    judge = ScriptedJudge()
    config = MMHalConfig(mmhal_template, judge=judge)
    run_mmhal(config, answers=answers(), out=tmp_path / "r", progress=False)
    assert len(judge.prompts) == 8
    run_mmhal(config, answers=answers(), out=tmp_path / "r", progress=False)
    assert len(judge.prompts) == 8  # nothing judged twice
    changed = answers()
    changed[3]["model_answer"] = "a different answer"
    run_mmhal(config, answers=changed, out=tmp_path / "r", progress=False)
    assert len(judge.prompts) == 9 and "a different answer" in judge.prompts[-1]


def test_official_output_format_joins_by_image_and_question(mmhal_template, tmp_path):
    records = json.loads(mmhal_template.read_text())
    for i, r in enumerate(records):
        r["model_answer"] = f"answer {i}"
    official = tmp_path / "responses.json"
    official.write_text(json.dumps(records[::-1]))
    by_file = run_mmhal(MMHalConfig(mmhal_template, judge=ScriptedJudge()), answers=official, progress=False)
    by_id = run_mmhal(MMHalConfig(mmhal_template, judge=ScriptedJudge()), answers=answers(), progress=False)
    assert by_file.metrics == by_id.metrics
    bad = [{"image_id": "img0", "question": "Unknown question?", "model_answer": "x"}]
    with pytest.raises(ValueError, match=r"answers record 0: \(image_id, question\) matches no record"):
        run_mmhal(MMHalConfig(mmhal_template, judge=ScriptedJudge()), answers=bad, progress=False)


def test_repeated_image_and_question_pairs_are_matched_in_file_order(mmhal_template):
    records = json.loads(mmhal_template.read_text())
    records[4].update(image_id=records[0]["image_id"], question=records[0]["question"])
    mmhal_template.write_text(json.dumps(records))
    bench = MMHalBenchmark(MMHalConfig(mmhal_template, judge=ScriptedJudge()))
    official = [{**r, "model_answer": f"answer {i}"} for i, r in enumerate(records)][::-1]
    joined = bench.read_answers(official)
    assert sorted(r["question_id"] for r in joined) == list(range(8))
    assert [r["question_id"] for r in joined if r["question"] == records[0]["question"]] == [0, 4]
    with pytest.raises(ValueError, match=r"answers record 8: more answers for \(image_id, question\)"):
        bench.read_answers(official + [official[0]])


def test_a_judge_is_required(mmhal_template):
    with pytest.raises(ValueError, match="needs a judge"):
        run_mmhal(MMHalConfig(mmhal_template), answers=answers(), progress=False)


def test_generation_items_use_the_image_file_of_the_url(mmhal_template, tmp_path):
    items = MMHalBenchmark(MMHalConfig(mmhal_template, image_dir=tmp_path / "mmhal_images")).items()
    assert [it.key for it in items] == [str(i) for i in range(8)]
    assert items[3].image == tmp_path / "mmhal_images" / "img3.jpg"


# --------------------------------------------------------------------------- HTTP judge


def test_http_judge_against_a_local_server(judge_server, mmhal_template, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    judge_server.reply = lambda prompt: "Rating: 5" if "answer 2" in prompt else "Rating: 1"
    judge = http_judge(judge_server.base_url, "judge-7b", api_key_env="MY_JUDGE_KEY", concurrency=3)
    result = run_mmhal(MMHalConfig(mmhal_template, judge=judge), answers=answers(), progress=False)
    assert [d["score"] for d in result.details] == [1, 1, 5, 1, 1, 1, 1, 1]
    assert result.protocol["judge"] == f"judge-7b @ {judge_server.base_url}"
    request = judge_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["body"]["model"] == "judge-7b" and request["body"]["temperature"] == 0.0
    assert request["body"]["messages"][0]["role"] == "user"


def test_http_judge_sends_no_key_when_the_variable_is_unset(judge_server, monkeypatch):
    monkeypatch.delenv("UNSET_KEY_VAR", raising=False)
    judge = http_judge(judge_server.base_url, api_key_env="UNSET_KEY_VAR")
    assert judge(["hello"]) == ["Rating: 3"]
    assert "Authorization" not in judge_server.requests[0]["headers"]


def test_http_judge_retries_transient_errors(judge_server):
    judge_server.fail_first = 2
    judge = http_judge(judge_server.base_url)
    assert judge(["hello"]) == ["Rating: 3"]
    assert len(judge_server.requests) == 3


def test_http_judge_reports_client_errors(judge_server):
    judge_server.fail_first = 5
    judge_server.fail_status = 400
    judge = http_judge(judge_server.base_url)
    with pytest.raises(RuntimeError, match=r"prompt 1 of 1 \(sha256 [0-9a-f]{16}\): HTTP 400"):
        judge(["hello"])
    assert len(judge_server.requests) == 1  # a client error is not retried


def test_adapter_judge_generates_text_only():
    class Recorder:
        def generate(self, images, prompts, **kwargs):
            assert images is None and kwargs["do_sample"] is False
            return [f" Rating: {len(p) % 7} " for p in prompts]

    judge = GenerativeJudge(Recorder(), name="local:tiny", batch_size=2)
    assert judge(["abc", "abcd", "x"]) == ["Rating: 3", "Rating: 4", "Rating: 1"]
    assert judge.name == "local:tiny"
