"""Peak GPU memory of a training run, estimated before renting the GPU.

The estimate adds up what a run keeps on the device: base weights (4-bit NF4 or 16-bit),
the vision tower (never quantized), LoRA adapters, gradients and AdamW states of what
trains, activations kept for the backward pass (with or without gradient checkpointing),
the logits mmalign builds (only at response positions), image features, and for PPO the
KV cache of a generation chunk. Each method's model copies follow mmalign's design: the DPO
reference is the base with adapters switched off (or precomputed log-probs), and PPO's
roles are LoRA adapters with scalar heads on one shared base (docs/ppo.md).

The per-layer activation count follows what a Llama-style decoder layer saves for its
backward pass (norm inputs and outputs, rotated q and k, v, the attention output, the
SwiGLU intermediates, LoRA inputs); ``mmalign/experiments/perf/plan_validation.py`` compares it with
measured peaks of tiny models (docs/plan.md).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

GiB = 1024**3

#: Bytes per 4-bit NF4 weight: the 4-bit code, plus one absmax per block of 64; with double
#: quantization that absmax is 8-bit with one fp32 constant per 256 blocks.
NF4_BYTES = 0.5 + 4 / 64
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_BYTES = 4  # peft keeps adapter weights in fp32 on a 16-bit or 4-bit base
METHODS = ("sft", "dpo", "ddpo", "rm", "cost", "ppo", "safe-ppo", "grpo", "safe-grpo")
MODES = ("qlora", "lora", "full")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: LoRA adapters on the one base and how many of them train, per method (docs/ppo.md):
#: PPO = policy, reward model, critic; Safe PPO adds the cost model and a cost critic. GRPO
#: trains the policy alone; its reward / cost models in the loop (``scorers``) are added.
ADAPTERS = {"ppo": (3, 2), "safe-ppo": (5, 3)}
ROLLOUT_METHODS = ("ppo", "safe-ppo", "grpo", "safe-grpo")


@dataclass(frozen=True)
class Architecture:
    """The numbers of a checkpoint that decide its memory (language model + vision side)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    vision_params: int = 0  # vision tower, frozen and never quantized
    projector_params: int = 0
    image_tokens: int = 0  # language-model tokens per image
    vision_hidden_size: int = 0
    vision_tokens: int = 0  # patch tokens inside the vision tower per image
    head_dim: int | None = None
    tie_word_embeddings: bool = False

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' linear layers: what 4-bit quantization shrinks."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the LM head (kept in 16 bits: not quantized)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def language_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    @property
    def total_params(self) -> int:
        return self.language_params + self.vision_params + self.projector_params

    def lora_params(self, r: int, targets: tuple[str, ...] = PROJECTIONS) -> int:
        """Parameters of one LoRA adapter: r × (in + out) per targeted linear layer."""
        shapes = self.linear_shapes()
        unknown = [t for t in targets if t not in shapes]
        if unknown:
            raise ValueError(f"unknown LoRA targets {unknown}; the planner knows {', '.join(shapes)}")
        return self.num_layers * sum(r * sum(shapes[t]) for t in targets)

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_card(cls, card: Any) -> Architecture:
        """From a model card's ``[architecture]`` table (or its shipped folder's config.json)."""
        raw = card.extra.get("architecture")
        if raw is None:
            folder = card.local_path()
            if folder is None:
                raise ValueError(f"model card {card.name} has no [architecture] table")
            return cls.from_folder(folder)
        raw = dict(raw)
        vision = round(float(raw.pop("vision_params_m", 0)) * 1e6)
        projector = round(float(raw.pop("projector_params_m", 0)) * 1e6)
        raw.pop("vision_layers", None)
        try:
            return cls(vision_params=vision, projector_params=projector, **raw)
        except TypeError as err:
            raise ValueError(f"model card {card.name}: [architecture] {err}") from None

    @classmethod
    def from_folder(cls, folder: str | Path) -> Architecture:
        """From a local checkpoint: dimensions from config.json, vision and projector sizes
        from the safetensors headers (only the headers are read, no weights)."""
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found (a model folder needs its config.json)")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file}: invalid JSON ({err.msg})") from None
        from mmalign.models import adapter_class

        model_type = config.get("model_type")
        adapter_class(model_type, str(config_file))
        text = config.get("text_config") or config
        try:
            dims = dict(
                hidden_size=int(text["hidden_size"]), num_layers=int(text["num_hidden_layers"]),
                intermediate_size=int(text["intermediate_size"]), vocab_size=int(text["vocab_size"]),
                num_heads=int(text["num_attention_heads"]),
                num_kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
            )
        except KeyError as err:
            raise ValueError(f"{config_file}: text config has no {err.args[0]!r}") from None
        counts = _safetensors_counts(folder)
        vision = sum(n for name, n in counts.items() if re.search(_VISION, name) and not re.search(_PROJECTOR, name))
        projector = sum(n for name, n in counts.items() if re.search(_PROJECTOR, name))
        vconf = config.get("vision_config") or {}
        image_tokens = _folder_image_tokens(model_type, config, vconf)
        return cls(
            **dims, head_dim=text.get("head_dim"), vision_params=vision, projector_params=projector,
            image_tokens=image_tokens, vision_hidden_size=int(vconf.get("hidden_size") or vconf.get("embed_dim") or 0),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        )


