"""test_thread_env.py: pyllm shortens libgomp's barrier spin (GOMP_SPINCOUNT) unless the user set
it, so two-thread decoding does not stall while another process holds a core (see
pyllm/__init__.py); the user's own value is left alone."""
from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import os, pyllm; print(os.environ.get('GOMP_SPINCOUNT'))"


def run(env):
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_default_spin_is_short():
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert run(env) == "1000"


def test_user_value_wins():
    assert run({**os.environ, "GOMP_SPINCOUNT": "123456"}) == "123456"
