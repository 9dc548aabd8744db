# Tests for pyllm.sampling: parameter validation, greedy/seeded sampling, and the filtered support and
# probabilities checked against transformers' logits processors on the same logits.
import collections
import math

import numpy as np
import pytest

from pyllm import sampling as S
from pyllm.sampling import Sampler, SamplingParams, apply_repetition_penalty

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")


# ----------------------------------------------------------------------------- helpers


def hf_scores(logits, params: SamplingParams, history=()):
    """Run transformers' processors (float64) in generate()'s order; return the processed scores."""
    scores = torch.tensor(np.asarray(logits, dtype=np.float64)[None, :])
    n_hist = len(history) if params.repeat_last_n < 0 else min(params.repeat_last_n, len(history))
    recent = list(history)[len(history) - n_hist :]
    if params.repeat_penalty != 1.0 and recent:
        ids = torch.tensor([recent], dtype=torch.long)
        scores = lp.RepetitionPenaltyLogitsProcessor(params.repeat_penalty)(ids, scores)
    if params.temperature == 0.0:
        return scores
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = lp.TemperatureLogitsWarper(params.temperature)(ids, scores)
    if params.top_k > 0:
        scores = lp.TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1.0:
        scores = lp.TopPLogitsWarper(params.top_p)(ids, scores)
    if params.min_p > 0.0:
        scores = lp.MinPLogitsWarper(params.min_p)(ids, scores)
    return scores


def hf_support_and_probs(logits, params, history=()):
    scores = hf_scores(logits, params, history)[0]
    support = np.flatnonzero(torch.isfinite(scores).numpy())
    probs = torch.softmax(scores, dim=-1).numpy()
    return support, probs


def ours(logits, params, history=()):
    ids, probs = Sampler(params).distribution(logits, history)
    assert ids.dtype == np.int64
    assert np.all(np.diff(ids) > 0), "ids must be ascending and distinct"
    assert np.all(probs >= 0) and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    return ids, probs


def random_logits(rng, n, scale=3.0, dtype=np.float32):
    return (rng.standard_normal(n) * scale).astype(dtype)


# ----------------------------------------------------------------------------- validation


BAD_PARAMS = [
    ("temperature", -0.1),
    ("temperature", -1),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", float("-inf")),
    ("temperature", True),
    ("temperature", "0.7"),
    ("temperature", None),
    ("top_k", -1),
    ("top_k", 1.5),
    ("top_k", 40.0),
    ("top_k", True),
    ("top_k", "40"),
    ("top_k", None),
    ("top_p", 0.0),
    ("top_p", -0.5),
    ("top_p", 1.0000001),
    ("top_p", 2),
    ("top_p", float("nan")),
    ("top_p", float("inf")),
    ("top_p", False),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", float("nan")),
    ("min_p", float("-inf")),
    ("min_p", "0.1"),
    ("repeat_penalty", 0.0),
    ("repeat_penalty", -1.1),
    ("repeat_penalty", float("nan")),
    ("repeat_penalty", float("inf")),
    ("repeat_penalty", True),
    ("repeat_last_n", -2),
    ("repeat_last_n", 1.0),
    ("repeat_last_n", False),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", True),
    ("seed", "42"),
]


@pytest.mark.parametrize("field,value", BAD_PARAMS, ids=[f"{f}={v!r}" for f, v in BAD_PARAMS])
def test_bad_params_raise_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as exc:
        SamplingParams(**{field: value})
    msg = str(exc.value)
    assert field in msg
    assert repr(value) in msg


def test_valid_edge_params_and_normalization():
    SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, repeat_last_n=-1, seed=0)
    SamplingParams(top_p=1e-9, min_p=1.0, repeat_penalty=1e-3, repeat_last_n=0, seed=2**80)
    p = SamplingParams(temperature=np.float32(0.5), top_k=np.int64(7), top_p=1, seed=np.uint32(3))
    assert type(p.temperature) is float and p.temperature == 0.5
    assert type(p.top_k) is int and p.top_k == 7
    assert type(p.top_p) is float and p.top_p == 1.0
    assert type(p.seed) is int and p.seed == 3
    d = SamplingParams()
    assert (d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, d.seed) == (
        0.8, 40, 0.95, 0.05, 1.0, 64, None)
    with pytest.raises(Exception):
        d.temperature = 1.0  # frozen


def test_sampler_requires_params_object():
    with pytest.raises(TypeError):
        Sampler({"temperature": 0.5})


