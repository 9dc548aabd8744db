"""lora.py: reading PEFT LoRA adapters (the adapter_config.json + adapter_model.safetensors folder
that peft's save_pretrained writes) into per-weight low-rank factors keyed by the Hugging Face
base weight name, so a loader can merge them into float weights (delta = scale * B @ A, as peft's
merge_and_unload computes it) or keep them beside quantized ones. Only plain LoRA on linear
layers is read; every other PEFT option that changes what the adapter computes is refused, and
every problem is a ModelLoadError naming the adapter folder and the key or tensor at fault."""
from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .config import read_json_file, short_repr
from .errors import ModelLoadError
from .safetensors_file import SafetensorsFile

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PREFIX = "base_model.model."  # peft's wrapper prefix on every saved tensor name
# <module>.lora_A.weight / <module>.lora_B.weight (peft drops the adapter name ".default" on saving;
# accept it too)
_TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.default)?\.weight")
_ALL_LINEAR = "all-linear"

# Config fields that switch on a LoRA variant, or train something besides the A/B pairs: when set
# (truthy), the adapter does not compute W + scale * B @ A, so it is refused rather than misapplied.
_REFUSED_OPTIONS = {
    "use_dora": "DoRA (use_dora) adapters are not supported: their merge rescales each weight column",
    "fan_in_fan_out": "fan_in_fan_out=true (GPT-2 style Conv1D weights stored [in, out]) is not supported",
    "lora_bias": "the adapter trains a bias on lora_B (lora_bias=true), which pyllm does not apply; "
                 "retrain with lora_bias=False",
    "modules_to_save": "the adapter stores full copies of modules (modules_to_save={value}), which pyllm does not "
                       "load; retrain without modules_to_save, or merge the adapter with peft first",
    "trainable_token_indices": "the adapter trains token embeddings (trainable_token_indices), which pyllm does "
                               "not load",
    "layer_replication": "layer_replication changes the model's layer stack, which pyllm does not support",
    "target_parameters": "LoRA on parameters (target_parameters) is not supported, only on linear modules",
    "use_qalora": "QA-LoRA (use_qalora) adapters are not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) applies only after its invocation "
                               "tokens and cannot be merged; not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "velora_config": "VeLoRA (velora_config) is not supported",
    "monteclora_config": "MonteCLoRA (monteclora_config) is not supported",
    "kasa_config": "KaSA (kasa_config) is not supported",
}


@dataclass(frozen=True, eq=False)  # eq=False: == on arrays has no single truth value
class LoraFactors:
    """One adapted weight: W' = W + scale * (b @ a). a is [r, in_features] and b [out_features, r],
    both float32 (read-only); scale is lora_alpha / r (or / sqrt(r) with rslora) times the user's
    multiplier."""

    a: np.ndarray
    b: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple:
        """[out_features, in_features] of the weight this adapts."""
        return (self.b.shape[0], self.a.shape[1])

    def delta(self) -> np.ndarray:
        """scale * (b @ a) as a float32 [out, in] array, in peft's order of operations (the float32
        product, then times the scale rounded to float32)."""
        return np.matmul(self.b, self.a) * np.float32(self.scale)


