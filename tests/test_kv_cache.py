"""test_kv_cache.py: the f16 KV cache (kv_type="f16": half the memory, keys and values rounded to
fp16 as they are written, llama.cpp's default cache type) against the exact f32 one.

Bounds: fp16 keeps 11 significant bits (relative rounding <= 2^-11 = 4.9e-4 per cached element);
attention averages over many of them, so on the trained shipped model the logits move by
~1.7e-4 of their largest magnitude and the mean KL-divergence is ~3e-8 (measured). We allow
1e-3 * max|logit| and mean KL 1e-6, below Q8_0 weights' own effect (KL ~2e-4) by two orders,
and far below what a wrong row stride or type mix-up in the cache gives (garbage logits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pyllm
from pyllm import _engine
from test_parity import assert_logits_close, prompt_ids

TEXT = Path(__file__).parent / "fixtures" / "heldout_shakespeare.txt"


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def shipped_pair():
    return pyllm.load(kv_type="f32"), pyllm.load(kv_type="f16")


def test_f16_cache_close_to_f32(shipped_pair):
    exact, half = shipped_pair
    text = TEXT.read_text()[:3000]
    ids = exact.tokenizer.encode(text)[:256]
    a = exact.sequence().append(ids, all_logits=True).astype(np.float64)
    b = half.sequence().append(ids, all_logits=True).astype(np.float64)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    pa, pb = log_softmax(a), log_softmax(b)
    assert float((np.exp(pa) * (pa - pb)).sum(-1).mean()) <= 1e-6
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99
    assert not np.array_equal(a, b)  # the cache really is f16


def test_f16_cache_half_the_memory(shipped_pair):
    exact, half = shipped_pair
    assert exact.sequence()._kv.nbytes == 2 * half.sequence()._kv.nbytes > 0


@pytest.mark.parametrize("arch", ["llama2", "llama3", "mistral"])
def test_f16_cache_decoding_equals_prefill(checkpoint, arch):
    """Both read the same fp16-rounded keys and values, so stepwise decoding and one-shot prefill
    (in chunks crossing the MLP pass) agree as closely as with the f32 cache."""
    m = pyllm.load(checkpoint(arch, "float32"), n_ctx=512, kv_type="f16")
    ids = prompt_ids(m.vocab_size, n=150, seed=4)
    full = m.sequence().append(ids, all_logits=True)
    seq = m.sequence()
    stepwise = np.concatenate([seq.append(ids[:100], all_logits=True)] + [seq.append([t])[None] for t in ids[100:]])
    assert_logits_close(stepwise, full)


def test_bad_kv_type(checkpoint):
    with pytest.raises(ValueError, match="kv_type"):
        pyllm.load(kv_type="q8_0")
    m = pyllm.load()
    with pytest.raises(ValueError, match="KV cache type"):
        _engine.KVCache(m._cmodel, 16, 8)
