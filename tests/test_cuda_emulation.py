"""test_cuda_emulation.py: the CUDA kernels (csrc/cuda/) on the CPU emulation of CUDA (csrc/cuda/emulation/),
so the GPU tests run, and can fail, on a machine without a GPU (CI).

1. The emulation itself: tests/cuda_emulation_checks.cu, compiled with the host C++ compiler as the
   PYLLM_CUDA_EMULATE build compiles the .cu files, checks the shuffles, votes, block barrier, indexing,
   atomics, deadlock detection and its messages, launch configuration and memory errors, streams, events
   and graph capture / replay; and pl_h2f / pl_f2h (cuda_common.cuh) bit for bit against numpy.
2. The extension built with -DPYLLM_CUDA_EMULATE=ON (once per module, into a temp dir, scalar kernels
   only to keep the build short) and staged as a package beside copies of every tests/test_cuda*.py but
   this file: those run in a subprocess against it, and their GPU tests must run, not skip.

Skipped (with the reason) where there is no cmake or no C++ compiler. What the emulation cannot check:
races (nothing runs concurrently), timing, the real PTX (only the C branches of cuda_common.cuh run).
"""
from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
CUDA_DIR = os.path.join(REPO, "csrc", "cuda")
EMU_DIR = os.path.join(CUDA_DIR, "emulation")
CMAKE = shutil.which("cmake")
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
THIS = os.path.basename(__file__)
# what the staged run leaves out: compile-only checks that do not depend on the build (the main run of
# test_cuda.py does them once already)
BUILD_INDEPENDENT = ["tests/test_cuda.py::test_every_cuda_file_compiles_for_sm80_and_sm90",
                     "tests/test_cuda.py::test_cmake_refuses_pyllm_cuda_without_nvcc"]

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++ or clang++, or $CXX)")


def _cxx_flags():
    return ["-std=c++17", "-O1", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-fno-strict-aliasing",
            "-x", "c++", "-include", os.path.join(EMU_DIR, "cuda_emulation.h"), "-I", os.path.join(EMU_DIR, "include"),
            "-I", CUDA_DIR]


