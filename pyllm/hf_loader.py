"""hf_loader.py: turns a Hugging Face checkpoint folder (config.json + safetensors + tokenizer
files) into an engine model. Maps HF tensor names to the engine's, checks dtypes and shapes,
and passes mmapped buffers straight through (no copies, 16-bit weights stay 16-bit); GPTQ / AWQ 4-bit
layers become Q4_0 / Q4_1 engine tensors (pyllm/gptq_awq.py). Also the
load-time checks shared with the GGUF loader: sampling defaults that generate() would reject, and
a tokenizer that cannot decode every id the model can produce."""
from __future__ import annotations

import os
import re

import numpy as np

from . import _engine
from .config import ModelConfig, read_json_file, short_repr
from .errors import ModelLoadError
from .gptq_awq import engine_tensor, quantized_linears, scheme_of_folder, warn_dequantized
from .quantization import DEFAULT_METHOD, check_method, check_quant, convert
from .safetensors_file import DTYPES, open_checkpoint

def hf_tensor_names(cfg: ModelConfig) -> dict:
    """engine (name, layer) -> pyllm.arch Source in the checkpoint, for every tensor the model needs."""
    return cfg.family.hf_tensors(cfg)


def check_layer_tensors(cfg: ModelConfig, tensors, where: str) -> None:
    """Every per-layer tensor config.json's num_hidden_layers asks for is in the checkpoint. Runs
    before anything is sized by the layer count: the loop stops at the first missing name, so a
    bogus count (2**31 - 1 layers) costs no more than the layers the file really holds."""
    for i in range(cfg.num_layers):
        for src in cfg.family.hf_layer(cfg, i).values():
            for name in src.names:
                if name not in tensors:
                    raise ModelLoadError(f"{where}: checkpoint has no tensor {name!r} (config.json num_hidden_layers "
                                         f"is {cfg.num_layers}; the checkpoint holds {len(tensors)} tensors)")


def fused_rows(names: dict) -> dict:
    """file tensor name -> the rows the engine's row ranges of it add up to (fused tensors only)."""
    out = {}
    for src in names.values():
        if src.rows is not None:
            out[src.name] = max(out.get(src.name, 0), src.rows[1])
    return out


def check_source_shapes(src, shapes: list, where: str, fused: dict) -> tuple:
    """The engine-side shape of a Source whose file tensors have the given shapes: a fused tensor
    must have exactly the rows its parts add up to, stacked experts must agree. Else ModelLoadError."""
    if src.rows is not None:
        shape = shapes[0]
        if len(shape) != 2 or shape[0] != fused[src.name]:
            raise ModelLoadError(f"{where}: tensor {src.name!r} has shape {list(shape)}, expected "
                                 f"[{fused[src.name]}, ...] (its parts from config.json)")
        return (src.rows[1] - src.rows[0], shape[1])
    if len(src.names) > 1:
        if any(len(sh) != 2 or sh != shapes[0] for sh in shapes):
            bad = next(i for i, sh in enumerate(shapes) if len(sh) != 2 or sh != shapes[0])
            raise ModelLoadError(f"{where}: expert tensor {src.names[bad]!r} has shape {list(shapes[bad])}, "
                                 f"expected a matrix shaped like {src.names[0]!r} {list(shapes[0])}")
        return (len(shapes) * shapes[0][0], shapes[0][1])
    return tuple(shapes[0])


# generation_config.json key -> SamplingParams field, for the sampling defaults Model uses
SAMPLING_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                 "repetition_penalty": "repeat_penalty"}


