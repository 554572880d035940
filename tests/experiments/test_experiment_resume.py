"""Experiments resume: a real (tiny) experiment through the command line re-run, and one killed
between two (seed, arm) runs. Apart from the report tests so the two slow files run side by side."""

import json

import pytest


@pytest.mark.slow
def test_cli_runs_an_experiment_resumes_it_and_reports(tmp_path, capsys):
    """A real (tiny) reward-model experiment through the command line, then a resumed re-run."""
    from mmalign.cli import main

    out = tmp_path / "exp"
    argv = ["experiments", "reward-models", "--quick", "--seeds", "0", "--models", "rm", "fact_rm", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(f"report at {out / 'report.md'}")
    measured = out / "reward-models" / "measured"
    results = json.loads((out / "reward-models" / "results.json").read_text())
    assert sorted(p.name for p in measured.iterdir()) == ["seed0-fact_rm.json", "seed0-rm.json"]
    assert results["summary"]["rm"]["accuracy"] == json.loads((measured / "seed0-rm.json").read_text())["accuracy"]
    claims = json.loads((out / "claims.json").read_text())
    assert [c["arm"] for c in claims] == ["fact_rm"] and claims[0]["seeds"] == 1
    expected = results["summary"]["fact_rm"]["accuracy"] - results["summary"]["rm"]["accuracy"]
    assert claims[0]["difference"] == pytest.approx(expected)
    assert "## 2a. Plain RM versus Fact-RM" in (out / "report.md").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in measured.iterdir()}
    assert main(argv) == 0  # resumes: nothing is trained or measured again
    assert {p.name: p.stat().st_mtime_ns for p in measured.iterdir()} == stamps


@pytest.mark.slow
def test_experiment_killed_between_two_runs_resumes_with_the_next(tmp_path):
    """``mmalign experiments`` killed with SIGKILL once its first (seed, arm) result is saved
    resumes with the second, never measuring the first again nor rebuilding its data."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mmalign.cli import main

    out = tmp_path / "exp"
    argv = ["experiments", "reward-models", "--quick", "--seeds", "0", "1", "--models", "rm", "--out", str(out)]
    measured = out / "reward-models" / "measured"
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmalign", *argv], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 300
        while not (measured / "seed0-rm.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, log[-2000:]
    assert sorted(p.name for p in measured.iterdir()) == ["seed0-rm.json"]
    first = (measured / "seed0-rm.json").stat().st_mtime_ns
    data = {p.name: p.stat().st_mtime_ns for p in (out / "reward-models" / "data").iterdir()}

    assert main(argv) == 0
    assert sorted(p.name for p in measured.iterdir()) == ["seed0-rm.json", "seed1-rm.json"]
    assert (measured / "seed0-rm.json").stat().st_mtime_ns == first
    assert {name: (out / "reward-models" / "data" / name).stat().st_mtime_ns for name in data} == data
    results = json.loads((out / "reward-models" / "results.json").read_text())
    assert [run["seed"] for run in results["runs"]] == [0, 1] and (out / "report.md").exists()
