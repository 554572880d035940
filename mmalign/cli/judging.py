"""The judge endpoint flags shared by ``mmalign data build ai-feedback`` and ``mmalign bench``.

Both commands talk to their endpoint through :class:`mmalign.judge_client.JudgeClient`, so
they take the same flags with the same spelling. ``--judge-key-env``, the old spelling of
``--api-key-env`` in ``mmalign bench``, still works, with a warning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from mmalign.judge_client import JudgeEndpoint

#: Flag -> :class:`JudgeEndpoint` field, for the settings a flag may override.
_FIELDS = {"api_key_env": "api_key_env", "judge_concurrency": "concurrency", "judge_timeout": "timeout",
           "judge_max_attempts": "max_attempts", "judge_cache": "cache"}


class _DeprecatedAlias(argparse.Action):
    """Store like the flag it stands for, and say on stderr which spelling to use instead."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, replacement: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_judge_client_flags(p: argparse.ArgumentParser, *, cache_default: str) -> None:
    """The endpoint flags; each defaults to ``None`` so a config file's value is kept."""
    defaults = {f.name: f.default for f in fields(JudgeEndpoint)}
    g = p.add_argument_group("judge endpoint (with --judge-url)")
    g.add_argument("--api-key-env", metavar="VAR",
                   help=f"environment variable holding the endpoint's API key (default: {defaults['api_key_env']}); "
                   "the key itself is never a flag")
    g.add_argument("--judge-key-env", dest="api_key_env", metavar="VAR", action=_DeprecatedAlias,
                   replacement="--api-key-env", help="deprecated spelling of --api-key-env")
    g.add_argument("--judge-concurrency", type=int, metavar="N",
                   help=f"requests in flight at once (default: {defaults['concurrency']})")
    g.add_argument("--judge-timeout", type=float, metavar="SECONDS",
                   help=f"seconds to wait for one reply (default: {defaults['timeout']:g})")
    g.add_argument("--judge-max-attempts", type=int, metavar="N",
                   help=f"attempts per request on HTTP 429/5xx, timeouts and connection errors, with "
                   f"exponential backoff or the server's Retry-After (default: {defaults['max_attempts']})")
    g.add_argument("--judge-cache", metavar="FILE",
                   help=f"JSON Lines cache of the replies, so a rerun sends only the missing requests "
                   f"(default: {cache_default})")


def judge_endpoint_settings(args: argparse.Namespace, *, endpoint: bool) -> dict[str, Any]:
    """The :class:`JudgeEndpoint` fields the flags set; an error if any is set while the
    judge is not an ``endpoint`` (the flags would do nothing)."""
    settings = {field: getattr(args, flag) for flag, field in _FIELDS.items() if getattr(args, flag) is not None}
    if settings and not endpoint:
        flags = ", ".join("--" + flag.replace("_", "-") for flag, field in _FIELDS.items() if field in settings)
        raise ValueError(f"{flags}: only for a judge endpoint (--judge-url)")
    return settings


def judge_endpoint(args: argparse.Namespace, endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config file's ``judge_endpoint`` mapping with the flags on top (``--judge-url`` makes
    one), or ``None`` when there is no endpoint judge."""
    if args.judge_url:
        endpoint = {**(endpoint or {}), "base_url": args.judge_url}
    settings = judge_endpoint_settings(args, endpoint=endpoint is not None)
    if endpoint is not None:
        if args.judge_model:
            endpoint["model"] = args.judge_model
        endpoint.update(settings)
    return endpoint


def check_judge_choice(args: argparse.Namespace, endpoint_settings: dict[str, Any] | None) -> None:
    """Exactly one claim judge: a local model (``--judge``) or an endpoint with a model name."""
    if (endpoint_settings is None) == (args.judge is None):
        raise ValueError("give exactly one judge: --judge MODEL (local) or --judge-url URL "
                         "(or judge_endpoint in --config)")
    if endpoint_settings is not None and "model" not in endpoint_settings:
        raise ValueError("an endpoint judge needs a model name (--judge-model or judge_endpoint.model)")


def claim_judge(args: argparse.Namespace, endpoint_settings: dict[str, Any] | None, *, cache: str) -> tuple[Any, Any]:
    """The RLAIF-V claim judge and splitter the flags ask for: an endpoint (its replies cached in
    ``cache`` unless the settings name a file) or a local judge model loaded with the model flags."""
    from mmalign.cli.common import load_model
    from mmalign.data_builders.claims import (
        AdapterJudge,
        AdapterSplitter,
        EndpointJudge,
        EndpointSplitter,
        SentenceSplitter,
    )
    from mmalign.judge_client import JudgeClient

    check_judge_choice(args, endpoint_settings)
    if endpoint_settings is not None:
        client = JudgeClient(JudgeEndpoint.from_dict({"cache": cache, **endpoint_settings}))
        return EndpointJudge(client), EndpointSplitter(client) if args.splitter == "judge" else SentenceSplitter()
    judge_adapter = load_model(args, args.judge)
    return (AdapterJudge(judge_adapter),
            AdapterSplitter(judge_adapter) if args.splitter == "judge" else SentenceSplitter())