@pytest.mark.parametrize(
    "logits",
    [
        [0.1, 0.2, 0.3],
        np.zeros((2, 3), dtype=np.float32),
        np.zeros((), dtype=np.float32),
        np.arange(5),  # int
        np.array([True, False]),
        np.array([1 + 1j, 2 + 0j]),
        np.zeros(0, dtype=np.float32),
        np.full(10, -np.inf, dtype=np.float32),
        np.full(10, np.nan, dtype=np.float32),
        np.array([np.nan, -np.inf, np.nan], dtype=np.float64),
    ],
    ids=["list", "2d", "0d", "int", "bool", "complex", "empty", "all-neg-inf", "all-nan", "nan-and-neg-inf"],
)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_bad_logits_raise(logits, temperature):
    s = Sampler(SamplingParams(temperature=temperature, seed=0))
    with pytest.raises(ValueError):
        s.sample(logits)


@pytest.mark.parametrize("history", [[1, -1], [1.0, 2.0], [[1, 2]], [True]])
def test_bad_history_raises(history):
    s = Sampler(SamplingParams(repeat_penalty=1.3, seed=0))
    with pytest.raises(ValueError):
        s.sample(np.zeros(8, dtype=np.float32), history)


# ----------------------------------------------------------------------------- greedy & determinism


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    s = Sampler(SamplingParams(temperature=0.0))
    for n in (1, 2, 17, 1000, 32000):
        for dtype in (np.float16, np.float32, np.float64):
            x = random_logits(rng, n, dtype=dtype)
            assert s.sample(x) == int(np.argmax(x))
    # ties -> lowest index, like np.argmax / torch.argmax
    x = np.array([0.0, 3.0, 1.0, 3.0, 3.0], dtype=np.float32)
    assert s.sample(x) == 1 == int(torch.argmax(torch.tensor(x)))
    # NaN is never picked; +inf wins
    assert s.sample(np.array([np.nan, 1.0, 2.0, np.nan], dtype=np.float32)) == 2
    assert s.sample(np.array([1.0, np.inf, 2.0, np.inf], dtype=np.float32)) == 1
    ids, probs = s.distribution(x)
    assert ids.tolist() == [1] and probs.tolist() == [1.0]


def test_greedy_uses_repetition_penalty():
    x = np.array([1.0, 2.0, 1.9, -0.5], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.2))
    assert s.sample(x, history=[1]) == 2  # 2.0/1.2 < 1.9
    assert s.sample(x, history=[]) == 1
    assert Sampler(SamplingParams(temperature=0.0, repeat_penalty=1.2, repeat_last_n=1)).sample(x, [1, 3]) == 1


def test_same_seed_same_tokens():
    rng = np.random.default_rng(1)
    steps = [random_logits(rng, 5000, scale=1.0) for _ in range(50)]
    params = SamplingParams(temperature=1.0, top_k=0, top_p=0.99, min_p=0.0, repeat_penalty=1.1, seed=1234)
    runs = []
    for _ in range(2):
        s = Sampler(params)
        hist = []
        for x in steps:
            hist.append(s.sample(x, hist))
        runs.append(hist)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 10  # it really sampled


def test_different_seeds_differ_on_flat_distribution():
    x = np.zeros(1000, dtype=np.float32) + np.linspace(0, 0.01, 1000, dtype=np.float32)
    params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    s1, s2 = Sampler(SamplingParams(seed=1, **params)), Sampler(SamplingParams(seed=2, **params))
    a = [s1.sample(x) for _ in range(30)]
    b = [s2.sample(x) for _ in range(30)]
    assert a != b
    assert len(set(a)) > 20 and len(set(b)) > 20
    # unseeded samplers draw from fresh entropy
    c = [Sampler(SamplingParams(**params)).sample(x) for _ in range(30)]
    assert len(set(c)) > 20


def test_top_k_1_equals_greedy():
    rng = np.random.default_rng(2)
    s = Sampler(SamplingParams(temperature=1.5, top_k=1, top_p=0.9, min_p=0.0, seed=0))
    for n in (3, 100, 50000):
        for _ in range(5):
            x = random_logits(rng, n)
            assert s.sample(x) == int(np.argmax(x))


# ----------------------------------------------------------------------------- support vs transformers


