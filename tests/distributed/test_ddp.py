"""Two CPU processes (DDP over gloo, launched with torchrun) train exactly like one process
with the same global batch: `mmalign train dpo`, `sft` and `rm`; PPO-Lagrangian keeps its
processes in step (same weights, same λ and cost window)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mmalign.cli import main
from mmalign.config_io import accelerate_config_path

WORKER = Path(__file__).with_name("train_worker.py")
COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black"]
STEPS = 3


@pytest.fixture(scope="module")
def recipes(tiny_dirs, tmp_path_factory):
    """DPO on eight preference pairs and SFT on eight conversations, each with its own image.

    Plain SGD: a step is the averaged gradient times the rate, so the comparison checks DDP's
    gradient averaging itself (AdamW's division by sqrt(v) turns float rounding in near-zero
    gradient entries into differences of a few 1e-5 in single weights).
    """
    from mmalign.data_builders.corrections import correction_record
    from mmalign.data_builders.storage import save_preference_dataset

    root = tmp_path_factory.mktemp("data")
    records, conversations = [], []
    for i, color in enumerate(COLORS):
        image = Image.new("RGB", (32, 32), color)
        image.save(root / f"{i}.png")
        other = COLORS[(i + 3) % len(COLORS)]
        records.append(correction_record(f"a {other} square.", f"a {color} square.", prompt="what is in the image?",
                                         images=[image]))
        conversations.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat color is it?"}, {"from": "gpt", "value": f"it is {color}."}]})
    save_preference_dataset(records, root / "pairs")
    (root / "sft.json").write_text(json.dumps(conversations))
    common = {"model_name_or_path": str(tiny_dirs["llava"]), "lora_r": 4, "lora_dropout": 0.0, "max_length": 256,
              "max_steps": STEPS, "optim": "sgd", "learning_rate": 0.1, "logging_steps": 1, "seed": 0,
              "save_strategy": "steps", "save_steps": STEPS, "report_to": "none", "use_cpu": True}
    paths = {}
    for method, data in (("dpo", root / "pairs"), ("sft", root / "sft.json"), ("rm", root / "pairs")):
        paths[method] = root / f"{method}.yaml"
        paths[method].write_text(yaml.safe_dump(common | {"dataset_path": str(data)}))
    return paths


@pytest.fixture(scope="module")
def scorers(save_scorers):
    """A reward and a cost model, the cost model biased to unsafe."""
    return save_scorers(cost_bias=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tiny_dirs, recipes, scorers, tmp_path_factory):
    """DPO, SFT, reward model and PPO in one ``torchrun --nproc_per_node 2``, device batch 1 each.

    (``accelerate launch`` starts several CPU processes only through MPI, so torchrun it is.)
    """
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), "--out", str(out), "--per-device-batch", "1",
           "--model", str(tiny_dirs["llava"]), f"ppo={scorers}", *(f"{m}={recipe}" for m, recipe in recipes.items())]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def logged_steps(run: Path) -> list[dict[str, float]]:
    state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [{k: v for k, v in e.items() if isinstance(v, float)} for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("method", ["dpo", "sft", "rm"])
def test_two_processes_match_one_with_the_same_global_batch(recipes, two_processes, tmp_path, method):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", method, "--config", str(recipes[method]), "--output_dir", str(tmp_path / method),
                     "--per_device_train_batch_size", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = logged_steps(tmp_path / method), logged_steps(two_processes / method)
    assert len(one) == len(two) == STEPS
    assert len({s["loss"] for s in one}) == STEPS  # the batches differ, so the trajectory does too
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        # the spread of the scores is taken per process before gathering: not batch-size invariant
        a.pop("scores/std", None)
        for key in a:  # loss, gradient norm and the gathered metrics (DPO rewards, accuracies, RM scores)
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    files = sorted(p.name for p in (tmp_path / method / "final").glob("*.safetensors"))  # LoRA (+ the RM's head)
    assert files == sorted(p.name for p in (two_processes / method / "final").glob("*.safetensors"))
    w1 = {f"{f}:{k}": v for f in files for k, v in load_file(tmp_path / method / "final" / f).items()}
    w2 = {f"{f}:{k}": v for f in files for k, v in load_file(two_processes / method / "final" / f).items()}
    assert w1.keys() == w2.keys() and w1
    assert max(w.abs().max().item() for n, w in w1.items() if "lora_B" in n) > 1e-3  # lora_B starts at zero
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=0)
    assert sorted(p.name for p in (two_processes / method).iterdir() if p.name.startswith(".")) == []


def test_ppo_processes_stay_in_step(two_processes):
    ranks = [json.loads((two_processes / "ppo" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # each process rolls out its half of the rollout batch
    assert not set(ranks[0]["first_batch"]) & set(ranks[1]["first_batch"])
    assert len(ranks[0]["first_batch"]) == len(ranks[1]["first_batch"]) == 2
    # λ sees the costs of both processes: the same window and multiplier everywhere
    window = ranks[0]["cost_window"]
    assert window == ranks[1]["cost_window"] and len(window) == 8  # 2 iterations x 4 responses
    log_lambda = 0.0  # λ_init = 1; one SGD step of −(J_C − d)·λ on log λ per iteration, lr 0.5, d = 0
    for seen in (4, 8):
        log_lambda += 0.5 * (sum(window[:seen]) / seen) * math.exp(log_lambda)
    assert ranks[0]["lambda"] == ranks[1]["lambda"] == pytest.approx(math.exp(log_lambda), rel=1e-5)
    assert ranks[0]["lambda"] != pytest.approx(1.0)
    assert ranks[0]["log"] == ranks[1]["log"]  # statistics are averaged over the processes
    assert [e["lambda"] for e in ranks[0]["log"]][-1] == pytest.approx(ranks[0]["lambda"])
    # gradients are all-reduced: policy and critics take identical steps
    w0, w1 = (load_file(two_processes / "ppo" / f"rank{r}.safetensors") for r in (0, 1))
    assert w0.keys() == w1.keys() and any("lora_B" in n for n in w0)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    assert max(w.abs().max().item() for n, w in w0.items() if "default.weight" in n and "lora_B" in n) > 0


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {name: ClusterConfig.from_yaml_file(str(accelerate_config_path(name))).distributed_type
             for name in ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")}
    assert {k: str(v).split(".")[-1] for k, v in kinds.items()} == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED",
        "deepspeed-zero3": "DEEPSPEED"}
    with pytest.raises(FileNotFoundError, match="shipped accelerate configs: ddp, deepspeed-zero2, deepspeed-zero3, fsdp"):
        accelerate_config_path("nope")
