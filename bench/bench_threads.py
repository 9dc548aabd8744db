"""bench_threads.py: the engine's threading (csrc/thread_pool.c) against another build of the engine
(e.g. the OpenMP build pyllm used before), on a quiet machine and with a CPU-bound process pinned to
one CPU. Each run is its own subprocess; within a repetition the configurations alternate (their
order rotating every repetition); tables show medians over the repetitions and each configuration's
ratio to the first one (above 1: faster for tok/s, slower for ms).

    PYTHONPATH=. python bench/bench_threads.py [--baseline-so OLD/_engine*.so] [--gguf MODEL.gguf]
        [--reps 5] [--threads 2] [--pool-spins 100] [--no-busy] [--decode 256]

Configurations: `pool` (this checkout's pyllm/_engine*.so; with --pool-spins A,B one per spin time in
microseconds before a waiting thread sleeps), and with --baseline-so the other build twice, with
GOMP_SPINCOUNT=1000 (`omp-1000`, what pyllm set before it had its own pool) and with libgomp's default
spin (`omp-default`). The baseline .so is imported in place of pyllm._engine under this checkout's
Python package, so it must be a build of the same engine API (e.g. main before the pool: cmake -S .
-B build/omp && cmake --build build/omp, then --baseline-so build/omp/_engine*.so).

What each run measures, after a short warm-up, with --threads threads:
  * shipped model (shakespeare-4m) decode: tok/s over --decode greedy steps (Sequence.append of one
    token each) after an 8-token prompt, and the median milliseconds of one step (which hides the
    stalls a busy machine causes: tok/s is the figure to compare);
  * with --gguf (e.g. a TinyLlama-1.1B-shaped Q4_0 file): decode tok/s over 32 greedy steps after an
    8-token prompt, and prefill tok/s of a 256-token prompt on an empty cache;
  * unless --no-busy, the same again while `python -c 'while 1: pass'` runs pinned to CPU 0 (at niceness
    --busy-nice, default 0: the same priority as the benchmark).
Prompts are token ids from a fixed seed.

README's table ("Threads"): `--baseline-so` an OpenMP build of the commit before the pool, `--gguf` a
TinyLlama-1.1B-shaped Q4_0 file (`pyllm quantize /tmp/tinyllama-bf16 tl-q4_0.gguf --type q4_0`),
`--reps 5 --decode 300 --no-omp-default`, run at nice -10 to keep the shared machine's other jobs
from deciding the figures (the pinned CPU-bound process inherits that priority).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import default_threads, machine, medians  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, os, statistics, sys, time
so, gguf, nth, n_decode, spin = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if so:  # another build of the engine under this package
    import importlib.machinery, importlib.util
    loader = importlib.machinery.ExtensionFileLoader("pyllm._engine", so)
    spec = importlib.util.spec_from_file_location("pyllm._engine", so, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pyllm._engine"] = mod
    loader.exec_module(mod)
import numpy as np
import pyllm
from pyllm import _engine
if spin:  # "BARRIER_US/JOB_US[/CPU_CHECK]"
    _engine.pool_spin_us(*map(int, spin.split("/")))
rng = np.random.default_rng(0)

def decode_steps(m, steps):
    seq = pyllm.Sequence(m)
    logits = seq.append([int(t) for t in rng.integers(3, m.vocab_size, 8)])
    times = []
    for _ in range(steps):
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        logits = seq.append([tok])
        times.append(time.perf_counter() - t0)
    return times

out = {}
m = pyllm.load(n_threads=nth)
decode_steps(m, 20)
steps = decode_steps(m, n_decode)
out["tiny_decode_tok_s"] = len(steps) / sum(steps)
out["tiny_step_median_ms"] = statistics.median(steps) * 1e3
if gguf:
    m = pyllm.load(gguf, n_threads=nth, n_ctx=512)
    decode_steps(m, 2)
    out["1b_decode_tok_s"] = 32 / sum(decode_steps(m, 32))
    seq = pyllm.Sequence(m)
    ids = [int(t) for t in rng.integers(3, m.vocab_size, 256)]
    t0 = time.perf_counter()
    seq.append(ids)
    out["1b_prefill_tok_s"] = len(ids) / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-so", help="another build of pyllm's _engine extension to compare with")
    ap.add_argument("--gguf", help="a larger model to decode and prefill (e.g. a 1.1B Q4_0 GGUF)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(2, default_threads()))
    ap.add_argument("--decode", type=int, default=256, help="shipped-model decode steps per run")
    ap.add_argument("--pool-spins", default="",
                    help="comma-separated BARRIER_US/JOB_US[/CPU_CHECK] pool settings to compare (spin times in "
                         "microseconds; CPU_CHECK 0 turns off sleeping at once beside a partner on the same CPU)")
    ap.add_argument("--no-omp-default", action="store_true", help="skip the baseline with libgomp's default spin")
    ap.add_argument("--no-busy", action="store_true", help="skip the runs beside a CPU-bound process")
    ap.add_argument("--busy-nice", type=int, default=0,
                    help="niceness of the CPU-bound process (19: a background job that yields to everything)")
    a = ap.parse_args()
    if not glob.glob(os.path.join(REPO, "pyllm", "_engine*.so")):
        raise SystemExit("build the engine first (pyllm/_engine*.so)")
    configs = []  # (label, so, env, spin)
    for sp in [x for x in a.pool_spins.split(",") if x] or [""]:
        configs.append((f"pool{sp}", "", {}, sp))
    if a.baseline_so:
        so = os.path.abspath(a.baseline_so)
        configs.append(("omp-1000", so, {"GOMP_SPINCOUNT": "1000"}, ""))
        if not a.no_omp_default:
            configs.append(("omp-default", so, {"GOMP_SPINCOUNT": None}, ""))
    print(machine())
    print(f"threads {a.threads}, reps {a.reps}, shipped-model decode steps {a.decode}, gguf {a.gguf or '-'}")
    for busy in ([False] if a.no_busy else [False, True]):
        hog = None
        if busy:
            hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"],
                                   preexec_fn=(lambda: os.nice(a.busy_nice)) if a.busy_nice else None)
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(hog.pid, {min(os.sched_getaffinity(0))})
        try:
            runs = {c[0]: [] for c in configs}
            for rep in range(a.reps):
                k = rep % len(configs)
                for label, so, env, spin in configs[k:] + configs[:k]:
                    full_env = {kk: v for kk, v in os.environ.items() if kk != "GOMP_SPINCOUNT"}
                    full_env.update({kk: v for kk, v in env.items() if v is not None})
                    full_env["PYTHONPATH"] = REPO
                    out = subprocess.run([sys.executable, "-c", WORKER, so, a.gguf or "", str(a.threads),
                                          str(a.decode), str(spin)], capture_output=True, text=True, env=full_env,
                                         cwd=REPO)
                    if out.returncode:
                        raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
                    runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))

        finally:
            if hog:
                hog.kill()
                hog.wait()
        print(f"\n== {f'busy: a CPU-bound process (nice {a.busy_nice}) pinned to one CPU' if busy else 'quiet'}")
        med = {label: medians(r) for label, r in runs.items()}
        first = configs[0][0]
        keys = list(med[first])
        print("config".ljust(14) + "".join(k.rjust(18) for k in keys) + "".join(f"vs {first}".rjust(14) for _ in keys))
        for label in med:
            row = label.ljust(14) + "".join(f"{med[label][k]:18.3f}" for k in keys)
            for k in keys:
                r = med[label][k] / med[first][k]
                row += f"{r:14.3f}"
            print(row)
        for label in runs:
            print(f"  {label} runs: " + "; ".join(", ".join(f"{v:.3f}" for v in r.values()) for r in runs[label]))


if __name__ == "__main__":
    main()
