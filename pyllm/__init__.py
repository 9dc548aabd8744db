"""pyllm: CPU inference for open LLMs. `pyllm.load(path)` gives a Model with generate(),
stream(), logits() and a stateful sequence API; the heavy lifting is in the C engine."""
from __future__ import annotations

import os
from typing import Optional

# The engine's OpenMP threads meet at a barrier ~15 times per layer. libgomp's default is to spin
# ~300k iterations there before sleeping, so where another process holds a core a waiting thread
# burns its time slice on a descheduled partner and decoding stalls. A short spin measured the same
# on a quiet 2-core machine and 1.5x faster (mean tok/s) with a CPU hog on one core. libgomp reads
# this when it loads (with the engine, just below); a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from . import _engine  # noqa: E402
from .config import ModelConfig, SUPPORTED_ARCHITECTURES  # noqa: E402
from .errors import ContextLengthError, ModelLoadError, PyllmError, QueueFullError, UnsupportedArchitectureError  # noqa: E402
from .model import Model, Sequence, check_kv_type  # noqa: E402
from .sampling import SamplingParams  # noqa: E402
from .generation.options import GenerationOptions  # noqa: E402
from .serving.request import Chunk, Completion, Request  # noqa: E402
from .chat.template import ChatTemplateError  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "load", "default_model_path", "Model", "Sequence", "ModelConfig", "SamplingParams", "PyllmError",
    "ModelLoadError", "UnsupportedArchitectureError", "ContextLengthError", "QueueFullError", "SUPPORTED_ARCHITECTURES",
    "GenerationOptions", "Request", "Chunk", "Completion", "ChatTemplateError",
]

_DEFAULT_N_CTX = 4096


def default_model_path() -> str:
    """The small Shakespeare model that ships inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "shakespeare-4m")


def _resolve_isa() -> None:
    want = os.environ.get("PYLLM_ISA")
    if want:
        _engine.set_isa(want)  # raises if unknown or unsupported on this CPU


def load(path: Optional[str] = None, n_threads: Optional[int] = None, n_ctx: Optional[int] = None,
         quant: Optional[str] = None, calibration=None, kv_type: str = "f32") -> Model:
    """Load a model: a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)
    or a .gguf file (llama.cpp's format, see pyllm/gguf_loader.py). With no path, the shipped
    shakespeare-4m model. n_ctx defaults to the model's training context capped at 4096;
    n_threads to the CPUs this process may use. quant ("q4_0", "q8_0", "f16", "bf16", "f32")
    converts the weights while loading. calibration (with quant, for a checkpoint folder): a text
    file, an importance .npz or dict (pyllm/imatrix.py) to weight the q4_0/q8_0 scale search with.
    kv_type: the KV cache's element type, "f32" (default, exact) or "f16" (half the memory; keys and
    values rounded to fp16 as they are written, as llama.cpp's default cache does)."""
    from .hf_loader import load_hf_folder
    from .tokenizer import Tokenizer

    _resolve_isa()
    check_kv_type(kv_type)
    path = os.fspath(path) if path is not None else default_model_path()
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or folder")
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    if calibration is not None and (quant is None or not os.path.isdir(path)):
        raise ValueError("calibration is used when quantizing a Hugging Face checkpoint folder (quant=...)")
    if not os.path.isdir(path):
        # a file: GGUF (llama.cpp's format); anything else is reported by the GGUF reader (bad magic)
        from .gguf_loader import load_gguf

        return load_gguf(path, n_threads=n_threads, n_ctx=n_ctx, quant=quant, kv_type=kv_type)
    cfg = ModelConfig.from_file(os.path.join(path, "config.json"))
    if n_ctx is None:
        n_ctx = min(cfg.max_position_embeddings, _DEFAULT_N_CTX)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx > cfg.max_position_embeddings:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's max_position_embeddings ({cfg.max_position_embeddings})")
    tokenizer = Tokenizer.from_dir(path)
    importance = None
    if calibration is not None:
        from .imatrix import resolve_importance

        importance = resolve_importance(path, calibration, n_threads=n_threads)
    cfg, cmodel, gen = load_hf_folder(path, n_ctx, quant=quant, n_threads=n_threads or 0, importance=importance)
    return Model(cmodel, cfg, tokenizer, n_ctx=n_ctx, n_threads=n_threads, generation_config=gen, path=path,
                 kv_type=kv_type)