class LoraAdapter:
    """One loaded adapter: path (its folder), scale (the user's multiplier), base_model (the
    base_model_name_or_path it was trained on, or None), config (adapter_config.json) and targets
    (HF base weight name -> LoraFactors, the user scale folded in)."""

    def __init__(self, path: str, scale: float, base_model: Optional[str], config: dict,
                 targets: dict[str, LoraFactors], selects=None):
        self.path = path
        self.scale = scale
        self.base_model = base_model
        self.config = config
        self.targets = targets
        self._selects = selects  # module name -> bool: whether target_modules picks it (None: unknown)

    def __repr__(self) -> str:
        return f"LoraAdapter({self.path!r}, scale={self.scale}, {len(self.targets)} weights)"

    @classmethod
    def load(cls, path, scale: float = 1.0) -> "LoraAdapter":
        """Read and validate the adapter folder at path; scale multiplies its deltas."""
        if not _is_path(path):
            raise TypeError(f"lora adapter path must be a str or os.PathLike, got {short_repr(path)}")
        path = os.path.abspath(os.fspath(path))
        scale = check_scale(scale, f"lora adapter {path}")
        cfg_path, weights_path = _files(path)
        config = read_json_file(cfg_path)
        opts = _Options(config, cfg_path)
        targets = {}
        for module, (a, b) in _read_pairs(weights_path).items():
            where = f"{weights_path}: {module}"
            if a.ndim != 2 or b.ndim != 2:
                raise ModelLoadError(f"{where}: lora_A {list(a.shape)} and lora_B {list(b.shape)} must both be "
                                     f"2-D (LoRA on linear layers only)")
            if a.shape[0] != b.shape[1]:
                raise ModelLoadError(f"{where}: lora_A is {list(a.shape)} ([r, in]) and lora_B {list(b.shape)} "
                                     f"([out, r]): their ranks {a.shape[0]} and {b.shape[1]} differ")
            if not opts.targets(module):
                raise ModelLoadError(f"{where}: the file has LoRA weights for this module but {cfg_path}'s "
                                     f"target_modules {short_repr(opts.target_modules)} (with exclude_modules/"
                                     f"layers_to_transform) does not select it: config and weights disagree")
            r, alpha = opts.rank_alpha(module)
            if a.shape[0] != r:
                raise ModelLoadError(f"{where}: rank {a.shape[0]} (lora_A {list(a.shape)}) but {cfg_path} says "
                                     f"r={r} for this module")
            folded = scale * (alpha / math.sqrt(r) if opts.use_rslora else alpha / r)
            if not abs(folded) <= _FLOAT32_MAX:
                raise ModelLoadError(f"{where}: scale {folded!r} (lora_alpha={alpha}, r={r}, times {scale}) "
                                     f"overflows float32")
            targets[module + ".weight"] = LoraFactors(a, b, folded)
        base = config.get("base_model_name_or_path")
        if base is not None and not isinstance(base, str):
            raise ModelLoadError(f"{cfg_path}: base_model_name_or_path must be a string, got {short_repr(base)}")
        selects = None if opts.target_modules is None or opts.all_linear else opts.targets
        return cls(path, scale, base, config, targets, selects)

    def check_against(self, shapes: dict, where: str) -> None:
        """Check every target against the model's weights (shapes: HF weight name -> [out, in]
        shape; where names the model in messages): a target the model lacks, or whose [out, in]
        differs from the base weight, raises ModelLoadError. A weight that target_modules selects
        but the adapter has no factors for is only warned about (peft warns too)."""
        for name, f in self.targets.items():
            shape = shapes.get(name)
            if shape is None:
                raise ModelLoadError(f"{where}: adapter {self.path} targets {name} but the model has no such weight"
                                     f"{_layer_hint(name, shapes)}")
            if tuple(shape) != f.shape:
                raise ModelLoadError(f"{where}: adapter {self.path}: {name} is {list(shape)} in the model but the "
                                     f"adapter's delta is {list(f.shape)} ([out, in] from lora_B {list(f.b.shape)}, "
                                     f"lora_A {list(f.a.shape)}): adapter for a different model?")
        if self._selects is None:
            return
        missing = [n for n, s in shapes.items() if n.endswith(".weight") and len(tuple(s)) == 2
                   and n not in self.targets and self._selects(n[: -len(".weight")])]
        if missing:
            tm = self.config.get("target_modules")
            warnings.warn(f"{where}: adapter {self.path}'s target_modules {short_repr(tm)} selects "
                          f"{len(missing)} weight(s) it has no LoRA factors for (e.g. {missing[0]}); those are left "
                          f"unchanged", RuntimeWarning, stacklevel=2)


