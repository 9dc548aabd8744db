"""bench_kernels.py: single-thread matmul kernel throughput per weight type, in one process, A/B
between ISA tables (and between the packed and the unpacked path of a type that has both): a rows x n
weight times 1 activation row (gemv, decode) and times C rows (gemm, prefill), through the engine's
test entry points (_engine.gemm = the unpacked gemm or vec_dot loop, _engine.gemm_packed = the packed
gemm on repack() output). Prints medians of --reps timings in Gweights/s (rows x n x tokens / s),
the CPU model and the ISA of each column.

    PYTHONPATH=. python bench/bench_kernels.py [--types q4_0,q8_0,q4_k,q5_k,q6_k] [--rows 4096]
        [--gemm-rows 512] [--n 2048] [--tokens 1,64,256] [--isas avx512,avx2] [--reps 7]

Weights are random valid blocks (fp16 scale fields set to small finite values), so the figures are
kernel speed on an L2/L3-resident weight of a few MB, not DRAM bandwidth (see bench_llamacpp.py for
whole-model decode). Calls with more than one token use the first --gemm-rows rows only, so that one
call stays around a millisecond: on a shared machine a call much longer than a scheduler time slice
is mostly measuring the other processes."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench._common import machine  # noqa: E402
from pyllm import _engine  # noqa: E402

# name -> (type id, elements per block, bytes per block, byte offsets of fp16 scale fields)
TYPES = {
    "q4_0": (2, 32, 18, [0]), "q8_0": (8, 32, 34, [0]), "q4_1": (3, 32, 20, [0, 2]), "q5_0": (6, 32, 22, [0]),
    "q5_1": (7, 32, 24, [0, 2]), "iq4_nl": (20, 32, 18, [0]),
    "q2_k": (10, 256, 84, [80, 82]), "q3_k": (11, 256, 110, [108]), "q4_k": (12, 256, 144, [0, 2]),
    "q5_k": (13, 256, 176, [0, 2]), "q6_k": (14, 256, 210, [208]), "iq4_xs": (23, 256, 136, [0]),
}


def random_rows(name, rows, n, rng):
    tid, blck, nbytes, halves = TYPES[name]
    nb = rows * n // blck
    raw = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
    for o in halves:
        raw[:, o:o + 2] = (rng.standard_normal(nb) * 0.01).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


def timed(fn, reps):
    fn()  # warm-up (caches, page faults)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="q4_0,q8_0,q4_k,q5_k,q6_k")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--gemm-rows", type=int, default=512)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--tokens", default="1,64,256")
    ap.add_argument("--isas", default=",".join(i for i in ("avx512", "avx2", "neon-i8mm", "neon-dotprod", "neon") if _engine.isa_supported(i)))
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    isas = args.isas.split(",")
    tokens = [int(t) for t in args.tokens.split(",")]
    rng = np.random.default_rng(0)
    print(f"# {machine()}")
    print(f"# single thread, weight {args.rows} x {args.n} ({args.gemm_rows} rows for several tokens), medians of "
          f"{args.reps}, Gweights/s "
          f"(rows x n x tokens / s); path: unpacked = gemm or vec_dot loop, packed = repacked at load")
    print(f"{'type':8} {'path':9} {'tokens':>6} " + " ".join(f"{i:>9}" for i in isas))
    for name in args.types.split(","):
        tid = TYPES[name][0]
        w = random_rows(name, args.rows, args.n, rng)
        has_packed = _engine.packed_group_bytes(tid, args.n) > 0
        for nc in tokens:
            x = rng.standard_normal((nc, args.n)).astype(np.float32)
            rows = args.rows if nc == 1 else min(args.rows, args.gemm_rows)
            for path in ("unpacked", "packed") if has_packed else ("unpacked",):
                cells = []
                for isa in isas:
                    _engine.set_isa(isa)
                    if path == "packed":
                        p = _engine.repack(tid, w, args.rows, args.n)
                        a = _engine.pack_acts(x, tid)
                        fn = lambda: _engine.gemm_packed(tid, p, a, args.n, rows, nc)  # noqa: E731
                    else:
                        a = _engine.from_float(_engine.act_type(tid), x)
                        fn = lambda: _engine.gemm(tid, w, a, args.n, rows, nc)  # noqa: E731
                    cells.append(rows * args.n * nc / timed(fn, args.reps) / 1e9)
                print(f"{name:8} {path:9} {nc:6d} " + " ".join(f"{c:9.1f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
