"""config.py: the model description pyllm runs, read from a Hugging Face config.json. Every
dimension comes from here; variants (GQA, sliding window, rope scaling, tied embeddings) are
parameters, not code paths. Also computes the RoPE inverse frequencies as transformers does."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import ModelLoadError, UnsupportedArchitectureError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": ..., "factor": ..., ...}; empty = default
    tie_word_embeddings: bool = False
    sliding_window: int = 0  # 0 = full attention
    bos_token_id: Optional[int] = None
    eos_token_id: Any = None

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ModelLoadError(f"{source}: expected a JSON object")
        archs = d.get("architectures") or []
        arch = archs[0] if archs else _MODEL_TYPES.get(d.get("model_type", ""), d.get("model_type"))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"{source}: architecture {arch!r} is not supported; pyllm supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )

        def need(key):
            if key not in d or d[key] is None:
                raise ModelLoadError(f"{source}: missing required key {key!r}")
            return d[key]

        def pos_int(key, value):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(f"{source}: {key} must be a positive integer, got {value!r}")
            return value

        hidden = pos_int("hidden_size", need("hidden_size"))
        heads = pos_int("num_attention_heads", need("num_attention_heads"))
        kv_heads = pos_int("num_key_value_heads", d.get("num_key_value_heads") or heads)
        head_dim = pos_int("head_dim", d.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise ModelLoadError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key):
                raise UnsupportedArchitectureError(f"{source}: {key}=true is not supported")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedArchitectureError(f"{source}: hidden_act {act!r} is not supported (only silu)")

        rope = dict(d.get("rope_parameters") or {})
        legacy = d.get("rope_scaling") or {}
        if legacy:
            rope.update(legacy)
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"{source}: rope scaling type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        scaling = {} if rope_type == "default" else {k: v for k, v in rope.items() if k not in ("type", "rope_theta")}
        if scaling:
            scaling["rope_type"] = rope_type
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedArchitectureError(f"{source}: partial_rotary_factor is not supported")
        max_pos = pos_int("max_position_embeddings", d.get("max_position_embeddings", 2048))
        sw = d.get("sliding_window") if arch == "MistralForCausalLM" else None
        if d.get("use_sliding_window") is False:
            sw = None
        return cls(
            architecture=arch,
            vocab_size=pos_int("vocab_size", need("vocab_size")),
            hidden_size=hidden,
            num_layers=pos_int("num_hidden_layers", need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=pos_int("intermediate_size", need("intermediate_size")),
            max_position_embeddings=max_pos,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            sliding_window=int(sw) if sw else 0,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: not found (a Hugging Face checkpoint folder needs config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=os.path.basename(path))

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse frequencies (head_dim/2, float32) computed with transformers' float32 arithmetic."""
        dim = self.head_dim
        exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (np.float32(1.0) / np.power(np.float32(self.rope_theta), exps, dtype=np.float32)).astype(np.float32)
        s = self.rope_scaling
        kind = s.get("rope_type", "default")
        if kind == "linear":
            inv = (inv / np.float32(_num(s, "factor"))).astype(np.float32)
        elif kind == "llama3":
            factor = np.float32(_num(s, "factor"))
            low, high = _num(s, "low_freq_factor"), _num(s, "high_freq_factor")
            old_ctx = _num(s, "original_max_position_embeddings")
            low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
            wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
            inv_l = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
            smooth = ((np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
            smoothed = ((1 - smooth) * inv_l / factor + smooth * inv_l).astype(np.float32)
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(medium, smoothed, inv_l).astype(np.float32)
        return inv


def _num(s: dict, key: str) -> float:
    v = s.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ModelLoadError(f"config.json: rope scaling {key!r} must be a positive number, got {v!r}")
    return float(v)