def test_top_k_restricts_support_when_sampling():
    rng = np.random.default_rng(3)
    x = random_logits(rng, 2000, scale=0.5)  # fairly flat, so all k tokens get drawn
    k = 10
    top = set(np.argsort(-x)[:k].tolist())
    s = Sampler(SamplingParams(temperature=1.0, top_k=k, top_p=1.0, min_p=0.0, seed=5))
    drawn = {s.sample(x) for _ in range(3000)}
    assert drawn == top


SUPPORT_CASES = [
    dict(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.3, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=0.7, top_k=400, top_p=0.8, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.99, min_p=0.001),
    dict(temperature=0.2, top_k=5, top_p=0.5, min_p=0.2),
    dict(temperature=2.0, top_k=0, top_p=0.999, min_p=0.0),
    dict(temperature=1.0, top_k=100000, top_p=0.7, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3),
    dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=0.8),
]


@pytest.mark.parametrize("kw", SUPPORT_CASES, ids=[str(i) for i in range(len(SUPPORT_CASES))])
@pytest.mark.parametrize("n,scale", [(50, 1.0), (3000, 2.0), (20000, 1.0), (20000, 5.0)])
def test_support_and_probs_match_transformers(kw, n, scale):
    rng = np.random.default_rng(n + int(scale * 10) + 1000 * SUPPORT_CASES.index(kw))
    for trial in range(3):
        x = random_logits(rng, n, scale=scale)
        if trial == 2:  # some masked-out tokens
            x[rng.choice(n, n // 10, replace=False)] = -np.inf
        history = rng.integers(0, n, 100).tolist()
        params = SamplingParams(**kw)
        ids, probs = ours(x, params, history)
        hf_ids, hf_probs = hf_support_and_probs(x, params, history)
        np.testing.assert_array_equal(ids, hf_ids)
        np.testing.assert_allclose(probs, hf_probs[ids], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kw", SUPPORT_CASES[:11], ids=[str(i) for i in range(11)])
def test_support_matches_transformers_on_llama3_vocab(kw):
    rng = np.random.default_rng(7)
    x = random_logits(rng, 128256, scale=2.0)
    x[:30] += 8.0  # a peaked head like a real LM
    params = SamplingParams(**kw)
    ids, _ = ours(x, params)
    hf_ids, _ = hf_support_and_probs(x, params)
    np.testing.assert_array_equal(ids, hf_ids)


def test_top_k_keeps_ties_at_boundary_like_transformers():
    x = np.array([5.0, 3.0, 3.0, 3.0, 1.0, 0.0], dtype=np.float32)
    params = SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)
    ids, _ = ours(x, params)
    assert ids.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(ids, hf_support_and_probs(x, params)[0])


@pytest.mark.parametrize("top_p", [0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9])
def test_top_p_ties_like_transformers(top_p):
    # Small vectors (<= 16), where torch.sort is stable and TopPLogitsWarper's tie order is well defined:
    # boundary ties are kept highest index first.
    for x in ([1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 2.0, 1.0, 0.0, 1.0], [0.0] * 16):
        x = np.array(x, dtype=np.float32)
        params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
        ids, _ = ours(x, params)
        np.testing.assert_array_equal(ids, hf_support_and_probs(x, params)[0])
    ids, _ = ours(np.zeros(4, dtype=np.float32), SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0))
    assert ids.tolist() == [2, 3]


def test_top_p_and_min_p_exact_sets():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    x = np.log(probs)
    base = dict(temperature=1.0, top_k=0, min_p=0.0)
    assert ours(x, SamplingParams(top_p=0.4, **base))[0].tolist() == [1]
    assert ours(x, SamplingParams(top_p=0.75, **base))[0].tolist() == [1, 3]
    assert ours(x, SamplingParams(top_p=0.9, **base))[0].tolist() == [1, 2, 3]
    assert ours(x, SamplingParams(top_p=0.97, **base))[0].tolist() == [0, 1, 2, 3]
    # min_p: keep prob >= min_p * 0.5
    base = dict(temperature=1.0, top_k=0, top_p=1.0)
    assert ours(x, SamplingParams(min_p=0.2, **base))[0].tolist() == [1, 2, 3]  # >= 0.1
    assert ours(x, SamplingParams(min_p=0.5, **base))[0].tolist() == [1, 3]  # >= 0.25
    assert ours(x, SamplingParams(min_p=1.0, **base))[0].tolist() == [1]
    assert ours(x, SamplingParams(min_p=0.01, **base))[0].tolist() == [0, 1, 2, 3]
    # top-p is computed before min-p and both apply
    ids, p = ours(x, SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.5))
    assert ids.tolist() == [1, 3]
    np.testing.assert_allclose(p, [0.5 / 0.8, 0.3 / 0.8])


