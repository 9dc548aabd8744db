"""loader.py: pyllm.load(), from a path to a ready Model: a Hugging Face checkpoint folder
(config.json, safetensors, tokenizer files) or a GGUF file, with the load-time options (threads,
context, quantize-on-load, calibration, KV cache type) checked first."""
from __future__ import annotations

import os
from typing import Optional

from . import _engine
from .config import ModelConfig
from .device import check_device
from .errors import ModelLoadError
from .model import Model, check_kv_type

MAX_THREADS = 4096  # more than any CPU this runs on; a larger value is a mistake, not a request

_DEFAULT_N_CTX = 4096


def default_model_path() -> str:
    """The small Shakespeare model that ships inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "shakespeare-4m")


def _resolve_isa() -> None:
    want = os.environ.get("PYLLM_ISA")
    if want:
        _engine.set_isa(want)  # raises if unknown or unsupported on this CPU


def load(path: Optional[str] = None, n_threads: Optional[int] = None, n_ctx: Optional[int] = None,
         quant: Optional[str] = None, calibration=None, kv_type: str = "f32", lora=None,
         allocate: bool = False, device: str = "cpu") -> Model:
    """Load a model: a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)
    or a .gguf file (llama.cpp's format, see pyllm/gguf_loader.py). With no path, the shipped
    shakespeare-4m model. n_ctx defaults to the model's training context capped at 4096;
    n_threads to the CPUs this process may use. quant ("q4_0", "q8_0", "f16", "bf16", "f32", or one
    of llama.cpp's mixes "q4_k_m", "q5_k_m", "q6_k", "iq4_xs", ...: pyllm/quant_mixes.py) converts
    the weights while loading. calibration (with quant, for a checkpoint folder): a text file, an
    importance .npz or dict (pyllm/imatrix.py) or llama.cpp's imatrix file (.gguf / .dat) to weight
    the quantizers' error with. allocate (a mix with calibration text): the mix's bits re-spent where
    measurement says they lower the error most (pyllm/quant_allocation.py).
    kv_type: the KV cache's element type, "f32" (default, exact) or "f16" (half the memory; keys and
    values rounded to fp16 as they are written, as llama.cpp's default cache does). lora: PEFT LoRA
    adapters, a folder, a (folder, scale) pair or a list of them (pyllm/lora.py): merged into 16-bit
    and f32 weights, kept beside quantized ones as a low-rank side product (pyllm/adapters.py).
    A GPTQ or AWQ 4-bit folder (config.json quantization_config) runs its 4-bit layers as Q4_0
    (symmetric) or Q4_1 blocks (act-order layers dequantized to F16, with a warning); quant= then
    applies to the tensors it keeps in float (pyllm/gptq_awq.py).
    device: "cpu" (default) or "cuda": the whole forward on an NVIDIA GPU (a PYLLM_CUDA build; weights F32,
    F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K, dense models: pyllm/device.py). "cuda" is
    checked first and raises a DeviceError naming why it cannot run (a build without CUDA, no GPU); a model
    the GPU kernels cannot run yet (other weight types, mixture-of-experts, LongRoPE, unmerged LoRA) a
    DeviceError naming that."""
    from .hf_loader import load_hf_folder
    from .tokenizer import Tokenizer

    check_device(device)
    _resolve_isa()
    check_kv_type(kv_type)
    path = os.fspath(path) if path is not None else default_model_path()
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or folder")
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int)
                                  or not 1 <= n_threads <= MAX_THREADS):
        raise ValueError(f"n_threads must be an integer in 1..{MAX_THREADS}, got {n_threads!r}")
    if calibration is not None and (quant is None or not os.path.isdir(path)):
        raise ValueError("calibration is used when quantizing a Hugging Face checkpoint folder (quant=...)")
    if not os.path.isdir(path):
        # a file: GGUF (llama.cpp's format); anything else is reported by the GGUF reader (bad magic)
        from .gguf_loader import load_gguf

        return load_gguf(path, n_threads=n_threads, n_ctx=n_ctx, quant=quant, kv_type=kv_type, lora=lora,
                         device=device)
    cfg = ModelConfig.from_file(os.path.join(path, "config.json"))
    if n_ctx is None:
        n_ctx = min(cfg.max_position_embeddings, _DEFAULT_N_CTX)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx > cfg.max_position_embeddings:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's max_position_embeddings ({cfg.max_position_embeddings})")
    tokenizer = Tokenizer.from_dir(path)
    if allocate:
        from .quant_allocation import check_allocate

        quant = check_allocate(quant, calibration)
    importance = None
    if calibration is not None:
        from .imatrix import resolve_importance

        importance = resolve_importance(path, calibration, n_threads=n_threads)
    types = None
    if allocate:
        from .quant_allocation import allocate_from_file

        types = allocate_from_file(path, cfg, quant, calibration, importance, n_threads or 0)
    cfg, cmodel, gen = load_hf_folder(path, n_ctx, quant=quant, n_threads=n_threads or 0, importance=importance,
                                      lora=lora, types=types, repack=device == "cpu")
    return Model(cmodel, cfg, tokenizer, n_ctx=n_ctx, n_threads=n_threads, generation_config=gen, path=path,
                 kv_type=kv_type, device=device)
