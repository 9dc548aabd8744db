"""bench_hf.py: pyllm against Hugging Face transformers on the same checkpoint, measured in the
same run. Each engine runs in its own subprocess (so peak RSS is its own), alternating, and the
table shows medians over the repetitions and the pyllm / transformers ratio.

    python bench/bench_hf.py CHECKPOINT_DIR [--reps 3] [--prompt 512] [--gen 128] [--threads N]

Prefill: tokens/s for one 512-token prompt. Decode: tokens/s over 128 greedy steps after it.
transformers runs in the checkpoint's dtype (bf16 for a bf16 file) with torch's own threads.
"""
from __future__ import annotations

import argparse

from _common import default_threads, machine, medians, run_worker

WORKER = r"""
import json, os, resource, sys, time
import numpy as np
engine, path, n_prompt, n_gen, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = json.load(open(os.path.join(path, "config.json")))
ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], n_prompt).tolist()  # same ids for both engines
t0 = time.perf_counter()
if engine == "pyllm":
    import pyllm
    m = pyllm.load(path, n_threads=threads, n_ctx=n_prompt + n_gen + 8)
    load = time.perf_counter() - t0
    seq = m.sequence()
    t = time.perf_counter(); logits = seq.append(ids); prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_gen):
        logits = seq.append([int(logits.argmax())])
    decode = time.perf_counter() - t
else:
    import torch, transformers
    torch.set_num_threads(threads)
    m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    m.eval()
    load = time.perf_counter() - t0
    with torch.inference_mode():
        t = time.perf_counter(); r = m(torch.tensor([ids]), use_cache=True); prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n_gen):
            tok = r.logits[0, -1].argmax().view(1, 1)
            r = m(tok, past_key_values=r.past_key_values, use_cache=True)
        decode = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(load=load, prefill=n_prompt / prefill, decode=n_gen / decode, rss=rss)))
"""


def run(engine, path, a):
    return run_worker(WORKER, [engine, path, a.prompt, a.gen, a.threads], engine)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--engines", default="pyllm,transformers")
    a = p.parse_args()
    engines = a.engines.split(",")
    res = {e: [] for e in engines}
    for rep in range(a.reps):
        for e in engines:
            r = run(e, a.checkpoint, a)
            res[e].append(r)
            print(f"rep {rep} {e:12s} prefill {r['prefill']:8.1f} tok/s  decode {r['decode']:7.2f} tok/s  "
                  f"peak RSS {r['rss'] / 2**20:7.0f} MiB  load {r['load']:.2f} s", flush=True)
    med = {e: medians(res[e]) for e in engines}
    print(f"\nmedians of {a.reps} runs, {a.threads} threads, prompt {a.prompt}, decode {a.gen}: {a.checkpoint}")
    print(f"machine: {machine()}")
    print(f"{'metric':16s}" + "".join(f"{e:>14s}" for e in engines) + ("       ratio" if len(engines) == 2 else ""))
    for k, unit in (("prefill", "tok/s"), ("decode", "tok/s"), ("rss", "MiB"), ("load", "s")):
        vals = [med[e][k] / (2**20 if k == "rss" else 1) for e in engines]
        line = f"{k + ' ' + unit:16s}" + "".join(f"{v:14.2f}" for v in vals)
        if len(vals) == 2:
            line += f"{vals[0] / vals[1]:11.2f}x"
        print(line)


if __name__ == "__main__":
    main()
