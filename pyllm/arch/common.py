"""common.py: the pieces most families share: the Llama-style attention and SwiGLU MLP tensor
names (Hugging Face and GGUF), and helpers for reading their config options."""
from __future__ import annotations

from ..errors import ModelLoadError, UnsupportedArchitectureError
from .family import one

HF_ATTENTION = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
}
HF_QKV_BIAS = {"bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias"}
HF_O_BIAS = {"bo": "self_attn.o_proj.bias"}
HF_QK_NORM = {"q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
HF_MLP = {"ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight", "ffn_down": "mlp.down_proj.weight"}

GGUF_ATTENTION = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "wo": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",
}
GGUF_QKV_BIAS = {"bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias"}
GGUF_O_BIAS = {"bo": "attn_output.bias"}
GGUF_QK_NORM = {"q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight"}
GGUF_MLP = {"ffn_gate": "ffn_gate.weight", "ffn_up": "ffn_up.weight", "ffn_down": "ffn_down.weight"}


def layer_sources(i: int, *tables, prefix: str = "model.layers.{i}.") -> dict:
    """engine name -> Source for the tables' names under the layer prefix."""
    p = prefix.format(i=i)
    out = {}
    for t in tables:
        out.update({eng: one(p + name) for eng, name in t.items()})
    return out


def flag(d: dict, key: str, source: str, default: bool = False) -> bool:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ModelLoadError(f"{source}: {key} must be true or false, got {v!r}")
    return v


def refuse(d: dict, source: str, *keys: str) -> None:
    """Options pyllm does not implement: true -> UnsupportedArchitectureError naming the key."""
    for key in keys:
        if flag(d, key, source):
            raise UnsupportedArchitectureError(f"{source}: {key}=true is not supported")


def llama_style_layer(cfg, i: int, gguf: bool, mlp: bool = True) -> dict:
    """engine name -> Source of a Llama-style layer (attention, and the dense SwiGLU MLP unless
    mlp=False) with the optional q/k/v biases, output bias and per-head q/k norms cfg asks for, under
    Hugging Face names (model.layers.i.) or GGUF's (without the blk.i. prefix)."""
    t = [GGUF_ATTENTION if gguf else HF_ATTENTION]
    if mlp:
        t.append(GGUF_MLP if gguf else HF_MLP)
    for on, hf, gg in ((cfg.qkv_bias, HF_QKV_BIAS, GGUF_QKV_BIAS), (cfg.o_bias, HF_O_BIAS, GGUF_O_BIAS),
                       (cfg.qk_norm, HF_QK_NORM, GGUF_QK_NORM)):
        if on:
            t.append(gg if gguf else hf)
    return layer_sources(i, *t, prefix="" if gguf else "model.layers.{i}.")
