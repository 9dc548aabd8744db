"""pyllm.arch: one description per model family (see family.py), and lookup by the names a
Hugging Face config.json or a GGUF file uses. Adding a family = a module here + its entry below
(+ any new engine tensor in csrc/pyllm.h PL_LAYER_TENSORS)."""
from __future__ import annotations

from typing import Optional

from . import llama, mixtral, phi3, qwen
from .family import Family, Source

FAMILIES = (llama.FAMILY, mixtral.FAMILY, phi3.FAMILY, qwen.QWEN2, qwen.QWEN3)

SUPPORTED_ARCHITECTURES = tuple(a for f in FAMILIES for a in f.hf_architectures)
SUPPORTED_GGUF_ARCHITECTURES = tuple(dict.fromkeys(f.gguf_arch for f in FAMILIES))
_BY_ARCH = {a: f for f in FAMILIES for a in f.hf_architectures}
_BY_MODEL_TYPE = {t: f.hf_architectures[f.model_types.index(t)] if len(f.model_types) == len(f.hf_architectures)
                  else f.hf_architectures[0] for f in FAMILIES for t in f.model_types}


def architecture_for_model_type(model_type: str) -> Optional[str]:
    return _BY_MODEL_TYPE.get(model_type)


def family_of(architecture: str) -> Family:
    """The family of a supported Hugging Face architecture name (KeyError otherwise)."""
    return _BY_ARCH[architecture]


def gguf_family(gguf_arch: str, n_experts: int) -> Family:
    """The family of a GGUF file: its general.architecture, and for "llama" whether it has experts."""
    if gguf_arch == "llama":
        return mixtral.FAMILY if n_experts else llama.FAMILY
    return next(f for f in FAMILIES if f.gguf_arch == gguf_arch)


__all__ = ["FAMILIES", "Family", "Source", "SUPPORTED_ARCHITECTURES", "SUPPORTED_GGUF_ARCHITECTURES",
           "architecture_for_model_type", "family_of", "gguf_family"]
