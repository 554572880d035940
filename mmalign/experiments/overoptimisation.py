"""Reward over-optimisation in the scene world, and reward-model ensembles as the remedy.

A policy optimised against a learned (proxy) reward model first gets better and then, as it
moves further from where it started, worse by the true (gold) measure while the proxy keeps
rising (Gao et al., ICML 2023). Real data has no gold reward; the scene world has one: its
annotations. The gold score of a description is its object F1 against the annotated
objects (the objects CHAIR finds in it, through the same extraction as CHAIR; precision is
one minus the answer's CHAIR_i).

Proxies are plain reward models (no facts in the prompt, so they judge from the image as a
deployed reward model does), trained per seed on preference pairs of ``Setting.pairs``:
``gold`` (Gao et al.'s setting: two of the start policy's sampled descriptions of a scene,
the one with the higher gold score chosen, so the proxy learns the gold reward from finite
data) or ``corrections`` (the start policy's answers against their corrections by the world,
the pairs the demo trains on, whose preference is not the gold score's):

- ``rm-small``, ``rm-large``: one reward model on the pairs of ``Setting.small_scenes`` or
  ``large_scenes`` feedback scenes;
- ``ensemble-<aggregation>``: an ensemble of ``ensemble_size`` members on the small data,
  scored by mean, worst case and uncertainty-weighted (Coste et al., ICLR 2024).

Two optimisers, both measured against the KL distance from the start policy:

- best-of-n on held-out description prompts: n answers sampled from the start policy, the
  one the proxy scores highest kept. Expectations over a pool of ``samples`` answers per
  prompt (every n-subset counted, no resampling noise); KL = log n − (n − 1)/n.
- GRPO against the proxy (``reward_model`` reward, the ensemble's aggregation), evaluated
  at every checkpoint on held-out prompts: one sampled answer per prompt, its gold and
  proxy score, and the KL estimated on those samples (Σ log π − log π₀ over the answer).

Run with ``mmalign experiments overoptimisation --out DIR`` or
:func:`run_overoptimisation_experiment`; every stage is written under ``OUT`` and reused, so
a stopped run resumes. ``results.md`` / ``results.json`` / ``curves.png``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmalign.experiments.seeds import load_runs, result_file, save_result, summarise
from mmalign.scene.ranges import REWARD_EVAL, REWARD_TRAIN, RL_EVAL, RL_PROMPTS, SceneRange

AGGREGATIONS = ("mean", "worst_case", "uncertainty_weighted")


@dataclass
class Setting:
    model: str = "scene-vlm"
    pairs: str = "gold"  # or "corrections"
    pair_samples: int = 4  # gold pairs: answers sampled per scene, best against worst
    min_gold_gap: float = 0.05  # gold pairs: a smaller gap is no preference
    small_scenes: int = 60  # feedback scenes of the proxies' pairs
    large_scenes: int = 240
    heldout_scenes: int = 120  # held-out gold pairs: each proxy's pairwise accuracy
    ensemble_size: int = 4
    uncertainty_weight: float = 1.0
    rm_epochs: float = 2.0
    eval_scenes: int = 60  # held-out description prompts
    samples: int = 16  # best-of-n pool per prompt
    max_n: int = 16
    prompt_scenes: int = 300  # GRPO prompts
    rl_iterations: int = 40
    rl_eval_every: int = 10
    rl_learning_rate: float = 1e-3
    max_new_tokens: int = 96


def quick_setting() -> Setting:
    """Tiny sizes (a smoke run of the same code, not evidence)."""
    return Setting(pair_samples=3, small_scenes=6, large_scenes=12, heldout_scenes=6, ensemble_size=2, rm_epochs=1.0,
                   eval_scenes=3, samples=4, max_n=4, prompt_scenes=8, rl_iterations=2, rl_eval_every=1,
                   max_new_tokens=12)


def proxies(setting: Setting) -> dict[str, dict[str, Any]]:
    """proxy -> how it is built: the pairs' scenes, and for an ensemble its aggregation."""
    arms: dict[str, dict[str, Any]] = {"rm-small": {"scenes": setting.small_scenes},
                                       "rm-large": {"scenes": setting.large_scenes}}
    for aggregation in AGGREGATIONS:
        arms[f"ensemble-{aggregation}"] = {"scenes": setting.small_scenes, "aggregation": aggregation}
    return arms


