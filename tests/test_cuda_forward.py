"""test_cuda_forward.py: pyllm.load(device="cuda"), the whole forward on the GPU (csrc/cuda/forward.cu),
against the CPU engine on the same loaded weights: logits, greedy continuations, concurrent requests
through the batching engine, the fp16 KV cache, every dense architecture's options (sliding window, q/k/v
biases, per-head q/k norms), and what it refuses. Runs where a CUDA device is (a PYLLM_CUDA=ON build on a
GPU, or the CPU emulation of the kernels: tests/test_cuda_emulation.py); elsewhere only the refusals run.

Tolerance of the logits. Both devices compute every step with the same formulas on the same stored
weights: Q4_0 / Q8_0 matmuls as exact integer block dots times the same scales against the same Q8_0
activations; F32 / F16 / BF16 weights widened exactly; RMSNorm's sum of squares in double. They differ
only in the order of fp32 sums (matmul rows, attention's softmax split over the keys and its P x V),
about 2^-24 relative per sum: with float weights and an fp32 KV cache the logits agree to ~1e-6 of their
range (measured on the shipped model: 2e-7 to 7e-7), so FLOAT_TOL = 2e-5. Two roundings turn such a
last-bit difference into a step when a value lies at a rounding boundary: the fp16 KV cache (one fp16
ulp, 2^-10 relative, in one key or value: measured 7e-5 of the logits' range, FP16_KV_TOL = 1e-3) and the
Q8_0 quantization of activations for Q4_0 / Q8_0 weights (one whole quantization step, 1/127 of a block's
largest value, in one activation: measured up to 4e-3, QUANT_TOL = 1.5e-2). The K-quants (Q4_K / Q5_K / Q6_K,
the q4_k_m / q5_k_m / q6_k mixes) are multiplied with Q8_K activations, whose step is 1/127 of a 256-value
super-block's largest value, larger than a 32-value block's: one flip measured up to 8.6e-3 (q4_k_m on the
256-wide checkpoint below, 4 prompts x 40 rows; most rows within 3e-7), and on the shipped model up to 5e-3
(q4_k_m, q5_k_m: a flip in one prompt row's keys or values reaches every later row; the CPU's own scalar and
AVX-512 kernels differ by 3.9e-3 there for the same reason), KQUANT_TOL = 2.5e-2. Such a flip can also turn a
near tie (3e-3 of the range) the other way, so greedy continuations are compared only where the measured
runs kept them equal (q6_k on the shipped model; the 256-wide checkpoint's mixes). A kernel bug (a wrong index, a
missing term, a wrong scale) shows as errors of the order of the logits themselves. Where the CPU's top
two logits are further apart than twice the tolerance, the top token must be the same.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyllm
from pyllm import _engine

INFO = _engine.cuda_info()
HAVE_GPU = INFO["built"] and INFO["devices"] > 0
gpu = pytest.mark.skipif(not HAVE_GPU, reason="needs a PYLLM_CUDA=ON build and a CUDA device (or the CPU "
                         "emulation build): " + (INFO["error"] or ""))
# on the CPU emulation (tests/test_cuda_emulation.py, in CI) every model test costs seconds: the cases another
# case covers there (the same kernels on the same model) run only on a real device
EMULATED = HAVE_GPU and "emulation" in INFO["device_list"][0]["name"]
full = pytest.mark.skipif(EMULATED, reason="covered by the other cases on the CPU emulation; runs on a GPU")

FLOAT_TOL, FP16_KV_TOL, QUANT_TOL, KQUANT_TOL = 2e-5, 1e-3, 1.5e-2, 2.5e-2


def tol_for(quant, kv_type="f32"):
    if quant in ("q8_0", "q4_0"):
        return QUANT_TOL
    if quant in ("q4_k_m", "q5_k_m", "q6_k"):
        return KQUANT_TOL
    return FP16_KV_TOL if kv_type == "f16" else FLOAT_TOL
PROMPT = ("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
          "JULIET:\n")


def assert_logits_close(gpu_logits, cpu_logits, what, tol):
    gpu_logits = np.asarray(gpu_logits, dtype=np.float64)
    cpu_logits = np.asarray(cpu_logits, dtype=np.float64)
    assert gpu_logits.shape == cpu_logits.shape
    assert np.isfinite(gpu_logits).all(), f"{what}: non-finite GPU logits"
    scale = np.abs(cpu_logits).max()
    err = np.abs(gpu_logits - cpu_logits).max()
    assert err <= tol * scale, f"{what}: max |gpu - cpu| = {err:.3g}, {err / scale:.2e} of the logits' range"
    rows = cpu_logits.reshape(-1, cpu_logits.shape[-1])
    grows = gpu_logits.reshape(rows.shape)
    top2 = np.sort(rows, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol * scale
    assert (rows.argmax(1) == grows.argmax(1))[clear].all(), f"{what}: a different top token"


def all_logits(model, ids):
    seq = model.sequence()
    return seq.append(ids, all_logits=True)


# ---------------------------------------------------------------- on a device
@gpu
@pytest.mark.parametrize("quant", [None, pytest.param("f32", marks=full), pytest.param("f16", marks=full), "q8_0", "q4_0",
                                   "q6_k", "q4_k_m", pytest.param("q5_k_m", marks=full)])
def test_shipped_model_logits_match_the_cpu(quant):
    """the K-quant mixes: Q4_K / Q5_K / Q6_K wherever 256-weight super-blocks divide the rows (embedding, LM
    head, attention, gate / up); the 704-wide FFN down falls back to Q8_0 (q6_k, and q4_k_m / q5_k_m in the
    layers given more bits), Q5_0 (q4_k_m) or Q5_1 (q5_k_m)"""
    cpu = pyllm.load(quant=quant, n_ctx=256)
    cuda = pyllm.load(quant=quant, n_ctx=256, device="cuda")
    assert cuda.device == "cuda" and "device=cuda" in repr(cuda)
    ids = cpu.tokenize(PROMPT)
    assert len(ids) > 40
    assert_logits_close(all_logits(cuda, ids), all_logits(cpu, ids), f"quant={quant}", tol_for(quant))
    # the same logits again, one token at a time (decode steps read the cache the prompt wrote)
    seq_c, seq_g = cpu.sequence(), cuda.sequence()
    seq_c.append(ids[:30])
    seq_g.append(ids[:30])
    for t in ids[30:36]:
        assert_logits_close(seq_g.append([t]), seq_c.append([t]), f"quant={quant}, decode", tol_for(quant))


@gpu
@pytest.mark.parametrize("quant", [pytest.param(None, marks=full), "q8_0", "q4_0", pytest.param("q6_k", marks=full)])
def test_greedy_continuation_equals_the_cpu(quant):
    cpu = pyllm.load(quant=quant, n_ctx=256)
    cuda = pyllm.load(quant=quant, n_ctx=256, device="cuda")
    want = cpu.generate_tokens(PROMPT, max_tokens=40, temperature=0)
    got = cuda.generate_tokens(PROMPT, max_tokens=40, temperature=0)
    assert len(want) == 40 and got == want


@pytest.fixture(scope="module")
def kquant_checkpoint(tmp_path_factory):
    """a Llama 2 shaped checkpoint whose every matrix has rows of whole 256-weight super-blocks (the shipped
    model's 704-wide FFN down falls back to Q5_0 / Q5_1 in q4_k_m / q5_k_m), so the mixes hold only K-quants;
    a 2048-token vocabulary keeps the LM head small under the emulation"""
    from conftest import build_checkpoint

    return build_checkpoint("llama2", "float32", str(tmp_path_factory.mktemp("llama2-256")), hidden_size=256,
                            intermediate_size=512, num_attention_heads=8, num_key_value_heads=4, vocab_size=2048)


@gpu
@pytest.mark.parametrize("quant", ["q4_k_m", "q5_k_m"])
def test_kquant_mixes_match_the_cpu(quant, kquant_checkpoint):
    """q4_k_m: Q4_K embedding and matrices, Q6_K LM head and (layer 0) V and FFN down; q5_k_m: the same with
    Q5_K. Every row of a 40-token prompt (the tensor-core GEMM), decode steps (the GEMV), and a greedy continuation."""
    cpu = pyllm.load(kquant_checkpoint, quant=quant, n_ctx=128)
    cuda = pyllm.load(kquant_checkpoint, quant=quant, n_ctx=128, device="cuda")
    from pyllm.quant_mixes import plan_types

    assert set(plan_types(cpu.config, quant).values()) == ({0, 12, 14} if quant == "q4_k_m" else {0, 13, 14})  # F32 norms
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 2048, size=40).tolist()
    seq_c, seq_g = cpu.sequence(), cuda.sequence()
    assert_logits_close(seq_g.append(ids, all_logits=True), seq_c.append(ids, all_logits=True), quant, KQUANT_TOL)
    for t in (17, 901):
        assert_logits_close(seq_g.append([t]), seq_c.append([t]), f"{quant}, decode", KQUANT_TOL)
    want = cpu.generate_tokens(ids[:8], max_tokens=16, temperature=0)
    assert len(want) == 16 and cuda.generate_tokens(ids[:8], max_tokens=16, temperature=0) == want


@gpu
@pytest.mark.parametrize("types", [
    # wq wk wv | gate up: the shared input quantized as Q8_K, then Q8_0 (and back) within one group
    dict(wq=12, wk=14, wv=8, wo=2, ffn_gate=8, ffn_up=13, ffn_down=14, tok_embd=13, output=12),
    dict(wq=8, wk=12, wv=2, wo=14, ffn_gate=14, ffn_up=2, ffn_down=12, tok_embd=14, output=13),
    # Q4_1 (3), Q5_0 (6), Q5_1 (7): the K-quant mixes' fallbacks, also as the embedding
    dict(wq=6, wk=13, wv=7, wo=3, ffn_gate=12, ffn_up=3, ffn_down=7, tok_embd=6, output=3),
    dict(wq=3, wk=7, wv=14, wo=6, ffn_gate=6, ffn_up=12, ffn_down=3, tok_embd=7, output=6),
    dict(wq=12, wk=6, wv=13, wo=7, ffn_gate=7, ffn_up=14, ffn_down=6, tok_embd=3, output=14),
], ids=["k-then-0", "0-k-0", "legacy-a", "legacy-b", "legacy-c"])
def test_groups_mixing_q8_0_and_q8_k_inputs_match_the_cpu(types):
    """a hand-built one-layer model whose q / k / v and gate / up weights mix types multiplied with Q8_0
    activations (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1) and with Q8_K activations (Q4_K, Q5_K, Q6_K), as a GGUF file may: the forward
    quantizes the shared input again wherever the form changes"""
    cm = _one_layer_model(types, max_ctx=16)
    ids = [3, 17, 5, 60, 2, 9, 41, 33, 8, 1]
    n = len(ids)
    want = _engine.Runner(cm).forward([_engine.KVCache(cm, 16)], ids, np.arange(n), [0] * n, np.arange(n), 1)
    cuda = _engine.CudaModel(cm)
    got = cuda.forward([_engine.CudaKVCache(cuda, 16)], ids, np.arange(n), [0] * n, np.arange(n))
    assert_logits_close(got, want, f"mixed groups {types}", KQUANT_TOL)


def _one_layer_model(types, seed=7, max_ctx=64):
    """a hand-built one-layer model with the given weight types (pl type ids) and a 64-token vocabulary"""
    cfg = dict(n_vocab=64, dim=256, n_layers=1, n_heads=8, n_kv_heads=4, head_dim=32, hidden_dim=512, max_ctx=max_ctx,
               norm_eps=1e-5, rope_interleaved=False, sliding_window=0)
    rng = np.random.default_rng(seed)
    cm = _engine.CModel(**cfg)
    d, hid, v, kv = cfg["dim"], cfg["hidden_dim"], cfg["n_vocab"], cfg["n_kv_heads"] * cfg["head_dim"]
    shapes = dict(tok_embd=(v, d), output=(v, d), wq=(d, d), wk=(kv, d), wv=(kv, d), wo=(d, d), ffn_gate=(hid, d),
                  ffn_up=(hid, d), ffn_down=(d, hid))
    for name, (rows, cols) in shapes.items():
        w = (0.1 * rng.standard_normal((rows, cols))).astype(np.float32)
        cm.set_tensor(name, -1 if name in ("tok_embd", "output") else 0, types[name], cols, rows,
                      _engine.from_float(types[name], w))
    for name, layer in (("output_norm", -1), ("attn_norm", 0), ("ffn_norm", 0)):
        cm.set_tensor(name, layer, 0, d, 1, (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    cm.finalize(1.0 / (10000.0 ** (np.arange(0, 32, 2, dtype=np.float32) / 32)), repack=False)
    return cm


@gpu
@pytest.mark.parametrize("types", [
    # Q4_0 everywhere: q / k / v in one launch, gate / up / SwiGLU in one, every norm and the attention write
    # the Q8_0 form of their output
    dict(wq=2, wk=2, wv=2, wo=2, ffn_gate=2, ffn_up=2, ffn_down=2, tok_embd=2, output=2),
    # mixed: q / k / v and gate / up of different types (separate launches) after a norm that wrote Q8_0,
    # a Q6_K output projection and LM head (Q8_K: nothing to fuse)
    dict(wq=8, wk=2, wv=8, wo=14, ffn_gate=8, ffn_up=2, ffn_down=8, tok_embd=8, output=14),
    # K-quants: the norms write the Q8_K form (a block of 256 threads per super-block)
    dict(wq=12, wk=12, wv=14, wo=13, ffn_gate=12, ffn_up=12, ffn_down=14, tok_embd=12, output=13),
], ids=["q4_0", "mixed", "kquant"])
def test_fused_launches_compute_the_same_bits(types):
    """the fused decode kernels (norms writing the next matmul's Q8_0 or Q8_K input, the attention its Q8_0 input,
    q / k / v and gate / up + SwiGLU as one launch each) do the unfused kernels' arithmetic: the logits are identical, not just close, for a
    prompt on the GEMV path (< 16 tokens), one on the tensor cores, and decode steps; and match the CPU"""
    cm = _one_layer_model(types)
    plain, fused = _engine.CudaModel(cm), _engine.CudaModel(cm)
    assert fused.fused and plain.fused
    plain.fused = False
    assert not plain.fused and fused.fused
    ids = [3, 17, 5, 60, 2, 9, 41, 33, 8, 1, 12, 40, 22, 7, 19, 31, 50, 11, 6, 28]
    cpu = _engine.Runner(cm)
    for n0 in (10, 20):  # the prompt's first n0 tokens at once, then two decode steps
        kv_p, kv_f, kv_c = _engine.CudaKVCache(plain, 32), _engine.CudaKVCache(fused, 32), _engine.KVCache(cm, 32)
        for pos in (list(range(n0)), [n0], [n0 + 1]):
            tok = [ids[p % len(ids)] for p in pos]
            n = len(pos)
            a = plain.forward([kv_p], tok, pos, [0] * n, np.arange(n))
            b = fused.forward([kv_f], tok, pos, [0] * n, np.arange(n))
            want = cpu.forward([kv_c], tok, pos, [0] * n, np.arange(n), 1)
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"fused != unfused at positions {pos[0]}..{pos[-1]}"
            assert_logits_close(b, want, f"fused, positions {pos[0]}..{pos[-1]}", KQUANT_TOL)


@gpu
def test_attention_split_sizes_agree_with_the_cpu(monkeypatch):
    """CudaModel.attention_split (keys per split of the split-key attention): a 45-token prompt on that kernel
    (PYLLM_CUDA_PREFILL_MIN_RUN=0) over 2 splits of 32, 1 of 64 or 256, and decode steps (CUDA graphs, which
    a new split size re-captures) give the CPU's logits; values that are not a power of two from 32 to 256
    are refused"""
    monkeypatch.setenv("PYLLM_CUDA_PREFILL_MIN_RUN", "0")
    cm = _one_layer_model(dict(wq=0, wk=0, wv=0, wo=0, ffn_gate=0, ffn_up=0, ffn_down=0, tok_embd=0, output=0))
    cuda, cpu = _engine.CudaModel(cm), _engine.Runner(cm)
    assert cuda.attention_split == 256
    ids = [(7 * i + 3) % 64 for i in range(47)]
    for split in (32, 64, 256):
        cuda.attention_split = split
        assert cuda.attention_split == split
        kv_g, kv_c = _engine.CudaKVCache(cuda, 64), _engine.KVCache(cm, 64)
        for pos in (list(range(45)), [45], [46]):
            n = len(pos)
            tok = [ids[p] for p in pos]
            got = cuda.forward([kv_g], tok, pos, [0] * n, np.arange(n))
            want = cpu.forward([kv_c], tok, pos, [0] * n, np.arange(n), 1)
            assert_logits_close(got, want, f"split {split}, positions {pos[0]}..{pos[-1]}", FLOAT_TOL)
    for bad in (16, 48, 512, 0):
        with pytest.raises(ValueError, match="power of two from 32 to 256"):
            cuda.attention_split = bad
    assert cuda.attention_split == 256


@gpu
def test_mma_min_tokens_moves_the_tensor_core_threshold_and_agrees_with_the_cpu():
    """CudaModel.mma_min_tokens: a 20-token prompt and a decode step with the default (16: the prompt's matmuls
    on the tensor cores), with 1 << 20 (the batched GEMV and the fused q / k / v and gate / up launches for the
    prompt too) and with 1 (the decode step's matmuls on the tensor cores too) give the CPU's logits. The
    kernels add in different orders, so the prompt's logits differ in some bits between the default and 1 << 20
    and the decode step's between the default and 1: both steps run as CUDA graphs, so this also shows a change
    re-captures them. Values outside 1..1 << 20 are refused."""
    # Q4_0 q / k / v (one grouped launch), Q8_0 output projection, Q4_K gate / up (the fused SwiGLU launch),
    # Q6_K down: both tensor-core kernels and both GEMV families
    cm = _one_layer_model(dict(wq=2, wk=2, wv=2, wo=8, ffn_gate=12, ffn_up=12, ffn_down=14, tok_embd=2, output=2))
    cuda, cpu = _engine.CudaModel(cm), _engine.Runner(cm)
    assert cuda.mma_min_tokens == 16
    ids = [3, 17, 5, 60, 2, 9, 41, 33, 8, 1, 12, 40, 22, 7, 19, 31, 50, 11, 6, 28, 44]
    prompt, decode = {}, {}
    for setting in (16, 1 << 20, 1):
        cuda.mma_min_tokens = setting
        assert cuda.mma_min_tokens == setting
        kv_g, kv_c = _engine.CudaKVCache(cuda, 32), _engine.KVCache(cm, 32)
        for pos, got in ((list(range(20)), prompt), ([20], decode)):
            n = len(pos)
            tok = [ids[p] for p in pos]
            got[setting] = np.asarray(cuda.forward([kv_g], tok, pos, [0] * n, np.arange(n)))
            want = cpu.forward([kv_c], tok, pos, [0] * n, np.arange(n), 1)
            assert_logits_close(got[setting], want, f"mma_min_tokens {setting}, positions {pos[0]}..{pos[-1]}",
                                KQUANT_TOL)
    assert not np.array_equal(prompt[1 << 20], prompt[16]), "20 tokens: the GEMV's bits equal the tensor cores'"
    assert np.array_equal(prompt[1], prompt[16])  # the tensor cores both times
    assert not np.array_equal(decode[1], decode[16]), "a decode step: the same bits on the tensor cores as on the GEMV"
    for bad in (0, -1, -16, (1 << 20) + 1, 1 << 40):
        with pytest.raises(ValueError, match=r"mma_min_tokens: -?\d+; from 1 to 1048576"):
            cuda.mma_min_tokens = bad
    assert cuda.mma_min_tokens == 1


@gpu
def test_concurrent_requests_share_steps_and_match_the_cpu():
    cpu = pyllm.load(quant="q8_0", n_ctx=256)
    cuda = pyllm.load(quant="q8_0", n_ctx=256, device="cuda")
    prompts = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo!", "First Citizen:\nBefore we proceed any further, hear me speak.",
               "ROMEO:\n"]  # the last one reuses the first one's cached prompt
    want = [cpu.generate_tokens(p, max_tokens=16, temperature=0) for p in prompts]
    reqs = [cuda.submit(p, max_tokens=16, temperature=0) for p in prompts]
    got = [r.result().token_ids for r in reqs]
    assert got == want
    assert cuda.engine_stats()["steps"] < sum(len(w) for w in want)  # batched, not one request after another


@gpu
def test_f16_kv_cache_matches_the_cpu_f16_cache():
    cpu = pyllm.load(quant="q8_0", n_ctx=256, kv_type="f16")
    cuda = pyllm.load(quant="q8_0", n_ctx=256, kv_type="f16", device="cuda")
    ids = cpu.tokenize(PROMPT)
    assert_logits_close(all_logits(cuda, ids), all_logits(cpu, ids), "f16 KV cache, q8_0", QUANT_TOL)
    cpu = pyllm.load(quant="f32", n_ctx=256, kv_type="f16")
    cuda = pyllm.load(quant="f32", n_ctx=256, kv_type="f16", device="cuda")
    assert_logits_close(all_logits(cuda, ids), all_logits(cpu, ids), "f16 KV cache, f32", FP16_KV_TOL)


@gpu
@pytest.mark.parametrize("arch", ["llama2", "mistral", "qwen2", "qwen3", "phi3"])
def test_dense_architectures_match_the_cpu(arch, checkpoint):
    """mistral (sliding window 24) and phi3 (48) with a prompt past the window; qwen2 with q/k/v biases;
    qwen3 with per-head q/k norms; F32 weights (the checkpoints' own)"""
    path = checkpoint(arch)
    cpu = pyllm.load(path, n_ctx=128)
    cuda = pyllm.load(path, n_ctx=128, device="cuda")
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 1000, size=56).tolist()
    # the last prompt row (its attention spans the window) and two decode steps: the LM head of the
    # 128k-token vocabularies is the slow part under the CPU emulation, so not every row's logits
    seq_c, seq_g = cpu.sequence(), cuda.sequence()
    assert_logits_close(seq_g.append(ids), seq_c.append(ids), arch, FLOAT_TOL)
    for t in (17, 901):
        assert_logits_close(seq_g.append([t]), seq_c.append([t]), f"{arch}, decode", FLOAT_TOL)


@gpu
def test_a_long_prompt_uses_several_attention_splits(monkeypatch):
    """more than 256 keys per query: the prompt on the tiled prefill kernel (several query and key tiles), the
    decode step after it split over the keys and the splits combined; then the prompt again on the split
    kernel (PYLLM_CUDA_PREFILL_MIN_RUN=0) with the partials' memory budget cut to 20 tokens' worth, so it runs
    in chunks of tokens"""
    cpu = pyllm.load(quant="f16", n_ctx=320)
    cuda = pyllm.load(quant="f16", n_ctx=320, device="cuda")
    ids = (cpu.tokenize(PROMPT) * 10)[:300]
    seq_c, seq_g = cpu.sequence(), cuda.sequence()
    want = seq_c.append(ids)
    assert_logits_close(seq_g.append(ids), want, "300-token prompt", FLOAT_TOL)
    assert_logits_close(seq_g.append([5]), seq_c.append([5]), "decode after 300 tokens", FLOAT_TOL)
    monkeypatch.setenv("PYLLM_CUDA_ATT_BUDGET", str(20 * 2 * 256 * 4))  # 2 splits x q_dim 256 x fp32
    monkeypatch.setenv("PYLLM_CUDA_PREFILL_MIN_RUN", "0")
    seq_g.reset()
    assert_logits_close(seq_g.append(ids), want, "300-token prompt, split attention in chunks", FLOAT_TOL)


@pytest.fixture(scope="module")
def window_checkpoint(tmp_path_factory):
    """Mistral-shaped with 4 query heads on one KV head (G = 4, head_dim 16: the tiled prefill kernel's query tiles
    hold 16 tokens, its key tiles 64 keys), a 72-token sliding window, and a 1024-token vocabulary (every row's
    logits stay cheap under the CPU emulation)"""
    from conftest import build_checkpoint

    return build_checkpoint("mistral", "float32", str(tmp_path_factory.mktemp("mistral-window72")),
                            num_key_value_heads=1, sliding_window=72, vocab_size=1024)


@gpu
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_prefill_tiles_match_the_cpu(kv_type, window_checkpoint):
    """the tiled prefill attention (attention_prefill.cu), every row's logits: a 41-token prompt (query tiles of
    16, 16 and 9 tokens), then a 117-token chunk continuing that cache at position 41 (tiles not aligned to the
    positions; past the 72-token window, so a tile's keys start inside a key tile and span two key tiles); then a
    decode step (the split kernel) over that cache"""
    cpu = pyllm.load(window_checkpoint, n_ctx=192, kv_type=kv_type)
    cuda = pyllm.load(window_checkpoint, n_ctx=192, kv_type=kv_type, device="cuda")
    tol = FLOAT_TOL if kv_type == "f32" else FP16_KV_TOL
    ids = np.random.default_rng(5).integers(3, 1024, size=158).tolist()
    seq_c, seq_g = cpu.sequence(), cuda.sequence()
    assert_logits_close(seq_g.append(ids[:41], all_logits=True), seq_c.append(ids[:41], all_logits=True),
                        f"41-token prompt, {kv_type} cache", tol)
    assert_logits_close(seq_g.append(ids[41:], all_logits=True), seq_c.append(ids[41:], all_logits=True),
                        f"117 tokens after 41 in the cache, {kv_type} cache", tol)
    # and a decode step on the split kernel over the same cache
    assert_logits_close(seq_g.append([7]), seq_c.append([7]), f"decode after 158 tokens, {kv_type} cache", tol)


@gpu
def test_a_batch_mixing_prompts_and_decode_tokens_matches_the_cpu(window_checkpoint):
    """one forward holding sequence A's next token, B's 45-token prompt, C's 20 tokens continuing its 45 cached ones
    right after B's (positions 45.. continue B's 0..44: only the sequence tells the two runs apart, and a tile
    must not span them), and A's token after that (A's tokens take the split kernel; the second reads the key
    the first wrote in this batch)"""
    cpu = pyllm.load(window_checkpoint, n_ctx=128)
    cuda = pyllm.load(window_checkpoint, n_ctx=128, device="cuda")
    rng = np.random.default_rng(11)
    first, b, c, a = (rng.integers(3, 1024, size=n).tolist() for n in (75, 45, 20, 2))

    def run(model):
        kvs = [model._new_kv() for _ in range(3)]
        model._forward(kvs, first, list(range(30)) + list(range(45)), [0] * 30 + [2] * 45, [29, 74])
        tokens = a[:1] + b + c + a[1:]
        pos = [30] + list(range(45)) + list(range(45, 65)) + [31]
        seqs = [0] + [1] * 45 + [2] * 20 + [0]
        return model._forward(kvs, tokens, pos, seqs, list(range(len(tokens))))

    assert_logits_close(run(cuda), run(cpu), "a prompt beside decode tokens", FLOAT_TOL)


@gpu
@pytest.mark.parametrize("head_dim", [80, 200])
def test_prefill_tiles_of_wide_heads_match_the_cpu(head_dim):
    """the tiled prefill kernel's other two shapes (head_dim <= 128: 64 rows x 32 keys; <= 256: 32 rows x 16 keys),
    each over 48 KB of shared memory (the opt-in limit set at load), on head sizes not a multiple of 16: a
    hand-built one-layer F32 model (G = 2), a 45-token prompt over a 20-token sliding window, every row"""
    hd = head_dim
    cfg = dict(n_vocab=64, dim=128, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=hd, hidden_dim=128, max_ctx=64,
               norm_eps=1e-5, rope_interleaved=False, sliding_window=20)
    rng = np.random.default_rng(13)
    cm = _engine.CModel(**cfg)
    d, v, qd, kv = cfg["dim"], cfg["n_vocab"], 4 * hd, 2 * hd
    shapes = dict(tok_embd=(v, d), output=(v, d), wq=(qd, d), wk=(kv, d), wv=(kv, d), wo=(d, qd), ffn_gate=(d, d),
                  ffn_up=(d, d), ffn_down=(d, d))
    for name, (rows, cols) in shapes.items():
        w = (0.1 * rng.standard_normal((rows, cols))).astype(np.float32)
        cm.set_tensor(name, -1 if name in ("tok_embd", "output") else 0, 0, cols, rows, w)
    for name, layer in (("output_norm", -1), ("attn_norm", 0), ("ffn_norm", 0)):
        cm.set_tensor(name, layer, 0, d, 1, (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    cm.finalize(1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float32) / hd)), repack=False)
    ids = rng.integers(0, v, size=45).tolist()
    n = len(ids)
    want = _engine.Runner(cm).forward([_engine.KVCache(cm, 64)], ids, np.arange(n), [0] * n, np.arange(n), 1)
    cuda = _engine.CudaModel(cm)
    got = cuda.forward([_engine.CudaKVCache(cuda, 64)], ids, np.arange(n), [0] * n, np.arange(n))
    assert_logits_close(got, want, f"head_dim {hd}", FLOAT_TOL)


@gpu
def test_forward_rejects_bad_batches():
    cuda = pyllm.load(quant="q8_0", n_ctx=64, device="cuda")
    other = pyllm.load(quant="q8_0", n_ctx=64, device="cuda")
    kv = cuda._new_kv()
    fwd = cuda._cuda.forward
    with pytest.raises(ValueError, match="token id 5000 at batch index 0 outside the vocabulary"):
        fwd([kv], [5000], [0], [0], [0])
    with pytest.raises(ValueError, match="position 64 outside the context"):
        fwd([kv], [1], [64], [0], [0])
    with pytest.raises(ValueError, match="sequence index 1 out of range"):
        fwd([kv], [1], [0], [1], [0])
    with pytest.raises(ValueError, match="output row 3 outside the batch"):
        fwd([kv], [1], [0], [0], [3])
    with pytest.raises(ValueError, match="another model"):
        fwd([other._new_kv()], [1], [0], [0], [0])
    with pytest.raises(TypeError):
        fwd([_engine.KVCache(cuda._cmodel, 64)], [1], [0], [0], [0])  # a CPU cache
    with pytest.raises(ValueError, match="n_ctx 65 outside 1..64"):
        _engine.CudaKVCache(cuda._cuda, 65)
    with pytest.raises(ValueError, match="type 7"):
        _engine.CudaKVCache(cuda._cuda, 8, 7)
    # the model still works after the refusals
    assert np.isfinite(fwd([kv], [1, 2], [0, 1], [0, 0], [1])).all()


@gpu
def test_prompt_longer_than_the_context_is_refused():
    cuda = pyllm.load(quant="q8_0", n_ctx=16, device="cuda")
    with pytest.raises(pyllm.ContextLengthError):
        cuda.sequence().append(cuda.tokenize(PROMPT))


@gpu
def test_what_the_gpu_cannot_run_yet_is_refused_by_name(checkpoint):
    with pytest.raises(pyllm.DeviceError, match="device='cuda': .*weight type 23 has no GPU kernels yet.*q8_0"):
        pyllm.load(quant="iq4_xs", n_ctx=64, device="cuda")  # IQ4_XS
    with pytest.raises(pyllm.DeviceError, match="mixture-of-experts"):
        pyllm.load(checkpoint("mixtral"), n_ctx=64, device="cuda")
    with pytest.raises(pyllm.DeviceError, match="LongRoPE"):
        pyllm.load(checkpoint("phi3-longrope"), n_ctx=64, device="cuda")


@gpu
def test_the_server_runs_on_the_device():
    """the OpenAI-compatible server over a device model (127.0.0.1 only): two concurrent completions equal
    the CPU model's"""
    import socket
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    for extra in ("fastapi", "sse_starlette", "uvicorn", "httpx"):  # pyllm[server]: CI has it, a GPU image may not
        pytest.importorskip(extra, reason=f"the server extras are not installed ({extra})")
    import httpx
    import uvicorn

    from pyllm.serving.server import create_app

    cpu = pyllm.load(quant="q8_0", n_ctx=256)
    cuda = pyllm.load(quant="q8_0", n_ctx=256, device="cuda")
    prompts = ["ROMEO:\n", "JULIET:\nO Romeo"]
    want = [cpu.complete(p, max_tokens=12, temperature=0).text for p in prompts]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(cuda), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        while not server.started:
            assert thread.is_alive() and time.monotonic() - t0 < 60, "the server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions"

        def complete(prompt):
            r = httpx.post(url, json={"prompt": prompt, "max_tokens": 12, "temperature": 0}, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        with ThreadPoolExecutor(2) as ex:
            assert list(ex.map(complete, prompts)) == want
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        cuda.close()


# ---------------------------------------------------------------- everywhere
def test_cpu_models_are_not_changed_by_the_cuda_option():
    m = pyllm.load(quant="q8_0", n_ctx=64)
    assert m.device == "cpu" and m._cuda is None and "isa=" in repr(m)
    assert m._cmodel.packed_bytes("wq", 0) > 0  # CPU models keep the CPU kernels' packed layout


def test_cli_generate_takes_a_device():
    """pyllm generate --device cuda: runs on a device, or says in one line why it cannot (exit status 2, the
    CLI's for an error)"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pyllm", "generate", "-p", "ROMEO:", "-n", "8", "--temp", "0",
                        "--device", "cuda"], capture_output=True, text=True, timeout=600)
    if HAVE_GPU:
        assert r.returncode == 0, r.stderr
        cpu = pyllm.load()
        want = "ROMEO:" + cpu.generate("ROMEO:", max_tokens=8, temperature=0)
        assert len(want) > len("ROMEO:") and r.stdout.startswith(want)
    else:
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert ("built without CUDA" if not INFO["built"] else "no CUDA device") in r.stderr