def check_sampling_defaults(gen: dict, source: str, key_names: dict | None = None) -> None:
    """Each sampling default in gen (generation_config entries, as Model._sampling_params reads them)
    is one SamplingParams accepts, so that a default generate() cannot fail; else ModelLoadError
    naming source and the key (key_names: generation_config key -> the file's own key name)."""
    from .sampling import SamplingParams

    if not gen.get("do_sample", True):
        return  # Model ignores these values then
    for key, field in SAMPLING_KEYS.items():
        v = gen.get(key)
        if v is None:
            continue
        try:
            SamplingParams(**{field: v})
        except (ValueError, TypeError) as e:
            name = (key_names or {}).get(key, key)
            raise ModelLoadError(f"{source}: {name} = {short_repr(v)} is not a usable sampling default ({e})") from None


def check_tokenizer_vocab(vocab_size: int, tokenizer, source: str, vocab_from: str = "vocab_size",
                          exact: bool = False) -> None:
    """The tokenizer can decode every id the model can produce (0 .. vocab_size - 1, vocab_from naming
    where that size comes from); with exact, it also has no ids past the model's vocabulary (as
    llama.cpp requires of a GGUF file). Else ModelLoadError naming source."""
    n = tokenizer.vocab_size
    if n < vocab_size:
        raise ModelLoadError(f"{source}: the tokenizer has {n} tokens but the model's vocabulary ({vocab_from}) has "
                             f"{vocab_size}: ids {n}..{vocab_size - 1} could be generated and not decoded")
    if exact and n > vocab_size:
        raise ModelLoadError(f"{source}: the tokenizer has {n} tokens but the model's vocabulary ({vocab_from}) has "
                             f"only {vocab_size}: text could encode to ids the model does not have")


def build_engine_model(cfg: ModelConfig, n_ctx: int, get_tensor, interleaved_rope: bool = False,
                       names: dict | None = None, side_products: dict | None = None,
                       repack: bool = True) -> "_engine.CModel":
    """get_tensor(engine_name, layer) -> (type_id, shape, buffer), for each (name, layer) of names
    (default: the family's Hugging Face tensors). Shapes follow HF: [rows, cols]. side_products:
    (name, layer) -> (a, b) LoRA factors kept beside that weight (get_tensor may add to it). repack=False
    keeps the weights in their source layout (for a CudaModel to upload) instead of the CPU kernels'."""
    cm = _engine.CModel(
        n_vocab=cfg.vocab_size, dim=cfg.hidden_size, n_layers=cfg.num_layers, n_heads=cfg.num_heads,
        n_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_dim=cfg.intermediate_size, max_ctx=n_ctx,
        norm_eps=cfg.rms_norm_eps, rope_interleaved=interleaved_rope, sliding_window=cfg.sliding_window,
        qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, qk_norm=cfg.qk_norm, n_expert=cfg.n_experts,
        n_expert_used=cfg.n_experts_used, rope_long_after=cfg.rope_long_after(),
    )
    for (name, layer) in (names if names is not None else hf_tensor_names(cfg)):
        type_id, shape, buf = get_tensor(name, layer)
        if len(shape) == 1:
            ne0, ne1 = shape[0], 1
        elif len(shape) == 2:
            ne1, ne0 = shape
        else:
            raise ModelLoadError(f"tensor {name} (layer {layer}) has {len(shape)} dimensions, expected 1 or 2")
        cm.set_tensor(name, layer, type_id, ne0, ne1, buf)
        if side_products and (name, layer) in side_products:
            cm.set_lora(name, layer, *side_products[(name, layer)])
    cm.finalize(cfg.rope_inv_freq(), cfg.rope_attention_factor(), cfg.rope_long_inv_freq(), repack=repack)
    return cm


FLOAT_TYPES = (0, 1, 30)  # F32, F16, BF16


def role(name: str, shape) -> str:
    """The quantization role of an engine tensor (pyllm.quantization.tensor_type): vectors and the MoE
    router stay F32, as llama.cpp keeps them."""
    if name.endswith("norm") or len(shape) == 1 or name == "ffn_gate_inp":
        return "norm"
    return name if name in ("tok_embd", "output") else "weight"


