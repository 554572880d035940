import subprocess
import sys
from pathlib import Path

from mmalign.cli import main


def test_models_lists_every_card(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("llava-1.5-7b", "llava-v1.6-mistral-7b", "qwen2-vl-7b-instruct", "qwen2.5-vl-7b-instruct"):
        assert name in out


def test_version_names_dependencies(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mmalign 0.1.0") and "bitsandbytes" in out and "peft" in out


def test_selftest_trains_and_round_trips(capsys):
    assert main(["selftest", "--families", "llava", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("llava "))
    cells = row.split()
    assert cells[1] == "nf4" and cells[-1] == "ok"
    assert float(cells[4]) < float(cells[3])  # loss went down


def test_tiny_writes_loadable_checkpoint(tmp_path, capsys):
    assert main(["tiny", "--family", "qwen2_vl", "--out", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "model.safetensors").exists()
    assert (tmp_path / "q" / "processor_config.json").exists() or (tmp_path / "q" / "preprocessor_config.json").exists()


def test_subpackages_are_not_top_level_names(tmp_path):
    code = (
        "import importlib.util, mmalign.models, mmalign.data_builders, mmalign.benchmarks\n"
        "assert all(importlib.util.find_spec(n) is None for n in ('models', 'data_builders', 'benchmarks'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_console_script_help():
    exe = Path(sys.executable).with_name("mmalign")
    result = subprocess.run([str(exe), "selftest", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "4-bit NF4" in result.stdout


def test_help_does_not_import_torch_and_tiny_families_are_listed():
    import subprocess
    import sys

    code = ("import sys; from mmalign.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    from mmalign.cli import build_parser
    from mmalign.models.tiny import TINY_BUILDERS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["tiny"]
    family = next(a for a in sub._actions if a.dest == "family")
    assert all(name in family.help for name in TINY_BUILDERS)
