"""mixtral.py: Mixtral (MixtralForCausalLM): Llama attention, and in every layer a mixture of
SwiGLU experts (num_local_experts, num_experts_per_tok of them per token) behind a linear router.
A Hugging Face checkpoint holds each expert's w1 (gate), w3 (up), w2 (down) separately; the engine
takes each kind stacked over experts (as GGUF stores them: ffn_gate_exps, ffn_up_exps,
ffn_down_exps, router ffn_gate_inp), so loading a folder stacks them (a copy). GGUF: architecture
"llama" with llama.expert_count / llama.expert_used_count, Q/K permuted as for Llama."""
from __future__ import annotations

from ..config import short_repr
from ..errors import ModelLoadError, UnsupportedArchitectureError
from . import llama
from .common import layer_sources
from .family import Family, Source, one

MAX_EXPERTS = 256  # csrc/pyllm.h PL_MAX_EXPERTS


def _count(d: dict, key: str, source: str, lo: int, hi: int, what: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelLoadError(f"{source}: {key} must be {what}, got {short_repr(v)}")
    return v


def experts(n: int, used: int, source: str, keys=("num_local_experts", "num_experts_per_tok")) -> dict:
    """The checked expert counts as ModelConfig fields."""
    if isinstance(n, int) and n > MAX_EXPERTS:
        raise UnsupportedArchitectureError(f"{source}: {keys[0]} = {n}: pyllm runs at most {MAX_EXPERTS} experts")
    n = _count({keys[0]: n}, keys[0], source, 1, MAX_EXPERTS, f"an integer in 1..{MAX_EXPERTS}")
    used = _count({keys[1]: used}, keys[1], source, 1, n, f"an integer in 1..{keys[0]} ({n})")
    return {"n_experts": n, "n_experts_used": used}


def hf_config(d: dict, source: str) -> dict:
    out = llama.hf_config(d, source)
    out.update(experts(d.get("num_local_experts"), d.get("num_experts_per_tok"), source))
    return out


def hf_layer(cfg, i):
    out = llama.hf_layer(cfg, i, mlp=False)
    p = f"model.layers.{i}.block_sparse_moe."
    out["ffn_gate_inp"] = one(p + "gate.weight")
    for eng, w in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
        out[eng] = Source(tuple(f"{p}experts.{e}.{w}.weight" for e in range(cfg.n_experts)))
    return out


GGUF_MOE = {"ffn_gate_inp": "ffn_gate_inp.weight", "ffn_gate_exps": "ffn_gate_exps.weight",
            "ffn_up_exps": "ffn_up_exps.weight", "ffn_down_exps": "ffn_down_exps.weight"}


def gguf_layer(cfg, i):
    out = llama.gguf_layer(cfg, i, mlp=False)
    out.update(layer_sources(i, GGUF_MOE, prefix=""))
    return out


def gguf_config(md: dict, prefix: str, tensors, source: str) -> dict:
    from .family import gguf_biases

    return {**gguf_biases(tensors), **experts(md.get(prefix + "expert_count"), md.get(prefix + "expert_used_count"),
                                              source, (prefix + "expert_count", prefix + "expert_used_count"))}


def gguf_metadata(cfg):
    return [("expert_count", cfg.n_experts, "u32"), ("expert_used_count", cfg.n_experts_used, "u32")]


FAMILY = Family(
    name="mixtral",
    hf_architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    hf_config=hf_config,
    hf_layer=hf_layer,
    gguf_arch="llama",
    gguf_layer=gguf_layer,
    gguf_interleaved_rope=True,
    gguf_config=gguf_config,
    gguf_metadata=gguf_metadata,
    sliding_window=("MixtralForCausalLM",),
)
