"""test_lora_adapter.py: pyllm.lora reads PEFT LoRA adapters. Adapters are made by peft itself on
the tiny Llama 2 checkpoint (init_lora_weights=False, so B is nonzero) and saved with
save_pretrained; base + pyllm's merge must equal the weights of peft's merge_and_unload() (float32,
to 4 ulp of the sum's magnitude; in practice they are bit-identical). Then every refused or broken
adapter must give a clear ModelLoadError (or TypeError/ValueError for bad arguments)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import warnings

import numpy as np
import pytest

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pyllm.errors import ModelLoadError  # noqa: E402
from pyllm.lora import LoraAdapter, LoraFactors, load_adapters, merge_into, merged_factors  # noqa: E402
from pyllm.safetensors_file import SafetensorsFile, open_checkpoint  # noqa: E402

TARGETS = ["q_proj", "v_proj", "gate_proj"]
ULPS = 4


def make_adapter(base: str, out, seed: int = 1, dtype=None, **overrides) -> str:
    """Save a peft LoRA adapter for base to out; overrides are LoraConfig arguments."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    kwargs.update(overrides)
    pm = peft.get_peft_model(model, peft.LoraConfig(**kwargs))
    if dtype is not None:
        pm.to(dtype)
    pm.save_pretrained(str(out))
    return str(out)


def peft_merged(base: str, adapters) -> dict:
    """The state dict (numpy float32) of base with the (folder, scale) adapters merged by peft:
    all loaded, each layer's scale set with set_scale, all active, then merge_and_unload()."""
    from peft.tuners.lora import LoraLayer

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = [f"a{i}" for i in range(len(adapters))]
    pm = peft.PeftModel.from_pretrained(model, adapters[0][0], adapter_name=names[0])
    for name, (folder, _) in zip(names[1:], adapters[1:]):
        pm.load_adapter(folder, adapter_name=name)
    for module in pm.modules():
        if isinstance(module, LoraLayer):
            for name, (_, scale) in zip(names, adapters):
                module.set_scale(name, scale)
    pm.base_model.set_adapter(names)
    merged = pm.merge_and_unload()
    return {k: v.detach().float().numpy().copy() for k, v in merged.state_dict().items()}


def assert_merge_matches(ours: np.ndarray, ref: np.ndarray, base: np.ndarray, factors, name: str):
    """ours == ref to ULPS ulp of |base| + sum |scale| |b| @ |a| (the size of the terms summed)."""
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    size = np.abs(base).astype(np.float32)
    for f in factors:
        size = size + np.float32(abs(f.scale)) * (np.abs(f.b) @ np.abs(f.a))
    err = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    bound = ULPS * np.spacing(size.astype(np.float32)).astype(np.float64)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{name}: off by {err[worst]:.3g} at {worst} (bound {bound[worst]:.3g})"


@pytest.fixture(scope="module")
def base(checkpoint) -> str:
    return os.path.abspath(checkpoint("llama2", "float32"))


@pytest.fixture(scope="module")
def base_weights(base) -> dict:
    return {name: sf.numpy(name) for name, (sf, _) in open_checkpoint(base).items()}


@pytest.fixture(scope="module")
def shapes(base_weights) -> dict:
    return {name: w.shape for name, w in base_weights.items()}


@pytest.fixture(scope="module")
def good(base, tmp_path_factory) -> str:
    """A plain r=4 adapter on q/v/gate_proj (do not modify: copy it)."""
    return make_adapter(base, tmp_path_factory.mktemp("lora") / "good")


@pytest.fixture
def copy_of_good(good, tmp_path) -> pathlib.Path:
    dst = tmp_path / "adapter"
    shutil.copytree(good, dst)
    return dst


def check_matches_peft(base, base_weights, shapes, adapters):
    """pyllm's merge of the (folder, scale) adapters equals peft's, weight by weight; returns the
    loaded adapters."""
    loaded = load_adapters([(folder, scale) for folder, scale in adapters])
    ref = peft_merged(base, adapters)
    per_weight = merged_factors(loaded)
    assert per_weight, "the adapters target nothing"
    for a in loaded:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            a.check_against(shapes, base)
    for name, w in base_weights.items():
        if name in per_weight:
            assert_merge_matches(merge_into(w, per_weight[name]), ref[name], w, per_weight[name], name)
        else:  # peft leaves the rest alone
            np.testing.assert_array_equal(ref[name], w, err_msg=name)
    return loaded


