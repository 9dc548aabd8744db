"""bench_gemv_llamacpp.py: the decode matmul alone, pyllm's kernel against llama.cpp's (ggml's CPU
backend, loaded from the installed llama-cpp-python through ctypes), on the same weight bytes, in one
process, one thread by default, with the weights cache-resident: the compute side of decode, which is
what decides decode speed on a machine whose cores, not its memory, are the limit (the issue's 2-core
Zen 3 on AVX2). Whole-model decode on a machine with fast cores and slow memory measures the memory
instead; see bench_llamacpp.py for that.

    PYTHONPATH=. python bench/bench_gemv_llamacpp.py [--types q4_0,q8_0,q4_k,q5_k,q6_k]
        [--shapes 2048x2048,5632x2048,2048x5632] [--tokens 1] [--threads 1] [--reps 15]
    PYLLM_ISA=avx2 PYTHONPATH=/tmp/lcpp-avx2:. python bench/bench_gemv_llamacpp.py   # AVX2 against an AVX2-only ggml

Each cell times one matmul of a rows x n weight (random valid blocks, the same bytes for both engines)
with `--tokens` activation rows, float32 activations in and float32 results out, so both include
quantizing the activations (pyllm: pack_acts, ggml: its Q8_0 / Q8_K conversion inside mul_mat):
  * pyllm: _engine.repack at load, then _engine.pack_acts + _engine.gemm_packed per call, the path
    the model's forward takes for these types (the unpacked one for a type without a packed form);
  * llama.cpp: a ggml graph of one mul_mat on the CPU backend, the weight in the CPU_REPACK buffer
    type where ggml has a repacked form for the type on this CPU (as llama.cpp loads model weights,
    e.g. Q4_0 and Q4_K on AVX2) and in a plain CPU buffer otherwise, ggml_backend_graph_compute per call.
The two alternate, call by call, and the table gives medians in Gweights/s (rows x n x tokens / s) and
the ratio pyllm / llama.cpp. The results of the two are compared (a wrong layout would show up as a
mismatch, not as speed)."""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench._common import machine  # noqa: E402
from bench.bench_kernels import TYPES, random_rows  # noqa: E402
from pyllm import _engine  # noqa: E402

