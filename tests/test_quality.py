"""test_quality.py: output quality of the shipped shakespeare-4m model under quantization, and the
perplexity tool itself (pyllm.perplexity and `pyllm perplexity`).

Quantization is measured over held-out text (tests/fixtures/heldout_shakespeare.txt, 33 chunks of 256
tokens, llama.cpp's method: pyllm/perplexity.py) as mean KL-divergence and top-1 agreement against the
unquantized model, for three ways of choosing the Q4_0 / Q8_0 scales (pyllm/quantization.py):
"reference" (ggml's quantizer, bit-identical to llama.cpp's), "search" (error-minimizing scales: the
default of pyllm.load(quant=...)) and "search" weighted with an importance matrix collected over the
model's calibration text (pyllm.load(quant=..., calibration=...)). The default must be no worse than
llama.cpp at the same bits: llama.cpp's numbers on this same file and chunking (LLAMA_CPP), and the
issue's numbers (ISSUE, measured on other held-out text)."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm.hf_loader import load_hf_folder
from pyllm.imatrix import collect_importance
from pyllm.model import Model
from pyllm.perplexity import perplexity
from pyllm.quantization import DEFAULT_METHOD
from pyllm.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT = os.path.join(ROOT, "tests", "fixtures", "heldout_shakespeare.txt")
CALIBRATION = os.path.join(pyllm.default_model_path(), "calibration.txt")  # training text, never the held-out
CTX = 256  # the model was trained on 256-token sequences

# (max mean KL, min top-1) for the same bits.
# llama.cpp (llama-cpp-python 0.3.36, llama-perplexity --kl-divergence against the F32 GGUF) on this file,
# 33 chunks of 256: Q8_0 KL 0.000200 / top-1 98.64%, Q4_0 KL 0.0208 / top-1 87.78% (its Q4_0 file keeps the
# LM head in Q6_K; pyllm's in Q8_0).
LLAMA_CPP = {"q8_0": (0.000200, 0.9864), "q4_0": (0.0208, 0.8778)}
# the issue's numbers for llama.cpp, measured on other held-out Shakespeare text
ISSUE = {"q8_0": (0.0002, 0.987), "q4_0": (0.022, 0.89)}
# Measured here (this machine, avx512 kernels), KL / top-1:
#                       reference            search (default)     search + imatrix
#   Q8_0               0.000203 / 98.85%    0.000181 / 98.54%    0.000179 / 98.57%
#   Q4_0               0.0207   / 88.02%    0.0172   / 88.90%    0.0175   / 88.98%
# Top-1 agreement is a count of argmax flips at near-ties (Q8_0: ~50 of 4191 tokens, stderr ~0.17%), and
# more than half of Q8_0's logit error comes from the engine's Q8_0 activations, not the weights: with the
# weights alone (dequantized, F32 matmuls) the search has 24 flips where the reference has 36, KL 0.000062
# against 0.000087; with the activations the flips are a noisy draw around the reference's.
METHODS = ("reference", "search", "imatrix")
DEFAULT = "search"
assert DEFAULT_METHOD == DEFAULT

PROMPTS = [
    "ROMEO:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "KING RICHARD III:\nNow is the winter of our discontent\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n",
    # prompts whose unquantized greedy path has no near-tie in 64 tokens (found by scanning ~270 speech
    # openings of the calibration and held-out text: about 1 in 40 has none)
    "There's some among you have beheld me fighting:\n",
    "All:\n",
    "Roman:\n",
    "MENENIUS:\nNote me this, good friend;\n",
    "Sees Helen's beauty in a brow of Egypt:\nThe poet's eye, in fine frenzy rolling,\n",
    "OPHELIA:\nMy honour'd lord, you know right well you did;\n",
]
NEAR_TIE = 0.05  # top-2 logit gap of the unquantized model below which 8-bit weights may flip the argmax
GREEDY_TOKENS = 64


@pytest.fixture(scope="module")
def base():
    return pyllm.load(n_threads=1)  # bf16 weights, fp32 compute; one thread: steadier on a busy machine


@pytest.fixture(scope="module")
def importance():
    """importance matrix from the shipped calibration text (llama.cpp's imatrix default: 512-token
    chunks), computed on first use"""
    cache = []

    def get():
        if not cache:
            with open(CALIBRATION, encoding="utf-8") as f:
                cache.append(collect_importance(pyllm.load(), f.read(), n_ctx=512))
        return cache[0]

    return get


@pytest.fixture(scope="module")
def quantized(importance):
    cache = {}

    def get(q, method=DEFAULT):
        if (q, method) not in cache:
            if method == "reference":  # built as pyllm.load does, with the reference quantizer
                path = pyllm.default_model_path()
                cfg, cm, gen = load_hf_folder(path, 1024, quant=q, method="reference")
                cache[(q, method)] = Model(cm, cfg, Tokenizer.from_dir(path), n_ctx=1024, n_threads=1,
                                           generation_config=gen, path=path)
            elif method == "search":
                cache[(q, method)] = pyllm.load(quant=q, n_threads=1)  # the default
            else:
                cache[(q, method)] = pyllm.load(quant=q, n_threads=1, calibration=importance())
        return cache[(q, method)]

    return get


@pytest.fixture(scope="module")
def heldout():
    with open(HELDOUT, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def quality(base, quantized, heldout):
    """perplexity(quantized model, held-out text, ref=unquantized) over the whole file."""
    cache = {}

    def get(q, method=DEFAULT):
        if (q, method) not in cache:
            cache[(q, method)] = perplexity(quantized(q, method), heldout, n_ctx=CTX, ref=base)
        return cache[(q, method)]

    return get


def _fmt(q, method, r):
    return (f"{q} {method}: mean KL {r.kl_mean:.6f} +/- {r.kl_stderr:.6f}, top-1 {100 * r.top1:.2f}% "
            f"+/- {100 * r.top1_stderr:.2f}% over {r.n_tokens} tokens ({r.n_chunks} chunks of {r.n_ctx})")


def _table(quality):
    return "; ".join(_fmt(q, m, quality(q, m)) for q in ("q8_0", "q4_0") for m in METHODS)


# ---------------------------------------------------------------------------- quantization quality

def test_q8_0_greedy_matches_unquantized(base, quantized):
    """Q8_0 (the default method) gives the unquantized model's greedy output for 64 tokens. The prompts
    are judged by the unquantized model alone: where its greedy path never has a near-tie (top-2 logits
    within NEAR_TIE) the output must be identical, and at least 4 prompts must be such; elsewhere the
    outputs may part only at a near-tie (8-bit weights may flip one)."""
    q8 = quantized("q8_0")
    clean, report = [], []
    for prompt in PROMPTS:
        ids = base.tokenize(prompt)
        want = base.generate_tokens(prompt, max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True)
        assert len(want) == GREEDY_TOKENS
        logits = base.logits(ids + want[:-1])[len(ids) - 1:]  # the logits each greedy token was chosen from
        top2 = np.sort(logits, axis=1)[:, -2:]
        gaps = top2[:, 1] - top2[:, 0]
        assert np.all((logits.argmax(axis=1) == want) | (gaps < 1e-3)), prompt
        got = q8.generate_tokens(prompt, max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True)
        assert len(got) == GREEDY_TOKENS
        i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
        if gaps.min() >= NEAR_TIE:
            clean.append(prompt)
            assert i is None, f"{prompt!r}: no near-tie (min top-2 gap {gaps.min():.4f}) yet differs from token {i} on"
        elif i is not None:
            report.append(f"{prompt!r}: differs from token {i} on, top-2 gap there {gaps[i]:.4f}")
            assert gaps[i] < NEAR_TIE, report[-1]
    assert len(clean) >= 4, f"only {len(clean)} prompts without a near-tie: {clean}"


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_kl_and_top1_vs_llama_cpp(quality, quant):
    """The default quantization against llama.cpp's numbers on this same text. KL-divergence (the
    whole distribution) must be at or below llama.cpp's. Top-1 agreement is a count of argmax flips
    at near-ties (Q8_0: ~60 of 4191 tokens), a noisy draw: it must not be below llama.cpp's by more
    than two standard errors of our own estimate (i.e. not measurably worse)."""
    r = quality(quant)
    max_kl, llama_top1 = LLAMA_CPP[quant]
    msg = _fmt(quant, DEFAULT, r) + f"; llama.cpp: KL {max_kl}, top-1 {100 * llama_top1:.2f}%"
    assert r.n_chunks >= 20 and r.n_tokens == r.n_chunks * (CTX - CTX // 2 - 1), msg
    assert 0 <= r.kl_mean <= max_kl, msg
    assert r.top1 >= llama_top1 - 2 * r.top1_stderr, msg
    assert r.kl_median <= r.kl_p99 <= r.kl_max
    # the quantized model is not much worse than the reference on the text itself
    assert r.ppl < r.ref_ppl * (1.001 if quant == "q8_0" else 1.05), msg


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_kl_vs_issue(quality, quant):
    """The default quantization's KL-divergence against the issue's llama.cpp figure. (The issue's
    top-1 figures were measured on other text, where agreement runs higher for every engine: on
    this file llama.cpp itself reaches 98.64% / 87.78%, below the issue's 98.7% / 89%, so top-1 is
    compared on the same text above.)"""
    r = quality(quant)
    max_kl, _ = ISSUE[quant]
    assert 0 <= r.kl_mean <= max_kl, _fmt(quant, DEFAULT, r) + f"; issue: KL {max_kl}"


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_search_beats_reference(quality, quant):
    """Choosing the scales lowers the KL-divergence clearly (measured: Q4_0 -17%, Q8_0 -11%), with or
    without importance."""
    ref, new, imx = quality(quant, "reference"), quality(quant, "search"), quality(quant, "imatrix")
    msg = _table(quality)
    print(msg)
    assert new.kl_mean < 0.93 * ref.kl_mean, msg
    assert imx.kl_mean < 0.93 * ref.kl_mean, msg


def test_q4_0_is_worse_than_q8_0(quality):
    for method in METHODS:
        q8, q4 = quality("q8_0", method), quality("q4_0", method)
        assert q4.kl_mean > q8.kl_mean and q4.top1 < q8.top1


# ---------------------------------------------------------------------------- perplexity API

def test_heldout_ppl_plausible(quality):
    r = quality("q8_0")  # its reference is the unquantized model
    # the model's in-corpus held-out loss is 3.27 nats/token (ppl ~26); other plays read a bit harder
    assert math.isfinite(r.ref_ppl) and 15 < r.ref_ppl < 80, r.ref_ppl
    assert 0 < r.ref_ppl_stderr < r.ref_ppl / 10


def test_matches_direct_computation(base, heldout):
    """llama.cpp's method, spelled out: BOS replaces each chunk's first token, the second half is scored."""
    c, n = 64, 3
    ids = base.tokenize(heldout)
    nll = []
    for k in range(n):
        chunk = list(ids[k * c : (k + 1) * c])
        chunk[0] = base.tokenizer.bos_id
        logits = base.logits(chunk).astype(np.float64)
        for p in range(c // 2, c - 1):
            x = logits[p] - logits[p].max()
            nll.append(np.log(np.exp(x).sum()) - x[chunk[p + 1]])
    nll = np.array(nll)
    r = perplexity(base, heldout, n_ctx=c, n_chunks=n)
    assert (r.n_chunks, r.n_ctx, r.n_tokens) == (n, c, len(nll))
    assert r.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-9)
    assert r.ppl_stderr == pytest.approx(r.ppl * nll.std() / math.sqrt(len(nll) - 1), rel=1e-6)
    assert r.uncertainty == r.ppl_stderr
    assert len(r.chunk_ppl) == n and r.kl_mean is None and r.top1 is None
    # token ids give the same result; so do other batch sizes (one chunk split over several calls,
    # or several chunks in one call)
    assert perplexity(base, ids, n_ctx=c, n_chunks=n).ppl == pytest.approx(r.ppl, rel=1e-9)
    for batch in (20, 128, 200):
        assert perplexity(base, heldout, n_ctx=c, n_chunks=n, batch=batch).ppl == pytest.approx(r.ppl, rel=1e-5)


def test_same_model_as_ref_gives_zero_kl(base, heldout):
    r = perplexity(base, heldout, n_ctx=128, n_chunks=2, ref=base)
    assert abs(r.kl_mean) < 1e-12 and r.kl_max < 1e-12
    assert r.top1 == 1.0
    assert r.ref_ppl == pytest.approx(r.ppl, rel=1e-12)


def _tiny_llama(folder: str, vocab: int = 32000) -> str:
    """A 1-layer random Llama checkpoint with the Llama 2 tokenizer (numpy + safetensors, no torch)."""
    import json
    import shutil

    from safetensors.numpy import save_file

    h, ff, rng = 64, 128, np.random.default_rng(0)
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab, hidden_size=h,
               intermediate_size=ff, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
               max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
               bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for name, shape in [("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (h, h)), ("self_attn.v_proj", (h, h)),
                        ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (ff, h)), ("mlp.up_proj", (ff, h)),
                        ("mlp.down_proj", (h, ff)), ("input_layernorm", (h,)), ("post_attention_layernorm", (h,))]:
        shapes[f"model.layers.0.{name}.weight"] = shape
    save_file({k: (np.ones(v) if len(v) == 1 else rng.normal(0, 0.05, v)).astype(np.float32)
               for k, v in shapes.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    tok = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "llama2")
    for name in os.listdir(tok):
        shutil.copy(os.path.join(tok, name), folder)
    return folder


def test_vocab_mismatch_raises(base, heldout, tmp_path):
    other = pyllm.load(_tiny_llama(str(tmp_path)), n_ctx=256)  # 32000-token vocabulary
    assert other.vocab_size != base.vocab_size
    with pytest.raises(ValueError, match="vocabulary"):
        perplexity(base, heldout, n_ctx=128, ref=other)
    with pytest.raises(ValueError, match="vocabulary"):
        perplexity(other, heldout, n_ctx=128, ref=base)


def test_text_too_short_raises(base):
    with pytest.raises(ValueError, match=r"needs at least 256 tokens"):
        perplexity(base, "HAMLET:\nTo be, or not to be.\n", n_ctx=256)
    with pytest.raises(ValueError, match="needs at least"):
        perplexity(base, "", n_ctx=16)


def test_bad_arguments_raise(base, heldout):
    for kw in (dict(n_ctx=2), dict(n_ctx=4096), dict(n_chunks=0), dict(batch=0)):
        with pytest.raises(ValueError):
            perplexity(base, heldout, **kw)


# ---------------------------------------------------------------------------- CLI

def _cli(*args):
    # the installed package (conftest runs tests from an empty directory)
    return subprocess.run([sys.executable, "-m", "pyllm", "perplexity", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_perplexity():
    model = pyllm.default_model_path()
    p = _cli(model, HELDOUT, "-c", "128", "--chunks", "3", "-t", "1")
    assert p.returncode == 0, p.stderr
    assert "[3/3] PPL" in p.stdout
    m = re.search(r"PPL = ([0-9.]+) \+/- ([0-9.]+)", p.stdout)
    assert m and 1 < float(m.group(1)) < 1000 and float(m.group(2)) > 0, p.stdout
    assert "KLD" not in p.stdout


def test_cli_perplexity_with_ref():
    model = pyllm.default_model_path()
    p = _cli(model, HELDOUT, "--ref", model, "--quant", "q4_0", "-c", "128", "--chunks", "2", "-t", "1")
    assert p.returncode == 0, p.stderr
    assert re.search(r"PPL = [0-9.]+ \+/- [0-9.]+", p.stdout), p.stdout
    m = re.search(r"Mean KLD\s*: ([0-9.]+) \+/- ([0-9.]+)", p.stdout)
    assert m and 0 < float(m.group(1)) < 1, p.stdout
    m = re.search(r"Top-1 agreement: ([0-9.]+) \+/- [0-9.]+ %", p.stdout)
    assert m and 50 < float(m.group(1)) <= 100, p.stdout


def test_cli_bad_arguments(tmp_path):
    model = pyllm.default_model_path()
    missing = str(tmp_path / "no-such-file.txt")
    p = _cli(model, missing)
    assert p.returncode != 0
    assert "no-such-file.txt" in p.stderr and "Traceback" not in p.stderr
    p = _cli(str(tmp_path / "no-such-model"), HELDOUT)
    assert p.returncode != 0 and "no-such-model" in p.stderr and "Traceback" not in p.stderr
    short = tmp_path / "short.txt"
    short.write_text("HAMLET:\nTo be, or not to be.\n", encoding="utf-8")
    p = _cli(model, str(short), "-c", "256")
    assert p.returncode != 0 and "needs at least 256 tokens" in p.stderr and "Traceback" not in p.stderr
    p = _cli(model)  # FILE missing: argparse usage error
    assert p.returncode == 2 and "usage" in p.stderr
