"""phi3.py: Phi-3 / Phi-3.5 (Phi3ForCausalLM): Llama-style layers whose q/k/v projections are one
fused qkv_proj and whose gate/up projections are one fused gate_up_proj (gate rows first); the
engine takes each part as a row range of the fused tensor, zero-copy. LongRoPE ("longrope" rope
scaling: short and long frequency factors, an attention factor) is read by config.py. GGUF "phi3"
keeps both fusions (attn_qkv, and ffn_up holding gate then up) and stores the factors as
rope_factors_short / rope_factors_long tensors; llama.cpp uses NEOX RoPE for it (no Q/K permutation)."""
from __future__ import annotations

from .common import GGUF_ATTENTION, HF_ATTENTION, flag, layer_sources, refuse
from .family import Family, one


def hf_config(d: dict, source: str) -> dict:
    refuse(d, source, "attention_bias", "mlp_bias")
    flag(d, "tie_word_embeddings", source)
    return {}


def _fused(cfg, qkv: str, gate_up: str) -> dict:
    q, kv, hid = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    return {
        "wq": one(qkv, rows=(0, q)),
        "wk": one(qkv, rows=(q, q + kv)),
        "wv": one(qkv, rows=(q + kv, q + 2 * kv)),
        "ffn_gate": one(gate_up, rows=(0, hid)),
        "ffn_up": one(gate_up, rows=(hid, 2 * hid)),
    }


def hf_layer(cfg, i):
    p = f"model.layers.{i}."
    out = layer_sources(i, {k: v for k, v in HF_ATTENTION.items() if k not in ("wq", "wk", "wv")},
                        {"ffn_down": "mlp.down_proj.weight"})
    out.update(_fused(cfg, p + "self_attn.qkv_proj.weight", p + "mlp.gate_up_proj.weight"))
    return out


def gguf_layer(cfg, i):
    out = layer_sources(i, {k: v for k, v in GGUF_ATTENTION.items() if k not in ("wq", "wk", "wv")},
                        {"ffn_down": "ffn_down.weight"}, prefix="")
    out.update(_fused(cfg, "attn_qkv.weight", "ffn_up.weight"))
    return out


FAMILY = Family(
    name="phi3",
    hf_architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    hf_config=hf_config,
    hf_layer=hf_layer,
    gguf_arch="phi3",
    gguf_layer=gguf_layer,
    gguf_interleaved_rope=False,
    sliding_window=("Phi3ForCausalLM",),
)
