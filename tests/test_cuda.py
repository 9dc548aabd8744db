"""test_cuda.py: the CUDA build target (csrc/cuda/, issue 11) in three layers.

1. Everywhere: pyllm.load(device=...) refuses what cannot run with an error naming the problem (on a
   CPU-only build: the reinstall command), and _engine.cuda_info() says what the build has.
2. Wherever nvcc is (on PATH, $PYLLM_NVCC, or the pip toolkit: cuda-toolkit[nvcc], i.e. nvidia-cuda-nvcc,
   nvidia-nvvm, nvidia-cuda-crt and nvidia-cuda-runtime, which the test extras install on Linux x86-64): every csrc/cuda/*.cu compiles for sm_80 and sm_90 with
   warnings as errors, and pl_cuda.h compiles as plain C. This is how CI, which has no GPU, catches CUDA
   build breaks.
3. With a GPU and a PYLLM_CUDA=ON build (tools/cuda_device_check.sh): the kernels against the CPU's scalar
   reference on random weights of odd shapes. Without one, tests/test_cuda_emulation.py runs this file
   against a PYLLM_CUDA_EMULATE=ON build (the CPU emulation of CUDA), where these GPU tests run too.

Tolerance of the GEMV comparisons. The GPU computes each block's (Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1), super-block's (Q4_K / Q5_K /
Q6_K: exact integer sums of the scaled sub-block dots and of the mins, then the CPU's float operations in its
order, unfused) or element's (F16 / BF16) term as the CPU does (an exact integer dot times the product of the
scales; an exact widening times x)
and only sums the K terms in another order (per-lane partial sums, then a warp tree), possibly with a
fused multiply-add. Each order is within (K + 1) u S of the exact sum (u = 2^-24, S = the sum of the
terms' magnitudes, the standard bound for fp32 recursive or pairwise summation, one more rounding for
the product), so the two differ by at most 2 (K + 1) u S; S is bounded by sum |w_j a_j| over the
dequantized weights and activations, computed in float64. The Q8_0 and Q8_K activations themselves must
match the CPU's bit for bit (same IEEE operations), so they are compared exactly.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import pyllm
from pyllm import _engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(REPO, "csrc", "cuda")
ARCHS = ("80", "90")  # what CMakeLists.txt builds by default: A100, H100 / H200

INFO = _engine.cuda_info()
HAVE_GPU = INFO["built"] and INFO["devices"] > 0

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
Q4_1, Q5_0, Q5_1 = 3, 6, 7
Q4_K, Q5_K, Q6_K, Q8_K = 12, 13, 14, 15
BLOCK32 = (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1)  # 32-weight blocks against Q8_0 activations
KQUANTS = (Q4_K, Q5_K, Q6_K)
TYPE_NAMES = {F32: "f32", F16: "f16", BF16: "bf16", Q4_0: "q4_0", Q8_0: "q8_0", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1",
              Q4_K: "q4_k", Q5_K: "q5_k", Q6_K: "q6_k"}
ALL_TYPES = [Q4_0, Q8_0, F32, F16, BF16, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K]


def _terms(type_id, n):
    """K: the number of fp32-summed terms of a row's dot (blocks, super-blocks or elements)"""
    return n // 32 if type_id in BLOCK32 else n // 256 if type_id in KQUANTS else n


