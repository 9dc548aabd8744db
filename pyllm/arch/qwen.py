"""qwen.py: Qwen2 / Qwen2.5 (Qwen2ForCausalLM: q/k/v projections with biases, often tied embeddings)
and Qwen3 (Qwen3ForCausalLM: per-head RMSNorm of q and k before RoPE, an explicit head_dim,
attention_bias optional). GGUF "qwen2" / "qwen3", NEOX RoPE (no Q/K permutation). Layers with
sliding-window attention (use_sliding_window) are refused."""
from __future__ import annotations

from ..errors import UnsupportedArchitectureError
from .common import flag, llama_style_layer
from .family import Family, gguf_biases


def _no_sliding_layers(d: dict, source: str) -> None:
    types = d.get("layer_types")
    sliding = flag(d, "use_sliding_window", source) or (
        isinstance(types, list) and any(t != "full_attention" for t in types))
    if sliding:
        raise UnsupportedArchitectureError(f"{source}: use_sliding_window / sliding-attention layer_types are not "
                                           f"supported (pyllm runs Qwen models with full attention in every layer)")


def qwen2_config(d: dict, source: str) -> dict:
    _no_sliding_layers(d, source)
    return {"qkv_bias": True}


def qwen3_config(d: dict, source: str) -> dict:
    _no_sliding_layers(d, source)
    bias = flag(d, "attention_bias", source)
    return {"qkv_bias": bias, "o_bias": bias, "qk_norm": True}


def _hf_layer(cfg, i):
    return llama_style_layer(cfg, i, gguf=False)


def _gguf_layer(cfg, i):
    return llama_style_layer(cfg, i, gguf=True)


QWEN2 = Family(
    name="qwen2",
    hf_architectures=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    hf_config=qwen2_config,
    hf_layer=_hf_layer,
    gguf_arch="qwen2",
    gguf_layer=_gguf_layer,
    gguf_interleaved_rope=False,
    gguf_config=lambda md, prefix, tensors, source: {"qkv_bias": True},
)

QWEN3 = Family(
    name="qwen3",
    hf_architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    hf_config=qwen3_config,
    hf_layer=_hf_layer,
    gguf_arch="qwen3",
    gguf_layer=_gguf_layer,
    gguf_interleaved_rope=False,
    gguf_config=lambda md, prefix, tensors, source: {"qk_norm": True, **gguf_biases(tensors)},
)
