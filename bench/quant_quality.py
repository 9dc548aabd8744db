"""quant_quality.py: quality of each quantization type against llama.cpp's file of the same mix, on the
same held-out text, both files run by pyllm's engine (so only the quantizers differ; the two engines
agree on llama.cpp's own files to a mean KL of ~2e-4, README). Prints, per type: bits per weight
(weight data only), mean KL-divergence against the unquantized model, top-1 agreement and
perplexity, for pyllm's file (with and without calibration) and llama.cpp's.

    PYTHONPATH=. python bench/quant_quality.py [HF_DIR] [--types q4_k_m,q6_k,...] [--calibration FILE]
        [--heldout FILE] [--ctx 256] [--workdir DIR] [--llama-cpp-src DIR] [--pyllm-only]

Defaults: the shipped shakespeare-4m, its calibration.txt (training text) for pyllm's calibrated
files, tests/fixtures/heldout_shakespeare.txt in chunks of 256 (the model's training length),
llama.cpp's files made once in --workdir by its converter (f32) and llama_model_quantize with the
mix's default rules (not --pure), without an importance matrix (llama-cpp-python cannot pass one)."""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import pyllm  # noqa: E402
from pyllm.gguf_export import FILE_TYPES, export_gguf  # noqa: E402
from pyllm.gguf_file import GGUFFile  # noqa: E402
from pyllm.perplexity import perplexity  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_model  # noqa: E402

QUANTIZE = r"""
import ctypes, sys
import llama_cpp as L
inp, out, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
L.llama_backend_init()
p = L.llama_model_quantize_default_params()
p.ftype, p.nthread = ftype, 2
sys.exit(L.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p)))
"""


def bits_per_weight(path: str) -> float:
    with GGUFFile(path) as gf:
        n = sum(int(np.prod(i.shape)) for name, i in gf.tensors.items() if len(i.shape) >= 2)
        b = sum(i.nbytes for name, i in gf.tensors.items() if len(i.shape) >= 2)
    return 8.0 * b / n


def find_convert(src: str | None) -> str | None:
    roots = [src] if src else [os.environ.get("LLAMA_CPP_SRC"), "/tmp/lcppsrc", "/tmp/lcpp/src"]
    for r in filter(None, roots):
        for pat in ("convert_hf_to_gguf.py", "*/vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/convert_hf_to_gguf.py"):
            hits = sorted(glob.glob(os.path.join(r, pat)))
            if hits:
                return hits[-1]
    return None


def llama_cpp_file(hf_dir: str, mix: str, workdir: str, convert: str) -> str:
    f32 = os.path.join(workdir, "llamacpp-f32.gguf")
    if not os.path.exists(f32):
        gguf_py = os.path.join(os.path.dirname(convert), "gguf-py")
        env = {**os.environ, "PYTHONPATH": gguf_py}
        subprocess.run([sys.executable, convert, hf_dir, "--outtype", "f32", "--outfile", f32], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    out = os.path.join(workdir, f"llamacpp-{mix}.gguf")
    if not os.path.exists(out):
        subprocess.run([sys.executable, "-c", QUANTIZE, f32, out, str(FILE_TYPES[mix])], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hf_dir", nargs="?", default=pyllm.default_model_path())
    ap.add_argument("--types", default="q4_k_m,q4_k_s,q5_k_m,q6_k,q3_k_m,q2_k,iq4_xs,iq4_nl,q5_0,q5_1,q4_1")
    ap.add_argument("--calibration", default=None, help="text/.npz/imatrix for pyllm's calibrated files")
    ap.add_argument("--heldout", default=os.path.join(ROOT, "tests", "fixtures", "heldout_shakespeare.txt"))
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pyllm-quant-quality"))
    ap.add_argument("--llama-cpp-src", default=None)
    ap.add_argument("--pyllm-only", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    cal = a.calibration or os.path.join(a.hf_dir, "calibration.txt")
    cal = cal if os.path.exists(cal) else None
    if cal is not None:  # collected (or read) once, used by every calibrated file
        from pyllm.imatrix import resolve_importance

        cal = resolve_importance(a.hf_dir, cal)
    text = open(a.heldout, encoding="utf-8").read()
    ref = pyllm.load(a.hf_dir, n_ctx=a.ctx, quant="f32")
    convert = None if a.pyllm_only else find_convert(a.llama_cpp_src)
    print(f"model {a.hf_dir}; held-out {os.path.basename(a.heldout)}, chunks of {a.ctx}; CPU {cpu_model()}; "
          f"engine ISA {pyllm._engine.get_isa()}")
    print(f"{'type':8} {'file':22} {'bpw':>6} {'mean KL':>9} {'top-1':>7} {'PPL':>8}   (ref PPL in the last line)")
    res = None
    for mix in a.types.split(","):
        rows = []
        for label, kw in (("pyllm", {}), ("pyllm + calibration", {"calibration": cal} if cal else None)):
            if kw is None:
                continue
            out = os.path.join(a.workdir, f"pyllm-{mix}{'-cal' if kw else ''}.gguf")
            t0 = time.time()
            export_gguf(a.hf_dir, out, mix, **kw)
            rows.append((label, out, time.time() - t0))
        if convert:
            rows.append(("llama.cpp", llama_cpp_file(a.hf_dir, mix, a.workdir, convert), 0.0))
        for label, path, secs in rows:
            m = pyllm.load(path, n_ctx=a.ctx)
            res = perplexity(m, text, n_ctx=a.ctx, ref=ref)
            print(f"{mix:8} {label:22} {bits_per_weight(path):6.3f} {res.kl_mean:9.5f} {100 * res.top1:6.2f}% "
                  f"{res.ppl:8.4f}" + (f"   (quantized in {secs:.1f} s)" if secs else ""), flush=True)
    if res is not None:
        print(f"reference (unquantized) PPL {res.ref_ppl:.4f}")


if __name__ == "__main__":
    main()
