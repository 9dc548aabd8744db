"""test_lora.py: pyllm.load(path, lora=...) against PEFT's own model (transformers + peft, float32),
on tiny random Llama 3 / Qwen2 / Phi-3 models with adapters peft makes. Float weights get the delta
merged; quantized ones (quant-on-load, GGUF files) keep it as an unmerged side product, which must
compute the same function as the merge (checked on an f32 GGUF file, where nothing else differs);
`pyllm quantize --lora` merges before writing.

Tolerances: the float32 merged model against PEFT's unmerged float32 model is the parity bound of
test_parity (1e-4 relative: only summation order differs). Quantized models are compared by mean KL
against PEFT's model, with the same bounds the base model's quantization meets (test_families)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm.errors import ModelLoadError

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_families import KL_BOUND, _close, _ids, mean_kl  # noqa: E402

TARGETS = {
    "llama3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "phi3": ["qkv_proj", "gate_up_proj", "o_proj"],
}


def make_adapter(base: str, out: str, targets, seed: int = 1, r: int = 4, alpha: int = 16) -> str:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # larger B than peft's init: the adapter must move the logits visibly
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(out)
    return out


def peft_model(base: str, adapters):
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(model, adapters[0][0], adapter_name="a0")
    for i, (folder, _) in enumerate(adapters[1:], 1):
        pm.load_adapter(folder, adapter_name=f"a{i}")
    from peft.tuners.lora import LoraLayer

    for module in pm.modules():
        if isinstance(module, LoraLayer):
            for i, (_, scale) in enumerate(adapters):
                module.set_scale(f"a{i}", scale)
    pm.base_model.set_adapter([f"a{i}" for i in range(len(adapters))])
    pm.eval()
    return pm


def logits_of(pm, ids) -> np.ndarray:
    with torch.no_grad():
        return pm(torch.tensor([ids])).logits[0].float().numpy()


def peft_logits(base: str, adapters, ids) -> np.ndarray:
    return logits_of(peft_model(base, adapters), ids)


@pytest.fixture(scope="module")
def adapter(checkpoint, tmp_path_factory):
    cache = {}

    def get(arch, seed=1):
        if (arch, seed) not in cache:
            out = str(tmp_path_factory.mktemp(f"lora-{arch}") / "adapter")
            cache[(arch, seed)] = make_adapter(checkpoint(arch, "float32"), out, TARGETS[arch], seed=seed)
        return cache[(arch, seed)]

    return get


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "phi3"])
def test_merged_adapter_matches_peft(checkpoint, adapter, arch):
    base = checkpoint(arch, "float32")
    ids = _ids(80)
    pm = peft_model(base, [(adapter(arch), 1.0)])
    want = logits_of(pm, ids)
    m = pyllm.load(base, n_ctx=128, lora=adapter(arch))
    _close(m.logits(ids), want)
    # the adapter changes the model: the base alone is far from it
    assert np.abs(pyllm.load(base, n_ctx=128).logits(ids) - want).max() > 1e-2
    # greedy continuation as PEFT's model computes it (cached decode through the engine)
    got = m.generate_tokens(ids[:20], max_tokens=16, temperature=0, ignore_eos=True)
    seq = list(ids[:20])
    for _ in range(16):
        seq.append(int(logits_of(pm, seq)[-1].argmax()))
    assert got == seq[20:]


def test_two_adapters_with_scales(checkpoint, adapter):
    base = checkpoint("llama3", "float32")
    spec = [(adapter("llama3", 1), 0.5), (adapter("llama3", 2), -1.25)]
    ids = _ids(60, seed=3)
    _close(pyllm.load(base, n_ctx=128, lora=spec).logits(ids), peft_logits(base, spec, ids))


def test_bf16_checkpoint_merges_into_16_bit_weights(checkpoint, adapter):
    """Merged into the bf16 weights (rounded once, as peft merges into a bf16 model): close to PEFT's
    float32 model within bf16 rounding of the merged weights (mean KL, not the float32 bound)."""
    base = checkpoint("llama3", "bfloat16")
    ids = _ids(60, seed=4)
    want = peft_logits(base, [(adapter("llama3"), 1.0)], ids)
    got = pyllm.load(base, n_ctx=128, lora=adapter("llama3")).logits(ids)
    assert mean_kl(want, got) <= 1e-4


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_weights_keep_the_adapter_unmerged(checkpoint, adapter, quant):
    base = checkpoint("llama3", "float32")
    ids = _ids(80, seed=5)
    want = peft_logits(base, [(adapter("llama3"), 1.0)], ids)
    m = pyllm.load(base, n_ctx=128, quant=quant, lora=adapter("llama3"))
    assert m._cmodel.lora_count() == 2 * len(TARGETS["llama3"])  # every adapted weight, in both layers
    assert mean_kl(want, m.logits(ids)) <= KL_BOUND[quant]


@pytest.mark.parametrize("arch", ["llama3", "phi3"])
def test_side_product_equals_the_merge(checkpoint, adapter, tmp_path, arch):
    """An f32 GGUF file keeps the adapter unmerged (GGUF weights are never merged): the engine's side
    product computes what the merged float model computes (Q/K rows permuted, fused rows split)."""
    base = checkpoint(arch, "float32")
    out = str(tmp_path / "m.gguf")
    from pyllm.gguf_export import export_gguf

    export_gguf(base, out, "f32")
    ids = _ids(70, seed=6)
    side = pyllm.load(out, n_ctx=128, lora=adapter(arch))
    assert side._cmodel.lora_count() > 0
    _close(side.logits(ids), pyllm.load(base, n_ctx=128, lora=adapter(arch)).logits(ids))


def test_quantize_merges_before_quantizing(checkpoint, adapter, tmp_path):
    base = checkpoint("llama3", "float32")
    out = str(tmp_path / "merged.gguf")
    r = subprocess.run([sys.executable, "-m", "pyllm", "quantize", base, out, "--type", "f32", "-q", "--lora",
                        adapter("llama3") + ":0.5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ids = _ids(50, seed=7)
    m = pyllm.load(out, n_ctx=128)
    assert m._cmodel.lora_count() == 0
    _close(m.logits(ids), pyllm.load(base, n_ctx=128, lora=[(adapter("llama3"), 0.5)]).logits(ids))


def test_adapter_errors(checkpoint, adapter, tmp_path):
    # made for another model: shapes differ (qwen2's adapter on llama3: same names, other shapes)
    with pytest.raises(ModelLoadError, match="adapter for a different model"):
        pyllm.load(checkpoint("llama3", "float32"), n_ctx=64, lora=adapter("qwen2"))
    # phi3's fused names do not exist in a Llama
    with pytest.raises(ModelLoadError, match="(qkv|gate_up)_proj.weight but the model has no such weight"):
        pyllm.load(checkpoint("llama3", "float32"), n_ctx=64, lora=adapter("phi3"))
    with pytest.raises(ModelLoadError, match="no such|not found|adapter_config"):
        pyllm.load(checkpoint("llama3", "float32"), n_ctx=64, lora=str(tmp_path / "missing"))
    with pytest.raises(TypeError):
        pyllm.load(checkpoint("llama3", "float32"), n_ctx=64, lora=42)
    with pytest.raises(ValueError, match="finite"):
        pyllm.load(checkpoint("llama3", "float32"), n_ctx=64, lora=[(adapter("llama3"), float("nan"))])
    r = subprocess.run([sys.executable, "-m", "pyllm", "quantize", checkpoint("llama3", "float32"),
                        str(tmp_path / "x.gguf"), "-q", "--lora", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "error" in r.stderr and not os.path.exists(tmp_path / "x.gguf")


def test_generate_cli_applies_the_adapter(checkpoint, adapter):
    base = checkpoint("llama3", "float32")
    m = pyllm.load(base, n_ctx=128, lora=[(adapter("llama3"), 0.5)])
    want = m.generate("Hello world", max_tokens=8, temperature=0, ignore_eos=True)
    r = subprocess.run([sys.executable, "-m", "pyllm", "generate", base, "-p", "Hello world", "-n", "8", "--temp", "0",
                        "--ignore-eos", "--no-echo", "--lora", adapter("llama3") + ":0.5"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want.strip()
    plain = pyllm.load(base, n_ctx=128).generate("Hello world", max_tokens=8, temperature=0, ignore_eos=True)
    assert plain != want
