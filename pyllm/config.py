"""config.py: the model description pyllm runs, read from a Hugging Face config.json. Every
dimension comes from here; variants (GQA, sliding window, rope scaling, tied embeddings) are
parameters, not code paths. Also computes the RoPE inverse frequencies as transformers does, and
holds the one JSON-file reader every loader uses (read_json_file: any unreadable, non-UTF-8,
malformed or too deeply nested file is a ModelLoadError naming it)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import ModelLoadError, UnsupportedArchitectureError
from .mapped_file import read_small_file

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
MAX_INT32 = (1 << 31) - 1  # the engine takes every size as a C int
_FLOAT32_MAX = 3.4028234663852886e38


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to limit characters (a bad value may be a huge list)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def parse_json(text, source: str) -> Any:
    """json.loads(text) (str or bytes); every way it can fail is a ModelLoadError naming source."""
    try:
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{source}: not valid UTF-8 ({e})") from None
    except RecursionError:
        raise ModelLoadError(f"{source}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers longer than Python converts
        raise ModelLoadError(f"{source}: not valid JSON ({e})") from None


def read_json_file(path, object_required: bool = True) -> Any:
    """The parsed contents of the JSON file at path (a dict unless object_required is False). A file
    that is missing, not a regular file, unreadable, not UTF-8, not JSON, too deeply nested or (with
    object_required) not an object raises ModelLoadError naming the file."""
    path = os.fspath(path)
    raw = read_small_file(path)
    data = parse_json(raw, path)
    if object_required and not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    # family options (pyllm/arch): attention biases, per-head q/k norms, mixture of experts
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    n_experts: int = 0
    n_experts_used: int = 0

    @property
    def family(self):
        """The pyllm.arch.Family that describes this architecture."""
        from .arch import family_of

        return family_of(self.architecture)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Every value is checked here (type and range, sizes against the engine's C int) so that a bad
        config.json is a ModelLoadError naming the key, never a TypeError/OverflowError later."""
        if not isinstance(d, dict):
            raise ModelLoadError(f"{source}: expected a JSON object")
        archs = d.get("architectures")
        if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
            raise ModelLoadError(f"{source}: architectures must be a list of class names, got {short_repr(archs)}")
        model_type = d.get("model_type")
        if model_type is not None and not isinstance(model_type, str):
            raise ModelLoadError(f"{source}: model_type must be a string, got {short_repr(model_type)}")
        from .arch import SUPPORTED_ARCHITECTURES, architecture_for_model_type, family_of

        arch = archs[0] if archs else (architecture_for_model_type(model_type or "") or model_type)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"{source}: architecture {arch!r} is not supported; pyllm supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        fam = family_of(arch)

        def need(key):
            if key not in d or d[key] is None:
                raise ModelLoadError(f"{source}: missing required key {key!r}")
            return d[key]

        def pos_int(key, value):
            if not _is_int(value) or value <= 0:
                raise ModelLoadError(f"{source}: {key} must be a positive integer, got {short_repr(value)}")
            if value > MAX_INT32:
                raise ModelLoadError(f"{source}: {key} = {short_repr(value)} is too large (at most {MAX_INT32})")
            return value

        def number(key, value, lo, hi, what):
            if not _is_number(value) or not lo(value) or value > hi:
                raise ModelLoadError(f"{source}: {key} must be {what}, got {short_repr(value)}")
            return float(value)

        def mapping(key):
            v = d.get(key)
            if v is not None and not isinstance(v, dict):
                raise ModelLoadError(f"{source}: {key} must be an object (or null), got {short_repr(v)}")
            return v or {}

        hidden = pos_int("hidden_size", need("hidden_size"))
        heads = pos_int("num_attention_heads", need("num_attention_heads"))
        kv_heads = pos_int("num_key_value_heads", d.get("num_key_value_heads") or heads)
        head_dim = pos_int("head_dim", d.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise ModelLoadError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        extra = fam.hf_config(d, source)
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedArchitectureError(f"{source}: hidden_act {short_repr(act)} is not supported (only silu)")

        rope = dict(mapping("rope_parameters"))
        legacy = mapping("rope_scaling")
        if legacy:
            rope.update(legacy)
        theta_key = ("rope_scaling.rope_theta" if "rope_theta" in legacy else
                     "rope_parameters.rope_theta" if "rope_theta" in rope else "rope_theta")
        theta = number(theta_key, rope.get("rope_theta", d.get("rope_theta", 10000.0)), lambda v: v > 0,
                       _FLOAT32_MAX, "a positive number")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "su":  # Phi-3's first name for longrope
            rope_type = "longrope"
        if rope_type == "longrope" and d.get("original_max_position_embeddings") is not None:
            # as transformers: the top-level key (Phi-3 keeps it there) wins
            rope["original_max_position_embeddings"] = d["original_max_position_embeddings"]
        if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"{source}: rope scaling type {short_repr(rope_type)} is not supported "
                f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        scaling = {} if rope_type == "default" else {k: v for k, v in rope.items() if k not in ("type", "rope_theta")}
        if scaling:
            scaling["rope_type"] = rope_type
            if rope_type == "longrope":
                scaling.pop("partial_rotary_factor", None)
                scaling["max_position_embeddings"] = d.get("max_position_embeddings", 2048)
            _check_rope_scaling(scaling, source, head_dim)
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedArchitectureError(f"{source}: partial_rotary_factor is not supported")
        max_pos = pos_int("max_position_embeddings", d.get("max_position_embeddings", 2048))
        sw = d.get("sliding_window") if arch in fam.sliding_window else None
        if d.get("use_sliding_window") is False:
            sw = None
        if sw is not None and (not _is_int(sw) or not 0 <= sw <= MAX_INT32):
            raise ModelLoadError(f"{source}: sliding_window must be null or an integer in 0..{MAX_INT32}, "
                                 f"got {short_repr(sw)}")
        eps = number("rms_norm_eps", d.get("rms_norm_eps", 1e-6), lambda v: v >= 0, 1.0, "a number in [0, 1]")
        tie = d.get("tie_word_embeddings", False)
        if tie is not None and not isinstance(tie, bool):
            raise ModelLoadError(f"{source}: tie_word_embeddings must be true or false, got {short_repr(tie)}")
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
            rms_norm_eps=eps,
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(tie),
            sliding_window=sw or 0,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            **extra,
        )

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        if not os.path.exists(path):
            raise ModelLoadError(f"{path}: not found (a Hugging Face checkpoint folder needs config.json)")
        return cls.from_dict(read_json_file(path), source=os.fspath(path))

    def _base_inv_freq(self) -> np.ndarray:
        dim = self.head_dim
        exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        return np.power(np.float32(self.rope_theta), exps, dtype=np.float32)

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse frequencies (head_dim/2, float32) computed with transformers' float32 arithmetic
        (LongRoPE: the short factors', used until a sequence passes the original context)."""
        pw = self._base_inv_freq()
        inv = (np.float32(1.0) / pw).astype(np.float32)
        s = self.rope_scaling
        kind = s.get("rope_type", "default")
        if kind in ("linear", "llama3", "longrope"):
            _check_rope_scaling(s, "config.json", self.head_dim)
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
        elif kind == "longrope":
            inv = self._longrope_inv_freq(s["short_factor"])
        return inv

    def _longrope_inv_freq(self, factors) -> np.ndarray:
        # transformers: 1.0 / (ext_factors * base ** (arange(0, dim, 2) / dim)), all float32
        f = np.asarray(factors, dtype=np.float32)
        return (np.float32(1.0) / (f * self._base_inv_freq()).astype(np.float32)).astype(np.float32)

    def rope_long_inv_freq(self) -> Optional[np.ndarray]:
        """LongRoPE's long-factor frequencies (None for other rope types)."""
        s = self.rope_scaling
        return self._longrope_inv_freq(s["long_factor"]) if s.get("rope_type") == "longrope" else None

    def rope_long_after(self) -> int:
        """LongRoPE: the original context; a sequence whose largest position in a forward reaches it
        uses the long factors, as transformers switches when seq_len > original_max_position_embeddings."""
        s = self.rope_scaling
        return int(s["original_max_position_embeddings"]) if s.get("rope_type") == "longrope" else 0

    def rope_attention_factor(self) -> float:
        """The factor transformers multiplies cos and sin by (1 except for LongRoPE)."""
        s = self.rope_scaling
        if s.get("rope_type") != "longrope":
            return 1.0
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])
        orig = s["original_max_position_embeddings"]
        factor = s.get("factor")
        if factor is None:  # transformers: the ratio of the two context lengths
            factor = s.get("max_position_embeddings", self.max_position_embeddings) / orig
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def _num(s: dict, key: str, source: str = "config.json") -> float:
    v = s.get(key)
    if not _is_number(v) or v <= 0 or v > _FLOAT32_MAX:
        raise ModelLoadError(f"{source}: rope scaling {key!r} must be a positive number, got {short_repr(v)}")
    return float(v)


