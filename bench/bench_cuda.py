"""bench_cuda.py: pyllm.load(device="cuda") against transformers (bf16, eager attention, the same GPU, the
same run) on the 1.1B-shaped model (TinyLlama's shape, random weights: bench/make_random_checkpoint.py):
a 512-token prompt's prefill (also with its attention on the split kernel: PYLLM_CUDA_PREFILL_MIN_RUN=0), one
stream's decode, and 16 streams decoding together (aggregate tok/s).
pyllm runs Q4_0 (and whatever --types adds) converted at load; its decode is timed with CUDA graphs
(the default) and without (PYLLM_CUDA_GRAPHS=0), and with the unfused kernels (CudaModel.fused = False:
q / k / v, gate / up, SwiGLU and the activation quantizations as separate launches), in the same process;
decode after the 512-token prompt with 256, 128 and 64 keys per attention split (CudaModel.attention_split);
the 16 streams' decode also with CudaModel.mma_min_tokens = 1 << 20 (their 16-token steps on the batched GEMV
and the fused q / k / v and gate / up launches instead of the tensor cores: is 16 the right threshold?).
Medians of --reps repetitions;
decode figures are the median step over --steps steps after a 16-token prompt (1 / step time, or 16 /
step time for the batch). Issue 11's targets: Q4_0 decode >= 1,000 tok/s, prefill >= transformers bf16,
batch-16 decode >= 5,000 tok/s aggregate.

    python bench/bench_cuda.py [--model DIR] [--types q4_0,q8_0] [--reps 5] [--steps 64] [--json OUT.json]

Needs a PYLLM_CUDA=ON build, a GPU, and torch with CUDA plus transformers (for the peer)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import pyllm  # noqa: E402
from pyllm import _engine  # noqa: E402

PROMPT, SHORT, BATCH = 512, 16, 16


def med(xs):
    return statistics.median(xs)


def bench_transformers(path, reps, steps, rng):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                              attn_implementation="eager").cuda().eval()
    vocab = model.config.vocab_size
    out = {}
    with torch.inference_mode():
        ids = torch.tensor(rng.integers(3, vocab, size=(1, PROMPT)), device="cuda")
        times = []
        for _ in range(reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids, use_cache=False)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out["prefill_tok_s"] = PROMPT / med(times[1:])
        for label, b in (("decode_tok_s", 1), ("batch16_tok_s", BATCH)):
            ids = torch.tensor(rng.integers(3, vocab, size=(b, SHORT)), device="cuda")
            r = model(ids, use_cache=True)
            pkv, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
            step = []
            for _ in range(steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                r = model(nxt, past_key_values=pkv, use_cache=True)
                pkv, nxt = r.past_key_values, r.logits[:, -1].argmax(-1, keepdim=True)
                torch.cuda.synchronize()
                step.append(time.perf_counter() - t0)
            out[label] = b / med(step[2:])
    del model
    torch.cuda.empty_cache()
    return out


def bench_pyllm(path, quant, reps, steps, rng):
    m = pyllm.load(path, quant=quant, n_ctx=1024, device="cuda")
    vocab = m.vocab_size
    out = {"weights_mb": m._cuda.nbytes / 1e6}
    seq = m.sequence()
    ids = rng.integers(3, vocab, size=PROMPT).tolist()
    times = []
    for _ in range(reps + 1):
        seq.reset()
        t0 = time.perf_counter()
        seq.append(ids)  # one forward of 512 tokens (n_batch 512), the last row's logits back
        times.append(time.perf_counter() - t0)
    out["prefill_tok_s"] = PROMPT / med(times[1:])
    # the same prompt with its attention on the split kernel instead of the tiled prefill kernel
    os.environ["PYLLM_CUDA_PREFILL_MIN_RUN"] = "0"
    times = []
    for _ in range(reps + 1):
        seq.reset()
        t0 = time.perf_counter()
        seq.append(ids)
        times.append(time.perf_counter() - t0)
    out["prefill_split_attention_tok_s"] = PROMPT / med(times[1:])
    os.environ.pop("PYLLM_CUDA_PREFILL_MIN_RUN", None)
    for graphs, fused, key in (("1", True, "decode_tok_s"), ("0", True, "decode_no_graphs_tok_s"),
                               ("1", False, "decode_unfused_tok_s")):
        os.environ["PYLLM_CUDA_GRAPHS"] = graphs
        m._cuda.fused = fused
        seq.reset()
        logits = seq.append(rng.integers(3, vocab, size=SHORT).tolist())
        step = []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = seq.append([int(np.argmax(logits))])
            step.append(time.perf_counter() - t0)
        out[key] = 1 / med(step[2:])
    os.environ.pop("PYLLM_CUDA_GRAPHS", None)
    m._cuda.fused = True
    # decode after the 512-token prompt (a longer context), with 256 / 128 / 64 keys per attention split
    for split in (256, 128, 64):
        m._cuda.attention_split = split
        seq.reset()
        logits = seq.append(ids)
        step = []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = seq.append([int(np.argmax(logits))])
            step.append(time.perf_counter() - t0)
        out[f"decode_ctx512_split{split}_tok_s"] = 1 / med(step[2:])
    m._cuda.attention_split = 256
    # 16 sequences, one token each per step (what the batching engine sends), straight to the forward: with
    # the default mma_min_tokens (16: these 16-token steps on the tensor cores), and with the batched GEMV and
    # the fused q / k / v and gate / up launches (mma_min_tokens past any batch)
    default_mma = m._cuda.mma_min_tokens
    rows = list(range(BATCH))
    for mma_min, key in ((default_mma, "batch16_tok_s"), (1 << 20, "batch16_gemv_tok_s")):
        m._cuda.mma_min_tokens = mma_min
        kvs = [m._new_kv() for _ in range(BATCH)]
        for kv in kvs:
            m._forward([kv], rng.integers(3, vocab, size=SHORT).tolist(), list(range(SHORT)), [0] * SHORT, [SHORT - 1])
        tok = rng.integers(3, vocab, size=BATCH)
        step = []
        for s in range(steps):
            t0 = time.perf_counter()
            lg = m._forward(kvs, tok.tolist(), [SHORT + s] * BATCH, rows, rows)
            step.append(time.perf_counter() - t0)
            tok = lg.argmax(1)
        out[key] = BATCH / med(step[2:])
        del kvs
    m._cuda.mma_min_tokens = default_mma
    # the same through the engine (sampling, scheduling, Python), end to end
    t0 = time.perf_counter()
    reqs = [m.submit(rng.integers(3, vocab, size=SHORT).tolist(), max_tokens=steps, temperature=0) for _ in range(BATCH)]
    n = sum(len(r.result().token_ids) for r in reqs)
    out["engine16_tok_s"] = n / (time.perf_counter() - t0)
    m.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint folder (default: a random 1.1B-shaped one, made here)")
    ap.add_argument("--types", default="q4_0")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--no-peer", action="store_true", help="skip transformers")
    ap.add_argument("--json")
    a = ap.parse_args()
    info = _engine.cuda_info()
    if not info["devices"]:
        print(f"no GPU to benchmark: {info['error']}", file=sys.stderr)
        return 2
    gpu = info["device_list"][0]["name"]
    path = a.model
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "tinyllama-shape")
        subprocess.run([sys.executable, os.path.join(HERE, "make_random_checkpoint.py"), path, "--dtype", "bfloat16"],
                       check=True)
    rng = np.random.default_rng(0)
    res = {"gpu": gpu, "cuda_runtime": info["runtime"], "driver": info["driver"], "model": path, "pyllm": {}}
    if not a.no_peer:
        res["transformers_bf16_eager"] = bench_transformers(path, a.reps, a.steps, rng)
    for q in a.types.split(","):
        res["pyllm"][q] = bench_pyllm(path, q, a.reps, a.steps, rng)
    print(f"GPU: {gpu} (CUDA runtime {info['runtime']}, driver {info['driver']}); 1.1B-shaped model; medians")
    peer = res.get("transformers_bf16_eager", {})
    rows = [("prefill, 512-token prompt", "prefill_tok_s"),
            ("prefill, split-key attention", "prefill_split_attention_tok_s"), ("decode, one stream", "decode_tok_s"),
            ("decode, one stream, no graphs", "decode_no_graphs_tok_s"),
            ("decode, one stream, unfused", "decode_unfused_tok_s"),
            ("decode at 512, 256-key splits", "decode_ctx512_split256_tok_s"),
            ("decode at 512, 128-key splits", "decode_ctx512_split128_tok_s"),
            ("decode at 512, 64-key splits", "decode_ctx512_split64_tok_s"), ("decode, 16 streams (aggregate)", "batch16_tok_s"),
            ("decode, 16 streams, GEMV + fused", "batch16_gemv_tok_s"),
            ("16 requests via the engine", "engine16_tok_s")]
    head = f"{'tok/s':34s} {'transformers bf16':>18s}" + "".join(f" {'pyllm ' + q:>14s} {'ratio':>7s}" for q in res["pyllm"])
    print(head)
    for label, key in rows:
        line = f"{label:34s} {peer.get(key, float('nan')):18.1f}"
        for q, r in res["pyllm"].items():
            p = peer.get(key.replace("_no_graphs", "").replace("_unfused", "").replace("_split_attention", "")
                         .replace("_gemv", "").replace("engine16", "batch16"))
            line += f" {r.get(key, float('nan')):14.1f} {(r[key] / p) if p and key in r else float('nan'):7.2f}"
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