# ---------------------------------------------------------------------------------- maths
def best_of_n_weights(proxy: Sequence[float], n: int) -> list[float]:
    """P(answer i is the proxy's pick among n answers drawn without replacement from the
    pool): C(r − 1, n − 1) / C(S, n), r the answer's rank by proxy score (ascending, ties by
    position). The expectation of any value under best-of-n is then Σ_i w_i · value_i."""
    size = len(proxy)
    if not 1 <= n <= size:
        raise ValueError(f"best-of-{n} needs 1 <= n <= pool size {size}")
    order = sorted(range(size), key=lambda i: (proxy[i], i))
    total = math.comb(size, n)
    weights = [0.0] * size
    for rank, i in enumerate(order, start=1):
        weights[i] = math.comb(rank - 1, n - 1) / total
    return weights


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ start policy) = log n − (n − 1) / n (Stiennon et al. 2020; Gao et al. 2023)."""
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------- stages
def gold_pair_records(setting: Setting, adapter, scenes: int,
                      scene_range: SceneRange = REWARD_TRAIN) -> list[dict[str, Any]]:
    """Per scene of ``scene_range``, ``pair_samples`` descriptions sampled from the start
    policy; the best by gold score is chosen over the worst when they differ by at least
    ``min_gold_gap``."""
    from datasets import Dataset

    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.world import WorldConfig

    rows = scene_prompt_records(WorldConfig(), scenes, kinds=("describe",), **scene_range.take(scenes))
    prompts = Dataset.from_list([{"images": r["images"], "prompt": r["prompt"]} for r in rows])
    texts, _ = sample_answers(adapter, prompts, num_samples=setting.pair_samples,
                              max_new_tokens=setting.max_new_tokens, seed=0)
    judge = Judge([r["objects"] for r in rows])
    records = []
    k = setting.pair_samples
    for i, row in enumerate(rows):
        answers = texts[i * k : (i + 1) * k]
        gold = judge.gold(answers, [row["objects"]] * k)
        best, worst = max(range(k), key=lambda j: gold[j]), min(range(k), key=lambda j: gold[j])
        if gold[best] - gold[worst] >= setting.min_gold_gap:
            records.append({"images": row["images"], "prompt": row["prompt"], "chosen": answers[best],
                            "rejected": answers[worst], "facts": row["facts"], "source": "scene-world/gold-pairs",
                            "meta": {**row["meta"], "gold_chosen": gold[best], "gold_rejected": gold[worst]}})
    return records


def stage_pairs(setting: Setting, out: Path) -> dict[int, Path]:
    """The proxies' pairs on the largest number of feedback scenes; each smaller amount is
    the pairs of its first scenes."""
    from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
    from mmalign.models import load_adapter
    from mmalign.scene.feedback import scene_feedback_records
    from mmalign.scene.world import WorldConfig

    if setting.pairs not in ("gold", "corrections"):
        raise ValueError(f"pairs must be gold or corrections, got {setting.pairs!r}")
    paths = {n: out / f"pairs-{n}" for n in (setting.small_scenes, setting.large_scenes)}
    if all(p.exists() for p in paths.values()):
        return paths
    largest = max(paths)
    everything = out / f"pairs-{largest}"
    if not everything.exists():
        print(f"-- overoptimisation: {setting.pairs} pairs of the start policy's answers on {largest} scenes",
              flush=True)
        adapter = load_adapter(setting.model)
        if setting.pairs == "gold":
            records = gold_pair_records(setting, adapter, largest)
        else:
            records, stats = scene_feedback_records(adapter, WorldConfig(), largest, **REWARD_TRAIN.take(largest))
            print(f"   {stats}", flush=True)
        save_preference_dataset(records, everything)
    data = load_preference_dataset(everything)
    scenes = list(dict.fromkeys(_meta(m)["scene"] for m in data["meta"]))
    for n, path in paths.items():
        if not path.exists():
            keep = set(scenes[:n])
            save_preference_dataset([r for r in data if _meta(r["meta"])["scene"] in keep], path)
    return paths


def stage_heldout_pairs(setting: Setting, out: Path) -> Path:
    """Gold pairs on held-out reward-model scenes: how well each proxy learned the gold
    preference before any optimiser leans on it."""
    from mmalign.data_builders.storage import save_preference_dataset
    from mmalign.models import load_adapter

    path = out / "pairs-heldout"
    if not path.exists():
        print(f"-- overoptimisation: held-out gold pairs on {setting.heldout_scenes} scenes", flush=True)
        adapter = load_adapter(setting.model)
        save_preference_dataset(gold_pair_records(setting, adapter, setting.heldout_scenes, REWARD_EVAL), path)
    return path


def heldout_accuracy(setting: Setting, proxy: Path, aggregation: str | None, pairs_path: Path) -> float:
    """Share of held-out gold pairs the proxy orders correctly (a tie is wrong)."""
    import torch

    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.losses.reward import pairwise_accuracy
    from mmalign.models import load_adapter

    pairs = load_preference_dataset(pairs_path)
    scorer = proxy_scorer(proxy, load_adapter(setting.model), aggregation)
    chosen = scorer(pairs["images"], pairs["prompt"], pairs["chosen"])
    rejected = scorer(pairs["images"], pairs["prompt"], pairs["rejected"])
    return pairwise_accuracy(torch.tensor(chosen), torch.tensor(rejected)).item()


def _meta(meta: Any) -> dict[str, Any]:
    return json.loads(meta) if isinstance(meta, str) else meta


def stage_prompts(setting: Setting, out: Path) -> dict[str, Path]:
    """Description prompts with their annotated objects: held-out and GRPO's."""
    from mmalign.data_builders.storage import save_prompt_set
    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.world import WorldConfig

    paths = {"eval": out / "prompts-eval", "train": out / "prompts-train"}
    for name, scenes, scene_range in (("eval", setting.eval_scenes, RL_EVAL),
                                      ("train", setting.prompt_scenes, RL_PROMPTS)):
        if not paths[name].exists():
            save_prompt_set(scene_prompt_records(WorldConfig(), scenes, kinds=("describe",),
                                                 **scene_range.take(scenes)), paths[name])
    return paths


