"""A 4-bit load never reaches the network: bitsandbytes' CPU backend asks the model hub for an
optional kernel (kernels-community/quantization-bitsandbytes) while it is being imported, on
AVX512-BF16 CPUs. mmalign imports it with the hub kernel loader refused
(``mmalign.qlora.import_bitsandbytes``) unless ``MMALIGN_HUB_KERNELS=1``.

The load runs in a fresh interpreter (bitsandbytes is imported once per process) without
``HF_HUB_OFFLINE`` (which the test session sets, and which would hide the lookup), with every
socket connection and every hub kernel request recorded and refused.
"""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, socket, sys

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network access in a test")

socket.create_connection = refuse
socket.socket.connect = lambda self, address: refuse(address)
socket.socket.connect_ex = lambda self, address: refuse(address)
try:
    import kernels
    kernels.get_kernel = lambda repo_id, *a, **k: refuse("hub kernel", repo_id)
except ImportError:
    pass

from mmalign.models import load_adapter
from mmalign.qlora import QuantizationConfig

adapter = load_adapter(sys.argv[1], quantization=QuantizationConfig(compute_dtype="float32"))
adapter.add_lora(__import__("mmalign.qlora", fromlist=["LoraSettings"]).LoraSettings(r=2, alpha=4))
print(json.dumps({"quantized": adapter.quantized, "attempts": attempts}))
"""


def run_load(tiny: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", SCRIPT, tiny], capture_output=True, text=True, env=environ,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_4bit_load_makes_no_network_attempt(tiny_dirs):
    result = run_load(str(tiny_dirs["llava"]))
    assert result["quantized"] is True
    assert result["attempts"] == []


def test_the_guard_leaves_a_request_through_when_asked(tiny_dirs):
    """With MMALIGN_HUB_KERNELS=1 bitsandbytes asks as it always did (on CPUs where it asks at
    all): the recorded request shows the guard is what stopped it above."""
    from bitsandbytes.functional import has_avx512bf16

    result = run_load(str(tiny_dirs["llava"]), MMALIGN_HUB_KERNELS="1")
    if has_avx512bf16():
        assert any("kernels-community" in a for a in result["attempts"])