# ---------------------------------------------------------------- 1. the device argument, everywhere
def test_cuda_info_describes_this_build():
    assert set(INFO) >= {"built", "devices", "error", "runtime", "driver", "device_list"}
    assert len(INFO["device_list"]) == INFO["devices"]
    if not INFO["built"]:
        assert INFO["devices"] == 0
        assert INFO["error"] == ("pyllm was built without CUDA: reinstall with pip install . "
                                 "-Ccmake.define.PYLLM_CUDA=ON")
    elif INFO["devices"] == 0:
        assert INFO["error"]  # the runtime's own words (no driver, no device)
    else:
        assert INFO["error"] is None and INFO["runtime"] > 0 and INFO["driver"] > 0
        for d in INFO["device_list"]:
            assert d["name"] and d["sm_count"] > 0 and d["total_mem"] > 0 and d["compute_capability"][0] >= 1


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device is here: tests/test_cuda_forward.py runs models on it")
def test_load_cuda_says_why_it_cannot_run():
    with pytest.raises(pyllm.DeviceError) as e:
        pyllm.load(device="cuda")
    msg = str(e.value)
    if not INFO["built"]:
        assert "built without CUDA" in msg and "pip install . -Ccmake.define.PYLLM_CUDA=ON" in msg
    else:
        assert "no CUDA device" in msg and INFO["error"] in msg
    assert isinstance(e.value, RuntimeError)


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device is here: tests/test_cuda_forward.py runs models on it")
def test_load_cuda_is_refused_before_the_path_is_read(tmp_path):
    # the device is the first thing checked: no time is spent reading a model that cannot run
    with pytest.raises(pyllm.DeviceError):
        pyllm.load(str(tmp_path / "no-such-model"), device="cuda")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:0", "", "mps", None, 0, ["cuda"]])
def test_load_rejects_unknown_devices(bad):
    with pytest.raises(ValueError, match=re.escape(f"device must be one of 'cpu', 'cuda', got {bad!r}")):
        pyllm.load(device=bad)


def test_load_cpu_is_the_default():
    a = pyllm.load(device="cpu")
    b = pyllm.load()
    ids = a.tokenize("ROMEO:")
    assert np.array_equal(a.logits(ids), b.logits(ids))


@pytest.mark.skipif(INFO["built"], reason="checks the CPU-only build's answers")
def test_cpu_build_kernels_refuse_with_the_reinstall_command():
    with pytest.raises(RuntimeError, match="built without CUDA: reinstall with pip install"):
        _engine.CudaWeight(Q8_0, 32, 1, bytes(34))
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _engine.cuda_quantize_q8_0(np.zeros(32, np.float32))
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _engine.cuda_mma_s8_m16n8k32(np.zeros((16, 32), np.int8), np.zeros((32, 8), np.int8),
                                     np.zeros((16, 8), np.int32))


# ---------------------------------------------------------------- 2. compile-only, wherever nvcc is
def _pip_nvcc():
    """nvcc from the pip packages: nvidia-cuda-nvcc (CUDA 13: nvidia/cu13/bin) or an older
    nvidia-cuda-nvcc-cu12 that shipped it (nvidia/cuda_nvcc/bin; recent cu12 wheels hold only ptxas)"""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13", "cuda_nvcc"):
            p = os.path.join(root, sub, "bin", "nvcc")
            if os.access(p, os.X_OK):
                return p
    return None


def find_nvcc():
    for p in (os.environ.get("PYLLM_NVCC"), shutil.which("nvcc"), _pip_nvcc()):
        if p and os.access(p, os.X_OK):
            return p
    return None


NVCC = find_nvcc()
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))


