"""cli.py: the `pyllm` command. `pyllm generate [MODEL] -p PROMPT` streams a continuation; with
no MODEL it runs the shakespeare-4m model shipped in the package."""
from __future__ import annotations

import argparse
import sys


def _generate(args) -> int:
    import pyllm

    model = pyllm.load(args.model, n_threads=args.threads, n_ctx=args.ctx)
    prompt = args.prompt
    out = sys.stdout
    if args.echo:
        out.write(prompt)
    for piece in model.stream(prompt, max_tokens=args.n, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                              min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
                              ignore_eos=args.ignore_eos):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


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
    g.add_argument("-t", "--threads", type=int, default=None)
    g.add_argument("-c", "--ctx", type=int, default=None, help="context length (default: model's, at most 4096)")
    g.add_argument("--no-echo", dest="echo", action="store_false", help="do not print the prompt first")
    g.set_defaults(func=_generate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # pyllm's errors are ValueErrors with a clear message
        print(f"pyllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
