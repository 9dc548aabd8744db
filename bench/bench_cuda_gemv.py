"""bench_cuda_gemv.py: decode's GEMV kernels and prefill's matmuls on the GPU (csrc/cuda/, a PYLLM_CUDA=ON build),
per weight type, on the matrices of the 1.1B-shaped model (TinyLlama: dim 2048, hidden 5632, 4 KV heads of
64, vocab 32000). Each matrix is uploaded once and timed with CUDA events around back-to-back calls
(CudaWeight.time_gemv / time_gemm: the Q8_0 / Q8_K quantization of x included, host copies not); prints
microseconds per call, the bytes a call must read (weights, x) over that time as GB/s, and what one token's
matmuls would take at those speeds (22 layers of q, k, v, o, gate, up, down plus the LM head: matmuls only,
so an upper bound on decode tok/s). With --prefill N (default 512; 0: off) also one matmul of N tokens
(Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K: the tensor cores from 16 tokens), as TOPS (2 x rows x n x N operations
over the time), and N tokens over a prompt's matmuls (the LM head for the last token only) as prefill tok/s, an
upper bound to set against transformers' bf16 prefill (about 20k tok/s for this model on an H100).
With --crossover (on by default; --no-crossover: off), the batched GEMV (path "gemv": 8 tokens a pass over
the weights) against the tensor-core GEMM (path "mma": tiles of 64 rows x 64 tokens) for Q4_0, Q8_0, Q4_K
and Q6_K (those of --types) on wq (2048 x 2048), gate (5632 x 2048) and down (2048 x 5632) at 8, 16, 24, 32,
48, 64 and 128 tokens (--crossover-tokens): microseconds per call of each, and the smallest token count from
which the tensor cores are faster at that count and every larger one measured, per matrix and for a layer's
sum (2 wq-shaped: q, o; 2 gate-shaped: gate, up; down): the value for CudaModel.mma_min_tokens (default 16).

    python bench/bench_cuda_gemv.py [--types q4_0,q8_0,q4_k,q5_k,q6_k,f16,bf16] [--iters 200] [--prefill 512]
                                    [--no-crossover] [--crossover-tokens 8,16,24,32,48,64,128] [--json OUT.json]

Random weights (random valid blocks, like bench_kernels.py); the speed does not depend on the values.
Caveat: the calls repeat on one matrix, so a matrix smaller than the GPU's L2 (60 MB on an H200: all but
the F16 / BF16 LM head) is read from L2 after the first call and its GB/s can pass HBM's; the figures are
the kernels' own ceiling, and the tok/s an optimistic bound, not a decode measurement."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyllm import _engine  # noqa: E402

TYPES = {"q4_0": 2, "q8_0": 8, "q4_k": 12, "q5_k": 13, "q6_k": 14, "f16": 1, "bf16": 30}
DIM, HIDDEN, KV, VOCAB, LAYERS = 2048, 5632, 256, 32000, 22
# name -> (rows, n, how many per token)
MATRICES = {"wq / wo": (DIM, DIM, 2 * LAYERS), "wk / wv": (KV, DIM, 2 * LAYERS), "gate / up": (HIDDEN, DIM, 2 * LAYERS),
            "down": (DIM, HIDDEN, LAYERS), "lm head": (VOCAB, DIM, 1)}
# the crossover's types (those with a tensor-core kernel) and matrices: name -> (rows, n, how many per layer)
CROSSOVER_TYPES = ("q4_0", "q8_0", "q4_k", "q6_k")
CROSSOVER_MATRICES = {"wq": (DIM, DIM, 2), "gate": (HIDDEN, DIM, 2), "down": (DIM, HIDDEN, 1)}
CROSSOVER_TOKENS = "8,16,24,32,48,64,128"


def random_rows(type_id: int, rows: int, n: int, rng) -> bytes:
    """rows of n weights of type_id, quantized from random floats a band at a time (bounded host memory)"""
    out = []
    for r0 in range(0, rows, 4096):
        w = rng.standard_normal((min(4096, rows - r0), n), dtype=np.float32) * 0.02
        out.append(_engine.from_float(type_id, w))
    return b"".join(out)


def mma_from(tokens, gemv_us, mma_us):
    """the smallest token count from which the tensor cores are faster at it and at every larger count
    measured (None: not at the largest)"""
    best = None
    for t, g, m in reversed(list(zip(tokens, gemv_us, mma_us))):
        if m >= g:
            break
        best = t
    return best


def crossover(type_names, tokens, iters, rng):
    """path "gemv" against path "mma" per type and matrix at each token count: printed, and returned as rows"""
    rows_out = []
    if not type_names:
        return rows_out
    print("crossover: batched GEMV (path gemv) vs tensor cores (path mma), us per call")
    print(f"{'tokens:':>31} " + " ".join(f"{t:8d}" for t in tokens))
    for tname in type_names:
        tid = TYPES[tname]
        layer_g, layer_m = np.zeros(len(tokens)), np.zeros(len(tokens))
        for mname, (rows, n, per_layer) in CROSSOVER_MATRICES.items():
            w = _engine.CudaWeight(tid, n, rows, random_rows(tid, rows, n, rng))
            xs = rng.standard_normal((max(tokens), n), dtype=np.float32)
            g = [w.time_gemm(xs[:t], iters, path="gemv") * 1e6 for t in tokens]
            m = [w.time_gemm(xs[:t], iters, path="mma") * 1e6 for t in tokens]
            layer_g += per_layer * np.array(g)
            layer_m += per_layer * np.array(m)
            start = mma_from(tokens, g, m)
            rows_out.append({"type": tname, "matrix": mname, "rows": rows, "n": n, "tokens": list(tokens),
                             "gemv_us": g, "mma_us": m, "mma_from": start})
            print(f"{tname:5} {mname:5} {rows:5} x {n:5} gemv: " + " ".join(f"{v:8.1f}" for v in g))
            print(f"{'':25}  mma: " + " ".join(f"{v:8.1f}" for v in m) +
                  f"  -> mma from {start if start is not None else f'(none up to {max(tokens)})'}")
            del w
        start = mma_from(tokens, layer_g, layer_m)
        rows_out.append({"type": tname, "matrix": "layer", "tokens": list(tokens), "gemv_us": layer_g.tolist(),
                         "mma_us": layer_m.tolist(), "mma_from": start})
        print(f"{tname:5} a layer (2 wq, 2 gate, down): mma from "
              f"{start if start is not None else f'(none up to {max(tokens)})'} tokens")
    return rows_out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--prefill", type=int, default=512, help="tokens of the prefill matmul (0: decode only)")
    ap.add_argument("--crossover", action=argparse.BooleanOptionalAction, default=True,
                    help="time path gemv against path mma (the tensor-core threshold; default on)")
    ap.add_argument("--crossover-tokens", default=CROSSOVER_TOKENS, help="token counts of the crossover")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    try:
        tokens = sorted({int(t) for t in args.crossover_tokens.split(",")})
    except ValueError:
        ap.error(f"--crossover-tokens: comma-separated token counts, got {args.crossover_tokens!r}")
    if not tokens or tokens[0] < 1 or tokens[-1] > 4096:
        ap.error(f"--crossover-tokens: counts from 1 to 4096, got {args.crossover_tokens!r}")
    names = [t.strip() for t in args.types.split(",")]
    unknown = [t for t in names if t not in TYPES]
    if unknown:
        ap.error(f"--types: unknown {unknown}; known: {','.join(TYPES)}")
    info = _engine.cuda_info()
    if not info["devices"]:
        print(f"no GPU to benchmark: {info['error']}", file=sys.stderr)
        return 2
    print(f"GPU: {info['device_list'][0]['name']}, CUDA runtime {info['runtime']}, driver {info['driver']}")
    rng = np.random.default_rng(0)
    results = []
    for tname in names:
        tid = TYPES[tname]
        token_s = prompt_s = 0.0
        for mname, (rows, n, per_token) in MATRICES.items():
            raw = random_rows(tid, rows, n, rng)
            w = _engine.CudaWeight(tid, n, rows, raw)
            x = rng.standard_normal(n, dtype=np.float32)
            sec = w.time_gemv(x, args.iters)
            gbs = (len(raw) + 4 * n) / sec / 1e9
            token_s += per_token * sec
            row = {"type": tname, "matrix": mname, "rows": rows, "n": n, "us": sec * 1e6, "GB/s": gbs}
            line = f"{tname:5} {mname:10} {rows:6} x {n:5}: {sec * 1e6:8.1f} us  {gbs:7.1f} GB/s"
            if args.prefill > 0:
                xs = rng.standard_normal((args.prefill, n), dtype=np.float32)
                psec = w.time_gemm(xs, max(1, args.iters // 10))
                tops = 2.0 * rows * n * args.prefill / psec / 1e12
                prompt_s += per_token * psec if mname != "lm head" else sec  # the LM head: the last token's gemv
                row.update({"prefill_tokens": args.prefill, "prefill_us": psec * 1e6, "prefill_TOPS": tops})
                line += f"  | {args.prefill} tokens: {psec * 1e6:9.1f} us  {tops:6.1f} TOPS"
            results.append(row)
            print(line)
            del w
        print(f"{tname:5} one token's matmuls: {token_s * 1e3:.3f} ms -> at most {1 / token_s:.0f} tok/s")
        results.append({"type": tname, "token_matmuls_ms": token_s * 1e3})
        if args.prefill > 0:
            print(f"{tname:5} a {args.prefill}-token prompt's matmuls: {prompt_s * 1e3:.3f} ms -> at most "
                  f"{args.prefill / prompt_s:.0f} tok/s prefill")
            results.append({"type": tname, "prompt_tokens": args.prefill, "prompt_matmuls_ms": prompt_s * 1e3})
    cross = []
    if args.crossover:
        cross = crossover([t for t in CROSSOVER_TYPES if t in names], tokens, args.iters, rng)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": info["device_list"][0]["name"], "results": results, "crossover": cross}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