def expected_names(modules, layers=(0, 1)) -> set:
    where = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    return {f"model.layers.{i}.{where[m]}.{m}.weight" for i in layers for m in modules}


# ---- reading and merging ----

def test_merge_matches_peft(base, base_weights, shapes, good):
    (adapter,) = check_matches_peft(base, base_weights, shapes, [(good, 1.0)])
    assert adapter.path == good and adapter.scale == 1.0 and adapter.base_model == base
    assert set(adapter.targets) == expected_names(TARGETS)
    for name, f in adapter.targets.items():
        assert isinstance(f, LoraFactors) and f.scale == 2.0  # lora_alpha / r = 8 / 4
        out, inp = shapes[name]
        assert f.a.shape == (4, inp) and f.b.shape == (out, 4) and f.a.dtype == f.b.dtype == np.float32
        assert not f.a.flags.writeable and np.abs(f.b).max() > 0
        d = f.delta()
        assert d.dtype == np.float32 and d.shape == (out, inp)
        np.testing.assert_allclose(d, 2.0 * (f.b.astype(np.float64) @ f.a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rslora", [False, True], ids=["alpha/r", "rslora"])
def test_rslora_rank_and_alpha_patterns(base, base_weights, shapes, tmp_path, rslora):
    folder = make_adapter(base, tmp_path / "a", r=4, lora_alpha=7, use_rslora=rslora,
                          rank_pattern={"layers.1.self_attn.q_proj": 2, "v_proj": 3},
                          alpha_pattern={r"mlp\.gate_proj": 5})
    (adapter,) = check_matches_peft(base, base_weights, shapes, [(folder, 1.0)])
    for name, f in adapter.targets.items():
        r = 2 if "layers.1.self_attn.q_proj" in name else 3 if "v_proj" in name else 4
        alpha = 5 if "gate_proj" in name else 7
        assert f.rank == r and f.b.shape[1] == r
        assert f.scale == pytest.approx(alpha / (math.sqrt(r) if rslora else r), rel=1e-15)


def test_regex_target_modules(base, base_weights, shapes, tmp_path):
    folder = make_adapter(base, tmp_path / "a", target_modules=r".*\.layers\.1\.(self_attn\.(k|o)_proj|mlp\.down_proj)")
    (adapter,) = check_matches_peft(base, base_weights, shapes, [(folder, 1.0)])
    assert set(adapter.targets) == expected_names(["k_proj", "o_proj", "down_proj"], layers=(1,))


def test_two_adapters_with_scales(base, base_weights, shapes, good, tmp_path):
    other = make_adapter(base, tmp_path / "b", seed=2, r=2, lora_alpha=3, target_modules=["v_proj", "up_proj"])
    first, second = check_matches_peft(base, base_weights, shapes, [(good, 0.5), (other, -1.25)])
    assert (first.scale, second.scale) == (0.5, -1.25)
    assert all(f.scale == 0.5 * 2.0 for f in first.targets.values())
    assert all(f.scale == -1.25 * 1.5 for f in second.targets.values())
    per_weight = merged_factors([first, second])
    v0 = "model.layers.0.self_attn.v_proj.weight"
    assert per_weight[v0] == [first.targets[v0], second.targets[v0]]  # both, in order
    # base + s1*d1 + s2*d2, spelled out
    w = base_weights[v0]
    d1 = 0.5 * 2.0 * (first.targets[v0].b.astype(np.float64) @ first.targets[v0].a)
    d2 = -1.25 * 1.5 * (second.targets[v0].b.astype(np.float64) @ second.targets[v0].a)
    np.testing.assert_allclose(merge_into(w, per_weight[v0]), w + d1 + d2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tag", [("bfloat16", "BF16"), ("float16", "F16")])
def test_half_precision_adapter(base, base_weights, shapes, tmp_path, dtype, tag):
    from safetensors.torch import load_file

    folder = make_adapter(base, tmp_path / "a", dtype=getattr(torch, dtype))
    stored_types = SafetensorsFile(os.path.join(folder, "adapter_model.safetensors")).tensors.values()
    assert {t.dtype for t in stored_types} == {tag}
    (adapter,) = check_matches_peft(base, base_weights, shapes, [(folder, 1.0)])
    stored = load_file(os.path.join(folder, "adapter_model.safetensors"))
    for name, f in adapter.targets.items():
        module = "base_model.model." + name[: -len(".weight")]
        np.testing.assert_array_equal(f.a, stored[module + ".lora_A.weight"].float().numpy())
        np.testing.assert_array_equal(f.b, stored[module + ".lora_B.weight"].float().numpy())


def rewrite_tensors(folder, edit):
    """Rewrite folder's adapter_model.safetensors (float32) as edit(dict of arrays) returns it."""
    from safetensors.numpy import load_file, save_file

    path = os.path.join(folder, "adapter_model.safetensors")
    save_file(edit(load_file(path)), path)


def edit_config(folder, **changes):
    path = os.path.join(folder, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)


def test_adapter_name_and_unprefixed_tensor_names(good, copy_of_good):
    """'.lora_A.default.weight' (unsaved adapter name) and names without 'base_model.model.'."""
    rewrite_tensors(copy_of_good, lambda t: {
        (k.replace(".lora_A.", ".lora_A.default.") if i % 2 else k.replace("base_model.model.", "")): v
        for i, (k, v) in enumerate(sorted(t.items()))})
    ref, got = LoraAdapter.load(good), LoraAdapter.load(copy_of_good)
    assert set(got.targets) == set(ref.targets)
    for name, f in got.targets.items():
        np.testing.assert_array_equal(f.a, ref.targets[name].a)
        np.testing.assert_array_equal(f.b, ref.targets[name].b)


def test_load_adapters_spec(good):
    assert load_adapters([]) == []
    for spec in (good, pathlib.Path(good), (good, 0.25), [good], [(good, 0.25)], [pathlib.Path(good), (good, 2)]):
        adapters = load_adapters(spec)
        assert all(isinstance(a, LoraAdapter) and a.path == good for a in adapters)
    assert [a.scale for a in load_adapters([good, (good, 0.25), [good, 3]])] == [1.0, 0.25, 3.0]
    relative = os.path.relpath(good)  # the suite runs from an empty folder, not the adapter's
    assert load_adapters(relative)[0].path == good
    for bad in (3, None, {"a": 1}, [3], [None]):
        with pytest.raises(TypeError, match="lora"):
            load_adapters(bad)
    for bad in ([(good,)], [(good, 1.0, 2.0)], [(3, 1.0)]):
        with pytest.raises(ValueError, match=r"\(path, scale\) pair"):
            load_adapters(bad)


@pytest.mark.parametrize("scale,exc", [(float("nan"), ValueError), (float("inf"), ValueError), ("0.5", TypeError),
                                       (True, TypeError), (None, TypeError), (1 + 2j, TypeError)])
def test_bad_scale(good, scale, exc):
    with pytest.raises(exc, match="scale"):
        LoraAdapter.load(good, scale)
    with pytest.raises(exc, match="scale"):
        load_adapters([(good, scale)])


def test_numpy_scale_and_zero(good):
    assert LoraAdapter.load(good, np.float32(0.5)).scale == 0.5
    a = LoraAdapter.load(good, 0)
    assert all(f.scale == 0 and not f.delta().any() for f in a.targets.values())


# ---- refused and broken adapters ----

def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "nope")) + ": not found"):
        LoraAdapter.load(tmp_path / "nope")
    with pytest.raises(TypeError):
        LoraAdapter.load(123)


