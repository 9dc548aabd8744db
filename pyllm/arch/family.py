"""family.py: what describes one model family (architecture) to pyllm, in one place: the Hugging
Face class names and config reading it adds, where each engine tensor comes from in a Hugging Face
checkpoint and in a GGUF file, and how GGUF metadata maps onto the config. The loaders
(hf_loader, gguf_loader), the GGUF writer (gguf_export) and calibration (imatrix) read these
descriptions instead of listing tensors themselves; the engine's own list is csrc/pyllm.h
PL_LAYER_TENSORS (the engine names used here), whose shapes engine_shapes() gives in Python."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple


@dataclass(frozen=True)
class Source:
    """Where one engine tensor of layer i comes from in a file.

    names: the file's tensor names; one, or (stacked MoE experts) one per expert, stacked in order.
    rows: (start, stop): the tensor is this row range of a fused tensor (Phi-3's qkv_proj / gate_up_proj);
        the range is contiguous in the file, so it is passed zero-copy.
    permute_heads: > 0: rows are reordered for interleaved RoPE with this many heads (GGUF "llama")."""

    names: Tuple[str, ...]
    rows: Optional[Tuple[int, int]] = None
    permute_heads: int = 0

    @property
    def name(self) -> str:
        return self.names[0]


def one(name: str, rows=None, permute_heads: int = 0) -> Source:
    return Source((name,), rows, permute_heads)


def engine_shapes(cfg) -> dict:
    """engine tensor name -> the shape the config gives it ([rows, cols] / [n]; stacked experts: one
    expert's); csrc/pyllm.h PL_LAYER_TENSORS checks the same at load."""
    hd, dim, hid = cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    return {
        "tok_embd": (cfg.vocab_size, dim), "output": (cfg.vocab_size, dim), "output_norm": (dim,),
        "attn_norm": (dim,), "ffn_norm": (dim,), "wq": (q, dim), "wk": (kv, dim), "wv": (kv, dim), "wo": (dim, q),
        "bq": (q,), "bk": (kv,), "bv": (kv,), "bo": (dim,), "q_norm": (hd,), "k_norm": (hd,),
        "ffn_gate": (hid, dim), "ffn_up": (hid, dim), "ffn_down": (dim, hid), "ffn_gate_inp": (cfg.n_experts, dim),
        "ffn_gate_exps": (hid, dim), "ffn_up_exps": (hid, dim), "ffn_down_exps": (dim, hid),
    }


def gguf_biases(tensors) -> dict:
    """Optional attention biases, as llama.cpp finds them: by the first block's tensors."""
    return {"qkv_bias": "blk.0.attn_q.bias" in tensors, "o_bias": "blk.0.attn_output.bias" in tensors}


@dataclass(frozen=True)
class Family:
    """One architecture. Functions take the ModelConfig being loaded (cfg) and a layer index."""

    name: str                                   # "llama", "qwen2", ...
    hf_architectures: Tuple[str, ...]           # config.json "architectures" values it runs
    model_types: Tuple[str, ...]                # config.json "model_type" values (when architectures is absent)
    # config.json -> the ModelConfig fields beyond the common ones (checked; errors name source)
    hf_config: Callable                         # (d: dict, source: str) -> dict
    # engine name -> Source in a Hugging Face checkpoint, per layer
    hf_layer: Callable                          # (cfg, i) -> dict[str, Source]
    gguf_arch: str                              # GGUF general.architecture written and read
    gguf_layer: Callable                        # (cfg, i) -> dict[str, Source]  (names without "blk.N.")
    gguf_interleaved_rope: bool                 # llama.cpp's rope for it: NORM (pairs, Q/K permuted) or NEOX
    # GGUF metadata (keys "<prefix>..."), tensor names, the file's name -> the ModelConfig fields beyond the common ones
    gguf_config: Callable = field(default=lambda md, prefix, tensors, source: gguf_biases(tensors))
    # ModelConfig -> extra GGUF metadata the writer adds: list of (key, value, gguf type tag)
    gguf_metadata: Callable = field(default=lambda cfg: [])
    # the HF architectures whose config.json sliding_window applies (Mistral, Phi-3, Mixtral)
    sliding_window: Tuple[str, ...] = ()

    def hf_tensors(self, cfg) -> dict:
        """(engine name, layer) -> Source, every tensor the model needs (layer -1: model-level)."""
        out = {
            ("tok_embd", -1): one("model.embed_tokens.weight"),
            ("output_norm", -1): one("model.norm.weight"),
            ("output", -1): one("model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"),
        }
        for i in range(cfg.num_layers):
            for eng, src in self.hf_layer(cfg, i).items():
                out[(eng, i)] = src
        return out

    def gguf_tensors(self, cfg) -> dict:
        """(engine name, layer) -> Source in a GGUF file, every tensor the model needs."""
        out = {
            ("tok_embd", -1): one("token_embd.weight"),
            ("output_norm", -1): one("output_norm.weight"),
            ("output", -1): one("token_embd.weight" if cfg.tie_word_embeddings else "output.weight"),
        }
        for i in range(cfg.num_layers):
            for eng, src in self.gguf_layer(cfg, i).items():
                out[(eng, i)] = Source(tuple(f"blk.{i}.{n}" for n in src.names), src.rows, src.permute_heads)
        return out
