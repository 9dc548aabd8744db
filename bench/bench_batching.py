"""bench_batching.py: what continuous batching buys. Aggregate decode tokens/s with 1, 2, 4, 8, 16
concurrent streams on one model (each stream greedy, ignore_eos, its own prompt), as a ratio to
one stream measured in the same run, and time to first token of a new request while N-1 streams
decode (ratio to the same request on an idle engine). Medians over --reps; each rep runs every
stream count back to back, so a ratio pairs numbers taken within seconds of each other.

    python bench/make_random_checkpoint.py /tmp/tinyllama-bf16
    python bench/bench_batching.py /tmp/tinyllama-bf16 --quant q4_0
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import default_threads, machine  # noqa: E402

PROMPTS = ["The history of the city begins", "In the morning the ship", "She opened the letter and",
           "Once upon a time, in a village", "The committee announced that", "He walked into the kitchen",
           "According to the report, the", "Rain fell on the roofs of", "The new engine was designed to",
           "At the edge of the forest", "Scientists have long wondered why", "The train left the station",
           "Nobody expected the match to", "In the year 1850, the", "The recipe calls for two",
           "After the storm, the harbor"]


def decode_rate(model, n: int, tokens: int) -> float:
    """Aggregate decode tokens/s of n streams generating `tokens` each: counted from the moment every
    stream has its first token (prefill done) to the end."""
    model.engine.clear_cache()
    reqs = [model.submit(PROMPTS[i % len(PROMPTS)] + f" ({i})", max_tokens=tokens, temperature=0, ignore_eos=True)
            for i in range(n)]
    iters = [iter(r) for r in reqs]
    for it in iters:
        next(it)
    t0 = time.perf_counter()
    for r in reqs:
        r.result()
    dt = time.perf_counter() - t0
    return n * (tokens - 1) / dt


def ttft(model, busy: int, prompt_tokens: int) -> float:
    """Seconds to the first token of a request with a prompt_tokens-long prompt while `busy` other
    streams are decoding."""
    model.engine.clear_cache()
    runners = [model.submit(PROMPTS[i % len(PROMPTS)], max_tokens=100000, temperature=0, ignore_eos=True)
               for i in range(busy)]
    for r in runners:
        next(iter(r))
    ids = model.tokenize(" ".join(PROMPTS) * 8)[:prompt_tokens]
    t0 = time.perf_counter()
    req = model.submit(ids, max_tokens=2, temperature=0)
    next(iter(req))
    dt = time.perf_counter() - t0
    for r in runners:
        r.cancel()
    req.result()
    for r in runners:
        r.result()
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="Hugging Face checkpoint folder or .gguf file")
    p.add_argument("--quant", default=None, help="quantize while loading (q4_0, q8_0, ...)")
    p.add_argument("--streams", default="1,2,4,8,16")
    p.add_argument("--tokens", type=int, default=48, help="tokens each stream generates")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of the time-to-first-token request")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-t", "--threads", type=int, default=None)
    a = p.parse_args()

    import pyllm
    from pyllm import _engine

    streams = [int(s) for s in a.streams.split(",")]
    model = pyllm.load(a.model, quant=a.quant, n_threads=a.threads or default_threads())
    model.configure_engine(max_sequences=max(streams))
    print(f"machine: {machine()}")
    print(f"pyllm ISA path: {_engine.get_isa()}, {model.n_threads} threads, model {a.model}"
          f"{' (' + a.quant + ')' if a.quant else ''}, {a.tokens} tokens per stream, medians of {a.reps}")
    decode_rate(model, 1, 8)  # warm up
    rates = {n: [] for n in streams}
    waits = {n: [] for n in streams}
    for rep in range(a.reps):
        for n in streams:
            rates[n].append(decode_rate(model, n, a.tokens))
            waits[n].append(ttft(model, n - 1, a.prompt_tokens))
        print(f"rep {rep + 1}: " + ", ".join(f"{n}: {rates[n][-1]:.1f} tok/s" for n in streams), flush=True)
    base = statistics.median(rates[streams[0]])
    base_wait = statistics.median(waits[streams[0]])
    print()
    print(f"| streams | aggregate decode tok/s | vs {streams[0]} stream (paired, range) | per stream tok/s "
          f"| TTFT ({a.prompt_tokens}-token prompt) s | TTFT vs idle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in streams:
        r = statistics.median(rates[n])
        w = statistics.median(waits[n])
        paired = [x / y for x, y in zip(rates[n], rates[streams[0]])]  # within one rep: seconds apart
        print(f"| {n} | {r:.1f} | {r / base:.2f}x ({statistics.median(paired):.2f}x, {min(paired):.2f}-"
              f"{max(paired):.2f}) | {r / n:.1f} | {w:.3f} | {w / base_wait:.2f}x |")


if __name__ == "__main__":
    main()
