"""test_parity.py: pyllm against Hugging Face transformers on tiny random-init models of each
architecture (fp32 and bf16 files) and on the shipped trained model.

Tolerance: both sides compute in float32 from bit-identical weights; they differ only in the
order of floating-point sums (SIMD lanes, blocked matmuls, fused softmax), i.e. a few ulp per
operation. Through 2 layers and a 64-wide residual that is ~1e-5 relative, so we allow
max |diff| <= 1e-4 * max(1, max |logit|): two orders above what we measure, and far below the
~1e-2 effect of any real bug (a wrong rope frequency, mask or norm epsilon)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pyllm
from conftest import ARCHS, hf_model

RTOL = 1e-4
N_PROMPT = 200  # longer than Mistral's test sliding window (24), Llama 3's original context (32), Phi-3's
# LongRoPE original context (64) and the engine's MLP pass (128 tokens: csrc/forward.c MLP_CHUNK)
# LongRoPE picks its factors by the longest position of the forward (as transformers does), so a
# sequence built step by step past the original context keeps keys rotated with the short factors
# and is not the same computation as one forward over the whole prompt (in transformers neither):
# the cached / chunked tests stay below it for that model, and test_longrope_switch_* crosses it.
LONGROPE_CTX = {"phi3-longrope": 64}


def assert_logits_close(ours: np.ndarray, ref: np.ndarray):
    assert ours.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= RTOL * scale, f"max |diff| {err:.3g} > {RTOL * scale:.3g}"


def prompt_ids(vocab: int, n: int = N_PROMPT, seed: int = 1) -> list:
    return np.random.default_rng(seed).integers(3, min(vocab, 32000), n).tolist()


def hf_logits(m, ids) -> np.ndarray:
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(m, ids, n) -> list:
    """Greedy decoding with transformers' KV cache, EOS ignored."""
    out = []
    with torch.no_grad():
        r = m(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            tok = int(r.logits[0, -1].argmax())
            out.append(tok)
            r = m(torch.tensor([[tok]]), past_key_values=r.past_key_values, use_cache=True)
    return out


CASES = [(a, d) for a in ARCHS for d in ("float32", "bfloat16")]


@pytest.fixture(scope="module")
def pair(checkpoint):
    cache = {}

    def get(arch, dtype):
        if (arch, dtype) not in cache:
            path = checkpoint(arch, dtype)
            cache[(arch, dtype)] = (pyllm.load(path, n_ctx=512), hf_model(path))
        return cache[(arch, dtype)]

    return get


@pytest.mark.parametrize("arch,dtype", CASES)
def test_prompt_logits_match_transformers(pair, arch, dtype):
    ours, ref = pair(arch, dtype)
    ids = prompt_ids(ours.vocab_size)
    assert_logits_close(ours.logits(ids), hf_logits(ref, ids))


@pytest.mark.parametrize("arch,dtype", CASES)
def test_cached_decoding_equals_full_recompute(pair, arch, dtype):
    ours, _ = pair(arch, dtype)
    ids = prompt_ids(ours.vocab_size, n=LONGROPE_CTX.get(arch, N_PROMPT), seed=2)
    full = ours.logits(ids)
    seq = ours.sequence()
    stepwise = np.stack([seq.append([t]) for t in ids])
    assert len(seq) == len(ids)
    assert_logits_close(stepwise, full)


@pytest.mark.parametrize("arch,dtype", CASES)
def test_chunked_prefill_equals_one_shot(pair, arch, dtype):
    ours, _ = pair(arch, dtype)
    n = LONGROPE_CTX.get(arch, N_PROMPT)
    ids = prompt_ids(ours.vocab_size, n=n, seed=3)
    one = ours.logits(ids)
    seq = ours.sequence()
    cuts = sorted({0, 7, 50, 51, min(190, n - 1), n})
    parts = [seq.append(ids[a:b], all_logits=True) for a, b in zip(cuts, cuts[1:])]
    assert_logits_close(np.concatenate(parts), one)
    # and the engine's own chunking (n_batch) is invisible too
    ours.n_batch = 16
    try:
        assert_logits_close(ours.logits(ids), one)
    finally:
        ours.n_batch = 512


@pytest.mark.parametrize("arch,dtype", CASES)
def test_greedy_continuation_matches_transformers(pair, arch, dtype):
    ours, ref = pair(arch, dtype)
    ids = prompt_ids(ours.vocab_size, n=100, seed=4)
    got = ours.generate_tokens(ids, max_tokens=64, temperature=0, ignore_eos=True)
    assert got == hf_greedy(ref, ids, 64)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_longrope_switch_during_generation_matches_transformers(pair, dtype):
    """A 40-token prompt (short factors) generating past position 64: from there each new token uses
    the long factors while the cached keys keep the short ones, exactly as transformers' cached
    generation does; and a prompt already past 64 runs long from its first token."""
    ours, ref = pair("phi3-longrope", dtype)
    for n in (40, 100):
        ids = prompt_ids(ours.vocab_size, n=n, seed=7)
        assert ours.generate_tokens(ids, max_tokens=64, temperature=0, ignore_eos=True) == hf_greedy(ref, ids, 64)
    # the same 60 tokens give other logits when the forward reaches past 64 (long factors for all of
    # them), in both engines
    ids = prompt_ids(ours.vocab_size, n=80, seed=8)
    long_, short = ours.logits(ids), ours.logits(ids[:60])
    assert_logits_close(long_, hf_logits(ref, ids))
    assert_logits_close(short, hf_logits(ref, ids[:60]))
    assert np.abs(long_[:60] - short).max() > 1e-2


def test_sequences_are_independent(pair):
    """Two live sequences share the model but not their caches."""
    ours, _ = pair("mistral", "float32")
    a_ids, b_ids = prompt_ids(32000, 40, seed=5), prompt_ids(32000, 30, seed=6)
    a, b = ours.sequence(), ours.sequence()
    a.append(a_ids[:20])
    b.append(b_ids)
    la = a.append(a_ids[20:])
    assert_logits_close(la[None], ours.logits(a_ids)[-1:])
    a.reset()
    assert len(a) == 0
    assert_logits_close(a.append(b_ids)[None], b.logits[None])


SHIPPED_PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed", "KING RICHARD III:\nNow is the winter", "O"]


@pytest.fixture(scope="module")
def shipped():
    path = pyllm.default_model_path()
    return pyllm.load(), hf_model(path), path


@pytest.mark.parametrize("prompt", SHIPPED_PROMPTS)
def test_shipped_model_greedy_matches_transformers(shipped, prompt):
    ours, ref, _ = shipped
    ids = ours.tokenize(prompt)
    assert ours.generate_tokens(ids, max_tokens=100, temperature=0, ignore_eos=True) == hf_greedy(ref, ids, 100)


def test_shipped_model_text(shipped):
    ours, _, _ = shipped
    text = ours.generate("ROMEO:\n", max_tokens=8, temperature=0)
    assert text.startswith("Ay, my good lord."), text  # as the model card says transformers writes


def test_bf16_weights_stay_16_bit(checkpoint):
    """Loading must not upcast: weights are read through mmap (file-backed pages), so loading and
    running a bf16 checkpoint adds almost no anonymous memory; an fp32 copy would add 2x the file."""
    import os
    import subprocess
    import sys

    path = checkpoint("llama2", "bfloat16")
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    code = (
        "import sys, pyllm\n"
        "from pyllm.hf_loader import load_hf_folder\n"
        "def mem(key):\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) * 1024\n"
        "a0, f0 = mem('RssAnon'), mem('RssFile')\n"
        "cfg, cm, _ = load_hf_folder(sys.argv[1], 64)\n"
        "r = pyllm._engine.Runner(cm); kv = pyllm._engine.KVCache(cm, 64)\n"
        "r.forward([kv], list(range(0, 32000, 640)), range(50), [0] * 50, [49])\n"
        "print(mem('RssAnon') - a0, mem('RssFile') - f0)\n"
    )
    anon, filed = map(int, subprocess.check_output([sys.executable, "-c", code, path]).decode().split()[-2:])
    assert filed > 0.4 * size, f"weights were not read through the mapping ({filed} file-backed bytes)"
    assert anon < 0.25 * size, f"{anon} bytes of anonymous memory for a {size}-byte bf16 checkpoint"