def test_bucketed_top_p_equals_sorted_top_p():
    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(2, 30000))
        kind = trial % 4
        if kind == 0:
            z = rng.standard_normal(n) * rng.uniform(0.1, 20)
        elif kind == 1:  # heavy ties
            z = rng.integers(-5, 1, n).astype(np.float64)
        elif kind == 2:  # masked tokens and very negative values
            z = rng.standard_normal(n) * 3
            z[rng.random(n) < 0.3] = -np.inf
            z[rng.random(n) < 0.05] = -1e4
        else:  # peaked
            z = rng.standard_normal(n)
            z[: max(1, n // 100)] += 15
        z = z - z[np.isfinite(z)].max() if np.isfinite(z).any() else np.zeros(n)
        w = np.exp(z)
        total = float(w.sum())
        for top_p in (0.05, 0.5, 0.9, 0.999):
            want = S._top_p_cut(z, np.flatnonzero(z > -np.inf), math.log(total), top_p)
            got = S._top_p_cut_bucketed(z, w, total, top_p, np.empty(n))
            np.testing.assert_array_equal(got, want)


def test_top_k_threshold_helper():
    rng = np.random.default_rng(12)
    for n in (10, 5000, 128256):
        for k in (1, 3, 40, 1000):
            if k >= n:
                continue
            x = rng.standard_normal(n)
            x[rng.random(n) < 0.2] = -np.inf
            ids = S._top_k_ids(x, k)
            assert ids.tolist() == sorted(np.argsort(-x, kind="stable")[:k].tolist())
    x = np.array([-np.inf] * 5 + [1.0, 2.0])
    assert S._top_k_ids(x, 4).tolist() == [5, 6]


# ----------------------------------------------------------------------------- repetition penalty


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.1, 1.5, 3.0])
def test_repetition_penalty_matches_transformers(penalty):
    rng = np.random.default_rng(int(penalty * 10))
    n = 500
    x = rng.standard_normal(n).astype(np.float32) * 4
    x[7] = 0.0
    history = rng.integers(0, n, 300).tolist() + [7, 7, 499, 499, 0]
    for last_n in (-1, 0, 1, 5, 64, 10000):
        got = apply_repetition_penalty(x, history, penalty, last_n)
        recent = history if last_n < 0 else history[len(history) - last_n :] if last_n else []
        if recent:
            proc = lp.RepetitionPenaltyLogitsProcessor(penalty)
            want = proc(torch.tensor([recent]), torch.tensor(x.astype(np.float64)[None]))[0].numpy()
        else:
            want = x.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
        # each token is penalized once however often it repeats
        if penalty != 1.0 and recent:
            t = recent[-1]
            v = float(x[t])
            expect = v * penalty if v < 0 else v / penalty
            assert got[t] == pytest.approx(float(expect), rel=1e-12)


def test_repetition_penalty_ignores_out_of_vocab_and_accepts_sequences():
    x = np.array([1.0, -1.0, 2.0, 0.5], dtype=np.float32)
    got = apply_repetition_penalty(x, [1, 2, 10, 4], 2.0)
    np.testing.assert_allclose(got, [1.0, -2.0, 1.0, 0.5])
    want = apply_repetition_penalty(x, [2, 3], 2.0, last_n=2)
    for hist in ([0, 1, 2, 3], (0, 1, 2, 3), np.array([0, 1, 2, 3]), collections.deque([0, 1, 2, 3]), range(4)):
        np.testing.assert_array_equal(apply_repetition_penalty(x, hist, 2.0, last_n=2), want)


def test_sampler_probs_with_penalty_match_transformers_softmax():
    rng = np.random.default_rng(21)
    x = random_logits(rng, 300)
    history = [3, 3, 17, 250, 299]
    params = SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.4, repeat_last_n=-1)
    ids, probs = ours(x, params, history)
    hf_ids, hf_probs = hf_support_and_probs(x, params, history)
    assert ids.tolist() == list(range(300)) == hf_ids.tolist()
    np.testing.assert_allclose(probs, hf_probs, rtol=1e-10)


# ----------------------------------------------------------------------------- empirical frequencies