def _check_rope_scaling(s: dict, source: str, head_dim: int) -> None:
    """The values rope_inv_freq will use, checked when the config is read."""
    kind = s.get("rope_type")
    keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings"),
            "longrope": ("original_max_position_embeddings",)}.get(kind, ())
    for key in keys:
        _num(s, key, source)
    if kind == "llama3" and s["high_freq_factor"] <= s["low_freq_factor"]:
        raise ModelLoadError(f"{source}: rope scaling high_freq_factor ({s['high_freq_factor']}) must be larger than "
                             f"low_freq_factor ({s['low_freq_factor']})")
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            v = s.get(key)
            if (not isinstance(v, list) or len(v) != head_dim // 2 or
                    not all(_is_number(x) and 0 < x <= _FLOAT32_MAX for x in v)):
                raise ModelLoadError(f"{source}: longrope {key} must be a list of {head_dim // 2} positive numbers "
                                     f"(head_dim / 2), got {short_repr(v)}")
        orig = s["original_max_position_embeddings"]
        if not _is_int(orig) or orig < 2 or orig > MAX_INT32:
            raise ModelLoadError(f"{source}: longrope original_max_position_embeddings must be an integer >= 2, "
                                 f"got {short_repr(orig)}")
        for key in ("factor", "attention_factor"):
            if s.get(key) is not None:
                _num(s, key, source)