def test_file_instead_of_folder(copy_of_good):
    with pytest.raises(ModelLoadError, match="not a folder"):
        LoraAdapter.load(copy_of_good / "adapter_model.safetensors")


def test_missing_config(copy_of_good):
    os.remove(copy_of_good / "adapter_config.json")
    with pytest.raises(ModelLoadError, match=f"{re.escape(str(copy_of_good))}: no adapter_config.json"):
        LoraAdapter.load(copy_of_good)


def test_bad_json_config(copy_of_good):
    (copy_of_good / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="adapter_config.json: not valid JSON"):
        LoraAdapter.load(copy_of_good)


def test_missing_weights(copy_of_good):
    os.remove(copy_of_good / "adapter_model.safetensors")
    with pytest.raises(ModelLoadError, match="no adapter_model.safetensors"):
        LoraAdapter.load(copy_of_good)


def test_pickled_only_adapter(copy_of_good):
    os.rename(copy_of_good / "adapter_model.safetensors", copy_of_good / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="adapter_model.bin.*pickled adapters are not read.*safetensors"):
        LoraAdapter.load(copy_of_good)


def test_wrong_peft_type(copy_of_good):
    edit_config(copy_of_good, peft_type="IA3")
    with pytest.raises(ModelLoadError, match=r"adapter_config.json: peft_type is 'IA3'.*LoRA"):
        LoraAdapter.load(copy_of_good)