def _nvcc(args, cwd):
    return subprocess.run([NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def nvcc_works(tmp_path_factory):
    """skip (saying why) when there is no nvcc or it cannot build an empty kernel: a broken toolkit
    (say a pip nvcc without its nvidia-nvvm) is not a pyllm build break"""
    if NVCC is None:
        pytest.skip("no nvcc: not on PATH, not in $PYLLM_NVCC, and no pip nvidia-cuda-nvcc (pip install "
                    "'cuda-toolkit[nvcc]', as the test extras do on Linux x86-64)")
    d = tmp_path_factory.mktemp("nvcc")
    (d / "empty.cu").write_text("__global__ void k(float *x) { x[threadIdx.x] = 1.0f; }\n")
    r = _nvcc(["-c", "empty.cu", "-o", "empty.o"], str(d))
    if r.returncode:
        pytest.skip(f"{NVCC} cannot compile an empty kernel (an incomplete toolkit): {r.stderr.strip()[-400:]}")
    return NVCC


def test_there_are_cuda_sources():
    names = {os.path.basename(p) for p in CU_FILES}
    assert {"device.cu", "memory.cu", "weight_upload.cu", "quantize_q8_0.cu", "gemv.cu", "gemv_quant.cu",
            "gemv_float16.cu", "gemv_timing.cu", "model.cu", "kv_cache.cu", "layer_kernels.cu", "attention.cu",
            "forward.cu", "quantize_q8_k.cu", "gemv_kquant.cu", "gemv_legacy.cu"} <= names


def test_every_cuda_file_compiles_for_sm80_and_sm90(nvcc_works, tmp_path):
    """nvcc -c of each .cu for both architectures, every nvcc and host-compiler warning an error; the
    files compile in parallel (one nvcc per CPU)"""
    gencode = [a for arch in ARCHS for a in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    flags = ["-O3", "-Werror", "all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror", "-I", CUDA_DIR, *gencode]

    def build(src):
        obj = str(tmp_path / (os.path.basename(src) + ".o"))
        r = _nvcc(["-c", src, "-o", obj, *flags], str(tmp_path))
        return src, r.returncode, (r.stdout + r.stderr).strip(), obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        results = list(ex.map(build, CU_FILES))
    failed = [f"{os.path.basename(s)}:\n{out}" for s, rc, out, _ in results if rc]
    assert not failed, "nvcc failed:\n" + "\n".join(failed)
    for _, _, _, obj in results:
        assert os.path.getsize(obj) > 0


def test_pl_cuda_h_is_plain_c(tmp_path):
    """the C API header compiles as C11 without any CUDA header (what _engine.pyx and C callers include)"""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "use.c"
    src.write_text('#include "pl_cuda.h"\nint use(pl_cuda_weight *w, char *err) { return pl_cuda_gemv(w, 0, 0, 0, err); }\n')
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", CUDA_DIR, "-c", str(src),
                        "-o", str(tmp_path / "use.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cmake_refuses_pyllm_cuda_without_nvcc(tmp_path):
    """PYLLM_CUDA=ON with a CUDA compiler that is not there: the configure fails with pyllm's message"""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake")
    env = dict(os.environ)
    env.pop("CUDACXX", None)
    r = subprocess.run([cmake, "-S", REPO, "-B", str(tmp_path / "b"), "-DPYLLM_CUDA=ON",
                        f"-DCMAKE_CUDA_COMPILER={tmp_path / 'no-nvcc'}"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0
    assert "PYLLM_CUDA=ON but no CUDA compiler (nvcc) was found" in r.stdout + r.stderr


# ---------------------------------------------------------------- 3. on a GPU (a PYLLM_CUDA=ON build)
gpu = pytest.mark.skipif(not HAVE_GPU, reason="needs a PYLLM_CUDA=ON build and a CUDA device: "
                         + (INFO["error"] or ""))


@pytest.fixture
def scalar_isa():
    before = _engine.get_isa()
    _engine.set_isa("scalar")
    yield
    _engine.set_isa(before)


def _weights(type_id, nr, n, rng):
    """nr rows of n random weights stored as type_id (the CPU's scalar from_float), and their float values"""
    w = (rng.standard_normal((nr, n)) * rng.uniform(0.01, 2.0, size=(nr, 1))).astype(np.float32)
    raw = _engine.from_float(type_id, w)
    return raw, _engine.to_float(type_id, raw, n).reshape(nr, n)


def _activations(n, rng):
    x = rng.standard_normal(n).astype(np.float32) * 3.0
    x[rng.integers(0, n, size=max(1, n // 50))] *= 20.0  # a few outliers, as real activations have
    return x


def _cpu_reference(type_id, raw, x, nr, n):
    """y as the CPU's scalar kernels compute it, and the bound S = sum |w_j a_j| (float64) of the terms"""
    act = _engine.act_type(type_id)
    a = _engine.from_float(act, x[None, :])
    y = _engine.gemm(type_id, raw, a, n, nr, 1)[0]
    wd = _engine.to_float(type_id, raw, n).reshape(nr, n).astype(np.float64)
    ad = _engine.to_float(act, a, n).reshape(n).astype(np.float64)
    return y, np.abs(wd * ad).sum(axis=1)


SHAPES = [(1, 32), (37, 96), (5, 1056), (129, 2080), (2048, 2048), (300, 5632)]
K_SHAPES = [(1, 256), (37, 768), (5, 1280), (129, 2304), (700, 2048), (64, 5632)]  # whole 256-weight super-blocks
FLOAT_SHAPES = SHAPES + [(3, 1), (17, 33), (9, 1001), (64, 4100)]  # odd lengths: the unaligned path


@gpu
def test_gpu_q8_0_activations_match_the_cpu_bit_for_bit(scalar_isa):
    rng = np.random.default_rng(11)
    for n in (32, 96, 2080, 5632):
        x = _activations(n, rng)
        x[:32] = 0.0  # an all-zero block: scale 0
        q, d = _engine.cuda_quantize_q8_0(x)
        ref = np.frombuffer(_engine.from_float(Q8_0, x[None, :]), dtype=np.uint8).reshape(-1, 34)
        assert np.array_equal(q.reshape(-1, 32), ref[:, 2:].view(np.int8))
        ref_d = ref[:, :2].copy().view(np.float16).astype(np.float32).ravel()
        assert np.array_equal(d, ref_d)


@gpu
def test_gpu_q8_k_activations_match_the_cpu_bit_for_bit(scalar_isa):
    rng = np.random.default_rng(12)
    for n in (256, 768, 5632):
        x = _activations(n, rng)
        if n > 256:
            x[:256] = 0.0  # an all-zero super-block: d = 0
            x[256:512] = np.float32(-1e-3)  # every value at the block's maximum, negative
        q, d, bsums = _engine.cuda_quantize_q8_k(x)
        ref = np.frombuffer(_engine.from_float(Q8_K, x[None, :]), dtype=np.uint8).reshape(-1, 292)
        assert np.array_equal(d, ref[:, :4].copy().view(np.float32).ravel())
        assert np.array_equal(q.reshape(-1, 256), ref[:, 4:260].view(np.int8))
        assert np.array_equal(bsums.reshape(-1, 16), ref[:, 260:].copy().view(np.int16))
        assert np.any(q != 0) and np.any(bsums != 0)
    with pytest.raises(ValueError, match="multiple of 256"):
        _engine.cuda_quantize_q8_k(np.zeros(32, np.float32))


@gpu
@pytest.mark.parametrize("type_id", ALL_TYPES, ids=lambda t: TYPE_NAMES[t])
def test_gpu_gemv_matches_the_cpu_reference(type_id, scalar_isa):
    rng = np.random.default_rng(type_id)
    shapes = FLOAT_SHAPES if type_id in (F32, F16, BF16) else K_SHAPES if type_id in KQUANTS else SHAPES
    for nr, n in shapes:
        raw, _ = _weights(type_id, nr, n, rng)
        x = _activations(n, rng)
        w = _engine.CudaWeight(type_id, n, nr, raw)
        assert w.nbytes == len(raw)
        y = w.gemv(x)
        ref, s = _cpu_reference(type_id, raw, x, nr, n)
        k = _terms(type_id, n)
        tol = 2 * (k + 1) * 2.0 ** -24 * s
        err = np.abs(y.astype(np.float64) - ref)
        assert np.all(err <= tol), (f"{TYPE_NAMES[type_id]} {nr}x{n}: worst row {int(np.argmax(err - tol))}, "
                                    f"error {err.max():.3g} over tolerance {tol[np.argmax(err - tol)]:.3g}")
        assert np.any(y != 0)  # the comparison is not between two zero vectors


# (rows, columns, tokens): 2..9 tokens run the batched GEMV (passes of 8, 4, 3, 2, 1 tokens), 16 and more the
# tensor-core kernel for Q4_0 / Q8_0 (Q4_1 / Q5_0 / Q5_1: the batched GEMV for every count) (tiles of 64 rows x 64 tokens: partial tiles both ways)
GEMM_SHAPES = [(37, 96, 2), (5, 1056, 3), (129, 2080, 9), (70, 256, 16), (300, 512, 17), (64, 1024, 70), (1, 32, 64),
               (17, 33, 5)]
# the K-quants: below 16 tokens the batched GEMV (passes of 8, 4, 3, 2, 1 tokens), from 16 the tensor-core kernel
K_GEMM_SHAPES = [(37, 256, 2), (5, 1280, 3), (129, 512, 9), (70, 256, 16), (30, 768, 17), (64, 1024, 70), (1, 256, 64)]


@gpu
@pytest.mark.parametrize("type_id", ALL_TYPES, ids=lambda t: TYPE_NAMES[t])
def test_gpu_gemm_matches_the_cpu_reference_row_by_row(type_id, scalar_isa):
    """several tokens at once: each row of the result within the GEMV tolerance of the CPU's"""
    rng = np.random.default_rng(100 + type_id)
    for nr, n, nt in K_GEMM_SHAPES if type_id in KQUANTS else GEMM_SHAPES:
        if n % 32 and type_id in BLOCK32:
            continue
        raw, _ = _weights(type_id, nr, n, rng)
        x = np.stack([_activations(n, rng) for _ in range(nt)])
        y = _engine.CudaWeight(type_id, n, nr, raw).gemm(x)
        assert y.shape == (nt, nr)
        k = _terms(type_id, n)
        for t in range(nt):
            ref, s = _cpu_reference(type_id, raw, x[t], nr, n)
            tol = 2 * (k + 1) * 2.0 ** -24 * s
            err = np.abs(y[t].astype(np.float64) - ref)
            assert np.all(err <= tol), (f"{TYPE_NAMES[type_id]} {nr}x{n}, {nt} tokens, token {t}: error {err.max():.3g} "
                                        f"over tolerance {tol[np.argmax(err - tol)]:.3g}")
        assert np.any(y != 0)


# (rows, columns, tokens) for the K-quants' tensor-core kernel (gemm_mma_kquant.cu, from 16 tokens; tiles of 64
# rows x 64 tokens): rows and tokens that leave partial tiles, one super-block per row and several (3, 5)
K_MMA_SHAPES = [(70, 256, 16), (33, 768, 17), (5, 1280, 63), (130, 256, 65)]


@gpu
@pytest.mark.parametrize("type_id", KQUANTS, ids=lambda t: TYPE_NAMES[t])
def test_gpu_kquant_tensor_core_gemm_equals_the_cpu_and_matches_the_gemv(type_id, scalar_isa):
    """The tensor-core kernel computes each super-block's term as the CPU's scalar kernel does (the same exact
    integer sums, the same float operations, unfused: csrc/ is built with -ffp-contract=off) and adds a row's
    terms in the same order (super-block after super-block, from 0), so it equals the CPU bit for bit. The
    batched GEMV (the same tokens in passes of at most 8, below the 16-token threshold) computes the same
    terms but adds them in another order (per lane, then a warp tree): with one super-block per row (K = 1,
    a single term added to 0) the two agree bit for bit, with more within 2 (K + 1) u S, the bound for any
    two fp32 summation orders of K terms (see the top). That order also shows the tensor-core kernel ran:
    the GEMV's results differ from the CPU's in some last bits at K = 3 and 5."""
    rng = np.random.default_rng(200 + type_id)
    act = _engine.act_type(type_id)
    for nr, n, nt in K_MMA_SHAPES:
        raw, wf = _weights(type_id, nr, n, rng)
        x = np.stack([_activations(n, rng) for _ in range(nt)])
        x[0], x[1, :256] = 2.5, -1e-3  # every quant at +127 / -127: 16-sums of +-2032, the extremes
        w = _engine.CudaWeight(type_id, n, nr, raw)
        y = w.gemm(x)
        where = f"{TYPE_NAMES[type_id]} {nr}x{n}, {nt} tokens"
        a = _engine.from_float(act, x)
        ref = _engine.gemm(type_id, raw, a, n, nr, nt)
        bad = np.argwhere(y != ref)
        assert bad.size == 0, (f"{where}: {len(bad)} of {y.size} (token, row) differ from the CPU, e.g. "
                               f"{bad[0].tolist()}: {y[tuple(bad[0])]!r} vs {ref[tuple(bad[0])]!r}")
        gemv = np.concatenate([w.gemm(x[t:t + 8]) for t in range(0, nt, 8)])
        k = _terms(type_id, n)
        if k == 1:
            assert np.array_equal(y, gemv), f"{where}: one super-block per row, yet not the GEMV's values"
        s = np.abs(_engine.to_float(act, a, n).reshape(nt, n).astype(np.float64)) @ np.abs(wf.astype(np.float64)).T
        tol = 2 * (k + 1) * 2.0 ** -24 * s
        err = np.abs(y.astype(np.float64) - gemv)
        t, r = np.unravel_index(np.argmax(err - tol), err.shape)
        assert np.all(err <= tol), f"{where}: token {t} row {r} off the GEMV by {err[t, r]:.3g} > {tol[t, r]:.3g}"
        assert np.count_nonzero(y) > y.size // 2  # not a comparison of zeros


MMA_TYPES = (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K)  # those with a tensor-core kernel


@gpu
@pytest.mark.parametrize("type_id", MMA_TYPES, ids=lambda t: TYPE_NAMES[t])
def test_gpu_gemm_paths_gemv_and_mma_match_the_cpu_at_any_token_count(type_id, scalar_isa):
    """gemm(path="gemv") runs the batched GEMV and gemm(path="mma") the tensor cores whatever the token count
    (9: below the 16-token threshold, 20: above; neither a whole tile): each row within the GEMV tolerance of
    the CPU's, and the K-quants' tensor-core kernel equal to the CPU bit for bit (as
    test_gpu_kquant_tensor_core_gemm_equals_the_cpu_and_matches_the_gemv says why). "auto" is the GEMV at 9
    tokens and the tensor cores at 20, bit for bit; the two kernels add the terms in different orders, so
    some results differ between them (which shows each path ran its own kernel)."""
    rng = np.random.default_rng(300 + type_id)
    nr, n = 70, 768 if type_id in KQUANTS else 512  # 3 super-blocks or 16 blocks per row
    raw, _ = _weights(type_id, nr, n, rng)
    w = _engine.CudaWeight(type_id, n, nr, raw)
    act, k = _engine.act_type(type_id), _terms(type_id, n)
    for nt in (9, 20):
        x = np.stack([_activations(n, rng) for _ in range(nt)])
        a = _engine.from_float(act, x)
        ref = _engine.gemm(type_id, raw, a, n, nr, nt)
        wd = _engine.to_float(type_id, raw, n).reshape(nr, n).astype(np.float64)
        s = np.abs(_engine.to_float(act, a, n).reshape(nt, n).astype(np.float64)) @ np.abs(wd).T
        tol = 2 * (k + 1) * 2.0 ** -24 * s
        ys = {path: w.gemm(x, path=path) for path in ("gemv", "mma", "auto")}
        for path in ("gemv", "mma"):
            y = ys[path]
            where = f"{TYPE_NAMES[type_id]} {nr}x{n}, {nt} tokens, path {path}"
            assert y.shape == (nt, nr)
            err = np.abs(y.astype(np.float64) - ref)
            t, r = np.unravel_index(np.argmax(err - tol), err.shape)
            assert np.all(err <= tol), f"{where}: token {t} row {r} off the CPU by {err[t, r]:.3g} > {tol[t, r]:.3g}"
            assert np.count_nonzero(y) > y.size // 2
        if type_id in KQUANTS:
            assert np.array_equal(ys["mma"], ref), f"{TYPE_NAMES[type_id]}, {nt} tokens: path mma != the CPU"
        assert np.array_equal(ys["auto"], ys["gemv" if nt < 16 else "mma"]), f"{nt} tokens: auto took the other path"
        assert not np.array_equal(ys["gemv"], ys["mma"]), f"{nt} tokens: paths gemv and mma gave the same bits"


@gpu
def test_gpu_gemm_refuses_unknown_paths_and_mma_without_a_kernel():
    rng = np.random.default_rng(4)
    w = _engine.CudaWeight(Q4_0, 64, 8, _weights(Q4_0, 8, 64, rng)[0])
    x = np.ones((3, 64), np.float32)
    for bad in ("tensor", "GEMV", "", 1, None):
        with pytest.raises(ValueError, match=r"gemm\(\): path must be 'auto', 'gemv' or 'mma', got"):
            w.gemm(x, path=bad)
        with pytest.raises(ValueError, match=r"time_gemm\(\): path must be 'auto', 'gemv' or 'mma', got"):
            w.time_gemm(x, 1, path=bad)
    for type_id in (F32, F16, BF16, Q4_1, Q5_0, Q5_1):
        wt = _engine.CudaWeight(type_id, 64, 8, _weights(type_id, 8, 64, rng)[0])
        name = TYPE_NAMES[type_id].upper()
        with pytest.raises(ValueError, match=rf"gemm\(path='mma'\): {name} weights have no tensor-core kernel"):
            wt.gemm(x, path="mma")
        with pytest.raises(ValueError, match=rf"time_gemm\(path='mma'\): {name} weights have no tensor-core kernel"):
            wt.time_gemm(x, 1, path="mma")
        assert wt.gemm(x, path="gemv").shape == (3, 8)  # their one path


@gpu
def test_gpu_gemv_is_a_matrix_product(scalar_isa):
    """independent of the CPU kernels: F16 weights of exactly representable values times x in float64"""
    rng = np.random.default_rng(5)
    nr, n = 70, 520
    w = rng.integers(-8, 8, size=(nr, n)).astype(np.float16)
    x = rng.integers(-4, 5, size=n).astype(np.float32)
    y = _engine.CudaWeight(F16, n, nr, w.tobytes()).gemv(x)
    assert np.array_equal(y, (w.astype(np.float64) @ x).astype(np.float32))  # small integers: exact in fp32


@gpu
def test_gpu_gemv_and_gemm_timings_are_durations():
    rng = np.random.default_rng(3)
    raw, _ = _weights(Q4_0, 256, 2048, rng)
    w = _engine.CudaWeight(Q4_0, 2048, 256, raw)
    sec = w.time_gemv(_activations(2048, rng), 20)
    assert 0 < sec < 0.1  # a 256 x 2048 Q4_0 gemv takes microseconds (on the CPU emulation, a few milliseconds)
    with pytest.raises(ValueError, match="iters must be in 1..1000000, got 0"):
        w.time_gemv(np.zeros(2048, np.float32), 0)
    wk = _engine.CudaWeight(Q4_K, 256, 64, _weights(Q4_K, 64, 256, rng)[0])
    sec = wk.time_gemm(np.stack([_activations(256, rng) for _ in range(16)]), 2)  # the tensor-core kernel
    assert 0 < sec < 0.1
    for path in ("gemv", "mma"):  # either kernel at 9 tokens
        assert 0 < wk.time_gemm(np.stack([_activations(256, rng) for _ in range(9)]), 2, path=path) < 0.1
    with pytest.raises(ValueError, match=r"shape \(nt, 256\), nt >= 1, got shape \(256,\)"):
        wk.time_gemm(np.zeros(256, np.float32), 2)
    with pytest.raises(ValueError, match=r"time_gemm\(\): iters must be in 1..1000000, got 0"):
        wk.time_gemm(np.zeros((16, 256), np.float32), 0)


@gpu
def test_gpu_weight_upload_rejects_bad_input():
    with pytest.raises(ValueError, match="expected 68 bytes, got 67"):
        _engine.CudaWeight(Q8_0, 32, 2, bytes(67))
    with pytest.raises(ValueError, match="whole 32-element blocks"):
        _engine.CudaWeight(Q4_0, 48, 1, bytes(27))
    with pytest.raises(ValueError, match="type 23"):
        _engine.CudaWeight(23, 256, 1, bytes(136))  # IQ4_XS: not on the GPU
    with pytest.raises(ValueError, match="type 6 with 1 x 48 elements"):
        _engine.CudaWeight(Q5_0, 48, 1, bytes(33))
    with pytest.raises(ValueError, match="type 12 with 1 x 288 elements.*whole 256-element super-blocks"):
        _engine.CudaWeight(Q4_K, 288, 1, bytes(162))
    with pytest.raises(ValueError, match="expected 420 bytes, got 419"):
        _engine.CudaWeight(Q6_K, 256, 2, bytes(419))
    with pytest.raises(ValueError, match="type 8 with 0 x 32"):
        _engine.CudaWeight(Q8_0, 32, 0, b"")
    w = _engine.CudaWeight(F16, 8, 2, bytes(32))
    with pytest.raises(ValueError, match="takes 8 float32 values"):
        w.gemv(np.zeros(7, np.float32))
    with pytest.raises(MemoryError, match="allocating 1125899906842624 bytes of device memory"):
        _engine._DeviceBuffer(1 << 50)  # 1 PiB
    assert np.array_equal(w.gemv(np.ones(8, np.float32)), np.zeros(2, np.float32))  # the failure did not linger


@gpu
def test_gpu_mma_s8_m16n8k32_is_a_matrix_product():
    """pl_mma_s8_m16n8k32 (cuda_common.cuh) through the fragment layout of mma.m16n8k32 (.s8): on a GPU this
    checks the layout the kernels assume against the hardware, on the CPU emulation its gather / scatter"""
    rng = np.random.default_rng(17)
    cases = [(np.full((16, 32), -128, np.int8), np.full((32, 8), -128, np.int8), np.zeros((16, 8), np.int32))]
    for _ in range(3):
        cases.append((rng.integers(-128, 128, size=(16, 32)).astype(np.int8),
                      rng.integers(-128, 128, size=(32, 8)).astype(np.int8),
                      rng.integers(-(1 << 20), 1 << 20, size=(16, 8)).astype(np.int32)))
    # one element of A at a time: a wrong fragment position shows as a wrong (row, column) of D
    a1 = np.zeros((16, 32), np.int8)
    a1[11, 21] = 3
    cases.append((a1, np.arange(256).reshape(32, 8).astype(np.int8), np.zeros((16, 8), np.int32)))
    for a, b, c in cases:
        d = _engine.cuda_mma_s8_m16n8k32(a, b, c)
        ref = a.astype(np.int64) @ b.astype(np.int64) + c
        bad = np.argwhere(d != ref)
        assert bad.size == 0, f"D differs at (row, col) {bad[:8].tolist()}: got {d[tuple(bad[0])]}, want {ref[tuple(bad[0])]}"
    with pytest.raises(ValueError, match="int8 16x32, int8 32x8 and int32 16x8"):
        _engine.cuda_mma_s8_m16n8k32(np.zeros((16, 32), np.int16), np.zeros((32, 8), np.int8), np.zeros((16, 8), np.int32))
