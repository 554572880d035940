"""Property: whatever an annotator's browser (or anyone with a session) sends to the submission
endpoint, the studio never answers 500, never stores a submission its own checks refuse, and
the project still exports."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmalign.studio import StudioProject, create_app, export_project
from mmalign.studio.export import export_records
from mmalign.studio.project import MAX_ID

from .test_app import csrf_of, sign_in

ANSWERS = ["ab", "a red cup and a cat on a table.", "🙂 café\u200b: a cat\u00ad on a mat.\n"]
PAIR = ("Keep the knife away from children.", "Here is how to hurt someone.")
# characters that tend to break things: invisible, combining, surrogate, control, wide
TRICKY = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u3164", "\u2800", "\u0301", "\u034f",
          "\ud800", "\udfff", "\x00", "\x07", "\x1b", "\n", "\t", " ", "\u3000", "\u2028", "🙂", "é", "e\u0301",
          "a", "b", "ab", "<script>", '"', "\\"]

texts = st.one_of(
    st.lists(st.one_of(st.characters(), st.sampled_from(TRICKY)), max_size=8).map("".join),
    st.sampled_from(["", "a", "b", "ab", "red", "blue", "\u200b", "a\u200b", " ab "]),
)
offsets = st.one_of(st.integers(-2, 40), st.sampled_from([2**31, MAX_ID, MAX_ID + 1, 2**64, -(2**63) - 1]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(texts, inner, max_size=4)),
                           max_leaves=12)
span = st.one_of(st.fixed_dictionaries({"start": offsets, "end": offsets, "text": texts}),
                 st.dictionaries(st.sampled_from(["start", "end", "text", "x"]), json_values, max_size=4))
corrections = st.fixed_dictionaries({"corrections": st.lists(span, max_size=4)})
choice = st.one_of(st.sampled_from(["a", "b"]), json_values)
rating = st.one_of(st.integers(-4, 4), json_values)
pair_labels = st.fixed_dictionaries({"more_helpful": choice, "safer": choice, "a_harmless": rating,
                                     "b_harmless": rating, "a_helpful": rating, "b_helpful": rating})
payloads = st.one_of(corrections, pair_labels, json_values)
items = st.one_of(st.sampled_from([1, 2, 3, 4]), st.integers(min_value=0), st.sampled_from([MAX_ID + 1, 2**64]))
garbage = st.tuples(items, payloads)
words = st.one_of(texts, st.sampled_from(["blue", "a dog", "b", "a", "café", "ab", " a", "b ", "​x"]))


@st.composite
def plausible_corrections(draw):
    """Spans in range and apart on a real answer (in any order), with any replacement text."""
    item = draw(st.sampled_from([1, 2, 3]))
    answer = ANSWERS[item - 1]
    cuts = sorted(draw(st.sets(st.integers(0, len(answer)), min_size=2, max_size=6)))
    marks = [{"start": a, "end": b, "text": draw(words)} for a, b in zip(cuts[::2], cuts[1::2])]
    return item, {"corrections": draw(st.permutations(marks))}


plausible_pairs = st.tuples(st.just(4), st.fixed_dictionaries({
    "more_helpful": st.sampled_from(["a", "b", "c"]), "safer": st.sampled_from(["a", "b"]),
    "a_harmless": st.integers(-4, 4), "b_harmless": st.integers(-3, 3),
    "a_helpful": st.integers(-1, 4), "b_helpful": st.integers(0, 3)}))


def test_garbage_submissions_never_500_never_stored_and_export_still_works(tmp_path):
    project = StudioProject.create(tmp_path / "p")
    token = project.add_annotator("alice")
    project.add_items([*({"kind": "correction", "images": [], "prompt": "Describe.", "answer": a} for a in ANSWERS),
                       {"kind": "pair", "images": [], "prompt": "A knife?", "answer": PAIR[0], "answer_b": PAIR[1]},
                       {"kind": "correction", "images": [], "prompt": "Describe.", "answer": "a blue car."}])
    project.assign()
    alice = project.annotators()[0]
    project.submit(alice.id, 5, {"corrections": [{"start": 2, "end": 6, "text": "red"}]})  # so export has a row
    client, _ = sign_in(create_app(project), token)
    csrf = csrf_of(client)
    accepted = []

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sent=st.one_of(garbage, plausible_corrections(), plausible_pairs),
           raw=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=64)))
    def submit(sent, raw):
        item, payload = sent
        body = raw if raw is not None else json.dumps(payload).encode()
        response = client.post(f"/api/items/{item}/annotation", data=body, content_type="application/json",
                               headers={"X-CSRF-Token": csrf})
        assert response.status_code in (200, 400, 404, 409), (response.status_code, response.get_data())
        answer = response.get_json()
        assert isinstance(answer, dict)
        if response.status_code != 200:
            assert answer["error"]
            return
        (stored,) = [s for s in project.submissions() if s.id == answer["annotation"]]
        assert stored.state == "valid" and stored.item_id == item
        accepted.append(stored)
        # and it becomes a valid canonical record (or an answer marked correct) beside the seed row
        records, counts, _, skipped = export_records(project)
        assert skipped == [] and counts["corrections"] + counts["pairs"] + counts["unchanged"] == 2
        # free the item for the next example: reopened, the same annotator may submit again
        project.drop_submission(stored.id, "property test", reopen=True)

    submit()
    assert project.submissions(state="invalid") == []
    kinds = {(s.kind, bool(s.kind == "pair" or s.payload["corrections"])) for s in accepted}
    assert kinds == {("correction", False), ("correction", True), ("pair", True)}, "the strategies test only refusals"
    report = export_project(project, tmp_path / "out")
    assert report.skipped == () and report.rows == 1 and report.dropped == len(accepted)
