"""python -m mmalign.experiments.perf.dpo_speed: every configuration trains and they all do the same work.

A speed comparison is only fair if the configurations compute the same thing, so the
quick shape is trained for two steps under each configuration (in this process, to stay
fast) and their per-step losses must coincide with TRL's; one end-to-end run of the
command line checks the subprocess driver, the JSON and the table.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from mmalign.experiments.perf import dpo_speed  # noqa: E402


@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory) -> Path:
    return dpo_speed.build_checkpoint(dpo_speed.QUICK, tmp_path_factory.mktemp("dpo_speed") / "llava")


@pytest.fixture()
def one_thread():
    """The workers' thread setting, undone afterwards (tiny matmuls are slower on two busy cores)."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_every_configuration_computes_the_same_losses(quick_checkpoint, one_thread):
    results = {}
    for name, config in dpo_speed.CONFIGS.items():
        spec = {"name": name, **config, "shape": asdict(dpo_speed.QUICK), "checkpoint": str(quick_checkpoint),
                "steps": 1, "warmup": 1, "threads": one_thread}
        results[name] = dpo_speed.run_configuration(spec)
    reference = results["trl"]
    assert reference["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # fresh LoRA: policy == reference
    assert reference["losses"][1] != reference["losses"][0]  # the first update moved the policy
    for name, result in results.items():
        assert result["pairs_per_s"] > 0 and result["peak_rss_mb"] > 0, name
        assert result["row_tokens"] == reference["row_tokens"], name
        assert result["losses"] == pytest.approx(reference["losses"], abs=1e-5), name
    assert results["mmalign-cached-shared-precomputed"]["precompute_s"] > 0


@pytest.mark.slow
def test_command_line_quick_run(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mmalign.experiments.perf.dpo_speed", "--quick", "--steps", "1", "--warmup", "1",
         "--configs", "trl", "mmalign-cached-shared-precomputed", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mmalign-cached-shared-precomputed" in proc.stdout and "load average" in proc.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["trl"]["speed_vs_trl"] == pytest.approx(1.0)
    fast = rows["mmalign-cached-shared-precomputed"]
    assert fast["max_loss_diff_vs_trl"] < 1e-5 and fast["precompute_s"] > 0
