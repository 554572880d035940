import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

# Tests never touch the network; the hub client must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker takes its share of the cores: the tiny models are bound by
# Python overhead, so processes side by side beat threads inside one process.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

FAMILIES = [
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl",
    "smolvlm", "idefics3",
]


@contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """A threaded HTTP server on 127.0.0.1 (a free port) for the duration of the block: the
    fake judge endpoints tests talk to, never anything beyond this machine."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One saved tiny checkpoint per family, built once per test session."""
    from mmalign.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {fam: save_tiny(fam, root / fam, seed=0) for fam in FAMILIES}


@pytest.fixture(scope="session")
def save_scorers(tiny_dirs, tmp_path_factory):
    """``save_scorers(cost_bias)`` -> folder with a reward and a cost model (random LoRA + head)
    on the tiny LLaVA; the cost head's bias sets how unsafe everything looks."""
    from mmalign.models import ScalarHeadModel, load_adapter
    from mmalign.qlora import LoraSettings

    def save(cost_bias: float):
        root = tmp_path_factory.mktemp("scorers")
        for kind, bias in (("reward", 0.0), ("cost", cost_bias)):
            torch.manual_seed(1)
            adapter = load_adapter(tiny_dirs["llava"])
            adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
            model = ScalarHeadModel(adapter, kind=kind)
            with torch.no_grad():
                model.head.bias.fill_(bias)
            model.save_pretrained(root / kind)
        return root

    return save


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
