"""Hallucination, safety and reward-model benchmarks with the official protocols.

Each benchmark module declares its formats, parsing and metrics; :mod:`.runner` generates
answers through a model adapter (batched, resumable) or reads an answers file, and
:mod:`.report` writes and compares reports. The reward-model benchmarks
(:mod:`.reward_bench`: VL-RewardBench, Multimodal RewardBench) score preference pairs with a
reward model instead of generating answers.

>>> from mmalign.benchmarks import PopeConfig, run_pope
>>> result = run_pope(PopeConfig("pope/"), answers="answers.jsonl", out="runs/pope")  # doctest: +SKIP
"""

from mmalign.benchmarks.amber import AmberBenchmark, AmberConfig, run_amber
from mmalign.benchmarks.chair import ChairBenchmark, ChairConfig, load_ground_truth, run_chair
from mmalign.benchmarks.image_reliance import (
    ImageRelianceBenchmark,
    ImageRelianceConfig,
    run_image_reliance,
)
from mmalign.benchmarks.judges import GenerativeJudge, HTTPJudge
from mmalign.benchmarks.mmhal import MMHalBenchmark, MMHalConfig, run_mmhal
from mmalign.benchmarks.objhal import ObjHalBenchmark, ObjHalConfig, run_objhal
from mmalign.benchmarks.pope import PopeBenchmark, PopeConfig, load_pope, run_pope
from mmalign.benchmarks.report import BenchmarkResult, compare_reports, load_report, write_report
from mmalign.benchmarks.reward_bench import (
    REWARD_BENCHMARKS,
    RewardPair,
    load_mm_rewardbench,
    load_reward_scorer,
    load_vl_rewardbench,
    run_reward_bench,
)
from mmalign.benchmarks.runner import Benchmark, GenerationConfig, Item, run_benchmark
from mmalign.benchmarks.safety import (
    SafetyBenchmark,
    SafetyConfig,
    load_scorer,
    run_safety,
)
from mmalign.benchmarks.scene_judge import SceneJudge
from mmalign.grounding.objects import ObjectVocabulary

#: Every benchmark by its name: the class and its config dataclass. ``mmalign bench NAME``
#: is generated from this table: one flag per config field with ``metadata["help"]``.
BENCHMARKS: dict[str, tuple[type[Benchmark], type]] = {
    benchmark.name: (benchmark, config)
    for benchmark, config in (
        (PopeBenchmark, PopeConfig),
        (ChairBenchmark, ChairConfig),
        (ObjHalBenchmark, ObjHalConfig),
        (AmberBenchmark, AmberConfig),
        (MMHalBenchmark, MMHalConfig),
        (SafetyBenchmark, SafetyConfig),
        (ImageRelianceBenchmark, ImageRelianceConfig),
    )
}

__all__ = [
    "BENCHMARKS",
    "GenerativeJudge",
    "AmberBenchmark",
    "AmberConfig",
    "Benchmark",
    "BenchmarkResult",
    "ChairBenchmark",
    "ChairConfig",
    "GenerationConfig",
    "HTTPJudge",
    "ImageRelianceBenchmark",
    "ImageRelianceConfig",
    "Item",
    "MMHalBenchmark",
    "MMHalConfig",
    "ObjHalBenchmark",
    "ObjHalConfig",
    "ObjectVocabulary",
    "REWARD_BENCHMARKS",
    "RewardPair",
    "PopeBenchmark",
    "PopeConfig",
    "SafetyBenchmark",
    "SafetyConfig",
    "SceneJudge",
    "compare_reports",
    "load_ground_truth",
    "load_mm_rewardbench",
    "load_pope",
    "load_report",
    "load_reward_scorer",
    "load_scorer",
    "load_vl_rewardbench",
    "run_amber",
    "run_benchmark",
    "run_chair",
    "run_image_reliance",
    "run_mmhal",
    "run_objhal",
    "run_pope",
    "run_reward_bench",
    "run_safety",
    "write_report",
]
