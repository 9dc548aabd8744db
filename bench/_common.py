"""_common.py: helpers shared by the benchmark scripts (bench_hf.py, bench_llamacpp.py): run a
worker snippet in a fresh Python subprocess (so its peak RSS is its own) and read the JSON line it
prints last, medians over repetitions, and a description of the machine."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_worker(code: str, args, label: str, env: dict | None = None, retries: int = 1, cwd: str | None = None) -> dict:
    """Runs `python -c code *args` and returns the JSON object on the last line of its stdout;
    exits with the tail of its stderr if it fails. A worker killed by a signal (e.g. SIGBUS when the
    engine's .so is rebuilt under it) is run again, up to `retries` times. env: variables to set;
    cwd: where it runs (note that `python -c` puts the working directory first on sys.path)."""
    for attempt in range(retries + 1):
        out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             env=None if env is None else {**os.environ, **env}, cwd=cwd)
        if out.returncode >= 0 or attempt == retries:
            break
        print(f"note: {label} was killed by signal {-out.returncode}; running it again", file=sys.stderr, flush=True)
        time.sleep(2)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        raise SystemExit(f"{label} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def medians(runs: list) -> dict:
    """Per-key medians over a list of result dicts (numeric keys of the first one only)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where it does not say."""
    cores, phys = set(), "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
    except OSError:
        return None
    return len(cores) or None


def machine() -> str:
    """One line: CPU model, logical CPUs (and physical cores), CPUs this process may use, load average."""
    phys = physical_cores()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs" + (f" ({phys} physical cores)" if phys else "")
            + f", {default_threads()} usable by this process, load average {load}")
