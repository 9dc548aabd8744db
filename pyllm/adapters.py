"""adapters.py: how the loaders apply LoRA adapters (read by pyllm/lora.py) to a model. Each
adapted Hugging Face weight is found among the engine tensors the family builds from it (a fused
Phi-3 weight feeds several, by row ranges); then, per engine tensor:
  * a float weight the loader hands over as float (F32/F16/BF16, or converted to one) gets the delta
    merged in (in float32, then stored in the tensor's type, as peft's merge_and_unload does);
  * a quantized weight (quant-on-load, or any GGUF file) keeps the adapters beside it, unmerged: the
    engine adds b (a x) to every matmul with it (csrc/matmul.c), so no requantization error is added.
Several adapters on one weight are applied in order (merged one after the other, or their factors
concatenated into one side product). Errors name the adapter and the weight. Also the --lora
option the generate / chat / serve / quantize commands share."""
from __future__ import annotations

from typing import Optional

import os

import numpy as np

from .errors import ModelLoadError
from .lora import LoraAdapter, LoraFactors, load_adapters, merged_factors


def hf_weight_shapes(cfg) -> dict:
    """HF weight name -> [out, in] for every matrix the model is built from (fused ones whole)."""
    from .arch.family import engine_shapes
    from .hf_loader import fused_rows

    shapes, sources = engine_shapes(cfg), cfg.family.hf_tensors(cfg)
    fused = fused_rows(sources)
    out = {}
    for (eng, _layer), src in sources.items():
        shape = shapes[eng]
        if len(shape) == 2:
            for name in src.names:
                out[name] = (fused[name], shape[1]) if src.rows is not None else shape
    return out


class AdapterSet:
    """The adapters applied to one model: what each engine tensor gets."""

    def __init__(self, cfg, spec, where: str, shapes: Optional[dict] = None):
        self.adapters: list[LoraAdapter] = load_adapters(spec)
        shapes = hf_weight_shapes(cfg) if shapes is None else shapes
        for a in self.adapters:
            try:
                a.check_against(shapes, where)
            except ModelLoadError as e:
                if a.base_model:
                    raise ModelLoadError(f"{e} (the adapter was trained on {a.base_model})") from None
                raise
        self.factors = merged_factors(self.adapters)
        self._delta_of, self._delta = None, None  # merge()'s last delta
        self.sources = cfg.family.hf_tensors(cfg)
        used = {n for src in self.sources.values() for n in src.names}
        if cfg.tie_word_embeddings:
            used.discard("model.embed_tokens.weight")
        for name in self.factors:
            if name not in used or name == "model.embed_tokens.weight":
                a = next(a for a in self.adapters if name in a.targets)
                raise ModelLoadError(f"{where}: adapter {a.path} adapts {name}, which pyllm cannot apply it to "
                                     f"(embeddings{' and the tied LM head' if cfg.tie_word_embeddings else ''} are "
                                     f"not adapted)")

    def __bool__(self) -> bool:
        return bool(self.factors)

    def for_tensor(self, eng: str, layer: int) -> list:
        """[(hf name, [LoraFactors])] adapting the engine tensor (eng, layer), in the Source's order."""
        src = self.sources.get((eng, layer))
        if src is None:
            return []
        return [(n, self.factors[n]) for n in src.names if n in self.factors]

    def merge(self, hf_name: str, x: np.ndarray, rows=None) -> np.ndarray:
        """x (float32 rows of hf_name, or of its rows range) with the adapters' deltas added. The delta of
        the last weight asked for is kept: a fused weight's parts (Phi-3's q/k/v) come one after another."""
        if self._delta_of != hf_name:
            d = None
            for f in self.factors.get(hf_name, []):
                d = f.delta() if d is None else d + f.delta()
            self._delta_of, self._delta = hf_name, d
        out = np.array(x, dtype=np.float32, copy=True)
        if self._delta is not None:
            out += self._delta if rows is None else self._delta[rows[0] : rows[1]]
        return out

    def side_product(self, eng: str, layer: int, permutation=None):
        """(a, b) for the engine's unmerged LoRA pass on (eng, layer), or None: all adapters' factors
        concatenated (a: [sum r, in], b: [out, sum r] with each scale folded in); permutation reorders
        b's rows as the file's rows were (GGUF's Q/K permutation)."""
        parts = self.for_tensor(eng, layer)
        if not parts:
            return None
        src = self.sources[(eng, layer)]
        if len(src.names) > 1:
            raise ModelLoadError(f"LoRA on the experts of {eng} (layer {layer}) can only be merged: load the model "
                                 f"unquantized, or merge it into a quantized file with `pyllm quantize --lora`")
        fs: list[LoraFactors] = parts[0][1]
        a = np.concatenate([f.a for f in fs], axis=0)
        b = np.concatenate([f.b * np.float32(f.scale) for f in fs], axis=1)
        if src.rows is not None:
            b = b[src.rows[0] : src.rows[1]]
        if permutation is not None:
            b = b[permutation]
        return np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)


def add_lora_argument(parser, what: str) -> None:
    """The command-line --lora DIR[:SCALE] option (repeatable) of generate, chat, serve and quantize."""
    parser.add_argument("--lora", action="append", default=None, metavar="DIR[:SCALE]",
                        help=f"a PEFT LoRA adapter folder, {what} (repeatable; DIR:SCALE scales it)")


def lora_spec(values):
    """--lora values -> pyllm.load's lora= spec (None when absent): DIR, or (DIR, SCALE) for DIR:SCALE."""
    if not values:
        return None
    out = []
    for v in values:
        path, sep, scale = v.rpartition(":")
        if sep and path and not os.path.isdir(v):
            try:
                out.append((path, float(scale)))
                continue
            except ValueError:
                pass
        out.append(v)
    return out