# ---------------------------------------------------------------- 1. the emulation itself
@pytest.fixture(scope="module")
def checks_binary(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++, or $CXX)")
    exe = str(tmp_path_factory.mktemp("emu_checks") / "checks")
    cmd = [CXX, *_cxx_flags(), os.path.join(TESTS, "cuda_emulation_checks.cu"), "-x", "none",
           os.path.join(EMU_DIR, "cuda_emulation.cpp"), "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "the emulation checks do not compile:\n" + (r.stdout + r.stderr)[-4000:]
    return exe


@pytest.fixture(scope="module")
def check_results(checks_binary):
    r = subprocess.run([checks_binary, "checks"], capture_output=True, text=True, timeout=300)
    results = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(ok|FAIL) (\w+)(: (.*))?$", line)
        if m:
            results[m.group(2)] = (m.group(1), m.group(4))
    return results, r


CHECKS = ["shuffles", "votes_and_partial_masks", "block_barrier_and_shared_memory", "thread_indexing",
          "barrier_reductions", "thread_order_catches_missing_barriers", "intrinsics", "atomics",
          "deadlock_exited_lanes", "deadlock_crossed_barriers", "mask_errors", "mma_needs_a_whole_warp",
          "launch_configuration", "memory_errors", "graph_capture_and_replay", "events", "device_properties"]


@pytest.mark.parametrize("name", CHECKS)
def test_emulation_semantics(check_results, name):
    results, r = check_results
    assert name in results, f"check {name} did not report (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    status, why = results[name]
    assert status == "ok", f"{name}: {why}"


def test_every_check_is_listed(check_results):
    results, r = check_results
    assert sorted(results) == sorted(CHECKS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fp16_conversions_are_bit_exact(checks_binary, tmp_path):
    """pl_h2f of all 65536 halves and pl_f2h of random, boundary and special floats against numpy (IEEE
    round to nearest even, subnormals, overflow to inf); NaN only has to stay NaN"""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=200000, dtype=np.uint64).astype(np.uint32)
    near = np.concatenate([rng.uniform(-70000, 70000, 50000), rng.uniform(-1e-4, 1e-4, 50000),
                           rng.uniform(-1e-7, 1e-7, 20000)]).astype(np.float32)
    # every half, and the exact midpoints between neighbouring halves (ties: to even) and one ulp around them
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)
    edges = np.array([65504, 65519.996, 65520, 65536, 2 ** -14, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0000001, 2 ** -26,
                      3 * 2 ** -26, 0.0, -0.0, np.inf, -np.inf, 1e38, 1e-38, 1.4e-45], dtype=np.float32)
    x = np.concatenate([bits.view(np.float32), near, h, mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf)), edges, -edges])
    x.astype(np.float32).tofile(tmp_path / "in.bin")
    r = subprocess.run([checks_binary, "fp16", str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    raw = np.fromfile(tmp_path / "out.bin", dtype=np.uint8)
    got_h = raw[:2 * x.size].view(np.uint16)
    got_f = raw[2 * x.size:].view(np.float32)
    with np.errstate(over="ignore"):
        want_h = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.all(np.isnan(got_h[nan].view(np.float16)))
    bad = np.flatnonzero((got_h != want_h) & ~nan)
    assert bad.size == 0, f"{bad.size} floats convert differently, e.g. {x[bad[:5]]!r}: {got_h[bad[:5]]} vs {want_h[bad[:5]]}"
    all_h = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    want_f = all_h.astype(np.float32)
    fnan = np.isnan(want_f)
    assert np.all(np.isnan(got_f[fnan]))
    assert np.array_equal(got_f[~fnan].view(np.uint32), want_f[~fnan].view(np.uint32))


def test_fiber_switch_cost(checks_binary):
    r = subprocess.run([checks_binary, "bench"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)
    ns = float(re.search(r"switch_ns ([\d.]+)", r.stdout).group(1))
    # the hand-written switch takes tens of ns; a syscall per switch (ucontext's sigprocmask) would be ~1 us
    limit = 500 if platform.machine() in ("x86_64", "AMD64") else 5000
    assert 0 < ns < limit, r.stdout


# ---------------------------------------------------------------- 2. the extension on the emulation
def test_cmake_refuses_cuda_and_emulation_together(tmp_path):
    if CMAKE is None:
        pytest.skip("no cmake")
    r = subprocess.run([CMAKE, "-S", REPO, "-B", str(tmp_path / "b"), "-DPYLLM_CUDA=ON", "-DPYLLM_CUDA_EMULATE=ON",
                        f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "PYLLM_CUDA=ON and PYLLM_CUDA_EMULATE=ON exclude each other" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def emulated_package(tmp_path_factory):
    """the extension built with -DPYLLM_CUDA_EMULATE=ON, staged with a copy of pyllm/ and of the CUDA tests"""
    if CMAKE is None:
        pytest.skip("no cmake")
    if CXX is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++, or $CXX)")
    root = tmp_path_factory.mktemp("cuda_emulation")
    build = root / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.monotonic()
    cfg = subprocess.run([CMAKE, "-S", REPO, "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                          "-DPYLLM_CUDA_EMULATE=ON", "-DPYLLM_SIMD=OFF", f"-DPython_EXECUTABLE={sys.executable}"],
                         capture_output=True, text=True, timeout=600)
    assert cfg.returncode == 0, "configure failed:\n" + (cfg.stdout + cfg.stderr)[-4000:]
    b = subprocess.run([CMAKE, "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True,
                       timeout=1200)
    assert b.returncode == 0, "build failed:\n" + (b.stdout + b.stderr)[-6000:]
    build_s = time.monotonic() - t0
    so = glob.glob(str(build / "_engine*.so")) + glob.glob(str(build / "_engine*.pyd"))
    assert so, "the build made no _engine extension"
    stage = root / "stage"
    shutil.copytree(os.path.join(REPO, "pyllm"), stage / "pyllm",
                    ignore=shutil.ignore_patterns("_engine*.so", "_engine*.pyd", "__pycache__"))
    shutil.copy(so[0], stage / "pyllm")
    (stage / "tests").mkdir()
    # the CUDA tests, and the helper modules and conftest.py they may import (no other test_*.py)
    for p in glob.glob(os.path.join(TESTS, "*.py")):
        f = os.path.basename(p)
        if f != THIS and (f.startswith("test_cuda") or not f.startswith("test_")):
            shutil.copy(p, stage / "tests" / f)
    os.symlink(os.path.join(TESTS, "fixtures"), stage / "tests" / "fixtures")
    for f in ("csrc", "bench"):  # what the tests read from the repository (sources, the benchmark)
        if os.path.isdir(os.path.join(REPO, f)):
            os.symlink(os.path.join(REPO, f), stage / f)
    for f in ("CMakeLists.txt", "pyproject.toml"):
        shutil.copy(os.path.join(REPO, f), stage / f)
    print(f"emulated build: {build_s:.1f} s")
    return stage, build_s


def _run_staged(stage, args, timeout, order="forward"):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(stage)
    env["PYLLM_CUDA_EMU_ORDER"] = order
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, *args], cwd=stage, env=env, capture_output=True, text=True, timeout=timeout)


def test_extension_reports_the_emulated_device(emulated_package):
    stage, _ = emulated_package
    r = _run_staged(stage, ["-c", "import json, pyllm, pyllm._engine as e; "
                                  "assert pyllm.__file__.startswith(%r), pyllm.__file__; "
                                  "print(json.dumps(e.cuda_info()))" % str(stage)], 120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["built"] and info["devices"] == 1 and info["error"] is None
    dev = info["device_list"][0]
    assert "emulation" in dev["name"] and dev["compute_capability"] == [9, 0]


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_cuda_tests_pass_on_the_emulation(emulated_package, order):
    """every tests/test_cuda*.py (but this file) against the emulated build: exit 0 and the GPU tests ran; then
    the kernel tests (test_cuda.py) again with a block's threads taking turns from the last (a missing
    __syncthreads() shows in one order or the other; the model-level tests are too slow to run twice)"""
    stage, build_s = emulated_package
    files = sorted(os.path.relpath(p, stage) for p in glob.glob(str(stage / "tests" / "test_cuda*.py")))
    assert "tests/test_cuda.py" in files and f"tests/{THIS}" not in files
    if order == "reverse":
        files = ["tests/test_cuda.py"]
    deselect = [a for d in BUILD_INDEPENDENT for a in ("--deselect", d)]
    t0 = time.monotonic()
    r = _run_staged(stage, ["-m", "pytest", *files, "-q", "-rs", "-p", "no:cacheprovider", *deselect,
                            "--junitxml", str(stage / "junit.xml")], 1200, order)
    run_s = time.monotonic() - t0
    out = r.stdout + r.stderr
    summary = "\n".join(out.splitlines()[-60:])
    print(f"emulated build {build_s:.1f} s, tests ({order} order) {run_s:.1f} s\n{summary}")
    assert r.returncode == 0, f"the CUDA tests failed on the emulation (exit {r.returncode}):\n{summary}"
    xml = (stage / "junit.xml").read_text()
    cases = re.findall(r'<testcase [^>]*name="([^"]+)"[^>]*?(/>|>(.*?)</testcase>)', xml, flags=re.S)
    skipped = [(n, body) for n, _, body in cases if "<skipped" in body]
    # a skip for want of a device (not, say, a CPU-only check skipped because a device is there)
    gpu_skips = [n for n, body in skipped
                 if re.search(r"needs a (PYLLM_CUDA=ON build|CUDA device|GPU)|no CUDA device|built without CUDA", body)]
    assert not gpu_skips, f"GPU tests skipped on the emulation: {gpu_skips}\n{summary}"
    ran_gpu = [n for n, _, body in cases if n.startswith("test_gpu") and "<skipped" not in body]
    assert len(ran_gpu) >= 8, f"only {len(ran_gpu)} GPU tests ran:\n{summary}"
