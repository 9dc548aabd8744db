"""test_batch_invariance.py: a sequence's logits do not depend on what else shares its forward
call. Every kernel sums each output in a fixed order whatever its tile's shape (packed gemm
lanes, the float gemm's transpose-and-add network, per-row norms and quantization, per-(token,
head) attention), so batching other sequences with it (as perplexity does, and as continuous
batching will) gives bit-identical logits, on every ISA and weight type."""
from __future__ import annotations

import numpy as np
import pytest

import pyllm
from pyllm import _engine

ISAS = ["scalar"] + [isa for isa in ("avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm") if _engine.isa_supported(isa)]


@pytest.fixture(autouse=True)
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


def alone_and_batched(m, a_ids, b_ids):
    """logits of every token of a, run alone and run interleaved with b in one call"""
    ka, kb, kc = (_engine.KVCache(m._cmodel, 256) for _ in range(3))
    alone = m._runner.forward([ka], a_ids, range(len(a_ids)), [0] * len(a_ids), range(len(a_ids)), m.n_threads)
    toks, pos, seqs = [], [], []
    for i in range(max(len(a_ids), len(b_ids))):  # a and b interleaved, b's tokens shifting the tiles
        for s, ids in ((0, a_ids), (1, b_ids)):
            if i < len(ids):
                toks.append(ids[i]), pos.append(i), seqs.append(s)
    rows = [j for j, s in enumerate(seqs) if s == 0]
    batched = m._runner.forward([kc, kb], toks, pos, seqs, rows, m.n_threads)
    return alone, batched


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("quant", [None, "q4_0", "q8_0", "bf16"])
def test_logits_do_not_depend_on_the_batch(checkpoint, isa, quant):
    _engine.set_isa(isa)
    m = pyllm.load(checkpoint("llama3", "float32"), n_ctx=256, quant=quant)
    rng = np.random.default_rng(7)
    a = rng.integers(3, m.vocab_size, 37).tolist()
    for nb in (1, 6, 50):
        alone, batched = alone_and_batched(m, a, rng.integers(3, m.vocab_size, nb).tolist())
        np.testing.assert_array_equal(alone, batched)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("arch", ["mixtral", "mixtral4", "qwen2", "qwen3", "phi3"])
@pytest.mark.parametrize("quant", [None, "q4_0"])
def test_family_logits_do_not_depend_on_the_batch(checkpoint, isa, arch, quant):
    """The other families' layers too: biases, per-head norms, fused weights, and MoE routing (a
    token's experts and the order of their sum do not depend on which tokens share its chunk)."""
    _engine.set_isa(isa)
    m = pyllm.load(checkpoint(arch, "float32"), n_ctx=256, quant=quant)
    rng = np.random.default_rng(8)
    a = rng.integers(3, 32000, 29).tolist()
    for nb in (1, 40):
        alone, batched = alone_and_batched(m, a, rng.integers(3, 32000, nb).tolist())
        np.testing.assert_array_equal(alone, batched)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("quant", [None, "q8_0"])
def test_moe_decode_path_equals_the_batched_one(checkpoint, isa, quant):
    """A one-token forward (decode) takes MoE's one-token path; the same token in a batch with others
    takes the grouped path: bit-identical logits."""
    _engine.set_isa(isa)
    m = pyllm.load(checkpoint("mixtral", "float32"), n_ctx=256, quant=quant)
    rng = np.random.default_rng(9)
    prompt = rng.integers(3, 32000, 20).tolist()
    other = rng.integers(3, 32000, 7).tolist()
    k1, k2, k3 = (_engine.KVCache(m._cmodel, 256) for _ in range(3))
    for k in (k1, k2):
        m._runner.forward([k], prompt, range(20), [0] * 20, [19], m.n_threads)
    for tok in rng.integers(3, 32000, 4).tolist():
        pos = len(prompt)
        alone = m._runner.forward([k1], [tok], [pos], [0], [0], m.n_threads)
        batched = m._runner.forward([k3, k2], other + [tok], list(range(7)) + [pos], [0] * 7 + [1], [7], m.n_threads)
        np.testing.assert_array_equal(alone, batched)
        prompt.append(tok)
        k3 = _engine.KVCache(m._cmodel, 256)
