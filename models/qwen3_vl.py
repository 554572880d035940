"""Qwen3-VL: SigLIP-2 ViT with learned positions, 2x2 patch merger, DeepStack, interleaved M-RoPE.

Like Qwen2-VL, pixels are flattened patches of all images with one ``image_grid_thw`` row per
image, and the language model needs the grids and token types even when features are cached.
DeepStack adds features of three ViT layers (each through its own merger) to the hidden states
of the first language-model layers, so cached features carry them beside the main ones
(``deepstack_features``, one list per layer). The mergers are the projector. The MoE variant
(``Qwen3VLMoeForConditionalGeneration``) is not covered: its experts are fused 3-D parameters,
which neither bitsandbytes 4-bit layers nor LoRA on ``nn.Linear`` reach.
"""

from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration

from mmalign.models.qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_class = Qwen3VLForConditionalGeneration
    projector_scopes = ("model.visual.merger", "model.visual.deepstack_merger_list")
    disk_cache_refusal = "its DeepStack features are not stored"
