"""The feedback studio: a local web app for fine-grained corrections and dual safety labels.

Annotators mark hallucinated spans of a model's answer and type corrections (RLHF-V), or
judge two answers for helpfulness and safety with graded ratings (Safe RLHF-V); the export
is a canonical preference dataset ready for Dense DPO or the reward / cost trainers.
Importing this package does not import torch or the web framework.
"""

from importlib import import_module

_EXPORTS = {
    "StudioProject": "mmalign.studio.project",
    "Submission": "mmalign.studio.project",
    "SubmissionError": "mmalign.studio.project",
    "apply_corrections": "mmalign.studio.project",
    "integrity_check": "mmalign.studio.project",
    "load_prompt_set": "mmalign.studio.load",
    "load_preference_items": "mmalign.studio.load",
    "open_items_source": "mmalign.studio.load",
    "LoadReport": "mmalign.studio.load",
    "create_app": "mmalign.studio.app",
    "serve": "mmalign.studio.app",
    "export_project": "mmalign.studio.export",
    "ExportReport": "mmalign.studio.export",
    "SkippedSubmission": "mmalign.studio.export",
    "rank_by_disagreement": "mmalign.studio.active",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmalign.studio' has no attribute {name!r}")