@pytest.mark.parametrize("changes,message", [
    (dict(fan_in_fan_out=True), "fan_in_fan_out=true .* not supported"),
    (dict(lora_bias=True), "lora_bias"),
    (dict(trainable_token_indices=[1, 2]), "trainable_token_indices"),
    (dict(layer_replication=[[0, 2]]), "layer_replication"),
    (dict(target_parameters=["mlp.experts.gate_up_proj"]), "target_parameters"),
    (dict(alora_invocation_tokens=[5]), "activated LoRA"),
    (dict(r=8), r"rank 4 .* says r=8"),
    (dict(r=0), "r must be a positive integer"),
    (dict(lora_alpha="8"), "lora_alpha must be a finite number"),
    (dict(rank_pattern={"q_proj": 2}), r"q_proj.*rank 4 .* says r=2"),
    (dict(rank_pattern=[1]), "rank_pattern must be an object"),
    (dict(use_rslora="yes"), "use_rslora"),
    (dict(target_modules=["k_proj"]), "target_modules .*does not select it"),
    (dict(target_modules=".*k_proj"), "target_modules .*does not select it"),
    (dict(target_modules="(q_proj"), "target_modules is not a valid regular expression"),
    (dict(exclude_modules=["q_proj"]), "does not select it"),
    (dict(layers_to_transform=[0]), r"layers\.1\..*does not select it"),
    (dict(base_model_name_or_path=5), "base_model_name_or_path"),
])
def test_bad_config(copy_of_good, changes, message):
    edit_config(copy_of_good, **changes)
    with pytest.raises(ModelLoadError, match=f"{re.escape(str(copy_of_good))}/adapter_.*{message}"):
        LoraAdapter.load(copy_of_good)


def test_target_modules_semantics_accepted(good, copy_of_good):
    """What peft would select still loads: all-linear, a matching regex, layers_to_transform with
    every layer, exclude_modules that excludes nothing adapted."""
    n = len(LoraAdapter.load(good).targets)
    for changes in (dict(target_modules="all-linear"), dict(target_modules=r"model\.layers\.\d\.(self_attn|mlp)\..*"),
                    dict(layers_to_transform=[0, 1], layers_pattern="layers"), dict(exclude_modules=["lm_head"]),
                    dict(target_modules=None)):
        edit_config(copy_of_good, **changes)
        assert len(LoraAdapter.load(copy_of_good).targets) == n, changes