GGML_TYPE_F32 = 0


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class Ggml:
    """The few ggml calls this benchmark needs, from llama-cpp-python's shared libraries."""

    def __init__(self, threads: int):
        import llama_cpp  # noqa: F401  (loads the libraries the package ships, from wherever it is installed)

        libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        load = lambda name: ctypes.CDLL(os.path.join(libdir, name), mode=ctypes.RTLD_GLOBAL)  # noqa: E731
        self.base, self.ggml, self.cpu = load("libggml-base.so"), load("libggml.so"), load("libggml-cpu.so")
        self.libdir = libdir
        P, S, I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {
            (self.base, "ggml_init"): (P, [InitParams]),
            (self.base, "ggml_free"): (None, [P]),
            (self.base, "ggml_tensor_overhead"): (S, []),
            (self.base, "ggml_graph_overhead"): (S, []),
            (self.base, "ggml_new_tensor_2d"): (P, [P, I, ctypes.c_int64, ctypes.c_int64]),
            (self.base, "ggml_mul_mat"): (P, [P, P, P]),
            (self.base, "ggml_new_graph"): (P, [P]),
            (self.base, "ggml_build_forward_expand"): (None, [P, P]),
            (self.base, "ggml_nbytes"): (S, [P]),
            (self.base, "ggml_backend_alloc_ctx_tensors_from_buft"): (P, [P, P]),
            (self.base, "ggml_backend_tensor_set"): (None, [P, P, S, S]),
            (self.base, "ggml_backend_tensor_get"): (None, [P, P, S, S]),
            (self.base, "ggml_backend_buffer_free"): (None, [P]),
            (self.base, "ggml_backend_buft_name"): (ctypes.c_char_p, [P]),
            (self.base, "ggml_backend_graph_compute"): (I, [P, P]),
            (self.ggml, "ggml_backend_dev_by_type"): (P, [I]),
            (self.base, "ggml_backend_dev_backend_reg"): (P, [P]),
            (self.base, "ggml_backend_reg_get_proc_address"): (P, [P, ctypes.c_char_p]),
            (self.base, "ggml_backend_dev_supports_op"): (ctypes.c_bool, [P, P]),
            (self.cpu, "ggml_backend_cpu_init"): (P, []),
            (self.cpu, "ggml_backend_cpu_set_n_threads"): (None, [P, I]),
            (self.cpu, "ggml_backend_cpu_buffer_type"): (P, []),
        }
        for (lib, name), (res, args) in sigs.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:  # moved between libggml and libggml-base across versions
                fn = getattr(self.ggml, name)
            fn.restype, fn.argtypes = res, args
            setattr(self, name.removeprefix("ggml_"), fn)
        self.backend = self.backend_cpu_init()
        self.backend_cpu_set_n_threads(self.backend, threads)
        self.dev = dev = self.backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
        get_extra = self.backend_reg_get_proc_address(self.backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
        self.repack_buft = None
        if get_extra:
            bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(get_extra)(dev)
            i = 0
            while bufts and bufts[i]:
                if self.backend_buft_name(bufts[i]) == b"CPU_REPACK":
                    self.repack_buft = bufts[i]
                i += 1
        self.features = [name.removeprefix("ggml_cpu_has_").upper() for name in ("ggml_cpu_has_avx2", "ggml_cpu_has_avx512", "ggml_cpu_has_avx512_vnni")
                         if getattr(self.cpu, name)()]

    def matmul(self, type_id: int, w: np.ndarray, rows: int, n: int, tokens: int):
        """A callable that runs the mul_mat, and one that returns its float32 result (tokens x rows)."""
        params = InitParams(self.tensor_overhead() * 4 + self.graph_overhead(), None, True)
        ctx = self.init(params)
        xt = self.new_tensor_2d(ctx, GGML_TYPE_F32, n, tokens)
        wctx = wbuf = None
        # CPU_REPACK where ggml's CPU device takes this mul_mat from it (as llama.cpp's loader decides)
        for buft in ([self.repack_buft] if self.repack_buft else []) + [self.backend_cpu_buffer_type()]:
            wctx = self.init(params)
            wt = self.new_tensor_2d(wctx, type_id, n, rows)
            wbuf = self.backend_alloc_ctx_tensors_from_buft(wctx, buft)
            yt = self.mul_mat(ctx, wt, xt)
            if wbuf and (buft != self.repack_buft or self.backend_dev_supports_op(self.dev, yt)):
                break
            if wbuf:
                self.backend_buffer_free(wbuf)
            self.free(wctx)
        self.repacked = buft == self.repack_buft
        assert self.nbytes(wt) == w.nbytes, (self.nbytes(wt), w.nbytes)
        self.backend_tensor_set(wt, w.ctypes.data, 0, w.nbytes)
        graph = self.new_graph(ctx)
        self.build_forward_expand(graph, yt)
        buf = self.backend_alloc_ctx_tensors_from_buft(ctx, self.backend_cpu_buffer_type())
        self._keep = getattr(self, "_keep", []) + [(wctx, ctx, wbuf, buf)]
        out = np.empty((tokens, rows), np.float32)

        def set_x(x):
            self.backend_tensor_set(xt, np.ascontiguousarray(x, np.float32).ctypes.data, 0, x.size * 4)

        def run():
            if self.backend_graph_compute(self.backend, graph) != 0:
                raise RuntimeError("ggml_backend_graph_compute failed")

        def result():
            self.backend_tensor_get(yt, out.ctypes.data, 0, out.nbytes)
            return out.copy()

        return set_x, run, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="q4_0,q8_0,q4_k,q5_k,q6_k")
    ap.add_argument("--shapes", default="2048x2048,5632x2048,2048x5632", help="rows x n (n = the input width)")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="ggml's threads; pyllm's test entry point runs on one")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    if args.threads != 1:
        raise SystemExit("--threads: only 1 for now (pyllm's gemm_packed test entry point is single-threaded)")
    g = Ggml(args.threads)
    rng = np.random.default_rng(0)
    print(f"# {machine()}")
    print(f"# pyllm ISA {_engine.get_isa()}; llama.cpp {g.libdir}, ggml CPU features {' '.join(g.features) or 'none of AVX2/AVX-512'}")
    print(f"# {args.threads} thread, {args.tokens} activation row(s), weights cache-resident, medians of {args.reps} "
          f"alternating calls, Gweights/s (rows x n x tokens / s)")
    print(f"{'type':6} {'rows x n':>11} {'pyllm':>8} {'llama.cpp':>10} {'ratio':>6}  ggml weight buffer / max |diff| / max |y|")
    ratios = {}
    for name in args.types.split(","):
        tid = TYPES[name][0]
        for shape in args.shapes.split(","):
            rows, n = (int(v) for v in shape.split("x"))
            w = random_rows(name, rows, n, rng)
            x = rng.standard_normal((args.tokens, n)).astype(np.float32)
            set_x, lc_run, lc_result = g.matmul(tid, w, rows, n, args.tokens)
            set_x(x)
            if _engine.packed_group_bytes(tid, n) > 0:
                wp = _engine.repack(tid, w, rows, n)
                py_run = lambda: _engine.gemm_packed(tid, wp, _engine.pack_acts(x, tid), n, rows, args.tokens)  # noqa: E731
            else:
                at = _engine.act_type(tid)
                py_run = lambda: _engine.gemm(tid, w, _engine.from_float(at, x), n, rows, args.tokens)  # noqa: E731
            y_py = np.asarray(py_run(), np.float32).reshape(args.tokens, rows)
            lc_run()
            y_lc = lc_result()
            diff = float(np.max(np.abs(y_py - y_lc)))
            scale = float(np.max(np.abs(y_lc)))
            if not diff <= 1e-3 * scale + 1e-6:
                raise SystemExit(f"{name} {shape}: pyllm and llama.cpp disagree (max |diff| {diff:.3g}, max |y| {scale:.3g})")
            t_py, t_lc = [], []
            for rep in range(args.reps + 1):
                for fn, ts in ((py_run, t_py), (lc_run, t_lc)) if rep % 2 else ((lc_run, t_lc), (py_run, t_py)):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
            gw = rows * n * args.tokens / 1e9
            py, lc = gw / statistics.median(t_py[1:]), gw / statistics.median(t_lc[1:])
            ratios.setdefault(name, []).append(py / lc)
            print(f"{name:6} {shape:>11} {py:8.1f} {lc:10.1f} {py / lc:5.2f}x  "
                  f"{'CPU_REPACK' if g.repacked else 'CPU'} / {diff:.2g} / {scale:.3g}", flush=True)
    print("geometric mean ratio per type: " + ", ".join(
        f"{k} {float(np.exp(np.mean(np.log(v)))):.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
