"""test_cli_generate.py: `pyllm generate` as a user runs it: the text equals the Python API's, no
control token shows unless --special, stop strings and penalties reach the engine, and bad
arguments (a prompt longer than the context, bad sampling values) are reported before anything is
printed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pyllm


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pyllm", "generate", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.fixture(scope="module")
def model():
    return pyllm.load(n_threads=2)


def test_text_equals_the_api_and_skips_control_tokens(model):
    want = model.generate("ROMEO:", max_tokens=40, temperature=0)
    assert model.complete("ROMEO:", max_tokens=40, temperature=0, special=True).text != want  # a <s> is in it
    r = run("-p", "ROMEO:", "-n", "40", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ROMEO:" + want + "\n"
    assert "<s>" not in r.stdout
    r = run("-p", "ROMEO:", "-n", "40", "--temp", "0", "--special", "--no-echo")
    assert r.stdout == model.complete("ROMEO:", max_tokens=40, temperature=0, special=True).text + "\n"
    assert "<s>" in r.stdout


def test_options_reach_the_engine(model):
    kw = dict(max_tokens=40, temperature=0, presence_penalty=1.0, frequency_penalty=0.5, stop=["lord"])
    want = model.generate("ROMEO:", **kw)
    r = run("-p", "ROMEO:", "-n", "40", "--temp", "0", "--presence-penalty", "1", "--frequency-penalty", "0.5",
            "--stop", "lord", "--no-echo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"


@pytest.mark.parametrize("args,match", [
    (["-p", "word " * 3000], "prompt has 3002 tokens but the context holds 1024"),
    (["-p", "ROMEO:", "--temp", "-1"], "temperature"),
    (["-p", "ROMEO:", "--top-p", "0"], "top_p"),
    (["-p", "ROMEO:", "--presence-penalty", "5"], "presence_penalty"),
    (["-p", "ROMEO:", "-n", "-3"], "max_tokens"),
    (["-p", "ROMEO:", "--stop", ""], "stop"),
])
def test_bad_arguments_are_reported_before_any_output(args, match):
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""  # not even the prompt's echo
    assert match in r.stderr and "Traceback" not in r.stderr
