"""quant_mixes.py: which storage type each tensor of a model gets for a requested quantization
("mix"), for quantize-on-load (pyllm.load(dir, quant=...)), GGUF export (`pyllm quantize --type`) and
requantizing a GGUF file.

The K-quant and IQ4/legacy mixes (q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k, iq4_xs, iq4_nl, q4_1,
q5_0, q5_1) follow llama.cpp's llama-quantize rules, so a file pyllm writes holds the tensor types
llama.cpp's file of the same name holds (tests/test_quant_mixes.py compares the two on the same
checkpoint when llama.cpp is at hand). In short, for a model of n layers:
  * norms, biases and the MoE router stay F32;
  * output (LM head; the token embedding too when they are tied): Q6_K (Q8_0 when its rows are not
    a multiple of the mix's block); token embedding: the mix's type;
  * attention V (a fused QKV counts as V): the sensitive one. q4_k_m / q5_k_m: Q6_K in the layers
    use_more_bits picks (the first and last eighth and every third layer between); q4_k_s: Q5_K in
    the first 4 layers; q3_k_m: Q5_K in the first 2, else Q4_K; q3_k_l: Q5_K; q2_k: Q4_K with >= 4
    query heads per KV head, else Q3_K; iq4_xs / iq4_nl: Q5_K with >= 4 query heads per KV head;
  * FFN down: q4_k_m / q5_k_m: Q6_K in the use_more_bits layers; q4_k_s: Q5_K in the first eighth;
    q3_k_m: Q5_K in the first sixteenth, else Q4_K; q3_k_l: Q5_K; q2_k: Q3_K; iq4_xs / iq4_nl
    without an importance matrix: Q5_K in the first eighth; q5_0 with one: Q5_1 in the first eighth;
  * attention output: q2_k: Q3_K; q3_k_m: Q4_K; q3_k_l: Q5_K (8-expert MoE: Q5_K for the 3-4 bit
    mixes); 8-expert MoE: attention K and V in Q8_0;
  * a tensor whose rows do not split into the type's blocks (256 for the K-quants) falls back as
    llama.cpp does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL,
    then F16 if even 32 does not divide them.
pure=True (`--pure`) gives every matrix the mix's base type (still with the block fallback), as
llama-quantize --pure does.

q4_0, q8_0, f16, bf16 and f32 keep pyllm's own policy (pyllm.quantization.tensor_type: Q4_0 keeps
the LM head in Q8_0), which the files written before the mixes existed also follow."""
from __future__ import annotations

from typing import Dict, Tuple

from .quantization import TYPE_IDS, tensor_type

Key = Tuple[str, int]

# mix name -> its base type (llama.cpp's default type of the ftype)
MIX_BASE = {
    "q2_k": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k",
    "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k", "iq4_xs": "iq4_xs", "iq4_nl": "iq4_nl",
    "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1",
}
MIXES = tuple(MIX_BASE)

# elements per block of each type a mix may give
_BLOCK = {"q4_1": 32, "q5_0": 32, "q5_1": 32, "iq4_nl": 32, "q8_0": 32, "q4_0": 32, "q2_k": 256, "q3_k": 256,
          "q4_k": 256, "q5_k": 256, "q6_k": 256, "iq4_xs": 256, "f16": 1}
