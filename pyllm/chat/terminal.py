"""terminal.py: `pyllm chat [MODEL]`, an interactive chat in the terminal. Keeps the conversation,
streams each reply as it is generated (the engine reuses the previous turns' KV cache, so a turn
prefills only its new tokens), and has a few slash commands (/reset, /system, /help, /quit).
Ctrl-C stops a reply (the partial reply stays in the history) or clears the input line; Ctrl-D or
/quit leaves. add_arguments() / run() make the `chat` subcommand of pyllm/cli.py; main() runs alone."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from ..adapters import add_lora_argument, lora_spec

HELP = """commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message and start a new conversation (/system alone removes it)
  /help           this list
  /quit, /exit    leave (Ctrl-D too)
  //TEXT          send a message that starts with '/'
Ctrl-C stops a reply as it is written (the partial reply stays in the conversation)."""

# sampling flags: (flag, dest on args, SamplingParams / chat() option name)
_SAMPLING = (("--temp", "temp", "temperature"), ("--top-k", "top_k", "top_k"), ("--top-p", "top_p", "top_p"),
             ("--min-p", "min_p", "min_p"), ("--repeat-penalty", "repeat_penalty", "repeat_penalty"),
             ("--seed", "seed", "seed"))


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `pyllm chat` options."""
    parser.add_argument("model", nargs="?", default=None,
                        help="Hugging Face checkpoint folder or .gguf file (default: the shipped shakespeare-4m)")
    parser.add_argument("--system", default=None, metavar="TEXT", help="system message")
    parser.add_argument("--chat-template", default=None, metavar="FILE_OR_STRING",
                        help="Jinja chat template (or a file holding one) instead of the model's own")
    parser.add_argument("-n", "--max-tokens", dest="max_tokens", type=_positive_int, default=512,
                        help="at most this many tokens per reply (default 512)")
    parser.add_argument("--temp", type=float, default=None,
                        help="temperature; 0 = greedy (default: the model's, else 0.8)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repeat-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-t", "--threads", type=_positive_int, default=None)
    parser.add_argument("-c", "--ctx", type=_positive_int, default=None,
                        help="context length (default: the model's, at most 4096)")
    parser.add_argument("--special", action="store_true", help="show control tokens in replies")
    parser.add_argument("--kv-type", choices=("f32", "f16"), default="f32", help="KV cache element type (default f32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="run the model on the CPU (default) or an NVIDIA GPU (a PYLLM_CUDA build)")
    add_lora_argument(parser, "applied to the model")
    parser.add_argument("--ignore-eos", action="store_true", help=argparse.SUPPRESS)  # for tests: long replies


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def _sampling_options(args) -> dict:
    """The sampling values the user set, checked (ValueError naming the flag)."""
    from ..sampling import SamplingParams

    opts = {}
    for flag, dest, name in _SAMPLING:
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            SamplingParams(**{name: value})
        except ValueError as e:
            msg = str(e)
            prefix = f"SamplingParams.{name} "
            raise ValueError(f"{flag} {msg[len(prefix):]}" if msg.startswith(prefix) else f"{flag}: {msg}") from None
        opts[name] = value
    return opts


def _load_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: the text of an existing file, else the value itself (a template or a template name)."""
    if value is None:
        return None
    if os.path.isdir(value):
        raise ValueError(f"--chat-template {value}: is a folder, not a template file")
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--chat-template: cannot read {value}: {getattr(e, 'strerror', None) or e}") from None
    return value


def _check_template(model, template: Optional[str], system: Optional[str]) -> Optional[str]:
    """None if the chat template renders a conversation, else the message to exit with."""
    probe = [{"role": "user", "content": "hi"}]
    try:
        text = model.apply_chat_template(probe, chat_template=template)
    except ValueError as e:
        if template is not None:
            return f"--chat-template: the template does not render a conversation: {e}"
        tok = model.tokenizer
        if not (getattr(tok, "chat_template", None) or getattr(tok, "chat_templates", None)):
            return ("this model has no chat template: pass --chat-template FILE_OR_STRING (a Jinja template, or a "
                    "file holding one)")
        return f"the model's chat template does not render a conversation ({e}): pass --chat-template FILE_OR_STRING"
    if not model.tokenize(text, add_special_tokens=False):
        return "the chat template renders an empty prompt" + ("" if template else ": pass --chat-template")
    if system is not None:
        try:
            model.apply_chat_template([{"role": "system", "content": system}] + probe, chat_template=template)
        except ValueError as e:
            return f"--system: the chat template does not take a system message: {e}"
    return None


class _SigintGuard:
    """SIGINT handler for while a reply streams: raises KeyboardInterrupt, except while a piece is
    being recorded and printed (then it waits for the end of that), so the history holds exactly
    the text that was shown."""

    def __init__(self):
        self.defer = False
        self.pending = False

    def __call__(self, signum, frame):
        if self.defer:
            self.pending = True
        else:
            raise KeyboardInterrupt


class ChatSession:
    """The conversation and the loop around it (input and output streams are the process's)."""

    def __init__(self, model, template: Optional[str], system: Optional[str], options: dict):
        self.model = model
        self.template = template
        self.system = system
        self.options = options
        self.messages: List[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []

    # ------------------------------------------------------------------ one turn
    def send(self, text: str) -> None:
        """Add the user message, stream the reply to stdout and add it to the history. Errors are
        printed (the user message is then dropped) and the session goes on."""
        from ..errors import ContextLengthError

        self.messages.append({"role": "user", "content": text})
        parts: List[str] = []
        gen = None
        guard = _SigintGuard()
        old = signal.getsignal(signal.SIGINT)
        interrupted = False
        try:
            try:
                signal.signal(signal.SIGINT, guard)
            except ValueError:  # not the main thread: Ctrl-C is not ours to handle
                old = None
            guard.defer = True  # not while the request is being queued: it would run on with no one to cancel it
            gen = self.model.chat(self.messages, stream=True, chat_template=self.template, **self.options)
            guard.defer = False
            if guard.pending:
                raise KeyboardInterrupt
            for piece in gen:
                guard.defer = True
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
                guard.defer = False
                if guard.pending:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
        except ContextLengthError as e:
            self.messages.pop()
            _err(f"{e}\nthe conversation no longer fits in the context ({self.model.n_ctx} tokens): /reset to start "
                 "over, or restart with a larger -c/--ctx")
            return
        except ValueError as e:  # the template rejected the conversation, a bad option, ...
            self.messages.pop()
            if parts:
                sys.stdout.write("\n")
            _err(str(e))
            return
        except Exception as e:  # the engine failed: report it, keep the session
            self.messages.pop()
            if parts:
                sys.stdout.write("\n")
            _err(f"generation failed: {type(e).__name__}: {e}")
            return
        finally:
            guard.defer = True  # a late Ctrl-C no longer interrupts anything
            if old is not None:
                signal.signal(signal.SIGINT, old)
            if gen is not None:
                gen.close()  # an abandoned reply: the engine frees its sequence
        sys.stdout.write("\n")
        sys.stdout.flush()
        reply = "".join(parts)
        if interrupted:
            if not reply:
                self.messages.pop()
                print("[interrupted before the reply began: the message is dropped]", file=sys.stderr, flush=True)
                return
            print("[interrupted: the partial reply is kept in the conversation]", file=sys.stderr, flush=True)
        self.messages.append({"role": "assistant", "content": reply})
        if not interrupted and self._context_full():
            print(f"[the conversation fills the context ({self.model.n_ctx} tokens), so the reply may be cut short: "
                  "/reset to start over]", file=sys.stderr, flush=True)

    def _context_full(self) -> bool:
        # model.chat's stream does not say why a reply ended: measure the conversation as rendered
        try:
            text = self.model.apply_chat_template(self.messages, add_generation_prompt=False,
                                                  chat_template=self.template)
            return len(self.model.tokenize(text, add_special_tokens=False)) >= self.model.n_ctx
        except ValueError:
            return False

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Run a /command; False when the session should end."""
        name, rest = (line.split(None, 1) + [""])[:2]
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.reset()
            print("[conversation cleared]", file=sys.stderr, flush=True)
        elif name == "/system":
            if rest:
                try:
                    self.model.apply_chat_template([{"role": "system", "content": rest},
                                                    {"role": "user", "content": "hi"}], chat_template=self.template)
                except ValueError as e:
                    _err(f"the chat template does not take a system message: {e}")
                    return True
            self.system = rest or None
            self.reset()
            print("[system message " + ("set" if rest else "removed") + "; conversation cleared]", file=sys.stderr,
                  flush=True)
        elif name == "/help":
            print(HELP, file=sys.stderr, flush=True)
        else:
            _err(f"unknown command {name} (/help for commands; //TEXT sends a message starting with '/')")
        return True

    def loop(self) -> int:
        interrupts = 0
        handler = signal.getsignal(signal.SIGINT)
        while True:
            try:
                line = input("> ")
            except EOFError:
                sys.stdout.write("\n")
                sys.stdout.flush()
                return 0
            except KeyboardInterrupt:  # as Python's REPL: drop the line, new prompt
                interrupts += 1
                sys.stdout.write("\n")
                sys.stdout.flush()
                if interrupts >= 2:
                    print("(Ctrl-D or /quit to exit)", file=sys.stderr, flush=True)
                continue
            except UnicodeDecodeError as e:
                _err(f"could not decode the input: {e}")
                continue
            interrupts = 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("//"):
                text = text[1:]
            elif text.startswith("/"):
                if not self.command(text):
                    return 0
                continue
            try:
                self.send(text)
            except KeyboardInterrupt:  # a Ctrl-C outside the streaming loop (while setting up or cleaning up)
                if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
                    try:
                        signal.signal(signal.SIGINT, handler)
                    except ValueError:
                        pass
                sys.stdout.write("\n")
                sys.stdout.flush()


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    except ImportError:
        pass


def run(args) -> int:
    """`pyllm chat`: 0 on Ctrl-D or /quit, 2 for bad options, a model that cannot be loaded or one
    without a usable chat template. A Ctrl-C before the session starts raises KeyboardInterrupt."""
    from ..loader import default_model_path, load

    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")  # odd bytes typed or generated never end the session
        except (AttributeError, ValueError, OSError):
            pass
    try:
        options = _sampling_options(args)
        template = _load_template(args.chat_template)
    except ValueError as e:
        _err(str(e))
        return 2
    options["max_tokens"] = args.max_tokens
    if args.special:
        options["special"] = True
    if args.ignore_eos:
        options["ignore_eos"] = True
    system = args.system if args.system else None
    path = args.model if args.model is not None else default_model_path()
    try:
        model = load(path, n_threads=args.threads, n_ctx=args.ctx, kv_type=args.kv_type, lora=lora_spec(args.lora),
                     device=args.device)
    except (ValueError, OSError) as e:
        _err(f"cannot load {path}: {e}")
        return 2
    problem = _check_template(model, template, system)
    if problem is not None:
        _err(problem)
        return 2
    name = os.path.basename(os.path.normpath(path))
    print(f"pyllm chat: {name}, n_ctx {model.n_ctx} - /help for commands, Ctrl-D to exit", file=sys.stderr,
          flush=True)
    _enable_line_editing()
    try:
        return ChatSession(model, template, system, options).loop()
    finally:
        model.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyllm chat", description="chat with a model in the terminal")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # while starting up
        return 130


if __name__ == "__main__":
    sys.exit(main())