def load_hf_folder(folder: str, n_ctx: int, quant: str | None = None, n_threads: int = 0,
                   importance: dict | None = None, method: str | None = None, lora=None,
                   override: dict | None = None, types: dict | None = None, repack: bool = True):
    """Returns (config, engine model, generation_config dict). With quant (q4_0, q8_0, f16, bf16,
    f32, or a llama.cpp mix such as q4_k_m) the weights are converted while loading (see
    pyllm/quant_mixes.py for which tensor gets which type); without it they are used in place, in their stored dtype. method: how
    q4_0/q8_0 scales are chosen (default pyllm.quantization.DEFAULT_METHOD); importance: per
    (engine name, layer) column weights for method "search" (pyllm/imatrix.py). lora: adapters
    (pyllm.load's lora=; applied as pyllm/adapters.py says: merged into float weights, kept beside
    quantized ones). types: (engine name, layer) -> type id instead of the mix's plan
    (pyllm/quant_allocation.py). override: (engine name, layer) -> float32 array of that tensor's shape, used
    instead of the checkpoint's (pyllm/quant_allocation.py measures one quantized tensor at a time).
    GPTQ / AWQ layers (pyllm/gptq_awq.py) keep their 4-bit values (Q4_0 / Q4_1, or F16 where they
    cannot map, with one warning); quant applies to the other tensors. repack: see build_engine_model."""
    cfg = ModelConfig.from_file(os.path.join(folder, "config.json"))
    if quant is not None:
        quant = check_quant(quant)
    method = check_method(DEFAULT_METHOD if method is None else method)
    if importance and method != "search":
        raise ValueError("importance is only used by method='search'")
    gen = {}
    gpath = os.path.join(folder, "generation_config.json")
    if os.path.exists(gpath):
        gen = read_json_file(gpath)
        check_sampling_defaults(gen, gpath)
    tensors = open_checkpoint(folder)
    qlin = quantized_linears(scheme_of_folder(folder), tensors)  # GPTQ / AWQ layers (pyllm/gptq_awq.py)
    check_layer_tensors(cfg, tensors.keys() | qlin.keys(), folder)
    names = hf_tensor_names(cfg)
    fused = fused_rows(names)
    if quant is not None:
        from .quant_mixes import plan_types

        types = types or plan_types(cfg, quant, has_imatrix=bool(importance))
    converted = {}
    adapters = None
    if lora is not None:
        from .adapters import AdapterSet

        shapes = {n: tuple(i.shape) for n, (_, i) in tensors.items() if len(i.shape) == 2}
        shapes.update({n: ql.shape for n, ql in qlin.items()})
        adapters = AdapterSet(cfg, lora, folder, shapes) or None
    sides = {}
    dequantized = []  # GPTQ / AWQ layers that do not map onto 4-bit blocks: (name, reason, type)

    def quantized_tensor(name, layer, src):
        if any(n not in qlin for n in src.names):
            raise ModelLoadError(f"{folder}: {src.names[0]!r} is stored quantized but "
                                 f"{next(n for n in src.names if n not in qlin)!r} is not (experts stacked into one "
                                 f"tensor must share one storage)")
        lins = [qlin[n] for n in src.names]
        shape = check_source_shapes(src, [ql.shape for ql in lins], folder, fused)
        tid, data, why = engine_tensor(lins, src.rows)
        if why is not None:
            dequantized.append((src.name, why, tid))
        if adapters is not None and adapters.for_tensor(name, layer):  # never merged into 4-bit values
            sides[(name, layer)] = adapters.side_product(name, layer)
        return tid, shape, data

    def info_of(hf):
        if hf not in tensors:
            raise ModelLoadError(f"{folder}: checkpoint has no tensor {hf!r}")
        sf, info = tensors[hf]
        if info.dtype not in DTYPES:
            raise ModelLoadError(f"{sf.path}: tensor {hf!r} has dtype {info.dtype}; supported: {', '.join(DTYPES)}")
        return sf, info

    def floats(hf, rows=None):
        sf, info = tensors[hf]
        a = sf.numpy(hf)
        a = a.reshape(info.shape[0], -1) if len(info.shape) == 2 else a[None]
        return a if rows is None else a[rows[0] : rows[1]]

    def get_tensor(name, layer):
        src = names[(name, layer)]
        if qlin and any(n in qlin for n in src.names):
            return quantized_tensor(name, layer, src)
        parts = [info_of(hf) for hf in src.names]
        sf, info = parts[0]
        shape = check_source_shapes(src, [i.shape for _, i in parts], sf.path, fused)
        stored = DTYPES[info.dtype][0]
        if any(DTYPES[i.dtype][0] != stored for _, i in parts):
            raise ModelLoadError(f"{sf.path}: the experts of {src.name!r} have different dtypes")
        tid = stored if quant is None else types[(name, layer)]
        if override and (name, layer) in override:
            x = np.ascontiguousarray(override[(name, layer)], dtype=np.float32)
            if x.size != int(np.prod(shape)):
                raise ValueError(f"override of {name} (layer {layer}) has {x.size} values, expected {list(shape)}")
            return 0, shape, x
        adapted = adapters is not None and adapters.for_tensor(name, layer)
        if adapted and tid not in FLOAT_TYPES:
            sides[(name, layer)] = adapters.side_product(name, layer)
        elif adapted:  # merged into the float weight (stored in its type, as peft merges)
            parts_f = [adapters.merge(hf, floats(hf, src.rows), src.rows) for hf in src.names]
            return tid, shape, np.concatenate([np.frombuffer(convert(x, tid, n_threads), dtype=np.uint8)
                                               for x in parts_f])
        if tid == stored:
            if src.rows is not None:  # a row range of a fused tensor: a zero-copy slice
                rb = info.nbytes // info.shape[0]
                return tid, shape, sf.buffer(src.name)[src.rows[0] * rb : src.rows[1] * rb]
            if len(src.names) == 1:
                return tid, shape, sf.buffer(src.name)
            # stacked experts: one copy of the layer's experts (the engine reads them as one tensor)
            return tid, shape, np.concatenate([np.frombuffer(p.buffer(i.name), dtype=np.uint8) for p, i in parts])
        if len(shape) != 2 and tid != 0:
            raise ModelLoadError(f"{sf.path}: tensor {src.name!r} has shape {list(shape)}, expected a matrix")
        tied = cfg.tie_word_embeddings and name in ("tok_embd", "output")
        if tied and "tied" in converted:
            return converted["tied"]
        imp = importance.get((name, layer)) if importance and len(shape) == 2 else None
        if len(src.names) > 1:  # experts converted one at a time (a layer's experts in float32 can be GBs)
            per = [None] * len(src.names) if imp is None else (list(imp) if np.ndim(imp) == 2 else [imp] * len(src.names))
            data = np.concatenate([np.frombuffer(convert(floats(hf), tid, n_threads, importance=i, method=method),
                                                 dtype=np.uint8) for hf, i in zip(src.names, per)])
        else:
            data = convert(floats(src.name, src.rows), tid, n_threads, importance=imp, method=method)
        out = (tid, shape, data)
        if tied:
            converted["tied"] = out
        return out

    try:
        cm = build_engine_model(cfg, n_ctx, get_tensor, names=names, side_products=sides, repack=repack)
    except ModelLoadError:
        raise
    except ValueError as e:  # the engine's size/shape checks: name the tensor as the checkpoint does
        def hf_name(m):
            src = names.get((m.group(1), int(m.group(2))))
            return f"tensor {src.name!r}" if src is not None else m.group(0)

        msg = re.sub(r"\b(\w+) \(layer (-?\d+)\)", hf_name, str(e))
        raise ModelLoadError(f"{folder}: {msg}") from None
    warn_dequantized(folder, dequantized)
    return cfg, cm, gen
