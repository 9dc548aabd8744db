"""test_engine.py: the continuous-batching engine on the shipped model. Concurrent requests share
steps (one forward per step for all of them) and each gets exactly the tokens it gets alone
(greedy and seeded); prefixes are reused from finished sequences; long prompts are prefilled in
chunks while other streams keep decoding; the KV budget and the queue bound what runs; cancelled
requests free their sequence."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

import pyllm

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed", "KING HENRY:\n",
           "MERCUTIO:\nNay, gentle Romeo", "Second Servant:\n", "HAMLET:\nTo be", "LADY CAPULET:\nWhat"]


@pytest.fixture
def model():
    return pyllm.load(n_threads=2)


def wait_for(cond, timeout=20.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def alone(prompts, **kw):
    """Each prompt run by itself on a fresh model: the reference outputs."""
    m = pyllm.load(n_threads=2)
    out = []
    for p in prompts:
        m.engine.clear_cache()
        out.append(m.generate_tokens(p, **kw))
    return out


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=7)])
def test_batched_equals_alone_and_shares_steps(model, sampling):
    kw = dict(max_tokens=40, ignore_eos=True, **sampling)
    want = alone(PROMPTS, **kw)
    before = model.engine_stats()
    reqs = [model.submit(p, **kw) for p in PROMPTS]  # all queued before the first step runs
    got = [r.result().token_ids for r in reqs]
    assert got == want
    st = model.engine_stats()
    decoded = st["decoded_tokens"] - before["decoded_tokens"]
    steps = st["steps"] - before["steps"]
    assert decoded == len(PROMPTS) * 39
    assert steps < decoded / 4  # steps were shared (alone: one step per token)


def test_threads_share_steps(model):
    kw = dict(max_tokens=30, temperature=0, ignore_eos=True)
    want = alone(PROMPTS, **kw)
    got = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def run(i):
        barrier.wait()
        got[i] = model.generate_tokens(PROMPTS[i], **kw)

    before = model.engine_stats()["steps"]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want
    assert model.engine_stats()["steps"] - before < len(PROMPTS) * 30 / 2


def test_async_iteration(model):
    kw = dict(max_tokens=20, temperature=0, ignore_eos=True)
    want = [model.generate(p, **kw) for p in PROMPTS[:4]]

    async def one(p):
        parts = []
        async for chunk in model.submit(p, **kw):
            parts.append(chunk.text)
        return "".join(parts)

    async def main():
        return await asyncio.gather(*(one(p) for p in PROMPTS[:4]))

    assert asyncio.run(main()) == want


def test_prefix_reuse_prefills_only_the_rest(model):
    first = model.tokenize("ROMEO:\nWhat light through yonder window breaks?\n")
    r1 = model.complete(first, max_tokens=20, temperature=0, ignore_eos=True)
    follow = first + r1.token_ids + model.tokenize("JULIET:\nAy me", add_special_tokens=False)
    st = model.engine_stats()
    r2 = model.submit(follow, max_tokens=20, temperature=0, ignore_eos=True)
    out = r2.result()
    st2 = model.engine_stats()
    held = len(first) + len(r1.token_ids) - 1  # the last generated token was sampled, never fed
    assert r2.cached_tokens == held
    assert st2["prefilled_tokens"] - st["prefilled_tokens"] == len(follow) - held
    fresh = pyllm.load(n_threads=2)
    assert out.token_ids == fresh.generate_tokens(follow, max_tokens=20, temperature=0, ignore_eos=True)


def test_shared_prefix_is_copied_and_kept(model):
    system = model.tokenize("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    model.complete(system, max_tokens=1, temperature=0)
    a = system + model.tokenize("All:\nSpeak", add_special_tokens=False)
    b = system + model.tokenize("Second Citizen:\nWe", add_special_tokens=False)
    ra, rb = model.submit(a, max_tokens=15, temperature=0), model.submit(b, max_tokens=15, temperature=0)
    outs = [ra.result().token_ids, rb.result().token_ids]
    assert ra.cached_tokens == len(system) and rb.cached_tokens == len(system)
    assert outs == alone([a, b], max_tokens=15, temperature=0)


def test_kv_budget_preempts_and_evicts_and_outputs_stay_exact(model):
    kw = dict(max_tokens=30, temperature=0, ignore_eos=True)
    need = max(len(model.tokenize(p)) for p in PROMPTS) + 30
    model.configure_engine(max_sequences=16, kv_budget_tokens=2 * need)
    seen = []
    reqs = [model.submit(p, **kw) for p in PROMPTS]
    while not all(r.done for r in reqs):
        seen.append(model.engine_stats()["running"])
        time.sleep(0.002)
    # more than two start (prompts are short), then growing caches push the latest ones back to
    # the queue; each resumes exactly where it was
    assert max(seen) > 2
    st = model.engine_stats()
    assert st["preempted"] > 0
    assert st["peak_kv_tokens"] <= 2 * need  # every step's caches fit the budget
    assert [r.result().token_ids for r in reqs] == alone(PROMPTS, **kw)
    assert st["cached_tokens"] <= 2 * need and st["running"] == 0


def test_preempted_seeded_sampling_is_exact(model):
    kw = dict(max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True,
              presence_penalty=0.4, stop=["zzzz"])
    need = max(len(model.tokenize(p)) for p in PROMPTS[:4]) + 40
    model.configure_engine(kv_budget_tokens=need + 20)
    reqs = [model.submit(p, seed=i, **kw) for i, p in enumerate(PROMPTS[:4])]
    got = [r.result() for r in reqs]
    assert model.engine_stats()["preempted"] > 0
    m = pyllm.load(n_threads=2)
    for i, p in enumerate(PROMPTS[:4]):
        want = m.complete(p, seed=i, **kw)
        assert (got[i].token_ids, got[i].text) == (want.token_ids, want.text)


def test_queue_full(model):
    model.configure_engine(max_sequences=1, max_queue=1)
    first = model.submit(PROMPTS[0], max_tokens=500, temperature=0, ignore_eos=True)
    wait_for(lambda: model.engine_stats()["running"] == 1)
    second = model.submit(PROMPTS[1], max_tokens=5, temperature=0)
    with pytest.raises(pyllm.QueueFullError, match="queue is full"):
        model.submit(PROMPTS[2], max_tokens=5)
    first.cancel()
    assert second.result().finish_reason in ("stop", "length")
    assert first.result().finish_reason == "cancelled"


def test_cancel_frees_the_sequence(model):
    req = model.submit(PROMPTS[0], max_tokens=800, temperature=0, ignore_eos=True)
    it = iter(req)
    next(it), next(it)
    req.cancel()
    wait_for(lambda: model.engine_stats()["running"] == 0)
    assert req.finish_reason == "cancelled"
    assert model.engine_stats()["cached"] == 0  # a cancelled sequence is freed, not cached
    # a stream the caller abandons is cancelled too
    gen = model.stream(PROMPTS[1], max_tokens=800, temperature=0, ignore_eos=True)
    next(gen)
    gen.close()
    wait_for(lambda: model.engine_stats()["running"] == 0)
    assert model.generate(PROMPTS[2], max_tokens=5, temperature=0)  # still serving


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(model):
    model.configure_engine(chunk_tokens=16)
    runner = model.submit(PROMPTS[0], max_tokens=600, temperature=0, ignore_eos=True)
    it = iter(runner)
    next(it)
    long_ids = model.tokenize(("O Romeo, Romeo, wherefore art thou Romeo? " * 40))[:400]
    before = runner.completion_tokens
    late = model.submit(long_ids, max_tokens=5, temperature=0)
    first = next(iter(late))
    during = runner.completion_tokens - before
    assert first.token_ids
    assert during >= 400 // 16 - 2  # the running stream got a token in (nearly) every prefill step
    runner.cancel()
    rest = late.result()
    assert rest.token_ids == alone([long_ids], max_tokens=5, temperature=0)[0]


def test_bad_requests(model):
    with pytest.raises(pyllm.ContextLengthError, match="context"):
        model.submit([5] * model.n_ctx, max_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        model.submit([], max_tokens=4)
    model.configure_engine(kv_budget_tokens=64)
    with pytest.raises(pyllm.ContextLengthError, match="KV budget"):
        model.submit(PROMPTS[0], max_tokens=100)
    with pytest.raises(ValueError, match="max_sequences"):
        model.configure_engine(max_sequences=0)
    assert model.generate(PROMPTS[0], max_tokens=0) == ""


def test_a_cache_that_cannot_be_allocated_fails_only_its_request(model, monkeypatch):
    real = model._new_kv

    def fail_once():
        monkeypatch.setattr(model, "_new_kv", real)
        raise MemoryError("out of memory allocating a KV cache")

    monkeypatch.setattr(model, "_new_kv", fail_once)
    with pytest.raises(MemoryError, match="KV cache"):
        model.generate(PROMPTS[0], max_tokens=4)
    assert model.generate(PROMPTS[1], max_tokens=4, temperature=0) == \
        pyllm.load(n_threads=2).generate(PROMPTS[1], max_tokens=4, temperature=0)
