"""hf_loader.py: turns a Hugging Face checkpoint folder (config.json + safetensors + tokenizer
files) into an engine model. Maps HF tensor names to the engine's, checks dtypes and shapes,
and passes mmapped buffers straight through (no copies, 16-bit weights stay 16-bit). Also the
load-time checks shared with the GGUF loader: sampling defaults that generate() would reject, and
a tokenizer that cannot decode every id the model can produce."""
from __future__ import annotations

import os

from . import _engine
from .config import ModelConfig, read_json_file, short_repr
from .errors import ModelLoadError
from .quantization import DEFAULT_METHOD, check_method, check_quant, convert, tensor_type
from .safetensors_file import DTYPES, open_checkpoint

LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "wq",
    "self_attn.k_proj": "wk",
    "self_attn.v_proj": "wv",
    "self_attn.o_proj": "wo",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_tensor_names(cfg: ModelConfig) -> dict:
    """engine (name, layer) -> HF tensor name, for every tensor the model needs."""
    names = {
        ("tok_embd", -1): "model.embed_tokens.weight",
        ("output_norm", -1): "model.norm.weight",
        ("output", -1): "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
    }
    for i in range(cfg.num_layers):
        for hf, eng in LAYER_TENSORS.items():
            names[(eng, i)] = f"model.layers.{i}.{hf}.weight"
    return names


def check_layer_tensors(cfg: ModelConfig, tensors, where: str) -> None:
    """Every per-layer tensor config.json's num_hidden_layers asks for is in the checkpoint. Runs
    before anything is sized by the layer count: the loop stops at the first missing name, so a
    bogus count (2**31 - 1 layers) costs no more than the layers the file really holds."""
    for i in range(cfg.num_layers):
        for hf in LAYER_TENSORS:
            name = f"model.layers.{i}.{hf}.weight"
            if name not in tensors:
                raise ModelLoadError(f"{where}: checkpoint has no tensor {name!r} (config.json num_hidden_layers is "
                                     f"{cfg.num_layers}; the checkpoint holds {len(tensors)} tensors)")


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


def build_engine_model(cfg: ModelConfig, n_ctx: int, get_tensor, interleaved_rope: bool = False) -> "_engine.CModel":
    """get_tensor(engine_name, layer) -> (type_id, shape, buffer). Shapes follow HF: [rows, cols]."""
    cm = _engine.CModel(
        n_vocab=cfg.vocab_size, dim=cfg.hidden_size, n_layers=cfg.num_layers, n_heads=cfg.num_heads,
        n_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_dim=cfg.intermediate_size, max_ctx=n_ctx,
        norm_eps=cfg.rms_norm_eps, rope_interleaved=interleaved_rope, sliding_window=cfg.sliding_window,
    )
    for (name, layer) in hf_tensor_names(cfg):
        type_id, shape, buf = get_tensor(name, layer)
        if len(shape) == 1:
            ne0, ne1 = shape[0], 1
        elif len(shape) == 2:
            ne1, ne0 = shape
        else:
            raise ModelLoadError(f"tensor {name} (layer {layer}) has {len(shape)} dimensions, expected 1 or 2")
        cm.set_tensor(name, layer, type_id, ne0, ne1, buf)
    cm.finalize(cfg.rope_inv_freq())
    return cm


def _role(name: str) -> str:
    if name.endswith("norm"):
        return "norm"
    return name if name in ("tok_embd", "output") else "weight"


def load_hf_folder(folder: str, n_ctx: int, quant: str | None = None, n_threads: int = 0,
                   importance: dict | None = None, method: str | None = None):
    """Returns (config, engine model, generation_config dict). With quant (q4_0, q8_0, f16, bf16,
    f32) the weights are converted while loading (see pyllm/quantization.py for which tensor
    gets which type); without it they are used in place, in their stored dtype. method: how
    q4_0/q8_0 scales are chosen (default pyllm.quantization.DEFAULT_METHOD); importance: per
    (engine name, layer) column weights for method "search" (pyllm/imatrix.py)."""
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
    check_layer_tensors(cfg, tensors, folder)
    names = hf_tensor_names(cfg)

    def get_tensor(name, layer):
        hf = names[(name, layer)]
        if hf not in tensors:
            raise ModelLoadError(f"{folder}: checkpoint has no tensor {hf!r}")
        sf, info = tensors[hf]
        if info.dtype not in DTYPES:
            raise ModelLoadError(f"{sf.path}: tensor {hf!r} has dtype {info.dtype}; supported: {', '.join(DTYPES)}")
        if quant is None:
            return DTYPES[info.dtype][0], info.shape, sf.buffer(hf)
        tid = tensor_type(_role(name), quant, info.shape, cfg.tie_word_embeddings)
        if tid == DTYPES[info.dtype][0]:
            return tid, info.shape, sf.buffer(hf)
        if len(info.shape) != 2 and tid != 0:
            raise ModelLoadError(f"{sf.path}: tensor {hf!r} has shape {info.shape}, expected a matrix")
        if cfg.tie_word_embeddings and name in ("tok_embd", "output") and "tied" in converted:
            return converted["tied"]
        imp = importance.get((name, layer)) if importance and len(info.shape) == 2 else None
        data = convert(sf.numpy(hf).reshape(info.shape[0], -1) if len(info.shape) == 2 else sf.numpy(hf)[None], tid,
                       n_threads, importance=imp, method=method)
        out = (tid, info.shape, data)
        if cfg.tie_word_embeddings and name in ("tok_embd", "output"):
            converted["tied"] = out
        return out

    converted = {}

    try:
        cm = build_engine_model(cfg, n_ctx, get_tensor)
    except ModelLoadError:
        raise
    except ValueError as e:
        raise ModelLoadError(f"{folder}: {e}") from None
    return cfg, cm, gen