@pytest.mark.parametrize("option,tensor_message", [
    (dict(use_dora=True), "DoRA"),
    (dict(bias="all"), "trains biases"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
])
def test_peft_options_refused(base, tmp_path, option, tensor_message):
    """Real peft adapters using an option pyllm refuses; with the option hidden from the config,
    the extra tensors it saved are refused too."""
    folder = make_adapter(base, tmp_path / "a", target_modules=["q_proj"], **option)
    key = next(iter(option))
    with pytest.raises(ModelLoadError, match=f"adapter_config.json: .*{tensor_message}"):
        LoraAdapter.load(folder)
    edit_config(folder, **{key: {"use_dora": False, "bias": "none", "modules_to_save": None}[key]})
    if key == "bias":  # Llama's linear layers have no biases, so peft saved none: add one
        rewrite_tensors(folder, lambda t: {**t, "base_model.model.model.layers.0.self_attn.q_proj.bias":
                                           np.zeros(64, np.float32)})
    with pytest.raises(ModelLoadError, match=r"adapter_model.safetensors: tensor '[^']+': "):
        LoraAdapter.load(folder)


def test_embedding_lora_refused(base, tmp_path):
    folder = make_adapter(base, tmp_path / "a", target_modules=["embed_tokens"])
    with pytest.raises(ModelLoadError, match="lora_embedding_.*embedding layer is not supported"):
        LoraAdapter.load(folder)


def test_rank_mismatch_between_a_and_b(copy_of_good):
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"
    rewrite_tensors(copy_of_good, lambda t: {**t, name: t[name][:3]})
    with pytest.raises(ModelLoadError, match=r"model.layers.1.self_attn.v_proj: lora_A is \[3, 64\].*lora_B \[64, 4\]"
                                             r".*ranks 3 and 4 differ"):
        LoraAdapter.load(copy_of_good)


def test_unpaired_tensor(copy_of_good):
    name = "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"
    rewrite_tensors(copy_of_good, lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(ModelLoadError, match="model.layers.0.mlp.gate_proj has .*lora_A.* but no lora_B"):
        LoraAdapter.load(copy_of_good)


@pytest.mark.parametrize("extra,message", [
    ("base_model.model.model.norm.weight", "modules_to_save"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight", "not a LoRA A/B weight pyllm reads"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "DoRA"),
])
def test_unknown_tensor(copy_of_good, extra, message):
    rewrite_tensors(copy_of_good, lambda t: {**t, extra: np.ones((64,), np.float32)})
    with pytest.raises(ModelLoadError, match=f"tensor {re.escape(repr(extra))}: .*{message}"):
        LoraAdapter.load(copy_of_good)


def test_non_finite_and_non_float_tensors(copy_of_good, good):
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

    def poison(t):
        t[name] = t[name].copy()
        t[name][3, 1] = np.nan
        return t

    rewrite_tensors(copy_of_good, poison)
    with pytest.raises(ModelLoadError, match=f"{re.escape(repr(name))} has non-finite values"):
        LoraAdapter.load(copy_of_good)
    shutil.copy(os.path.join(good, "adapter_model.safetensors"), copy_of_good)
    rewrite_tensors(copy_of_good, lambda t: {**t, name: t[name].astype(np.float64)})
    with pytest.raises(ModelLoadError, match="dtype F64"):
        LoraAdapter.load(copy_of_good)
    rewrite_tensors(copy_of_good, lambda t: {})
    with pytest.raises(ModelLoadError, match="no LoRA weights"):
        LoraAdapter.load(copy_of_good)
    (copy_of_good / "adapter_model.safetensors").write_bytes(b"\x01" * 4)
    with pytest.raises(ModelLoadError, match="adapter_model.safetensors: truncated"):
        LoraAdapter.load(copy_of_good)


def test_check_against_shape_mismatch(good, shapes):
    adapter = LoraAdapter.load(good)
    name = "model.layers.0.mlp.gate_proj.weight"
    with pytest.raises(ModelLoadError, match=rf"^other-model: adapter .*: {re.escape(name)} is \[160, 32\] in the "
                                             rf"model but the adapter's delta is \[160, 64\]"):
        adapter.check_against({**shapes, name: (160, 32)}, "other-model")


def test_check_against_target_not_in_model(copy_of_good, shapes):
    rewrite_tensors(copy_of_good, lambda t: {k.replace(".layers.1.", ".layers.5."): v for k, v in t.items()})
    adapter = LoraAdapter.load(copy_of_good)
    with pytest.raises(ModelLoadError, match=r"^base: adapter .* targets model\.layers\.5\.\w+\.\w+\.weight but the "
                                             r"model has no such weight \(it has 2 layers\)$"):
        adapter.check_against(shapes, "base")
    with pytest.raises(ModelLoadError, match=r"has no such weight$"):
        LoraAdapter.load(copy_of_good).check_against({"lm_head.weight": (32000, 64)}, "base")


def test_check_against_warns_about_unadapted_targets(copy_of_good, shapes):
    """target_modules selects layer 1's q/v/gate_proj but the file has no factors for them (an
    adapter for a shallower model): peft warns and so does pyllm."""
    rewrite_tensors(copy_of_good, lambda t: {k: v for k, v in t.items() if ".layers.1." not in k})
    adapter = LoraAdapter.load(copy_of_good)
    assert len(adapter.targets) == 3
    with pytest.warns(RuntimeWarning, match=r"selects 3 weight\(s\) it has no LoRA factors for"):
        adapter.check_against(shapes, "base")


def test_merge_into_shape_mismatch_and_copy(good, base_weights):
    f = LoraAdapter.load(good).targets["model.layers.0.self_attn.q_proj.weight"]
    w = base_weights["model.layers.0.self_attn.q_proj.weight"]
    before = w.copy()
    merged = merge_into(w, [f])
    np.testing.assert_array_equal(w, before)  # not modified
    assert merged.dtype == np.float32 and not np.array_equal(merged, w)
    np.testing.assert_array_equal(merge_into(w, []), w)
    with pytest.raises(ValueError, match=r"\[64, 64\] does not fit a weight of shape \[160, 64\]"):
        merge_into(base_weights["model.layers.0.mlp.gate_proj.weight"], [f])