def check_scale(scale: Any, where: str) -> float:
    """scale as a float: a real number (not a bool), finite; else TypeError / ValueError."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{where}: scale must be a number, got {short_repr(scale)}")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"{where}: scale must be finite, got {value!r}")
    return value


def load_adapters(spec) -> list[LoraAdapter]:
    """The adapters a user names with pyllm.load(path, lora=spec): a path (str or os.PathLike), a
    (path, scale) pair, or a list of paths and/or (path, scale) pairs (applied in order; [] is
    none). Anything else raises TypeError or ValueError."""
    if _is_path(spec) or _is_pair(spec):
        entries = [spec]
    elif isinstance(spec, (list, tuple)):
        entries = list(spec)
    else:
        raise TypeError(f"lora must be an adapter folder path, a (path, scale) pair, or a list of them; got "
                        f"{short_repr(spec)}")
    adapters = []
    for i, entry in enumerate(entries):
        if _is_path(entry):
            adapters.append(LoraAdapter.load(entry))
        elif isinstance(entry, (tuple, list)):
            if len(entry) != 2 or not _is_path(entry[0]):
                raise ValueError(f"lora[{i}]: expected a (path, scale) pair, got {short_repr(entry)}")
            adapters.append(LoraAdapter.load(entry[0], entry[1]))
        else:
            raise TypeError(f"lora[{i}]: expected an adapter folder path or a (path, scale) pair, got "
                            f"{short_repr(entry)}")
    return adapters


def merged_factors(adapters) -> dict[str, list[LoraFactors]]:
    """Every adapter's factors per HF weight name, in adapter order."""
    out: dict[str, list[LoraFactors]] = {}
    for adapter in adapters:
        for name, f in adapter.targets.items():
            out.setdefault(name, []).append(f)
    return out


def merge_into(weight: np.ndarray, factors) -> np.ndarray:
    """A float32 copy of weight ([out, in]) with each factor's delta added in turn (as peft merges
    several adapters); weight itself is not modified."""
    out = np.array(weight, dtype=np.float32, copy=True)
    for f in factors:
        if out.shape != f.shape:
            raise ValueError(f"LoRA delta of shape {list(f.shape)} does not fit a weight of shape {list(out.shape)}")
        out += f.delta()
    return out


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_pair(x) -> bool:
    """A (path, scale) tuple, told apart from a tuple of paths by its number."""
    return (isinstance(x, tuple) and len(x) == 2 and _is_path(x[0]) and not _is_path(x[1])
            and isinstance(x[1], numbers.Number))


def _files(path: str) -> tuple[str, str]:
    """(config, weights) file paths of the adapter folder at path, after checking they are there."""
    if not os.path.exists(path):
        raise ModelLoadError(f"lora adapter {path}: not found")
    if not os.path.isdir(path):
        raise ModelLoadError(f"lora adapter {path}: not a folder (pass the folder holding {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE})")
    cfg_path = os.path.join(path, CONFIG_FILE)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(cfg_path):
        raise ModelLoadError(f"lora adapter {path}: no {CONFIG_FILE} (not a PEFT adapter folder?)")
    if not os.path.exists(weights_path):
        if os.path.exists(os.path.join(path, PICKLED_WEIGHTS_FILE)):
            raise ModelLoadError(f"lora adapter {path}: has {PICKLED_WEIGHTS_FILE} but no {WEIGHTS_FILE}; pickled "
                                 f"adapters are not read (loading a pickle can run code): convert it to safetensors, "
                                 f"e.g. PeftModel.from_pretrained(base, folder).save_pretrained(folder, "
                                 f"safe_serialization=True)")
        raise ModelLoadError(f"lora adapter {path}: no {WEIGHTS_FILE}")
    return cfg_path, weights_path


