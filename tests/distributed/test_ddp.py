"""Two CPU processes (DDP over gloo) train exactly like one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from .train_worker import train

WORKER = Path(__file__).with_name("train_worker.py")
COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight preference pairs and eight SFT conversations, each with its own image."""
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
    return {"dpo": root / "pairs", "sft": root / "sft.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tiny_dirs, data, tmp_path_factory):
    """DPO, SFT and the PPO check under ``torchrun --nproc_per_node 2``, one device batch of 1 each."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), "--model", str(tiny_dirs["llava"]), "--out", str(out),
           "--per-device-batch", "1", f"dpo={data['dpo']}", f"sft={data['sft']}", f"ppo={data['dpo']}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_two_processes_match_one_with_the_same_global_batch(tiny_dirs, data, two_processes, tmp_path, method):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(method, str(tiny_dirs["llava"]), str(data[method]), tmp_path, per_device_batch=2, steps=3)
    finally:
        torch.set_num_threads(threads)
    one = json.loads((tmp_path / "log.json").read_text())
    two = json.loads((two_processes / method / "log.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["steps"]) == len(two["steps"]) == 3
    losses = [s["loss"] for s in one["steps"]]
    assert len(set(losses)) == 3  # the batches differ, so the trajectory does too
    for a, b in zip(one["steps"], two["steps"]):
        assert a.keys() == b.keys()
        for key in a:  # loss, grad norm and the gathered metrics (DPO rewards, accuracies)
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    w1, w2 = load_file(tmp_path / "lora.safetensors"), load_file(two_processes / method / "lora.safetensors")
    assert w1.keys() == w2.keys() and w1
    moved = max(w.abs().max().item() for n, w in w1.items() if "lora_B" in n)  # lora_B starts at zero
    assert moved > 1e-3
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=0)


def test_ppo_refuses_to_run_in_several_processes(two_processes):
    result = json.loads((two_processes / "ppo" / "log.json").read_text())
    assert result["world_size"] == 2
    assert result["refusal"].startswith("PPO runs in one process (this launch has 2)")
