"""Security rules pinned: safetensors only, no pickle, trust_remote_code off unless asked,
keys only from the environment, image paths confined to their folder."""

import argparse
import ast
import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["mmalign", "models", "data_builders", "benchmarks"]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"}
KEY_LITERAL = re.compile(r"^(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,})$")


def violations(source: str, name: str = "<string>") -> list[str]:
    """Unsafe constructs in one Python source, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            if func in ("eval", "exec", "builtins.eval", "builtins.exec"):
                found.append(f"{where}: {func}()")
            if func.endswith("torch.load") or func == "load" and "weights_only" in kwargs:
                value = kwargs.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"{where}: torch.load without weights_only=True")
            if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{where}: {func} (use yaml.safe_load)")
            for key, bad in (("trust_remote_code", True), ("shell", True), ("use_safetensors", False),
                             ("safe_serialization", False)):
                value = kwargs.get(key)
                if isinstance(value, ast.Constant) and value.value is bad:
                    found.append(f"{where}: {key}={bad}")
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args + node.kwonlyargs
            defaults = [None] * (len(node.posonlyargs + node.args) - len(node.defaults)) + node.defaults
            defaults += node.kw_defaults
            for arg, default in zip(args, defaults):
                if arg.arg == "trust_remote_code" and not (isinstance(default, ast.Constant) and default.value is False):
                    found.append(f"{where}: trust_remote_code must default to False")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY_LITERAL.match(node.value):
            found.append(f"{where}: a literal API key")
    return found


def project_sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_the_scanner_catches_each_unsafe_construct():
    bad = """
import pickle
from dill import loads
torch.load(path)
torch.load(path, weights_only=False)
eval("1")
yaml.load(text)
AutoModel.from_pretrained(x, trust_remote_code=True)
subprocess.run(cmd, shell=True)
model.save_pretrained(out, safe_serialization=False)
def load(path, trust_remote_code=True): ...
KEY = "sk-abcdefghijklmnopqrstuvwxyz"
"""
    assert len(violations(bad)) == 11
    good = "torch.load(p, weights_only=True)\nyaml.safe_load(t)\ndef f(trust_remote_code: bool = False): ...\n"
    assert violations(good) == []


def test_project_sources_have_no_unsafe_calls():
    files = project_sources()
    assert len(files) > 60
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == []


def test_trust_remote_code_is_off_unless_asked():
    from mmalign.export import merge_adapter
    from mmalign.model_config import ModelConfig
    from mmalign.models import detect_family
    from mmalign.models.adapter import VLMAdapter

    for func in (VLMAdapter.from_pretrained, detect_family, merge_adapter):
        assert inspect.signature(func).parameters["trust_remote_code"].default is False
    assert ModelConfig().trust_remote_code is False


def test_api_keys_are_named_by_environment_variable_only():
    from mmalign.cli import build_parser
    from mmalign.judge_client import JudgeEndpoint

    keyish = [f.name for f in dataclasses.fields(JudgeEndpoint)
              if re.search(r"key|secret|password|auth|(^|_)token$", f.name)]
    assert keyish == ["api_key_env"]
    # No command takes the key itself as a flag: every key flag names a variable.
    parser = build_parser()
    stack, key_flags = [parser], set()
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            key_flags |= {o for o in action.option_strings if re.search(r"key|secret|password", o)}
    assert key_flags == {"--api-key-env", "--judge-key-env"}


# ---------------------------------------------------------------------------- image paths
def test_image_paths_stay_inside_their_folder(tmp_path):
    from mmalign.data_builders.images import ImageError, resolve_inside

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    assert resolve_inside(root, "img/../img/a.png") == (root / "img" / "a.png").resolve()
    for name in ("../secret.png", "img/../../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ImageError, match="escapes the image folder"):
            resolve_inside(root, name)
    os.symlink(tmp_path / "secret.png", root / "link.png")
    with pytest.raises(ImageError, match="escapes the image folder"):  # symlinks are resolved first
        resolve_inside(root, "link.png")
    with pytest.raises(ImageError, match="no image folder is set"):
        resolve_inside(None, "a.png")


def test_benchmark_question_images_stay_inside_the_image_folder(tmp_path):
    from mmalign.benchmarks.runner import resolve_image

    assert resolve_image(tmp_path, "a.jpg", "POPE question 1") == (tmp_path / "a.jpg").resolve()
    for name in ("../a.jpg", "/etc/passwd"):
        with pytest.raises(ValueError, match="POPE question 1: image path .* escapes the image folder"):
            resolve_image(tmp_path, name, "POPE question 1")


# ---------------------------------------------------------------------------- safetensors only
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mmalign.models.tiny import save_tiny

    return save_tiny("llava", tmp_path_factory.mktemp("sec") / "tiny")


def test_a_pickled_checkpoint_is_not_loaded(tiny_folder, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmalign.models import load_adapter

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_folder.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    state = LlavaForConditionalGeneration.from_pretrained(tiny_folder).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        load_adapter(pickled)


def test_adapters_are_saved_and_read_as_safetensors_only(tiny_folder, tmp_path):
    from mmalign import LoraSettings, load_adapter

    adapter = load_adapter(tiny_folder)
    adapter.add_lora(LoraSettings(r=2))
    out = adapter.save_adapter(tmp_path / "lora")
    names = {p.name for p in out.iterdir()}
    assert "adapter_model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    (out / "adapter_model.safetensors").rename(out / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_adapter(tiny_folder).load_adapter(out)
