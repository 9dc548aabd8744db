"""cli.py: the `pyllm` command. `pyllm generate [MODEL] -p PROMPT` streams a continuation; with
no MODEL it runs the shakespeare-4m model shipped in the package. `pyllm chat [MODEL]` is a
terminal chat (pyllm/chat/terminal.py), `pyllm serve [MODEL]` the OpenAI-compatible server
(pyllm/serving/server.py), `pyllm perplexity MODEL FILE [--ref REF]` measures perplexity (and
KL-divergence / top-1 agreement against REF), `pyllm quantize` writes GGUF files."""
from __future__ import annotations

import argparse
import sys

from .adapters import add_lora_argument, lora_spec


def _generate(args) -> int:
    from .loader import load

    model = load(args.model, n_threads=args.threads, n_ctx=args.ctx, kv_type=args.kv_type, lora=lora_spec(args.lora),
                 device=args.device)
    options = dict(max_tokens=args.n, temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repeat_penalty=args.repeat_penalty, seed=args.seed, ignore_eos=args.ignore_eos,
                   stop=args.stop or None, presence_penalty=args.presence_penalty,
                   frequency_penalty=args.frequency_penalty, special=args.special)
    # submit() checks the prompt's length and every option before anything is printed
    req = model.submit(args.prompt, **options)
    out = sys.stdout
    try:
        if args.echo:
            out.write(args.prompt)
        for chunk in req:
            out.write(chunk.text)
            out.flush()
    finally:
        req.cancel()
    out.write("\n")
    return 0


def _perplexity(args) -> int:
    import time

    from .loader import load
    from .perplexity import perplexity

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise OSError(f"cannot read text file {args.file}: {e.strerror or e}") from None
    model = load(args.model, n_threads=args.threads, n_ctx=args.ctx, quant=args.quant)
    ref = None
    if args.ref is not None:
        ref = load(args.ref, n_threads=args.threads, n_ctx=args.ctx, quant=args.ref_quant)
    print(f"model: {args.model}{' (' + args.quant + ')' if args.quant else ''}")
    if ref is not None:
        print(f"reference: {args.ref}{' (' + args.ref_quant + ')' if args.ref_quant else ''}")
    t0 = time.perf_counter()

    def progress(done, total, r):
        if done == 1:
            print(f"perplexity over {total} chunks of {r.n_ctx} tokens (scoring the last {r.n_tokens} of each)")
        line = f"[{done}/{total}] PPL {r.ppl:.4f}"
        if r.kl_mean is not None:
            line += f"  KLD {r.kl_mean:.6f}  top-1 {100 * r.top1:.2f}%"
        print(line, flush=True)

    r = perplexity(model, text, n_ctx=args.ctx, ref=ref, batch=args.batch, n_chunks=args.chunks, progress=progress)
    dt = time.perf_counter() - t0
    print(r.summary())
    print(f"time: {dt:.2f} s ({r.n_chunks * r.n_ctx * (2 if ref is not None else 1) / dt:.0f} tokens/s evaluated)")
    return 0


def _quantize(args) -> int:
    from .gguf_export import run

    return run(args, prog="pyllm quantize")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyllm", description="CPU inference for open LLMs")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("model", nargs="?", default=None, help="Hugging Face checkpoint folder (default: shipped shakespeare-4m)")
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("-n", "--max-tokens", dest="n", type=int, default=128, help="tokens to generate (default 128)")
    g.add_argument("--temp", type=float, default=None, help="temperature; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repeat-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the text before this string (repeatable; never printed)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's presence penalty (-2..2)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's frequency penalty (-2..2)")
    g.add_argument("--special", action="store_true", help="print control tokens (<s>, <|im_end|>, ...) too")
    g.add_argument("--kv-type", default="f32", choices=["f32", "f16"], help="KV cache element type")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="run the model on the CPU (default) or an NVIDIA GPU (a PYLLM_CUDA build)")
    add_lora_argument(g, "applied to the model")
    g.add_argument("-t", "--threads", type=int, default=None)
    g.add_argument("-c", "--ctx", type=int, default=None, help="context length (default: model's, at most 4096)")
    g.add_argument("--no-echo", dest="echo", action="store_false", help="do not print the prompt first")
    g.set_defaults(func=_generate)
    pp = sub.add_parser("perplexity", help="perplexity over a text file; with --ref, KL-divergence and top-1 "
                        "agreement against a reference model (as llama.cpp's perplexity tool)")
    pp.add_argument("model", help="model: Hugging Face checkpoint folder (or a file pyllm.load accepts)")
    pp.add_argument("file", help="UTF-8 text file to score")
    pp.add_argument("--ref", default=None, help="reference model (same vocabulary), e.g. the unquantized model")
    pp.add_argument("-c", "--ctx", type=int, default=None, help="chunk length in tokens (default: model's, at most 512)")
    pp.add_argument("--quant", default=None, help="quantize MODEL while loading (q4_0, q8_0, f16, bf16, f32)")
    pp.add_argument("--ref-quant", default=None, help="quantize the reference model while loading")
    pp.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    pp.add_argument("-b", "--batch", type=int, default=None, help="tokens per engine call (default 512)")
    pp.add_argument("-t", "--threads", type=int, default=None)
    pp.set_defaults(func=_perplexity)
    c = sub.add_parser("chat", help="interactive chat in the terminal (the model's chat template; /help for commands)")
    from .chat.terminal import add_arguments as chat_arguments, run as chat_run

    chat_arguments(c)
    c.set_defaults(func=chat_run)
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the server extra: pip install 'pyllm[server]')")
    from .serving.server import add_arguments as serve_arguments, run as serve_run

    serve_arguments(sv)
    sv.set_defaults(func=serve_run)
    q = sub.add_parser("quantize", help="write a Hugging Face checkpoint as a GGUF file (q4_0, q8_0, f16, bf16)")
    from .gguf_export import add_arguments

    add_arguments(q)
    q.set_defaults(func=_quantize)
    return p


def main(argv=None) -> int:
    from .errors import PyllmError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, PyllmError) as e:  # pyllm's errors carry a clear message
        print(f"pyllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