# a 256-block type that does not fit the rows -> llama.cpp's 32-block replacement
_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0", "q2_k": "q4_0", "q3_k": "q4_0", "iq4_xs": "iq4_nl"}


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(gguf_name: str, tied: bool) -> str:
    """llama.cpp's tensor categories, from the GGUF tensor name."""
    base = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
    if gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight"):
        return "output"
    if gguf_name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv", "attn_v"), ("attn_v", "attn_v"), ("attn_k", "attn_k"), ("attn_q", "attn_q"),
                     ("attn_output", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if base.startswith(key):
            return cat
    return "other"


def _fallback(t: str, cols: int) -> str:
    if cols % _BLOCK[t] == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if cols % _BLOCK[t] == 0 else "f16"


def mix_tensor_type(mix: str, gguf_name: str, cols: int, layer: int, cfg, pure: bool = False,
                    has_imatrix: bool = False) -> str:
    """The type name llama.cpp's mix `mix` gives the matrix gguf_name (cols: its row length; layer:
    its block index, -1 for model-level tensors)."""
    base = MIX_BASE[mix]
    if pure:
        return _fallback(base, cols)
    n = cfg.num_layers
    gqa = cfg.num_heads // max(1, cfg.num_kv_heads)
    n_expert = cfg.n_experts
    cat = _category(gguf_name, cfg.tie_word_embeddings)
    t = base
    if cat == "output":
        t = "q8_0" if cols % _BLOCK[base] else "q6_k"
    elif cat == "attn_v":
        if mix == "q2_k":
            t = "q4_k" if gqa >= 4 else "q3_k"
        elif mix == "q3_k_m":
            t = "q5_k" if layer < 2 else "q4_k"
        elif mix == "q3_k_l":
            t = "q5_k"
        elif mix in ("iq4_nl", "iq4_xs") and gqa >= 4:
            t = "q5_k"
        elif mix in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, n):
            t = "q6_k"
        elif mix == "q4_k_s" and layer < 4:
            t = "q5_k"
        if cfg.family.name == "llama" and n == 80 and t in ("q3_k", "q4_k"):  # llama.cpp's 70B rule
            t = "q5_k"
        if n_expert == 8:
            t = "q8_0"
    elif cat == "attn_k":
        if n_expert == 8:
            t = "q8_0"
    elif cat == "ffn_down":
        if mix == "q2_k":
            t = "q3_k"
        elif mix == "q3_k_m":
            t = "q5_k" if layer < n // 16 else "q4_k"
        elif mix == "q3_k_l":
            t = "q5_k"
        elif mix == "q4_k_m":
            if _use_more_bits(layer, n):
                t = "q6_k"
        elif layer < n // 8 and mix in ("iq4_nl", "iq4_xs") and not has_imatrix:
            t = "q5_k"
        elif mix == "q5_k_m" and _use_more_bits(layer, n):
            t = "q6_k"
        elif mix == "q4_k_s" and layer < n // 8:
            t = "q5_k"
        elif mix == "q5_0" and has_imatrix and layer < n // 8:
            t = "q5_1"
    elif cat == "attn_output":
        if n_expert == 8:
            if mix in ("q2_k", "q3_k_s", "q3_k_m", "iq4_nl", "q4_k_s", "q4_k_m", "iq4_xs"):
                t = "q5_k"
        elif mix == "q2_k":
            t = "q3_k"
        elif mix == "q3_k_m":
            t = "q4_k"
        elif mix == "q3_k_l":
            t = "q5_k"
    return _fallback(t, cols)


def plan_types(cfg, quant: str, pure: bool = False, has_imatrix: bool = False) -> Dict[Key, int]:
    """(engine name, layer) -> storage type id for every tensor of cfg's model quantized as `quant`
    (a mix or one of pyllm's own q4_0 / q8_0 / f16 / bf16 / f32). The engine tensors that share one
    GGUF tensor (Phi-3's fused qkv / gate_up) get that tensor's type."""
    from .arch.family import engine_shapes
    from .hf_loader import role

    shapes = engine_shapes(cfg)
    out: Dict[Key, int] = {}
    for (eng, layer), src in cfg.family.gguf_tensors(cfg).items():
        shape = shapes[eng]
        r = role(eng, shape)
        if quant not in MIX_BASE or r == "norm":
            if pure and quant in ("q4_0", "q8_0") and r != "norm":
                out[(eng, layer)] = TYPE_IDS[quant] if shape[-1] % 32 == 0 else TYPE_IDS["f16"]
            else:
                out[(eng, layer)] = tensor_type(r, quant, shape, cfg.tie_word_embeddings)
            continue
        out[(eng, layer)] = TYPE_IDS[mix_tensor_type(quant, src.name, shape[-1], layer, cfg, pure, has_imatrix)]
    return out
