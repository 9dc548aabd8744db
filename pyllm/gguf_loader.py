"""gguf_loader.py: turns a GGUF file (llama.cpp's format) into pyllm's ModelConfig, engine model and
tokenizer, for the architectures of pyllm.arch: "llama" (Llama 2/3, Mistral; with expert_count,
Mixtral), "qwen2", "qwen3", "phi3". Weights are passed to the engine as memoryviews into the
mmapped file, in their stored type (F32, F16, BF16, Q8_0, Q4_0); fused tensors (Phi-3's attn_qkv,
and ffn_up holding gate and up) as row ranges of it. "llama" files hold Q/K rows in llama.cpp's
permuted order, so RoPE runs in interleaved mode; the others use the Hugging Face (NEOX) layout.

Phi-3 LongRoPE: llama.cpp picks the long or short factors (rope_factors_long / _short tensors) once,
by the context size it is given; pyllm picks them as transformers does, per sequence, once its
positions reach rope.scaling.original_context_length. The two agree while a sequence stays below
that length with a context no larger than it. Phi-3's attention.sliding_window (which llama.cpp
ignores, running full attention) is honoured, as transformers does.

Sliding window: llama.cpp's converter writes Mistral checkpoints as plain "llama" with no
sliding-window key, and llama.cpp then runs them with full attention. pyllm does the same for
such files: no `llama.attention.sliding_window` key -> full attention (identical to llama.cpp,
and to transformers as long as the context stays within the window, e.g. 4096 tokens for
Mistral 7B v0.1; later Mistral releases have no window at all). Files written by
pyllm's exporter (pyllm.gguf_export) carry the checkpoint's window in
`llama.attention.sliding_window`; pyllm honours it (so such a file behaves exactly like the
Hugging Face checkpoint it came from), llama.cpp ignores it for "llama" models."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _engine
from .arch import SUPPORTED_GGUF_ARCHITECTURES, gguf_family
from .config import MAX_INT32, ModelConfig, short_repr
from .errors import ModelLoadError, UnsupportedArchitectureError
from .gguf_file import MIN_MODEL_ALIGNMENT, GGUFFile, is_gguf
from .hf_loader import (build_engine_model, check_sampling_defaults, check_source_shapes, check_tokenizer_vocab,
                        fused_rows)
from .quantization import DEFAULT_METHOD, check_quant, convert

ENGINE_TYPES = (0, 1, 2, 8, 30) + tuple(_engine.BLOCK_TYPE_IDS.values())  # F32 F16 Q4_0 Q8_0 BF16 + the rest
_INT_CAP = MAX_INT32 + 1  # sizes go to the engine as C ints
_FLOAT32_MAX = 3.4028234663852886e38

ROPE_FREQS = "rope_freqs.weight"
ROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")  # Phi-3 LongRoPE
@dataclass(frozen=True)
class GGUFModelConfig(ModelConfig):
    """ModelConfig plus GGUF's RoPE frequency factors (`rope_freqs.weight`: the converter's encoding of
    Llama 3.1-style "llama3" rope scaling): inv_freq[i] = base_inv_freq[i] / rope_freq_factors[i],
    which is what llama.cpp computes."""

    rope_freq_factors: Optional[tuple] = None

    def rope_inv_freq(self) -> np.ndarray:
        inv = super().rope_inv_freq()
        if self.rope_freq_factors is not None:
            inv = (inv / np.asarray(self.rope_freq_factors, dtype=np.float32)).astype(np.float32)
        return inv


def _file_name(names: dict, engine_name: str, layer: int) -> str:
    src = names.get((engine_name, layer))
    return f"tensor {src.name!r}" if src is not None else f"{engine_name} (layer {layer})"


def _int(gf: GGUFFile, key: str, default=None, required: bool = True) -> Optional[int]:
    if key not in gf.metadata:
        if default is None and required:
            raise ModelLoadError(f"{gf.path}: missing required key {key!r}")
        return default
    v = gf.metadata[key]
    if isinstance(v, list):
        raise UnsupportedArchitectureError(f"{gf.path}: {key} is per-layer ({v[:4]}...): not supported")
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < _INT_CAP:
        raise ModelLoadError(f"{gf.path}: {key} must be a positive integer, got {v!r}")
    return v


def _float(gf: GGUFFile, key: str, default=None, limit: float = _FLOAT32_MAX) -> Optional[float]:
    """A positive number up to limit (the engine computes in float32)."""
    if key not in gf.metadata:
        if default is None:
            raise ModelLoadError(f"{gf.path}: missing required key {key!r}")
        return default
    v = gf.metadata[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= limit:
        raise ModelLoadError(f"{gf.path}: {key} must be a positive number up to {limit:g}, got {short_repr(v)}")
    return float(v)


def read_config(gf: GGUFFile) -> GGUFModelConfig:
    """The model description from the file's metadata (`llama.*` keys) and tensor shapes."""
    path, md = gf.path, gf.metadata
    if "general.architecture" not in md:
        raise ModelLoadError(f"{path}: missing required key 'general.architecture'")
    arch = md["general.architecture"]
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not supported; pyllm supports {', '.join(SUPPORTED_GGUF_ARCHITECTURES)} "
            f"(Llama 2/3, Mistral, Mixtral, Qwen2, Qwen3 and Phi-3 as written by llama.cpp's converter)"
        )
    a = arch + "."
    n_exp = md.get(a + "expert_count", 0)
    fam = gguf_family(arch, n_exp if isinstance(n_exp, int) and not isinstance(n_exp, bool) else 1)
    extra = fam.gguf_config(md, a, gf.tensors, path)
    hidden = _int(gf, a + "embedding_length")
    layers = _int(gf, a + "block_count")
    ffn = _int(gf, a + "feed_forward_length")
    heads = _int(gf, a + "attention.head_count")
    kv_heads = _int(gf, a + "attention.head_count_kv", heads)
    ctx = _int(gf, a + "context_length")
    head_dim = _int(gf, a + "attention.key_length", hidden // heads if hidden % heads == 0 else None, required=False)
    if head_dim is None:
        raise ModelLoadError(f"{path}: embedding_length {hidden} is not a multiple of head_count {heads} "
                             f"and there is no {a}attention.key_length")
    v_dim = _int(gf, a + "attention.value_length", head_dim)
    if v_dim != head_dim:
        raise UnsupportedArchitectureError(f"{path}: key_length {head_dim} != value_length {v_dim} is not supported")
    if heads % kv_heads:
        raise ModelLoadError(f"{path}: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    rope_dim = _int(gf, a + "rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise UnsupportedArchitectureError(
            f"{path}: partial RoPE (rope.dimension_count {rope_dim} < head dim {head_dim}) is not supported")
    eps = _float(gf, a + "attention.layer_norm_rms_epsilon", limit=1.0)
    theta = _float(gf, a + "rope.freq_base", 10000.0)

    scaling = {}
    kind = md.get(a + "rope.scaling.type", "none")
    if kind == "longrope":
        kind = "none"  # the factors come as tensors (below)
    factor = md.get(a + "rope.scaling.factor")
    if kind == "none" and a + "rope.scale_linear" in md:  # older files
        kind, factor = "linear", md[a + "rope.scale_linear"]
    if kind == "linear":
        if (isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0
                or factor > _FLOAT32_MAX):
            raise ModelLoadError(f"{path}: linear rope scaling needs a positive {a}rope.scaling.factor, got {factor!r}")
        if factor != 1.0:
            scaling = {"rope_type": "linear", "factor": float(factor)}
    elif kind != "none":
        raise UnsupportedArchitectureError(f"{path}: rope scaling type {kind!r} is not supported (supported: none, "
                                           f"linear, llama3 via {ROPE_FREQS})")

    def factors(name, n):
        t = gf.tensors[name]
        if t.type_id != 0 or t.shape != (n,):
            raise ModelLoadError(f"{path}: tensor {name!r} is {t.type_name} {list(t.shape)}, expected F32 [{n}]")
        f = np.frombuffer(gf.buffer(name), dtype="<f4").copy()
        if not np.all(np.isfinite(f)) or not np.all(f > 0):
            raise ModelLoadError(f"{path}: tensor {name!r} holds non-positive or non-finite factors")
        return [float(x) for x in f]

    if any(n in gf.tensors for n in ROPE_FACTORS):
        if fam.name != "phi3" or not all(n in gf.tensors for n in ROPE_FACTORS):
            raise UnsupportedArchitectureError(f"{path}: rope factor tensors {', '.join(ROPE_FACTORS)} are read for "
                                               f"phi3 files with both present")
        ctx0 = _int(gf, a + "context_length")
        orig = _int(gf, a + "rope.scaling.original_context_length", ctx0)
        if orig < 2:
            raise ModelLoadError(f"{path}: {a}rope.scaling.original_context_length must be >= 2, got {orig}")
        scaling = {"rope_type": "longrope", "short_factor": factors(ROPE_FACTORS[0], head_dim // 2),
                   "long_factor": factors(ROPE_FACTORS[1], head_dim // 2), "original_max_position_embeddings": orig,
                   "attention_factor": _float(gf, a + "rope.scaling.attn_factor", 1.0)}

    freq_factors = None
    if ROPE_FREQS in gf.tensors:
        freq_factors = tuple(factors(ROPE_FREQS, head_dim // 2))

    emb = gf.tensors.get("token_embd.weight")
    if emb is None:
        raise ModelLoadError(f"{path}: file has no tensor 'token_embd.weight'")
    if a + "vocab_size" in md:
        vocab = _int(gf, a + "vocab_size")
    elif len(emb.shape) == 2:
        vocab = emb.shape[0]
    else:
        raise ModelLoadError(f"{path}: tensor 'token_embd.weight' has shape {list(emb.shape)}, expected [vocab, dim]")
    if not 0 < vocab < _INT_CAP:
        raise ModelLoadError(f"{path}: bad vocabulary size {vocab}")

    sw = md.get(a + "attention.sliding_window", 0)
    if isinstance(sw, bool) or not isinstance(sw, int) or not 0 <= sw < _INT_CAP:
        raise ModelLoadError(f"{path}: {a}attention.sliding_window must be an integer in 0..{_INT_CAP - 1}, got "
                             f"{short_repr(sw)}")

    bos = md.get("tokenizer.ggml.bos_token_id")
    eos = [md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
           if isinstance(md.get(k), int) and not isinstance(md.get(k), bool)]
    eos = list(dict.fromkeys(eos))
    return GGUFModelConfig(
        architecture=fam.hf_architectures[0],
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=ffn,
        max_position_embeddings=ctx,
        rms_norm_eps=eps,
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in gf.tensors,
        sliding_window=sw,
        bos_token_id=bos if isinstance(bos, int) and not isinstance(bos, bool) else None,
        eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
        rope_freq_factors=freq_factors,
        **extra,
    )


def _check_tensors(gf: GGUFFile, cfg: ModelConfig) -> dict:
    """Every tensor the model needs is there (checked before anything is sized by block_count) and
    every tensor there is one the model uses. Returns (engine name, layer) -> Source."""
    fam = cfg.family
    if cfg.num_layers > len(gf.tensors):
        raise ModelLoadError(f"{gf.path}: block_count is {cfg.num_layers} but the file holds only {len(gf.tensors)} "
                             f"tensors")
    for i in range(cfg.num_layers):  # layer by layer: stops at the first missing tensor
        for src in fam.gguf_layer(cfg, i).values():
            for n in src.names:
                if f"blk.{i}.{n}" not in gf.tensors:
                    raise ModelLoadError(f"{gf.path}: file has no tensor 'blk.{i}.{n}'")
    names = fam.gguf_tensors(cfg)
    for (_, layer), src in names.items():
        if layer < 0 and src.name not in gf.tensors:  # (the blocks' tensors are checked above)
            raise ModelLoadError(f"{gf.path}: file has no tensor {src.name!r}")
    known = {ROPE_FREQS, *ROPE_FACTORS} | {n for src in names.values() for n in src.names}
    for name in gf.tensors:
        if name not in known:
            raise UnsupportedArchitectureError(
                f"{gf.path}: tensor {name!r} is not part of a {gf.metadata.get('general.architecture')} model as "
                f"pyllm runs it ({fam.name}: unexpected biases, experts or extra layers are not supported)")
    return names


# general.sampling.* key -> generation_config entry
SAMPLING_METADATA = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
                     "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
                     "general.sampling.penalty_repeat": "repetition_penalty"}


def generation_config_from_metadata(md: dict, path: str = "<gguf>") -> dict:
    """general.sampling.* keys (written from generation_config.json) -> generation_config entries. A value
    generate() could not use (top_p 2.0, a string, a fractional top_k) is a ModelLoadError naming the key."""
    gen = {}
    for key, name in SAMPLING_METADATA.items():
        if key not in md:
            continue
        v = md[key]
        if name == "top_k" and isinstance(v, float) and v.is_integer():
            v = int(v)
        gen[name] = v
    check_sampling_defaults(gen, path, {v: k for k, v in SAMPLING_METADATA.items()})
    return {k: (int(v) if k == "top_k" else float(v)) for k, v in gen.items()}


def load_gguf_parts(path: str, n_ctx: Optional[int] = None, quant: Optional[str] = None, n_threads: int = 0,
                    lora=None, repack: bool = True):
    """Returns (config, engine model, tokenizer, generation_config dict, n_ctx). n_ctx defaults to the
    model's context length capped at 4096. With quant (q4_0, q8_0, f16, bf16, f32) each tensor whose
    type differs from what pyllm.quantization.tensor_type picks is converted (dequantized exactly, then
    re-quantized in C as quant-on-load does); without it the file's tensors are used in place. lora:
    adapters kept beside the file's weights (pyllm/adapters.py; never merged into the mapping). repack:
    see hf_loader.build_engine_model."""
    from .gguf_tokenizer import tokenizer_from_metadata

    if not is_gguf(path):
        raise ModelLoadError(f"{path}: not a GGUF file (no GGUF magic); pyllm loads a Hugging Face checkpoint folder "
                             f"or a .gguf file")
    gf = GGUFFile(path)
    if gf.alignment % MIN_MODEL_ALIGNMENT:
        # every tensor starts on a multiple of the alignment (GGUFFile checks each offset); below 8 bytes a
        # 16/32-bit tensor could start misaligned, which the C kernels must not be given
        raise ModelLoadError(f"{path}: general.alignment is {gf.alignment}; the GGUF spec requires a multiple of "
                             f"{MIN_MODEL_ALIGNMENT} (tensor data aligned to less can be misaligned for its type)")
    cfg = read_config(gf)
    if n_ctx is None:
        n_ctx = min(cfg.max_position_embeddings, 4096)
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx > cfg.max_position_embeddings:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's context length ({cfg.max_position_embeddings})")
    if quant is not None:
        quant = check_quant(quant)
    names = _check_tensors(gf, cfg)
    fused = fused_rows(names)
    if quant is not None:
        from .quant_mixes import plan_types

        types = plan_types(cfg, quant)
    gen = generation_config_from_metadata(gf.metadata, path)
    try:
        tokenizer = tokenizer_from_metadata(gf.metadata)
    except ModelLoadError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelLoadError(f"{path}: cannot build the tokenizer from the file's metadata: {e}") from None
    # llama.cpp sizes the vocabulary by tokenizer.ggml.tokens: the two must agree
    vkey = gf.metadata["general.architecture"] + ".vocab_size"
    vocab_from = vkey if vkey in gf.metadata else "rows of token_embd.weight"
    check_tokenizer_vocab(cfg.vocab_size, tokenizer, f"{path}: tokenizer.ggml.tokens", vocab_from, exact=True)

    converted = {}
    adapters, sides = None, {}
    if lora is not None:
        from .adapters import AdapterSet

        adapters = AdapterSet(cfg, lora, path) or None

    def get_tensor(name, layer):
        src = names[(name, layer)]
        if adapters is not None and adapters.for_tensor(name, layer):
            from .gguf_export import _rope_permutation

            rows = cfg.num_heads * cfg.head_dim if name == "wq" else cfg.num_kv_heads * cfg.head_dim
            perm = _rope_permutation(rows, src.permute_heads) if src.permute_heads else None
            sides[(name, layer)] = adapters.side_product(name, layer, perm)
        gname = src.name
        info = gf.tensors[gname]
        tid = info.type_id
        if tid not in ENGINE_TYPES:
            raise UnsupportedArchitectureError(
                f"{path}: tensor {gname!r} is {info.type_name}; pyllm runs F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
                f"Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS (requantize with llama-quantize, or export "
                f"from the Hugging Face checkpoint with `pyllm quantize`)")
        file_shape = info.shape
        if len(file_shape) == 3:  # stacked experts [n_expert, rows, cols]: the engine takes them as one matrix
            if file_shape[0] != cfg.n_experts:
                raise ModelLoadError(f"{path}: tensor {gname!r} has shape {list(file_shape)}: {file_shape[0]} experts, "
                                     f"expected {cfg.n_experts}")
            file_shape = (file_shape[0] * file_shape[1], file_shape[2])
        shape = check_source_shapes(src, [file_shape], path, fused)
        want = tid if quant is None else types[(name, layer)]
        if want == tid:
            buf = gf.buffer(gname)
            if src.rows is not None:  # a row range of a fused tensor, zero-copy
                rb = info.nbytes // file_shape[0]
                buf = buf[src.rows[0] * rb : src.rows[1] * rb]
            return tid, shape, buf
        key = (gname, src.rows, want)
        if key in converted:  # the tied embedding, asked for twice
            return converted[key]
        data = np.frombuffer(gf.buffer(gname), dtype=np.uint8)
        x = _engine.to_float(tid, data, info.ne[0] if info.ne else 1).reshape(file_shape[0] if len(file_shape) == 2
                                                                               else 1, -1)
        if src.rows is not None:
            x = x[src.rows[0] : src.rows[1]]
        data = convert(x, want, n_threads, method=DEFAULT_METHOD)
        out = (want, shape, data)
        converted[key] = out
        return out

    try:
        cm = build_engine_model(cfg, n_ctx, get_tensor, interleaved_rope=cfg.family.gguf_interleaved_rope,
                                names=names, side_products=sides, repack=repack)
    except ModelLoadError:
        raise
    except ValueError as e:  # the engine's size/shape checks; name the tensor as the file does
        msg = re.sub(r"\b(\w+) \(layer (-?\d+)\)", lambda m: _file_name(names, m.group(1), int(m.group(2))), str(e))
        raise ModelLoadError(f"{path}: {msg}") from None
    return cfg, cm, tokenizer, gen, n_ctx


def load_gguf(path: str, n_threads: Optional[int] = None, n_ctx: Optional[int] = None, quant: Optional[str] = None,
              kv_type: str = "f32", lora=None, device: str = "cpu"):
    """pyllm.load() for a .gguf file: returns a pyllm.Model."""
    from .model import Model

    cfg, cm, tokenizer, gen, n_ctx = load_gguf_parts(path, n_ctx=n_ctx, quant=quant, n_threads=n_threads or 0,
                                                     lora=lora, repack=device == "cpu")
    return Model(cm, cfg, tokenizer, n_ctx=n_ctx, n_threads=n_threads, generation_config=gen, path=path,
                 kv_type=kv_type, device=device)