def stage_proxy(setting: Setting, pairs: Path, out: Path, seed: int, ensemble: bool) -> Path:
    """A plain reward model (or an ensemble) on ``pairs``; a finished one is reused."""
    from mmalign.experiments.reward_models import Setting as RMSetting
    from mmalign.experiments.reward_models import reward_run_config
    from mmalign.reward import run_reward_model

    name = f"{'ensemble' if ensemble else 'rm'}-{pairs.name.removeprefix('pairs-')}-seed{seed}"
    final = out / "proxies" / name / "final"
    if not final.exists():
        print(f"-- overoptimisation: training proxy {name}", flush=True)
        extra = {"ensemble_size": setting.ensemble_size, "uncertainty_weight": setting.uncertainty_weight} \
            if ensemble else {}
        model_config, args = reward_run_config(RMSetting(model=setting.model, epochs=setting.rm_epochs), pairs,
                                               out / "proxies" / name, seed, save_strategy="no", **extra)
        run_reward_model(model_config, args)
    return final


class Judge:
    """Gold (object F1 against the annotations) and a proxy's score of answers to prompts."""

    def __init__(self, objects: Sequence[Sequence[str]]):
        """``objects``: the annotated objects of every prompt (the vocabulary's words)."""
        from mmalign.grounding.objects import resolve_vocabulary

        self.vocabulary = resolve_vocabulary("auto", sorted({o for row in objects for o in row}))

    def grounding(self, answers: Sequence[str], objects: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Per answer: object precision (1 − its CHAIR_i), recall (CHAIR's coverage), F1, words."""
        from mmalign.grpo.rewards import grounding_scores

        return [{**grounding_scores(a, o, self.vocabulary), "words": float(len(a.split()))}
                for a, o in zip(answers, objects)]

    def gold(self, answers: Sequence[str], objects: Sequence[Sequence[str]]) -> list[float]:
        return [g["f1"] for g in self.grounding(answers, objects)]


def proxy_scorer(path: Path, adapter, aggregation: str | None):
    from mmalign.reward import RewardScorer, load_scoring_model

    model = load_scoring_model(path, adapter, adapter_name="proxy", aggregation=aggregation)
    return RewardScorer(model, batch_size=16, max_length=512)


def sample_answers(adapter, prompts, *, num_samples: int, max_new_tokens: int, seed: int):
    """``num_samples`` answers per prompt at temperature 1 (seeded), in prompt order."""
    from transformers import set_seed

    set_seed(seed)
    texts, batches = [], []
    for lo in range(0, len(prompts), 8):
        rows = prompts[lo : lo + 8]
        samples = adapter.sample(rows["images"], rows["prompt"], max_new_tokens=max_new_tokens,
                                 num_samples=num_samples, prefill_once=True)
        texts += samples.texts
        batches.append(samples)
    return texts, batches


def best_of_n_curve(setting: Setting, out: Path, seed: int, proxy: Path, aggregation: str | None,
                    prompts_path: Path) -> list[dict[str, float]]:
    """Expected gold and proxy of best-of-n for n = 1, 2, 4, … ``max_n`` from one pool of the
    start policy's answers (the pool is shared by every proxy of the seed)."""
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.models import load_adapter

    prompts = load_preference_dataset(prompts_path)
    adapter = load_adapter(setting.model)
    pool_file = out / f"bon-pool-seed{seed}.json"
    if not pool_file.exists():
        print(f"-- overoptimisation: best-of-n pool, seed {seed}", flush=True)
        texts, _ = sample_answers(adapter, prompts, num_samples=setting.samples,
                                  max_new_tokens=setting.max_new_tokens, seed=seed)
        pool_file.write_text(json.dumps(texts))
    texts = json.loads(pool_file.read_text())
    s = setting.samples
    repeat = [i for i in range(len(prompts)) for _ in range(s)]
    grounding = Judge(prompts["objects"]).grounding(texts, [prompts[i]["objects"] for i in repeat])
    scorer = proxy_scorer(proxy, adapter, aggregation)
    scores = scorer([prompts[i]["images"] for i in repeat], [prompts[i]["prompt"] for i in repeat], texts)
    values = {"gold": [g["f1"] for g in grounding], "proxy": scores,
              **{k: [g[k] for g in grounding] for k in ("precision", "recall", "words")}}
    curve = []
    n = 1
    while n <= setting.max_n:
        expected: dict[str, list[float]] = {k: [] for k in values}
        for p in range(len(prompts)):
            span = slice(p * s, (p + 1) * s)
            weights = best_of_n_weights(scores[span], n)
            for key, column in values.items():
                expected[key].append(sum(w * v for w, v in zip(weights, column[span])))
        curve.append({"n": n, "kl": best_of_n_kl(n), **{k: statistics.fmean(v) for k, v in expected.items()}})
        n *= 2
    return curve


def rl_curve(setting: Setting, out: Path, seed: int, arm: str, proxy: Path, aggregation: str | None,
             prompts: dict[str, Path]) -> list[dict[str, float]]:
    """GRPO against the proxy from the start policy; gold, proxy and KL at every checkpoint."""
    import torch

    from mmalign.config_io import load_recipe
    from mmalign.data_builders.storage import load_preference_dataset
    from mmalign.grpo import GRPOConfig, run_grpo
    from mmalign.model_config import ModelConfig
    from mmalign.models import load_adapter

    run = out / "rl" / f"{arm}-seed{seed}"
    if not (run / "final").exists():
        model_config, args = load_recipe("grpo-scene-vlm", (ModelConfig, GRPOConfig), {
            "model_name_or_path": setting.model, "output_dir": str(run), "dataset_path": str(prompts["train"]),
            "reward_funcs": ["reward_model"], "reward_weights": [1.0], "reward_model_path": str(proxy),
            "ensemble_aggregation": aggregation, "max_steps": setting.rl_iterations,
            "save_steps": setting.rl_eval_every, "learning_rate": setting.rl_learning_rate,
            "max_new_tokens": setting.max_new_tokens, "max_length": 512, "use_cpu": True, "seed": seed,
        })
        if any(run.glob("checkpoint-*")):
            args.resume_from_checkpoint = "auto"
        run_grpo(model_config, args)
    held = load_preference_dataset(prompts["eval"])
    judge = Judge(held["objects"])
    adapter = load_adapter(setting.model)
    scorer = proxy_scorer(proxy, adapter, aggregation)
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    curve = []
    for step, folder in [(0, None), *((int(c.name.rsplit("-", 1)[1]), c) for c in checkpoints)]:
        name = f"step-{step}"
        if folder is not None:
            adapter.load_adapter(folder, adapter_name=name)
            adapter.use_adapter(name)
        start = folder is None  # the start policy: the base with every adapter off
        with torch.no_grad(), adapter.adapters_disabled() if start else nullcontext():
            texts, batches = sample_answers(adapter, held, num_samples=1, max_new_tokens=setting.max_new_tokens,
                                            seed=seed + 1000)
        with torch.no_grad():
            kl = 0.0 if start else statistics.fmean(float(v) for b in batches for v in _sequence_kl(adapter, b))
        grounding = judge.grounding(texts, held["objects"])
        score = scorer(held["images"], held["prompt"], texts)
        curve.append({"step": step, "kl": kl, "gold": statistics.fmean(g["f1"] for g in grounding),
                      "proxy": statistics.fmean(score),
                      **{k: statistics.fmean(g[k] for g in grounding) for k in ("precision", "recall", "words")}})
    return curve


def _sequence_kl(adapter, samples):
    """Σ over each sampled answer of log π(y_t) − log π₀(y_t): an unbiased KL estimate."""
    policy, mask = adapter.response_logprobs(samples.batch, samples.image_features)
    with adapter.adapters_disabled():
        start, _ = adapter.response_logprobs(samples.batch, samples.image_features)
    return ((policy - start) * mask).sum(-1)


def summary_metrics(bon: list[dict[str, float]], rl: list[dict[str, float]]) -> dict[str, float]:
    """Scalars over the curves for the claims: gold at the largest n / last checkpoint, its
    drop from the curve's peak, and the proxy's gain."""
    result = {"bon_gold_start": bon[0]["gold"], "bon_gold_final": bon[-1]["gold"],
              "bon_gold_drop": max(p["gold"] for p in bon) - bon[-1]["gold"],
              "bon_proxy_gain": bon[-1]["proxy"] - bon[0]["proxy"]}
    for key in ("precision", "recall", "words"):
        if key in bon[-1]:
            result[f"bon_{key}_change"] = bon[-1][key] - bon[0][key]
    if rl:
        result.update({"rl_gold_start": rl[0]["gold"], "rl_gold_final": rl[-1]["gold"],
                       "rl_gold_drop": max(p["gold"] for p in rl) - rl[-1]["gold"],
                       "rl_proxy_gain": rl[-1]["proxy"] - rl[0]["proxy"], "rl_kl_final": rl[-1]["kl"],
                       "rl_words_final": rl[-1]["words"]})
    return result


def run_arm(setting: Setting, out: Path, seed: int, arm: str, rl: bool) -> dict[str, Any]:
    spec = proxies(setting)[arm]
    pairs = stage_pairs(setting, out)[spec["scenes"]]
    prompts = stage_prompts(setting, out)
    proxy = stage_proxy(setting, pairs, out, seed, ensemble="aggregation" in spec)
    accuracy = heldout_accuracy(setting, proxy, spec.get("aggregation"), stage_heldout_pairs(setting, out))
    bon = best_of_n_curve(setting, out, seed, proxy, spec.get("aggregation"), prompts["eval"])
    curve = rl_curve(setting, out, seed, arm, proxy, spec.get("aggregation"), prompts) if rl else []
    return {"heldout_accuracy": accuracy, **summary_metrics(bon, curve), "bon_curve": bon, "rl_curve": curve}


COLUMNS = {"heldout_accuracy": "held-out pair accuracy", "bon_gold_final": "best-of-n gold (n max)",
           "bon_gold_drop": "best-of-n gold drop from peak",
           "bon_proxy_gain": "best-of-n proxy gain", "bon_precision_change": "best-of-n precision change",
           "bon_recall_change": "best-of-n recall change", "bon_words_change": "best-of-n words change",
           "rl_gold_final": "GRPO gold (last)",
           "rl_gold_drop": "GRPO gold drop from peak", "rl_proxy_gain": "GRPO proxy gain",
           "rl_kl_final": "GRPO KL (last)", "rl_words_final": "GRPO words (last)"}


def markdown(results: dict[str, Any]) -> str:
    setting, summary = results["setting"], results["summary"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    rl = any(m["rl_curve"] for r in results["runs"] for m in r["models"].values())
    grpo = (f"; GRPO {setting['rl_iterations']} iterations (lr {setting['rl_learning_rate']:g}, no KL term) "
            "against each proxy" if rl else "")
    lines = [
        f"Gold: object F1 of held-out descriptions ({setting['eval_scenes']} scenes) against the annotations; "
        f"proxies trained on {setting['pairs']} pairs, their accuracy measured on gold pairs of "
        f"{setting['heldout_scenes']} held-out scenes. "
        f"Best-of-n up to n = {setting['max_n']} from {setting['samples']} answers per prompt{grpo}. "
        f"Proxies: plain reward models on the pairs of {setting['small_scenes']} (small) or "
        f"{setting['large_scenes']} (large) feedback scenes; ensembles of {setting['ensemble_size']} on the small "
        f"data, λ = {setting['uncertainty_weight']:g}. Seeds "
        f"{', '.join(map(str, seeds))} (mean ± std).",
        "",
        "| proxy | seeds | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    start = [r["models"][a]["bon_gold_start"] for r in results["runs"] for a in r["models"]]
    for arm in proxies(Setting(**setting)):
        if arm in summary:
            row = summary[arm]
            cells = [f"{row[k]:.3f} ± {row[k + '_std']:.3f}" if k in row and row[k] == row[k] else "-"
                     for k in COLUMNS]
            lines.append(f"| {arm} | {row['seeds']:g} | " + " | ".join(cells) + " |")
    if start:
        lines.append(f"\nThe start policy's gold (best-of-1): {statistics.fmean(start):.3f}.")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Gold and proxy against √KL (Gao et al.'s distance), best-of-n and GRPO: one line per
    proxy, the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        for arm, result in run["models"].items():
            by_arm.setdefault(arm, []).append(result)
    if not by_arm:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    panels = (("bon_curve", "gold", "best-of-n: gold (object F1)"), ("bon_curve", "proxy", "best-of-n: proxy score"),
              ("rl_curve", "gold", "GRPO: gold (object F1)"), ("rl_curve", "proxy", "GRPO: proxy score"))
    for ax, (curve, key, title) in zip(axes, panels):
        for i, (arm, group) in enumerate(by_arm.items()):
            curves = [g[curve] for g in group if g[curve]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            xs = [math.sqrt(max(0.0, statistics.fmean(c[j]["kl"] for c in curves))) for j in range(length)]
            ys = [statistics.fmean(c[j][key] for c in curves) for j in range(length)]
            ax.plot(xs, ys, marker="o", label=arm, color=f"C{i % 10}")
        ax.set_title(title)
        ax.set_xlabel("√KL from the start policy (√nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_overoptimisation_experiment(out: str | Path, seeds: Sequence[int] = (0, 1, 2),
                                    arms: Sequence[str] | None = None, setting: Setting | None = None,
                                    rl: bool = True) -> dict[str, Any]:
    """Every (seed, proxy) not measured yet; returns ``results.json``'s content."""
    setting = setting or Setting()
    known = proxies(setting)
    arms = list(arms) if arms is not None else list(known)
    unknown = sorted(set(arms) - set(known))
    if unknown:
        raise ValueError(f"unknown over-optimisation proxy arm(s) {unknown}; choose from {sorted(known)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for arm in arms:
            file = result_file(out, seed, arm)
            if file.exists() and (json.loads(file.read_text())["rl_curve"] or not rl):
                continue
            print(f"-- overoptimisation: seed {seed}, {arm}: best-of-n{' and GRPO' if rl else ''}", flush=True)
            save_result(out, seed, arm, run_arm(setting, out, seed, arm, rl))
    runs = load_runs(out)
    flat = [{"seed": r["seed"], "models": {a: {k: v for k, v in m.items() if not k.endswith("_curve")}
                                           for a, m in r["models"].items()}} for r in runs]
    results = {"setting": asdict(setting), "runs": runs, "summary": summarise(flat)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plot_curves(results, out / "curves.png")
    return results
