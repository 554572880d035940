"""Merge a LoRA adapter into its base model and save a plain transformers checkpoint."""

from __future__ import annotations

from pathlib import Path

from mmalign.io import MODEL, atomic_dir, check_output


def merge_adapter(base: str | Path, adapter_path: str | Path, out: str | Path, *, dtype: str = "float32",
                  trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """Load ``base`` unquantized, apply the adapter, fold LoRA into the weights, save.

    The result loads with ``from_pretrained`` and needs neither peft nor mmalign. An
    adapter trained on a 4-bit base is merged into the full-precision base (the
    standard QLoRA export), so the merged model sees unquantized weights. ``out`` is
    checked before loading: never the base or the adapter; an existing folder is replaced
    if it is a model (or empty), any other only with ``overwrite``.
    """
    from mmalign.models import load_adapter

    inputs = (base, adapter_path)
    check_output(out, replaces=MODEL, overwrite=overwrite, inputs=inputs)

    adapter = load_adapter(base, dtype=dtype, trust_remote_code=trust_remote_code)
    adapter.load_adapter(adapter_path)
    merged = adapter.model.merge_and_unload()
    with atomic_dir(out, replaces=MODEL, overwrite=overwrite, inputs=inputs) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        adapter.processor.save_pretrained(tmp)
    return Path(out)
