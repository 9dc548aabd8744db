"""test_chat_cli.py: `pyllm chat` (pyllm/chat/terminal.py) driven through a pseudo-terminal, as a
person would use it: greedy replies equal what the Python API's model.chat() gives for the same
history, /reset, /system and --system, Ctrl-C during a reply and at the prompt, Ctrl-D, start-up
errors (no chat template, bad options). Also, via the API, that a second turn prefills only the new
tokens. The shipped shakespeare-4m model gets a simple chat template in a tmp copy of its folder."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import pyllm
from conftest import shipped_model_with_template

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
CHAT_MAIN = "import sys; from pyllm.chat.terminal import main; sys.exit(main())"
N = 12  # tokens per reply: enough to tell replies apart, few enough to keep the tests quick
PROMPT = "\r\n> "  # what follows every reply (the program's newline, then the prompt)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> str:
    """A copy of the shipped model with a chat template in its tokenizer_config.json."""
    return shipped_model_with_template(str(tmp_path_factory.mktemp("chatmodel") / "shakespeare-chat"), TEMPLATE)


@pytest.fixture(scope="module")
def api(chat_dir):
    model = pyllm.load(chat_dir)
    yield model
    model.close()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def greedy(model, messages, n=N, **kw):
    return model.chat(messages, temperature=0, max_tokens=n, **kw)


class Chat:
    """The chat program on a pseudo-terminal (its controlling terminal, so Ctrl-C is SIGINT)."""

    def __init__(self, *args: str):
        pid, fd = pty.fork()
        if pid == 0:  # child: exec at once
            try:
                # keep what was written before a Ctrl-C (by default the terminal discards output not yet read)
                attrs = termios.tcgetattr(0)
                attrs[3] |= termios.NOFLSH
                termios.tcsetattr(0, termios.TCSANOW, attrs)
                os.execve(sys.executable, [sys.executable, "-c", CHAT_MAIN, *args], dict(os.environ, TERM="xterm"))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))  # no line wrapping by readline
        self.raw = b""
        self.rc = None

    @property
    def text(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting at most timeout); False at end of output."""
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child is gone
            return False
        if not data:
            return False
        self.raw += data
        return True

    def wait_for(self, pred, start: int = 0, timeout: float = 30.0) -> str:
        """Read until pred(text[start:]) holds; that text. Fails (showing the output) at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            seg = self.text[start:]
            if pred(seg):
                return seg
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; output so far:\n{self.text!r}"
            assert self._read(min(left, 0.5)) or pred(self.text[start:]), f"program ended; output:\n{self.text!r}"

    def started(self) -> None:
        self.wait_for(lambda s: s.endswith("> "))

    def send(self, data: bytes) -> int:
        start = len(self.text)
        os.write(self.fd, data)
        return start

    def turn(self, line: str, expected: str | None = None, timeout: float = 30.0) -> str:
        """Type line and Enter; the reply printed (the text between the echoed line and the next prompt)."""
        start = self.send(line.encode() + b"\r")
        echo = line + "\r\n"
        want = 0 if expected is None else len(echo) + len(expected.replace("\n", "\r\n")) + len(PROMPT)
        seg = self.wait_for(lambda s: s.endswith(PROMPT) and len(s) >= want, start, timeout)
        assert seg.startswith(echo), f"the typed line is not echoed first: {seg!r}"
        return seg[len(echo):-len(PROMPT)].replace("\r\n", "\n")

    def wait_exit(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                while self._read(0.05) and select.select([self.fd], [], [], 0)[0]:
                    pass
                return self.rc
            assert time.monotonic() < deadline, f"the program did not exit; output:\n{self.text!r}"
            self._read(0.1)

    def close(self) -> None:
        if self.rc is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def spawn():
    chats = []

    def start(*args: str) -> Chat:
        c = Chat(*args)
        chats.append(c)
        c.started()
        return c

    yield start
    for c in chats:
        c.close()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """The program without a terminal (stdin empty): for start-up errors."""
    return subprocess.run([sys.executable, "-c", CHAT_MAIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


# ---------------------------------------------------------------------- conversations
def test_two_turns_then_reset(spawn, chat_dir, api):
    u1, u2 = "Good morrow, sweet lady.", "What news from the court?"
    e1 = greedy(api, [user(u1)])
    e2 = greedy(api, [user(u1), assistant(e1), user(u2)])
    e2_alone = greedy(api, [user(u2)])
    assert e2 != e2_alone, "this check needs the history to change the second reply"
    c = spawn(chat_dir, "--temp", "0", "-n", str(N))
    assert "n_ctx 1024" in c.text and "/help" in c.text  # the banner
    assert c.turn(u1, e1) == e1
    assert c.turn(u2, e2) == e2  # the reply to [u1, reply 1, u2]
    start = c.send(b"/reset\r")
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert c.turn(u2, e2_alone) == e2_alone  # history forgotten
    c.send(b"\x04")
    assert c.wait_exit() == 0


def test_system_option_and_command(spawn, chat_dir, api):
    s1, s2, u = "Thou art a king.", "Speak as a fool.", "Who art thou?"
    plain = greedy(api, [user(u)])
    e1 = greedy(api, [system(s1), user(u)])
    e2 = greedy(api, [system(s2), user(u)])
    assert len({plain, e1, e2}) == 3, "this check needs the system messages to change the reply"
    c = spawn(chat_dir, "--temp", "0", "-n", str(N), "--system", s1)
    assert c.turn(u, e1) == e1
    start = c.send(f"/system {s2}\r".encode())
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert c.turn(u, e2) == e2  # new system message, history cleared
    start = c.send(b"/system\r")  # removes it
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert c.turn(u, plain) == plain
    start = c.send(b"/quit\r")
    assert c.wait_exit() == 0


def test_commands_and_odd_input(spawn, chat_dir, api):
    u = "/slash in the text"
    e = greedy(api, [user(u)])
    c = spawn(chat_dir, "--temp", "0", "-n", str(N))
    start = c.send(b"/help\r")
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "/reset" in seg and "/system" in seg and "/quit" in seg
    start = c.send(b"/nonsense\r")
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "error: unknown command /nonsense" in seg
    start = c.send(b"   \r")  # an empty line: nothing happens
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert seg.strip() == ">"
    start = c.send(b"\xff\xfe bad bytes\r")  # not UTF-8: replaced, the session goes on
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    start = c.send(b"/reset\r")
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert c.turn("/" + u, e) == e  # //TEXT sends /TEXT
    c.send(b"/exit\r")
    assert c.wait_exit() == 0
    assert "Traceback" not in c.text


def test_special_shows_control_tokens(spawn, chat_dir, api):
    u, n = "hi", 30
    plain = greedy(api, [user(u)], n=n)
    special = greedy(api, [user(u)], n=n, special=True)
    assert plain != special, "this check needs a reply with a control token in it"
    c = spawn(chat_dir, "--temp", "0", "-n", str(n), "--special")
    assert c.turn(u, special) == special
    c.send(b"\x04")
    assert c.wait_exit() == 0


def test_template_from_file_for_a_model_without_one(spawn, tmp_path):
    # also: -t, -c and --kv-type reach pyllm.load
    base = pyllm.load(n_threads=1, n_ctx=256, kv_type="f16")  # the shipped model: no chat template
    try:
        u = "Good morrow."
        e = greedy(base, [user(u)], chat_template=TEMPLATE)
    finally:
        base.close()
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE, encoding="utf-8")
    c = spawn("--chat-template", str(path), "--temp", "0", "-n", str(N), "-t", "1", "-c", "256", "--kv-type", "f16")
    assert "n_ctx 256" in c.text
    assert c.turn(u, e) == e
    c.send(b"\x04")
    assert c.wait_exit() == 0


# ---------------------------------------------------------------------- Ctrl-C / Ctrl-D
def test_ctrl_c_stops_a_reply_and_the_session_goes_on(spawn, chat_dir):
    ctx = 512  # a reply runs until the context is full: long enough to interrupt, short enough to wait for
    model = pyllm.load(chat_dir, n_ctx=ctx)
    try:
        u1, u2 = "Tell me a long tale.", "And then?"
        c = spawn(chat_dir, "--temp", "0", "-n", "1000", "-c", str(ctx), "--ignore-eos")
        start = c.send(u1.encode() + b"\r")
        echo = u1 + "\r\n"
        c.wait_for(lambda s: len(s) > len(echo) + 4, start)  # the reply is being written
        os.write(c.fd, b"\x03")
        seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
        assert seg.startswith(echo) and "\r\n[interrupted" in seg, seg
        # the partial reply as printed (the terminal echoes ^C somewhere in it)
        partial = seg[len(echo):seg.index("\r\n[interrupted")].replace("^C", "", 1).replace("\r\n", "\n")
        full = greedy(model, [user(u1)], n=1000)
        assert partial and full.startswith(partial) and len(partial) < len(full), (partial, full)
        # the partial reply stays in the history: the next reply is the one to [u1, partial, u2]
        e2 = greedy(model, [user(u1), assistant(partial), user(u2)], n=1000)
        assert c.turn(u2, e2, timeout=60) == e2
    finally:
        model.close()
    c.send(b"\x04")
    assert c.wait_exit() == 0
    assert "Traceback" not in c.text


def test_ctrl_c_at_the_prompt_does_not_exit(spawn, chat_dir, api):
    u = "Good morrow."
    e = greedy(api, [user(u)])
    c = spawn(chat_dir, "--temp", "0", "-n", str(N))
    start = c.send(b"half a line")  # typed, then dropped by Ctrl-C
    c.wait_for(lambda s: "half a line" in s, start)
    # Pause as a person would: a SIGINT that lands while readline is handling a keystroke or drawing the
    # prompt (not blocked in select) is only acted on after the next key (CPython issue #112585).
    time.sleep(0.3)
    start = c.send(b"\x03")
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    time.sleep(0.3)
    start = c.send(b"\x03")  # a second Ctrl-C at an empty prompt: still no exit, a hint
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "Ctrl-D" in seg
    assert c.rc is None and os.waitpid(c.pid, os.WNOHANG) == (0, 0)
    assert c.turn(u, e) == e  # the dropped text is not part of the message
    c.send(b"\x04")
    assert c.wait_exit() == 0


# ---------------------------------------------------------------------- errors inside a session
def test_context_overflow_is_reported_and_reset_recovers(spawn, chat_dir, api):
    ctx, u = 32, "Good morrow."
    long_text = "Now is the winter of our discontent made glorious summer by this sun of York"
    assert len(api.tokenize(api.apply_chat_template([user(u)]), add_special_tokens=False)) + N < ctx
    assert len(api.tokenize(api.apply_chat_template([user(long_text)]), add_special_tokens=False)) >= ctx
    e = greedy(api, [user(u)])
    c = spawn(chat_dir, "--temp", "0", "-n", str(N), "-c", str(ctx))
    assert c.turn(u, e) == e
    start = c.send(long_text.encode() + b"\r")
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "error:" in seg and "/reset" in seg, seg
    start = c.send(b"/reset\r")
    c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert c.turn(u, e) == e
    c.send(b"\x04")
    assert c.wait_exit() == 0
    # a reply that runs into the end of the context is cut there, with a note
    small = pyllm.load(chat_dir, n_ctx=ctx)
    try:
        e_cut = greedy(small, [user(u)], n=100)
        e_long = greedy(api, [user(u)], n=100)
    finally:
        small.close()
    assert len(e_cut) < len(e_long)
    c = spawn(chat_dir, "--temp", "0", "-n", "100", "-c", str(ctx))
    start = c.send(u.encode() + b"\r")
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert seg.startswith(u + "\r\n" + e_cut.replace("\n", "\r\n") + "\r\n[the conversation fills the context"), seg
    assert "/reset" in seg
    c.send(b"\x04")
    assert c.wait_exit() == 0


def test_template_error_keeps_the_session(spawn, chat_dir, api):
    template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "{% if messages[-1]['content'] == 'boom' %}{{ raise_exception('no boom here') }}{% endif %}"
                + TEMPLATE)
    u = "Good morrow."
    e = greedy(api, [user(u)])
    c = spawn(chat_dir, "--chat-template", template, "--temp", "0", "-n", str(N))
    start = c.send(b"boom\r")
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "error: " in seg and "no boom here" in seg, seg
    start = c.send(b"/system Be brief.\r")  # refused at once: the template takes no system message
    seg = c.wait_for(lambda s: s.endswith(PROMPT), start)
    assert "error: " in seg and "no system role" in seg, seg
    assert c.turn(u, e) == e  # neither the failed message nor the system message is in the history
    c.send(b"\x04")
    assert c.wait_exit() == 0


# ---------------------------------------------------------------------- start-up errors
def test_model_without_template_exits_2():
    r = run_cli(pyllm.default_model_path())
    assert r.returncode == 2, r
    assert "--chat-template" in r.stderr and "Traceback" not in r.stderr
    assert "> " not in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--temp", "-1"], "--temp"),
    (["--top-p", "0"], "--top-p"),
    (["--min-p", "1.5"], "--min-p"),
    (["--top-k", "-2"], "--top-k"),
    (["--repeat-penalty", "0"], "--repeat-penalty"),
    (["-n", "0"], "--max-tokens"),
    (["--kv-type", "q8"], "--kv-type"),
    (["--chat-template", "{% for %}"], "--chat-template"),
    (["--system", "x", "--chat-template", "{{ raise_exception('no system') if messages[0]['role'] == 'system' }}"
      "{{ messages[0]['content'] }}"], "--system"),
])
def test_bad_options_exit_2_before_any_prompt(chat_dir, args, words):
    r = run_cli(chat_dir, *args)
    assert r.returncode == 2, r
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "> " not in r.stdout


def test_missing_model_exits_2(tmp_path):
    r = run_cli(str(tmp_path / "nothing-here"))
    assert r.returncode == 2 and "nothing-here" in r.stderr and "Traceback" not in r.stderr, r


# ---------------------------------------------------------------------- the prefix cache, via the API
def test_a_second_turn_prefills_only_the_new_tokens(chat_dir):
    model = pyllm.load(chat_dir)  # its own engine: counters start at zero
    try:
        u1, u2 = "Good morrow, sweet lady.", "What news from the court?"
        m1 = [user(u1)]
        r1 = greedy(model, m1)
        s1 = model.engine_stats()
        n1 = len(model.tokenize(model.apply_chat_template(m1), add_special_tokens=False))
        assert s1["prefilled_tokens"] + s1["reused_tokens"] == n1
        m2 = m1 + [assistant(r1), user(u2)]
        n2 = len(model.tokenize(model.apply_chat_template(m2), add_special_tokens=False))
        greedy(model, m2)
        s2 = model.engine_stats()
        prefilled = s2["prefilled_tokens"] - s1["prefilled_tokens"]
        reused = s2["reused_tokens"] - s1["reused_tokens"]
        assert prefilled + reused == n2
        assert prefilled < n2 and reused > 0
        assert reused >= n1 - 2  # turn 1's prompt (less a token or two where the reply's text is joined on)
    finally:
        model.close()