class _Options:
    """The validated adapter_config.json fields that decide which modules are adapted and how."""

    def __init__(self, config: dict, where: str):
        self.where = where
        peft_type = config.get("peft_type")
        if peft_type != "LORA":
            raise ModelLoadError(f"{where}: peft_type is {short_repr(peft_type)}; only LoRA adapters "
                                 f"(peft_type \"LORA\") are supported")
        for key, why in _REFUSED_OPTIONS.items():
            value = config.get(key)
            if value:
                raise ModelLoadError(f"{where}: {why.format(value=short_repr(value))}")
        bias = config.get("bias", "none")
        if bias != "none":
            raise ModelLoadError(f"{where}: bias={short_repr(bias)}: the adapter trains biases, which pyllm does not "
                                 f"apply; only bias=\"none\" adapters are supported")
        self.r = self._rank(config.get("r", 8), "r")
        self.alpha = self._alpha(config.get("lora_alpha", 8), "lora_alpha")
        self.use_rslora = config.get("use_rslora", False)
        if not isinstance(self.use_rslora, bool):
            raise ModelLoadError(f"{where}: use_rslora must be true or false, got {short_repr(self.use_rslora)}")
        self.rank_pattern = self._pattern(config, "rank_pattern", self._rank)
        self.alpha_pattern = self._pattern(config, "alpha_pattern", self._alpha)
        self.target_modules = self._names(config, "target_modules")
        self.exclude_modules = self._names(config, "exclude_modules")
        self.all_linear = isinstance(self.target_modules, str) and self.target_modules.lower() == _ALL_LINEAR
        self.layers_to_transform = config.get("layers_to_transform")
        lt = self.layers_to_transform
        if not (lt is None or _is_int(lt) or isinstance(lt, list) and all(_is_int(i) for i in lt)):
            raise ModelLoadError(f"{where}: layers_to_transform must be an integer or a list of them, got "
                                 f"{short_repr(lt)}")
        lp = config.get("layers_pattern")
        if not (lp is None or isinstance(lp, str) or isinstance(lp, list) and all(isinstance(p, str) for p in lp)):
            raise ModelLoadError(f"{where}: layers_pattern must be a string or a list of them, got {short_repr(lp)}")
        self.layers_pattern = [lp] if isinstance(lp, str) else lp

    def _rank(self, v, key: str) -> int:
        if not _is_int(v) or v <= 0:
            raise ModelLoadError(f"{self.where}: {key} must be a positive integer, got {short_repr(v)}")
        return v

    def _alpha(self, v, key: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ModelLoadError(f"{self.where}: {key} must be a finite number, got {short_repr(v)}")
        return v

    def _pattern(self, config: dict, key: str, check) -> dict:
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            raise ModelLoadError(f"{self.where}: {key} must be an object, got {short_repr(pattern)}")
        for k, v in pattern.items():
            check(v, f"{key}[{k!r}]")
            self._compile(rf"(.*\.)?({k})$", f"{key} key {k!r}")
        return pattern

    def _names(self, config: dict, key: str):
        v = config.get(key)
        if isinstance(v, str):
            self._compile(v, key)
        elif v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise ModelLoadError(f"{self.where}: {key} must be a regex string or a list of module names, got "
                                 f"{short_repr(v)}")
        return v

    def _compile(self, pattern: str, what: str) -> None:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise ModelLoadError(f"{self.where}: {what} is not a valid regular expression ({e})") from None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """(r, lora_alpha) of a module: the first rank_pattern / alpha_pattern key that matches the
        end of its name (peft's get_pattern_key), else the config's r / lora_alpha."""
        return (_pattern_value(self.rank_pattern, module, self.r),
                _pattern_value(self.alpha_pattern, module, self.alpha))

    def targets(self, module: str) -> bool:
        """Whether peft would put a LoRA layer on the module with this name (peft's
        check_target_module_exists: exclude_modules, then target_modules as a full-match regex
        string or a list of names / name suffixes, then layers_to_transform)."""
        ex = self.exclude_modules
        if isinstance(ex, str) and ex:
            if re.fullmatch(ex, module):
                return False
        elif ex and _listed(module, ex):
            return False
        tm = self.target_modules
        if tm is None or self.all_linear:
            return True  # no list to check against: the weights file says what is adapted
        if isinstance(tm, str):
            return re.fullmatch(tm, module) is not None
        if module in tm:
            return True
        if not _listed(module, tm):
            return False
        lt = self.layers_to_transform
        if lt is None or lt == []:
            return True
        match = None
        if not self.layers_pattern:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            for p in self.layers_pattern:
                match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
                if match:
                    break
        if match is None:
            return False
        idx = int(match.group("idx"))
        return idx == lt if _is_int(lt) else idx in lt


def _listed(module: str, names) -> bool:
    return any(module == n or module.endswith("." + n) for n in names)


def _pattern_value(pattern: dict, module: str, default):
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_pairs(weights_path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module name -> (lora_A, lora_B) as float32 arrays (owned copies, read-only), from the
    adapter's safetensors file; any tensor that is not one half of a LoRA A/B pair is refused."""
    sf = SafetensorsFile(weights_path)
    halves: dict[str, dict[str, str]] = {}
    strays = []  # (rank of the reason, name, reason) of tensors that are not LoRA A/B weights
    for name, info in sf.tensors.items():
        where = f"{weights_path}: tensor {name!r}"
        m = _TENSOR.fullmatch(name[len(_PREFIX):] if name.startswith(_PREFIX) else name)
        if m is None:
            strays.append((*_why_not_lora(name), name))
            continue
        module, kind = m.group("module"), m.group("kind")
        if kind in halves.setdefault(module, {}):
            raise ModelLoadError(f"{where}: a second lora_{kind} for {module} (also {halves[module][kind]!r})")
        if info.dtype not in ("F32", "F16", "BF16"):
            raise ModelLoadError(f"{where}: dtype {info.dtype}; LoRA weights must be F32, F16 or BF16")
        halves[module][kind] = name
    if strays:  # name the most telling one (an embedding LoRA also saves the full embedding)
        _, why, name = min(strays)
        raise ModelLoadError(f"{weights_path}: tensor {name!r}: {why}")
    if not halves:
        raise ModelLoadError(f"{weights_path}: no LoRA weights in the file")
    pairs = {}
    for module, h in halves.items():
        if set(h) != {"A", "B"}:
            have = next(iter(h.values()))
            raise ModelLoadError(f"{weights_path}: {module} has {have!r} but no lora_{'B' if 'A' in h else 'A'}")
        a, b = (_read(sf, h[k], weights_path) for k in ("A", "B"))
        pairs[module] = (a, b)
    return pairs


def _read(sf: SafetensorsFile, name: str, weights_path: str) -> np.ndarray:
    a = np.array(sf.numpy(name), dtype=np.float32, copy=True)  # own the data: no view into the mapping
    if not np.isfinite(a).all():
        raise ModelLoadError(f"{weights_path}: tensor {name!r} has non-finite values (NaN or infinity)")
    a.flags.writeable = False
    return a


def _why_not_lora(name: str) -> tuple[int, str]:
    """(rank, reason) why a tensor is not read; a lower rank is the more specific reason."""
    if "lora_embedding_A" in name or "lora_embedding_B" in name:
        return 0, "LoRA on an embedding layer is not supported (only on linear layers)"
    if "lora_magnitude_vector" in name:
        return 1, "a DoRA magnitude vector: DoRA adapters are not supported"
    if re.search(r"\.lora_[AB](\.default)?\.bias$", name):
        return 2, "a lora_B bias (lora_bias=true): not supported"
    if "trainable_tokens" in name:
        return 3, "trainable token embeddings are not supported"
    if "lora_" in name:
        return 4, "not a LoRA A/B weight pyllm reads (expected <module>.lora_A.weight / <module>.lora_B.weight)"
    return 5, ("not a LoRA A/B weight: a full module weight or bias (modules_to_save, bias='all') or another PEFT "
               "method's tensor, which pyllm does not load")


def _layer_hint(name: str, shapes: dict) -> str:
    """' (it has N layers)' when name is a per-layer weight, from the layer indices in shapes."""
    m = re.match(r"(.*?\.layers\.)\d+\.", name)
    if not m:
        return ""
    prefix = m.group(1)
    layers = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes
              if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    if not layers:
        return ""
    return f" (it has {len(layers)} layer{'s' if len(layers) != 1 else ''})"
