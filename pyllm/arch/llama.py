"""llama.py: Llama 2/3 and Mistral (LlamaForCausalLM, MistralForCausalLM): the reference layout.
GGUF "llama": Q/K rows permuted for llama.cpp's interleaved (NORM) RoPE; Llama 3.1 rope scaling
as a rope_freqs tensor (gguf_loader / gguf_export). attention_bias adds q/k/v and output biases."""
from __future__ import annotations

from .common import flag, llama_style_layer, refuse
from .family import Family, Source


def hf_config(d: dict, source: str) -> dict:
    refuse(d, source, "mlp_bias")
    bias = flag(d, "attention_bias", source)
    return {"qkv_bias": bias, "o_bias": bias}


def hf_layer(cfg, i, mlp=True):
    return llama_style_layer(cfg, i, gguf=False, mlp=mlp)


def gguf_layer(cfg, i, mlp=True):
    out = llama_style_layer(cfg, i, gguf=True, mlp=mlp)
    # llama.cpp's converter permutes q/k rows (and q/k biases) for interleaved RoPE
    for eng, heads in (("wq", cfg.num_heads), ("wk", cfg.num_kv_heads), ("bq", cfg.num_heads),
                       ("bk", cfg.num_kv_heads)):
        if eng in out:
            out[eng] = Source(out[eng].names, permute_heads=heads)
    return out


FAMILY = Family(
    name="llama",
    hf_architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    hf_config=hf_config,
    hf_layer=hf_layer,
    gguf_arch="llama",
    gguf_layer=gguf_layer,
    gguf_interleaved_rope=True,
    sliding_window=("MistralForCausalLM",),
)
