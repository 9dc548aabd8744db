"""check_llamacpp_interop.py: GGUF files both ways between pyllm and llama.cpp, per model family, on
tiny random checkpoints built like the tests' (tests/conftest.py). For each family:
  * llama.cpp's converter (convert_hf_to_gguf.py --outtype f32, and llama-quantize's Q8_0 / Q4_0 with
    --pure through llama_cpp.llama_model_quantize) -> pyllm.load: logits against pyllm's own load of
    the Hugging Face folder (f32: max |diff|; quantized: mean KL), and a greedy continuation;
  * pyllm quantize (f32, q8_0, q4_0) -> llama.cpp: its greedy continuation against pyllm's on the
    same file, and its logits against pyllm's.
Needs llama-cpp-python and llama.cpp's source (for the converter): --llama-cpp-src DIR or
$LLAMA_CPP_SRC (an extracted llama-cpp-python sdist holds it under vendor/llama.cpp). Prints one
line per (family, file); run it by hand (it is not part of the test suite, which must not depend on
llama.cpp):

    PYTHONPATH=. python tools/check_llamacpp_interop.py --llama-cpp-src /path/to/llama_cpp_python-0.3.36
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

FAMILIES = ["llama3", "mistral", "qwen2", "qwen3", "phi3", "phi3-longrope", "mixtral", "mixtral4"]


class LlamaCpp:
    """llama.cpp through llama-cpp-python's C API: all logits of a prompt, greedy continuation."""

    def __init__(self, path: str, n_ctx: int = 256):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 512, 512, 1
        cp.type_k = cp.type_v = 0  # f32 KV cache, as pyllm's default
        cp.n_threads = cp.n_threads_batch = len(os.sched_getaffinity(0))  # as pyllm's default
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, 1)
        self.n_past = 0

    def feed(self, ids, all_logits=False):
        L, b = self.L, self.batch
        b.n_tokens = len(ids)
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, self.n_past + i, 1, int(all_logits)
            b.seq_id[i][0] = 0
        b.logits[len(ids) - 1] = 1
        if L.llama_decode(self.ctx, b):
            raise RuntimeError("llama_decode failed")
        self.n_past += len(ids)
        rows = range(len(ids)) if all_logits else [len(ids) - 1]
        return np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()
                         for i in rows])

    def reset(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def greedy(self, ids, n):
        self.reset()
        out, last = [], self.feed(ids)[-1]
        for _ in range(n):
            out.append(int(last.argmax()))
            last = self.feed([out[-1]])[-1]
        return out

    def close(self):
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp-src", default=os.environ.get("LLAMA_CPP_SRC"))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    conv = sorted(glob.glob(os.path.join(a.llama_cpp_src or ".", "**", "convert_hf_to_gguf.py"), recursive=True))
    if not conv:
        raise SystemExit("llama.cpp's convert_hf_to_gguf.py not found: pass --llama-cpp-src")
    import llama_cpp as L

    import pyllm
    from conftest import build_checkpoint
    from test_families import mean_kl
    from pyllm.gguf_export import export_gguf

    work = a.workdir or tempfile.mkdtemp(prefix="pyllm-interop-")
    rng = np.random.default_rng(0)
    print(f"llama-cpp-python {L.__version__}, converter {conv[0]}")
    for fam in a.families.split(","):
        # (not named "phi3": llama.cpp then sets attributes of Phi-3's own special tokens, which the
        # borrowed Llama 2 tokenizer of the test checkpoints lacks)
        ck = os.path.join(work, "ck-" + fam.replace("phi3", "p3"))
        if not os.path.isdir(ck):
            build_checkpoint(fam, "float32", ck)
        ref = pyllm.load(ck, n_ctx=256)
        ids = rng.integers(3, 32000, 48).tolist()
        want = ref.logits(ids)
        greedy = ref.generate_tokens(ids, max_tokens=16, temperature=0, ignore_eos=True)
        # llama.cpp's files -> pyllm
        f32 = os.path.join(work, f"{fam}-llamacpp-f32.gguf")
        if not os.path.exists(f32):
            r = subprocess.run([sys.executable, conv[0], ck, "--outfile", f32, "--outtype", "f32"],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"{fam:14s} llama.cpp converter failed: {r.stderr.strip().splitlines()[-1]}")
        for q, ftype in (("f32", None), ("q8_0", 7), ("q4_0", 2)):
            if not os.path.exists(f32):
                break
            path = f32
            if ftype is not None:
                path = os.path.join(work, f"{fam}-llamacpp-{q}.gguf")
                if not os.path.exists(path):
                    qp = L.llama_model_quantize_default_params()
                    qp.ftype, qp.pure = ftype, True
                    if L.llama_model_quantize(f32.encode(), path.encode(), qp):
                        print(f"{fam:14s} llama-quantize {q} failed")
                        continue
            try:
                m = pyllm.load(path, n_ctx=256)
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                print(f"{fam:14s} llama.cpp {q:5s} -> pyllm: {type(e).__name__}: {e}")
                continue
            got = m.logits(ids)
            g = m.generate_tokens(ids, max_tokens=16, temperature=0, ignore_eos=True)
            diff = f"max|diff| {np.abs(got - want).max():.2e}" if q == "f32" else f"KL {mean_kl(want, got):.2e}"
            print(f"{fam:14s} llama.cpp {q:5s} -> pyllm: {diff}, greedy {'match' if g == greedy else 'differs'}")
        # pyllm's files -> llama.cpp
        for q in ("f32", "q8_0", "q4_0"):
            path = os.path.join(work, f"{fam}-pyllm-{q}.gguf")
            export_gguf(ck, path, q)
            ours = pyllm.load(path, n_ctx=256)
            try:
                lc = LlamaCpp(path)
            except RuntimeError as e:
                print(f"{fam:14s} pyllm {q:5s} -> llama.cpp: {e}")
                continue
            theirs = lc.feed(ids, all_logits=True)
            g_ours = ours.generate_tokens(ids, max_tokens=16, temperature=0, ignore_eos=True)
            g_theirs = lc.greedy(ids, 16)
            lc.close()
            same = "match" if g_ours == g_theirs else \
                f"differ at {next(i for i, (x, y) in enumerate(zip(g_ours, g_theirs)) if x != y)}"
            print(f"{fam:14s} pyllm {q:5s} -> llama.cpp: max|diff| {np.abs(theirs - ours.logits(ids)).max():.2e}, "
                  f"KL {mean_kl(ours.logits(ids), theirs):.2e}, greedy {same}")


if __name__ == "__main__":
    main()