#: Checkpoint tensor names of the vision tower (with the projector) and of the projector alone,
#: across the supported families.
_VISION = r"(vision_tower|visual|vision_model)\."
_PROJECTOR = r"(multi_modal_projector|merger|deepstack_merger_list|connector)\."


def _folder_image_tokens(model_type: str, config: dict[str, Any], vconf: dict[str, Any]) -> int:
    """Language-model tokens per image: LLaVA's (size / patch)^2; LLaVA-NeXT's base view plus
    its largest tiling grid with one newline token per grid row; Qwen-VL's 576 (a 672 px
    image, as on the cards); Gemma 3's fixed soft tokens; InternVL's one tile; LLaVA-OneVision's
    and SmolVLM's 768 px image (base view or global image plus a 2x2 grid). Pass
    ``image_tokens`` for other resolutions."""
    if model_type.startswith("qwen"):
        return 576
    if model_type == "gemma3":
        return int(config.get("mm_tokens_per_image", 256))
    if model_type == "internvl":
        return int(config.get("image_seq_length", 256))
    patch = vconf["patch_size"][0] if isinstance(vconf["patch_size"], list) else vconf["patch_size"]
    size = vconf["image_size"][0] if isinstance(vconf["image_size"], list) else vconf["image_size"]
    side = size // patch
    if model_type in ("smolvlm", "idefics3"):
        return 5 * side * side // config.get("scale_factor", 2) ** 2
    if model_type == "llava_onevision":
        return 5 * side * side + 2 * side
    if model_type == "llava_next" and config.get("image_grid_pinpoints"):
        height, width = max(config["image_grid_pinpoints"], key=lambda hw: hw[0] * hw[1])
        rows, cols = height // patch, width // patch
        return side * side + rows * cols + rows
    return side * side