def test_empirical_frequencies_match_distribution():
    # Six tokens survive (top_k=6 and min_p trim the rest); probabilities from transformers' pipeline.
    x = np.log(np.array([0.30, 0.02, 0.22, 0.15, 0.001, 0.12, 0.09, 0.05, 0.049], dtype=np.float64))
    x = x.astype(np.float32)
    params = SamplingParams(temperature=0.9, top_k=7, top_p=0.97, min_p=0.1, seed=2024)
    hf_ids, hf_probs = hf_support_and_probs(x, params)
    ids, probs = ours(x, params)
    np.testing.assert_array_equal(ids, hf_ids)
    assert len(ids) >= 4
    expected = hf_probs[ids]

    N = 20000
    s = Sampler(params)
    counts = np.bincount([s.sample(x) for _ in range(N)], minlength=x.shape[0])
    assert counts.sum() == N
    assert set(np.flatnonzero(counts).tolist()) <= set(ids.tolist())  # nothing outside the support
    # Per token: within 5 binomial standard deviations (false-failure rate < 1e-6 per token).
    exp_counts = N * expected
    sigma = np.sqrt(N * expected * (1 - expected))
    assert np.all(np.abs(counts[ids] - exp_counts) <= 5 * sigma), (counts[ids], exp_counts)
    # Pearson chi-square, df = len(ids) - 1; 40.52 is the 1e-6 upper quantile for df = 7 (larger df, so a
    # looser bound than needed for df <= 7).
    chi2 = float(np.sum((counts[ids] - exp_counts) ** 2 / exp_counts))
    assert len(ids) - 1 <= 7
    assert chi2 < 40.52, chi2


def test_empirical_frequencies_large_vocab_full_distribution():
    # No filters on a 128k vocab: the drawn mass of the 3 heavy tokens and the rest matches.
    n = 128256
    x = np.zeros(n, dtype=np.float32)
    x[[5, 70000, 128255]] = np.log([n * 0.4, n * 0.2, n * 0.1])  # ~ 0.4/1.7 ... of the mass
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=9)
    ids, probs = ours(x, params)
    assert len(ids) == n
    groups = {5: probs[5], 70000: probs[70000], 128255: probs[128255]}
    rest = 1.0 - sum(groups.values())
    s = Sampler(params)
    draws = np.array([s.sample(x) for _ in range(3000)])
    N = draws.shape[0]
    for tok, p in list(groups.items()) + [(None, rest)]:
        c = int(np.sum(~np.isin(draws, list(groups)))) if tok is None else int(np.sum(draws == tok))
        assert abs(c - N * p) <= 5 * math.sqrt(N * p * (1 - p)), (tok, c, N * p)


# ----------------------------------------------------------------------------- input handling


@pytest.mark.parametrize("kw", SUPPORT_CASES + [dict(temperature=0.0, repeat_penalty=1.5)])
def test_input_array_unchanged(kw):
    rng = np.random.default_rng(31)
    for dtype in (np.float16, np.float32, np.float64):
        x = random_logits(rng, 6000, dtype=dtype)
        x[3] = np.nan
        x[4] = -np.inf
        before = x.copy()
        x.flags.writeable = False  # any in-place write would raise
        s = Sampler(SamplingParams(seed=0, **kw))
        for _ in range(3):
            s.sample(x, history=[1, 2, 5, 5, 9])
            s.distribution(x, history=[1, 2, 5, 5, 9])
        np.testing.assert_array_equal(x, before)


def test_nan_tokens_never_sampled_and_inf_dominates():
    x = np.array([np.nan, 0.0, 0.0, np.nan, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3))
    assert {s.sample(x) for _ in range(300)} == {1, 2, 4}
    y = np.array([0.0, np.inf, 5.0, np.inf], dtype=np.float32)
    ids, probs = s.distribution(y)
    assert ids.tolist() == [1, 3] and probs.tolist() == [0.5, 0.5]


def test_extreme_temperatures():
    x = np.array([1.0, 3.0, 2.0, 3.0 - 1e-6], dtype=np.float64)
    tiny = Sampler(SamplingParams(temperature=1e-300, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    assert {tiny.sample(x) for _ in range(50)} == {1}
    huge = Sampler(SamplingParams(temperature=1e300, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    ids, probs = huge.distribution(x)
    np.testing.assert_allclose(probs, 0.25)


def test_distribution_arrays_are_not_reused_between_calls():
    rng = np.random.default_rng(41)
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    a = random_logits(rng, 5000)
    ids1, p1 = s.distribution(a)
    keep = p1.copy()
    s.distribution(random_logits(rng, 5000))
    s.sample(random_logits(rng, 5000))
    np.testing.assert_array_equal(p1, keep)
