"""test_thread_env.py: the engine's own thread pool (csrc/thread_pool.c, no OpenMP): real worker threads
share the work, every loop split hands out each item once, barriers hold, results are bit-identical for
any thread count, two Python threads can run models at once, and a process that forks or exits with
workers alive neither deadlocks nor hangs."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import pyllm
from pyllm import _engine

# child processes import the pyllm this test imported (the installed one in CI, the source tree with its
# built extension in development), from a folder that holds no other pyllm
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pyllm.__file__)))


def run_child(args, tmp_path, timeout):
    return subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": PKG_PARENT})


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 3, 64, 1001])
def test_pool_splits_and_barriers(nth, n):
    errors, distinct = _engine.pool_selftest(nth, n)
    assert errors == 0
    # the static split gives each of min(nth, n) threads its own items: that many OS threads ran them
    assert distinct == min(nth, n)


def test_pool_selftest_rejects_bad_input():
    with pytest.raises(ValueError):
        _engine.pool_selftest(-1, 10)
    with pytest.raises(ValueError):
        _engine.pool_selftest(2, -5)
    with pytest.raises(ValueError):
        _engine.pool_selftest(_engine.MAX_THREADS + 1, 10)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task")
def test_idle_workers_are_bounded(tmp_path):
    """calls with many thread counts keep the workers of the last few only (4 teams)"""
    code = ("import os\nfrom pyllm import _engine\n"
            "for r in range(2):\n    for n in range(1, 13):\n        assert _engine.pool_selftest(n, 40) == (0, n)\n"
            "print(len(os.listdir('/proc/self/task')))")
    r = run_child([code], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # the main thread, the teams of 12, 11, 10 and 9 threads, and a couple the interpreter may start
    assert int(r.stdout) <= 1 + 11 + 10 + 9 + 8 + 2


def test_default_threads_is_the_affinity():
    n = _engine.default_threads()
    assert n >= 1
    if hasattr(os, "sched_getaffinity"):
        assert n == len(os.sched_getaffinity(0))


def run_prompt(m, ids, n_threads):
    """logits of every prompt token (one batch), then of 3 decode steps, on a fresh cache"""
    kv = _engine.KVCache(m._cmodel, 64)
    out = [m._runner.forward([kv], ids, range(len(ids)), [0] * len(ids), range(len(ids)), n_threads)]
    tok = int(np.argmax(out[0][-1]))
    for pos in range(len(ids), len(ids) + 3):
        out.append(m._runner.forward([kv], [tok], [pos], [0], [0], n_threads))
        tok = int(np.argmax(out[-1][0]))
    return out


@pytest.mark.parametrize("quant", [None, "q4_0"])
def test_logits_identical_for_any_thread_count(quant):
    m = pyllm.load(n_threads=1, quant=quant)
    ids = m.tokenize("ROMEO:\nWhat light through yonder window breaks? It is the east")
    ref = run_prompt(m, ids, 1)
    for nth in (2, 3, 4):
        got = run_prompt(m, ids, nth)
        for a, b in zip(ref, got):
            assert np.array_equal(a, b), f"{nth} threads differ from one"


def test_quantize_identical_for_any_thread_count():
    x = np.random.default_rng(3).standard_normal((67, 256)).astype(np.float32)
    imp = np.random.default_rng(4).random(256).astype(np.float32)
    for name in ("q4_0", "q8_0"):  # the reference conversion: a static split of the rows
        t = _engine.TYPE_IDS[name]
        ref = _engine.quantize(t, x, n_threads=1)
        for nth in (2, 3, 4):
            assert np.array_equal(_engine.quantize(t, x, n_threads=nth), ref)
    for t in (_engine.TYPE_IDS["q4_0"], _engine.BLOCK_TYPE_IDS["q4_k"]):  # the searches: dynamic
        ref = _engine.quantize_weighted(t, x, imp, n_threads=1)
        for nth in (2, 3, 4):
            assert np.array_equal(_engine.quantize_weighted(t, x, imp, n_threads=nth), ref)


def test_two_python_threads_run_models_at_once():
    """the GIL is released during a forward: three models (one Python thread each, as a model's
    runner serves one call at a time) run concurrently, each call on its own team of workers"""
    models = [pyllm.load(n_threads=2), pyllm.load(n_threads=2, quant="q8_0"), pyllm.load(n_threads=2)]
    prompts = [models[0].tokenize("ROMEO:"), models[1].tokenize("JULIET:\nO Romeo"), models[2].tokenize("KING")]
    expected = [run_prompt(mm, p, 2) for mm, p in zip(models, prompts)]
    failures = []

    def work(i):
        for _ in range(15):
            got = run_prompt(models[i], prompts[i], 2)
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[i])):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


CHILD = r"""
import os, sys, threading
import numpy as np
import pyllm
from pyllm import _engine
m = pyllm.load(n_threads=2)
ids = m.tokenize("ROMEO:")
def logits():
    kv = _engine.KVCache(m._cmodel, 32)
    return m._runner.forward([kv], ids, range(len(ids)), [0] * len(ids), [len(ids) - 1], 2)
before = logits()  # the pool's workers now exist in this process
assert _engine.pool_selftest(3, 100) == (0, 3)
pid = os.fork()
if pid == 0:  # the child has none of them: it must start its own, not wait for the parent's
    ok = np.array_equal(logits(), before) and _engine.pool_selftest(3, 100) == (0, 3)
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert np.array_equal(logits(), before)
if sys.argv[1] == "daemon":  # exit while another thread is inside a forward
    def spin():
        while True:
            logits()
    threading.Thread(target=spin, daemon=True).start()
    import time
    time.sleep(0.2)
print("done")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["plain", "daemon"])
def test_fork_and_exit_with_live_workers(mode, tmp_path):
    r = run_child([CHILD, mode], tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "done"