def _safetensors_counts(folder: Path) -> dict[str, int]:
    """Parameter count of every tensor in a folder's safetensors files, from their headers."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder} (needed for the vision tower's size)")
    counts: dict[str, int] = {}
    for file in files:
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for d in info["shape"]:
                    n *= d
                counts[name] = n
    return counts


@dataclass
class PlanSettings:
    """What the run looks like: method, precision, batch and sequence sizes."""

    method: str = "dpo"
    mode: str = "qlora"  # qlora (4-bit base + LoRA), lora (16-bit base + LoRA), full
    dtype: str = "bfloat16"  # compute dtype / dtype of unquantized weights
    batch_size: int = 1  # per device: pairs for dpo / rm / cost, rows for sft / ppo, completions for grpo
    seq_len: int = 512  # text tokens of a sequence (prompt + response), image tokens excluded
    response_len: int | None = None  # response tokens (logits are built there only); default seq_len // 2
    image_tokens: int | None = None  # per image; default: the model's
    images_per_row: int = 1
    lora_r: int = 64
    lora_targets: tuple[str, ...] = PROJECTIONS
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa: fused kernels keep no probabilities; eager: probabilities kept
    precomputed_ref: bool = False  # DPO with stored reference log-probs
    generation_batch: int = 4  # PPO / GRPO: rows generated and scored at a time (per_device_eval_batch_size)
    rollout_batch: int = 16  # PPO / GRPO: prompts per iteration (their image features are kept)
    num_generations: int = 8  # GRPO: completions per prompt (G)
    shared_prefix: bool = True  # GRPO: one row per group in the update (share_prefix)
    scorers: int | None = None  # GRPO: reward / cost models in the loop (None: 0 for grpo, 1 for safe-grpo)
    double_quant: bool = True
    overhead_gib: float = 1.0  # CUDA context, kernels' workspace (not measurable on a CPU)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"unknown attention {self.attention!r}; choose sdpa or eager")
        for name in ("batch_size", "seq_len", "lora_r", "generation_batch", "rollout_batch", "num_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.response_len is not None and not 0 < self.response_len <= self.seq_len:
            raise ValueError(f"response_len must be between 1 and seq_len={self.seq_len}")

    @property
    def responses(self) -> int:
        return self.response_len if self.response_len is not None else max(1, self.seq_len // 2)

    @property
    def adapters(self) -> tuple[int, int]:
        """LoRA adapters on the base, and how many of them train."""
        if self.method in ("grpo", "safe-grpo"):
            scorers = self.scorers if self.scorers is not None else int(self.method == "safe-grpo")
            return 1 + scorers, 1
        return ADAPTERS.get(self.method, (1, 1))


@dataclass(frozen=True)
class Part:
    """One line of the estimate. ``phase``: static (whole run), train, or generate (PPO / GRPO)."""

    name: str
    bytes: float
    phase: str
    note: str = ""


@dataclass
class MemoryPlan:
    """The estimate: its parts, the peak, and whether it fits the GPU with headroom."""

    model: str
    settings: PlanSettings
    parts: list[Part]
    gpu_gib: float | None = None
    headroom: float = 0.1  # fraction of the GPU kept free for allocator fragmentation

    def total(self, phase: str) -> float:
        return sum(p.bytes for p in self.parts if p.phase == phase)

    @property
    def peak_bytes(self) -> float:
        """Static memory plus the larger of the training and the generation phase."""
        return self.total("static") + max(self.total("train"), self.total("generate"))

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    @property
    def budget_gib(self) -> float | None:
        return None if self.gpu_gib is None else self.gpu_gib * (1 - self.headroom)

    @property
    def fits(self) -> bool | None:
        return None if self.budget_gib is None else self.peak_gib <= self.budget_gib

    def table(self) -> str:
        """A readable breakdown with the verdict."""
        from mmalign.utils import format_table

        s = self.settings
        unit, scale = ("GiB", GiB) if self.peak_bytes >= GiB / 4 else ("MiB", 1024**2)
        rows = []
        titles = {"static": "whole run", "train": "training step", "generate": "generation (rollout)"}
        for phase in ("static", "train", "generate"):
            parts = [p for p in self.parts if p.phase == phase]
            if not parts:
                continue
            for p in parts:
                rows.append([titles[phase], p.name, f"{p.bytes / scale:.2f}", p.note])
            rows.append(["", f"= {titles[phase]}", f"{self.total(phase) / scale:.2f}", ""])
        head = (f"{self.model}: {s.method}, {s.mode}, batch {s.batch_size}, {s.seq_len} text tokens "
                f"({s.responses} response) + {s.images_per_row} image(s), LoRA r={s.lora_r}, "
                f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}")
        lines = [head, "", format_table(["phase", "part", unit, "note"], rows), "",
                 f"peak: {self.peak_bytes / scale:.2f} {unit}"]
        if self.gpu_gib is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict} a {self.gpu_gib:g} GiB GPU with {self.headroom:.0%} headroom "
                         f"(budget {self.budget_gib:.2f} GiB, {self.budget_gib - self.peak_gib:+.2f} GiB left)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "peak_gib": round(self.peak_gib, 3), "gpu_gib": self.gpu_gib,
                "fits": self.fits, "parts": [{**p.__dict__, "gib": round(p.bytes / GiB, 4)} for p in self.parts]}


# ---------------------------------------------------------------------------- activations
def layer_activation_bytes(arch: Architecture, s: PlanSettings, tokens: int, seq: int) -> float:
    """Bytes one decoder layer keeps for backward over ``tokens`` tokens (sequences of ``seq``).

    Per token, in the compute dtype: both norm inputs (2h), q and k after rotary, v and
    the attention output (2·q_dim + 2·kv), the SwiGLU gate, up, activation and product
    (4·I); the norm outputs (2h) in fp32 under QLoRA (peft upcasts the norm weights), two
    fp32 rsqrt values. ``eager`` attention also keeps the probabilities and scores
    (2·heads·seq); SDPA's fused kernels (on GPU and CPU) keep only a log-sum-exp.
    Each LoRA target keeps its r-wide down-projection in fp32. With LoRA dropout each
    target also keeps its dropped-out input (its input features, fp32), and the base path
    then keeps 4·h more per layer whose storage the LoRA inputs shared without dropout
    (measured on tiny Llama layers with saved-tensor hooks, see docs/plan.md).
    """
    a = DTYPE_BYTES[s.dtype]
    norm = 4 if s.mode == "qlora" else a
    h, i = arch.hidden_size, arch.intermediate_size
    per_token = (2 * h * a + 2 * h * norm + 2 * 4 + (2 * arch.q_dim + 2 * arch.kv_dim) * a + 4 * i * a)
    if s.attention == "eager":
        per_token += 2 * arch.num_heads * seq * a
    if s.mode != "full":
        per_token += s.lora_r * len(s.lora_targets) * LORA_BYTES
        if s.lora_dropout > 0:
            shapes = arch.linear_shapes()
            per_token += sum(shapes[t][0] for t in s.lora_targets) * LORA_BYTES + 4 * h * a
    return per_token * tokens


def logits_bytes(arch: Architecture, s: PlanSettings, positions: int) -> float:
    """Logits at ``positions`` response positions: the LM head output, its fp32 copy and the
    fp32 exp temporary of the log-softmax (the LM head is fp32 under QLoRA: no copy)."""
    head = 4 if s.mode == "qlora" else DTYPE_BYTES[s.dtype]
    per = head + (4 if head != 4 else 0) + 4
    return positions * arch.vocab_size * per


def _training_parts(arch: Architecture, s: PlanSettings, rows: int, with_logits: bool) -> list[Part]:
    a = DTYPE_BYTES[s.dtype]
    seq = s.seq_len + s.images_per_row * _image_tokens(arch, s)
    tokens = rows * seq
    layer = layer_activation_bytes(arch, s, tokens, seq)
    edges = tokens * arch.hidden_size * (a + (4 if s.mode == "qlora" else a))  # final norm in / out
    logits = logits_bytes(arch, s, rows * s.responses) if with_logits else 0.0
    logits_note = f"response positions only: {rows * s.responses:,} x vocab {arch.vocab_size:,}"
    if s.gradient_checkpointing:
        # Only each layer's input is kept; the backward pass recomputes one layer at a time,
        # after the logits' gradients are gone, so the peak holds the larger of the two.
        kept = arch.num_layers * tokens * arch.hidden_size * a
        parts = [Part("layer inputs (checkpointed)", kept + edges, "train",
                      f"{arch.num_layers} layers x {tokens:,} tokens x hidden {arch.hidden_size}")]
        if layer >= logits:
            parts.append(Part("one layer recomputed", layer, "train", "its activations during backward"))
        else:
            parts.append(Part("logits", logits, "train", logits_note + " (more than one layer's recompute)"))
    else:
        # The peak is at the loss: every layer's activations plus the logits.
        parts = [Part("activations", arch.num_layers * layer + edges, "train",
                      f"{arch.num_layers} layers x {tokens:,} tokens ({rows} rows x {seq})")]
        if logits:
            parts.append(Part("logits", logits, "train", logits_note))
    features = rows * s.images_per_row * _image_tokens(arch, s) * arch.hidden_size * a
    if features:
        parts.append(Part("image features", features, "train",
                          f"{rows * s.images_per_row} images x {_image_tokens(arch, s)} tokens"))
    return parts


def _image_tokens(arch: Architecture, s: PlanSettings) -> int:
    return arch.image_tokens if s.image_tokens is None else s.image_tokens


# ---------------------------------------------------------------------------- the estimate
def estimate_memory(arch: Architecture, settings: PlanSettings, *, model: str = "model",
                    gpu_gib: float | None = None, headroom: float = 0.1) -> MemoryPlan:
    """Peak device memory of one training process of ``settings.method`` on ``arch``."""
    s = settings
    a = DTYPE_BYTES[s.dtype]
    parts: list[Part] = []
    # -- weights
    if s.mode == "qlora":
        nf4 = NF4_DOUBLE_QUANT_BYTES if s.double_quant else NF4_BYTES
        parts.append(Part("base weights, 4-bit NF4", arch.linear_params * nf4, "static",
                          f"{arch.linear_params / 1e9:.2f} B linear weights at {nf4:.3f} bytes"))
        # peft's prepare_model_for_kbit_training casts every non-4-bit parameter to fp32
        parts.append(Part("embeddings, LM head, norms (fp32)", (arch.embedding_params + arch.norm_params) * 4,
                          "static", "upcast to fp32 by peft for k-bit training"))
        vision_bytes = 4
    else:
        parts.append(Part(f"base weights, {s.dtype}", arch.language_params * a, "static",
                          f"{arch.language_params / 1e9:.2f} B language-model parameters"))
        vision_bytes = a
    if arch.vision_params or arch.projector_params:
        parts.append(Part("vision tower + projector (not quantized)",
                          (arch.vision_params + arch.projector_params) * vision_bytes, "static",
                          f"{(arch.vision_params + arch.projector_params) / 1e6:.0f} M parameters, "
                          f"{'fp32' if vision_bytes == 4 else s.dtype}, frozen"))
    # -- trainable state
    adapters, trained = s.adapters
    if s.mode == "full":
        trainable = arch.language_params
        parts.append(Part("gradients", trainable * a, "static", f"{trainable / 1e9:.2f} B parameters, {s.dtype}"))
        parts.append(Part("AdamW states (2 per parameter)", trainable * 2 * a, "static", f"in {s.dtype}"))
        if s.method in ("dpo", "ddpo") and not s.precomputed_ref:
            parts.append(Part("reference model copy", arch.language_params * a, "static",
                              "frozen copy of the language model (use precomputed log-probs to drop it)"))
        if s.method in ROLLOUT_METHODS:
            raise ValueError("PPO and GRPO plans assume LoRA roles on one base (the reference is the base "
                             "with adapters off); use --qlora or --lora")
    else:
        lora = arch.lora_params(s.lora_r, s.lora_targets)
        parts.append(Part(f"LoRA adapters x{adapters} (fp32)", adapters * lora * LORA_BYTES, "static",
                          f"{lora / 1e6:.1f} M parameters each (r={s.lora_r}, {len(s.lora_targets)} targets)"))
        parts.append(Part(f"gradients x{trained} (fp32)", trained * lora * 4, "static", "trained adapters"))
        parts.append(Part(f"AdamW states x{trained} (2 x fp32)", trained * lora * 8, "static", "trained adapters"))
    # -- the step
    if s.method in ("sft",):
        parts += _training_parts(arch, s, s.batch_size, with_logits=True)
    elif s.method in ("dpo", "ddpo"):  # chosen and rejected go through one forward
        parts += _training_parts(arch, s, 2 * s.batch_size, with_logits=True)
    elif s.method in ("rm", "cost"):  # a scalar head reads the last token: no vocabulary logits
        parts += _training_parts(arch, s, 2 * s.batch_size, with_logits=False)
    else:
        groups = -(-s.batch_size // s.num_generations)
        if s.method in ("grpo", "safe-grpo") and s.shared_prefix and groups < s.batch_size:
            # one row per group: the prompt once, then its G completions (docs/grpo.md)
            g = s.num_generations
            shared = replace(s, seq_len=s.seq_len - s.responses + g * s.responses, response_len=g * s.responses)
            parts += _training_parts(arch, shared, groups, with_logits=True)
        else:
            parts += _training_parts(arch, s, s.batch_size, with_logits=True)
        kv_len = s.seq_len + s.images_per_row * _image_tokens(arch, s)
        kv = s.generation_batch * kv_len * arch.num_layers * 2 * arch.kv_dim * a
        parts.append(Part("KV cache", kv, "generate",
                          f"{s.generation_batch} rows x {kv_len:,} tokens x {arch.num_layers} layers"))
        no_grad = replace(s, lora_dropout=0.0)
        rows_tokens = s.generation_batch * kv_len
        parts.append(Part("scoring forward (no grad)", layer_activation_bytes(arch, no_grad, rows_tokens, kv_len),
                          "generate", "one layer's temporaries of the reward / value / reference forwards"))
        cached = s.rollout_batch * s.images_per_row * _image_tokens(arch, s) * arch.hidden_size * a
        if cached:
            parts.append(Part("rollout image features", cached, "static",
                              f"{s.rollout_batch} prompts' images, kept for the update epochs"))
    parts.append(Part("CUDA context and workspace", s.overhead_gib * GiB, "static", "fixed allowance"))
    return MemoryPlan(model=model, settings=s, parts=parts, gpu_gib=gpu_gib, headroom=headroom)


def architecture_for(model: str | Path) -> tuple[str, Architecture]:
    """A model card name / hub id, or a local model folder, and its architecture."""
    from mmalign.models.cards import get_card

    path = Path(model)
    if path.is_dir():
        return path.name, Architecture.from_folder(path)
    try:
        card = get_card(str(model))
    except KeyError as err:
        raise ValueError(f"{err.args[0]} (or pass a local model folder)") from None
    return card.name, Architecture.from_card(card)


def parse_gpu(text: str) -> float:
    """``24GB``, ``24``, ``80GiB``, ``16gb`` -> GiB (GPU memory is sold in binary gigabytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:gib|gb|g)?\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read GPU memory {text!r}; write e.g. 24GB")
    return float(match.group(1))


__all__ = [
    "Architecture",
    "MemoryPlan",
    "Part",
    "PlanSettings",
    "architecture_for",
    "estimate_memory",
    "parse_gpu",
]
