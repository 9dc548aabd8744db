"""bench_llamacpp.py: pyllm against llama.cpp (through llama-cpp-python) on the same model and
machine, measured in the same run, for Q4_0 and Q8_0 weights, and for llama.cpp's own Q4_K_M and Q6_K
files (both engines load the same file). Each run is its own subprocess (so
load time and peak RSS are its own); within each repetition the engines alternate (and swap which
goes first every repetition); the tables show medians and the pyllm / llama.cpp ratio of every
metric (above 1 means pyllm is faster for tok/s, slower for load time, bigger for RSS).

    PYTHONPATH=. python bench/bench_llamacpp.py HF_DIR [--reps 3] [--threads N] [--types q4_0,q8_0,q4_k_m,q6_k]
        [--pyllm-source gguf|hf] [--workdir DIR] [--llama-cpp-src DIR | --convert-script PATH]
        [--kv-type f16|f32] [--pyllm-kv f32|f16] [--flash-attn auto|on|off] [--rebuild]
    PYTHONPATH=. python bench/bench_llamacpp.py --quick      # smoke run on the shipped shakespeare-4m

Model files (made once, cached in --workdir, default $TMPDIR/pyllm-bench-llamacpp/<checkpoint name>;
--rebuild remakes them; pyllm's are also remade when tools/quantize.py, pyllm/gguf_export.py or
pyllm/quantization.py is newer than them):
  * pyllm: `python tools/quantize.py HF_DIR pyllm-TYPE.gguf --type TYPE`. With --pyllm-source hf
    (or while tools/quantize.py does not exist) pyllm instead quantizes while loading:
    pyllm.load(HF_DIR, quant=TYPE), and its load time includes that quantization.
  * llama.cpp: its own convert_hf_to_gguf.py (--convert-script, else found under --llama-cpp-src,
    an extracted llama-cpp-python sdist or llama.cpp checkout; default $LLAMA_CPP_SRC or /tmp/lcpp/src)
    writes a bf16 (f16 for non-bf16 checkpoints) GGUF, then llama_cpp.llama_model_quantize makes
    TYPE with `pure` set and the LM head / token embeddings in the types pyllm's policy gives them
    (pyllm.quantization.tensor_type: Q4_0 keeps the LM head in Q8_0), so both files hold the same
    tensor types, not llama-quantize's default mix (Q6_K LM head). The tables print both files'
    tensor types and any tensor whose types differ.
  * q4_k_m, q6_k (types pyllm reads but does not write): llama_model_quantize with llama.cpp's default
    mix for that ftype (not pure: Q4_K_M puts some attn_v / ffn_down and the LM head in Q6_K, as
    llama-quantize does), and both engines run that one file.

What each run measures, in this order, after loading and a short warm-up (16 prompt tokens and 2
decode steps, then the cache is cleared):
  * decode (tg128): tok/s of 128 greedy steps after an 8-token prompt, like llama-bench's tg128;
  * prefill (pp512): tok/s for one 512-token prompt on an empty cache;
  * decode after a long prompt (tg32@1024): tok/s of 32 greedy steps after a 1024-token prompt, where
    attention over the cache starts to count;
  * load: seconds from the engine's library imported (and llama_backend_init called) to a model
    ready to run: pyllm.load + its KV cache; llama.cpp's model load + context creation, which
    allocates its KV cache and compute buffers (and repacks weights where llama.cpp does that);
  * peak RSS: the process's ru_maxrss at the end.
Prompts are random token ids in [3, vocab) from a fixed seed, the same ids for both engines.

How each engine is driven (the same Python greedy loop on both: feed tokens, take the argmax of the
last token's logits, feed it back as a one-token batch):
  * pyllm: pyllm.load(file, n_threads=T, n_ctx=C), Sequence.append(ids) (prompts go in chunks of
    512 tokens; only the last token's logits are computed and returned); KV cache --pyllm-kv (default f32).
  * llama.cpp: the low-level C API through ctypes (no Llama object, no sampler, no logits_all):
    llama_model_load_from_file (mmap, defaults) + llama_init_from_model with n_ctx=C, n_batch =
    n_ubatch = 512, n_seq_max=1, n_threads = n_threads_batch = T, KV cache --kv-type (default f16,
    llama.cpp's default), flash attention --flash-attn (default auto, llama.cpp's default), no_perf.
    Each step fills a reused llama_batch (logits requested for the last token only), calls
    llama_decode, and reads llama_get_logits_ith(-1) as a zero-copy numpy view.
Both use the same n_ctx C (the longest run's need rounded up to 256) and T threads (--threads,
default: every CPU this process may use).

pyllm runs from a copy of the package made at the start (--workdir/pyllm-snapshot; --no-snapshot
to skip), so all its runs use one build even if the engine is rebuilt meanwhile; a run killed by a
signal is run again (twice at most).

Cross-check, per type: llama.cpp loads pyllm's GGUF and its greedy continuation (16 tokens after
an 8-token prompt) is compared with pyllm's on the same file: "match" or "differ at i". (With
--pyllm-source hf there is no pyllm file, so both engines run llama.cpp's file instead.)
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import default_threads, machine, medians, run_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANTIZE_TOOL = os.path.join(ROOT, "tools", "quantize.py")
PYLLM_EXPORTER = [QUANTIZE_TOOL] + [os.path.join(ROOT, "pyllm", f) for f in ("gguf_export.py", "quantization.py")]
ENGINES = ("pyllm", "llama.cpp")
LLAMA_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q6_k": 18}  # LLAMA_FTYPE_MOSTLY_*
LLAMA_MIXES = ("q4_k_m", "q6_k")  # llama.cpp's default mix, one file for both engines

WORKER = r"""
import json, os, resource, sys, time
import numpy as np
engine, path, quant, threads, cfg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
if engine == "pyllm":
    import pyllm
    from pyllm import _engine
    t0 = time.perf_counter()
    m = pyllm.load(path, n_threads=threads, n_ctx=cfg["n_ctx"], quant=None if quant == "-" else quant,
                   kv_type=cfg["pyllm_kv"])
    seq = m.sequence()
    load = time.perf_counter() - t0
    n_vocab = m.vocab_size
    feed, reset = seq.append, seq.reset
    info = _engine.get_isa()
    build = f"{_engine.__file__} {os.stat(_engine.__file__).st_mtime:.0f}"
else:
    import llama_cpp as L
    L.llama_backend_init()
    t0 = time.perf_counter()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = cfg["n_ctx"], 512, 512, 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.type_k = cp.type_v = {"f32": 0, "f16": 1}[cfg["kv"]]  # GGML_TYPE_*
    cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[cfg["fa"]]
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit("llama.cpp could not create a context")
    load = time.perf_counter() - t0
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, 1)
    n_past = [0]

    def feed(ids):
        for s in range(0, len(ids), 512):
            chunk = ids[s:s + 512]
            n, p0 = len(chunk), n_past[0]
            batch.n_tokens = n
            for i, t in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p0 + i, 1, 0
                batch.seq_id[i][0] = 0
            batch.logits[n - 1] = 1
            rc = L.llama_decode(ctx, batch)
            if rc:
                raise SystemExit(f"llama_decode returned {rc}")
            n_past[0] = p0 + n
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def reset():
        L.llama_memory_clear(mem, True)
        n_past[0] = 0

    build = L.__version__
    info = " ".join(x.split("=")[0].split(":")[-1].strip() for x in L.llama_print_system_info().decode().split("|") if x.strip().endswith("= 1"))

rng = np.random.default_rng(cfg["seed"])
short, pp_ids, long_ids = (rng.integers(3, n_vocab, n).tolist() for n in (cfg["tg_prompt"], cfg["pp"], cfg["long_prompt"]))


def greedy(logits, n, gaps=None):
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        if gaps is not None:
            top2 = np.partition(logits, -2)[-2:]
            gaps.append(float(top2[1] - top2[0]))
        logits = feed(out[-1:])
    return out


res = dict(load=load, n_vocab=n_vocab, info=info, build=build)
if cfg["mode"] == "check":
    res["gaps"] = []
    res["tokens"] = greedy(feed(short), cfg["check"], res["gaps"])
else:
    greedy(feed(pp_ids[:16]), 2)
    reset()
    logits = feed(short)
    t = time.perf_counter(); res["tokens"] = greedy(logits, cfg["tg"])[:16]; res["tg"] = cfg["tg"] / (time.perf_counter() - t)
    reset()
    t = time.perf_counter(); feed(pp_ids); res["pp"] = cfg["pp"] / (time.perf_counter() - t)
    reset()
    logits = feed(long_ids)
    t = time.perf_counter(); greedy(logits, cfg["long_gen"]); res["tg_long"] = cfg["long_gen"] / (time.perf_counter() - t)
res["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(res))
"""

QUANTIZE = r"""
import ctypes, sys
import llama_cpp as L
inp, out, ftype, threads, output_type, embd_type, pure = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
L.llama_backend_init()
p = L.llama_model_quantize_default_params()
p.ftype, p.nthread, p.pure = ftype, threads, bool(pure)
if output_type >= 0:
    p.output_tensor_type = output_type
if embd_type >= 0:
    p.token_embedding_type = embd_type
print('{"rc": %d}' % L.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p)))
"""


def mib(n: float) -> float:
    return n / 2**20


def snapshot_pyllm(workdir: str) -> str:
    """Copies the pyllm package (its compiled engine included) to workdir/pyllm-snapshot and returns
    that folder, for PYTHONPATH: every pyllm run of one benchmark then uses the same build, even if
    the package is rebuilt meanwhile (a .so rewritten under a running process can also kill it)."""
    spec = importlib.util.find_spec("pyllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pyllm is not importable: run with PYTHONPATH=<repo root> (or --no-snapshot)")
    src = list(spec.submodule_search_locations)[0]
    root = os.path.join(workdir, "pyllm-snapshot")
    for _ in range(5):  # the copy can catch a .so being written: check that it imports
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(src, os.path.join(root, "pyllm"), ignore=shutil.ignore_patterns("__pycache__"))
        r = subprocess.run([sys.executable, "-c", "import pyllm._engine"], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": root})
        if r.returncode == 0:
            return root
        time.sleep(10)
    raise SystemExit(f"the snapshot of {src} does not import:\n{r.stderr[-2000:]}")


def llama_cpp_version() -> str | None:
    out = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def find_convert_script(a) -> str | None:
    if a.convert_script:
        return a.convert_script
    roots = [a.llama_cpp_src] if a.llama_cpp_src else [os.environ.get("LLAMA_CPP_SRC"), "/tmp/lcpp/src"]
    for r in filter(None, roots):
        for pat in ("convert_hf_to_gguf.py", "vendor/llama.cpp/convert_hf_to_gguf.py",
                    "*/vendor/llama.cpp/convert_hf_to_gguf.py", "*/convert_hf_to_gguf.py"):
            hits = sorted(glob.glob(os.path.join(r, pat)))
            if hits:
                return hits[-1]
    return None


def fresh(path: str, *deps: str) -> bool:
    """path exists and is newer than every existing dep."""
    if not os.path.isfile(path):
        return False
    t = os.path.getmtime(path)
    return all(not os.path.exists(d) or os.path.getmtime(d) <= t for d in deps)


def make(out: str, label: str, cmd, env: dict | None = None, rebuild: bool = False, deps=(), key: str = "") -> None:
    """Makes out with cmd (a callable taking the temporary output path that returns a command line to
    run, or makes the file itself) unless out is cached, fresh and was made with the same key."""
    key_file = out + ".key"
    old_key = open(key_file).read() if os.path.isfile(key_file) else ""
    if not rebuild and fresh(out, *deps) and old_key == key:
        print(f"  {label}: cached {out} ({mib(os.path.getsize(out)):.1f} MiB)", flush=True)
        return
    tmp = out[:-len(".gguf")] + ".part.gguf"
    if os.path.exists(tmp):
        os.remove(tmp)
    t = time.perf_counter()
    args = cmd(tmp)
    if isinstance(args, list):
        r = subprocess.run(args, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
        if r.returncode or not os.path.isfile(tmp):
            raise SystemExit(f"{label} failed (exit {r.returncode}): {' '.join(args)}\n{(r.stdout + r.stderr)[-3000:]}")
    os.replace(tmp, out)
    with open(key_file, "w") as f:
        f.write(key)
    print(f"  {label}: made {out} ({mib(os.path.getsize(out)):.1f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)


def tensor_types(path: str, gguf_py: str | None) -> dict:
    """{tensor name: type name} of a GGUF file (via the gguf package; vendored gguf-py preferred),
    or {"?": error} where it cannot be read."""
    try:
        if gguf_py and gguf_py not in sys.path:
            sys.path.insert(0, gguf_py)
        from gguf import GGUFReader

        return {t.name: t.tensor_type.name.lower() for t in GGUFReader(path).tensors}
    except Exception as e:  # informational only
        return {"?": f"{type(e).__name__}: {e}"}


def census(types: dict) -> str:
    """'q4_0 x155, f32 x45'"""
    counts: dict = {}
    for v in types.values():
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def llama_overrides(t: str, cfg: dict) -> tuple:
    """(output type id, token-embedding type id) of pyllm's policy for type t (pyllm.quantization:
    e.g. q4_0 keeps the LM head in q8_0), or -1 each where pyllm cannot be imported."""
    try:
        from pyllm.quantization import tensor_type
    except ImportError:
        return -1, -1
    shape, tied = (cfg["vocab_size"], cfg["hidden_size"]), bool(cfg.get("tie_word_embeddings", False))
    return tensor_type("output", t, shape, tied), tensor_type("tok_embd", t, shape, tied)


def ratio(x, y) -> str:
    return f"{x / y:9.2f}x" if y else "        -"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="Hugging Face checkpoint folder (default: pyllm's shipped model)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--types", default="q4_0,q8_0")
    p.add_argument("--pyllm-source", choices=["gguf", "hf"], default="gguf",
                   help="gguf: pyllm runs the file tools/quantize.py made; hf: pyllm.load(HF_DIR, quant=TYPE)")
    p.add_argument("--workdir", help="where the GGUF files are made and cached")
    p.add_argument("--llama-cpp-src", help="extracted llama-cpp-python sdist (or llama.cpp checkout) with convert_hf_to_gguf.py")
    p.add_argument("--convert-script", help="path of llama.cpp's convert_hf_to_gguf.py")
    p.add_argument("--kv-type", choices=["f16", "f32"], default="f16", help="llama.cpp's KV cache type")
    p.add_argument("--pyllm-kv", choices=["f32", "f16"], default="f32", help="pyllm's KV cache type")
    p.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto", help="llama.cpp's flash attention")
    p.add_argument("--prompt", type=int, default=None, help="prefill prompt length (512)")
    p.add_argument("--gen", type=int, default=None, help="decode steps after an 8-token prompt (128)")
    p.add_argument("--long-prompt", type=int, default=None, help="long prompt length (1024)")
    p.add_argument("--long-gen", type=int, default=None, help="decode steps after the long prompt (32)")
    p.add_argument("--rebuild", action="store_true", help="remake the GGUF files even if cached")
    p.add_argument("--no-snapshot", action="store_true",
                   help="run pyllm from where it is installed instead of a private copy made at the start")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep, short prompts (default model: the shipped one)")
    a = p.parse_args()
    q = a.quick
    a.reps = a.reps or (1 if q else 3)
    a.prompt = a.prompt or (64 if q else 512)
    a.gen = a.gen or (16 if q else 128)
    a.long_prompt = a.long_prompt or (128 if q else 1024)
    a.long_gen = a.long_gen or (8 if q else 32)
    types = [t.strip().lower() for t in a.types.split(",") if t.strip()]
    for t in types:
        if t not in LLAMA_FTYPES:
            raise SystemExit(f"unknown type {t!r}: choose from {', '.join(LLAMA_FTYPES)}")

    if a.checkpoint is None:
        import pyllm

        a.checkpoint = pyllm.default_model_path()
    hf = os.path.abspath(a.checkpoint)
    with open(os.path.join(hf, "config.json")) as f:
        cfg = json.load(f)
    max_pos = cfg.get("max_position_embeddings", 2048)
    need = max(a.long_prompt + a.long_gen, a.prompt, 8 + a.gen, 18)
    n_ctx = min(-(-need // 256) * 256, max_pos)
    if need > n_ctx:
        raise SystemExit(f"the runs need {need} tokens of context but the model has {max_pos}: "
                         f"lower --long-prompt/--long-gen/--prompt/--gen")
    workdir = a.workdir or os.path.join(tempfile.gettempdir(), "pyllm-bench-llamacpp", os.path.basename(hf.rstrip("/")))
    os.makedirs(workdir, exist_ok=True)
    weights = sorted(glob.glob(os.path.join(hf, "*.safetensors"))) + [os.path.join(hf, "config.json")]
    start_machine = machine()
    pyenv, wcwd, build_note = None, None, "the pyllm package this script imports (--no-snapshot)"
    if not a.no_snapshot:
        snap = snapshot_pyllm(workdir)
        pyenv = {"PYTHONPATH": os.pathsep.join(filter(None, [snap, os.environ.get("PYTHONPATH")]))}
        wcwd = workdir
        so = glob.glob(os.path.join(snap, "pyllm", "_engine*.so"))
        build_note = f"a snapshot in {snap}" + (
            f" (engine built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(os.path.getmtime(so[0])))})" if so else "")

    # ------------------------------------------------------------------ model files
    print(f"model files in {workdir}:", flush=True)
    source = a.pyllm_source
    if source == "gguf" and not os.path.isfile(QUANTIZE_TOOL):
        print(f"  note: {QUANTIZE_TOOL} does not exist yet: pyllm quantizes while loading (--pyllm-source hf)")
        source = "hf"
    pyllm_file = {}
    if source == "gguf":
        for t in (t for t in types if t not in LLAMA_MIXES):
            pyllm_file[t] = os.path.join(workdir, f"pyllm-{t}.gguf")
            make(pyllm_file[t], f"pyllm {t}", lambda tmp, t=t: [sys.executable, QUANTIZE_TOOL, hf, tmp, "--type", t],
                 env=pyenv, rebuild=a.rebuild, deps=weights + PYLLM_EXPORTER)

    lcpp_version = llama_cpp_version()
    lcpp_file, gguf_py = {}, None
    if lcpp_version is None:
        print("  note: llama-cpp-python is not importable (python -c 'import llama_cpp'): pyllm only")
    else:
        script = find_convert_script(a)
        if script is None:
            raise SystemExit("llama.cpp's convert_hf_to_gguf.py not found: pass --convert-script, or --llama-cpp-src "
                             "DIR where DIR holds an extracted sdist (tar xzf llama_cpp_python-X.tar.gz -C DIR)")
        gguf_py = os.path.join(os.path.dirname(script), "gguf-py")
        gguf_py = gguf_py if os.path.isdir(gguf_py) else None
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "")
        outtype = "bf16" if "bfloat16" in dtype else "f16"
        base = os.path.join(workdir, f"llamacpp-{outtype}.gguf")
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [gguf_py, os.environ.get("PYTHONPATH")]))}
        make(base, f"llama.cpp {outtype} (convert_hf_to_gguf.py)",
             lambda tmp: [sys.executable, script, hf, "--outfile", tmp, "--outtype", outtype],
             env=env, rebuild=a.rebuild, deps=weights)

        def quantize(tmp, t):
            mix = t in LLAMA_MIXES
            r = run_worker(QUANTIZE, [base, tmp, LLAMA_FTYPES[t], a.threads,
                                      *((-1, -1) if mix else llama_overrides(t, cfg)), 0 if mix else 1],
                           f"llama_model_quantize {t}")
            if r["rc"]:
                raise SystemExit(f"llama_model_quantize {t} returned {r['rc']}")

        for t in types:
            lcpp_file[t] = os.path.join(workdir, f"llamacpp-{t}.gguf")
            mix = t in LLAMA_MIXES
            make(lcpp_file[t], f"llama.cpp {t} (llama_model_quantize, {'default mix' if mix else 'pure'})",
                 lambda tmp, t=t: quantize(tmp, t), rebuild=a.rebuild, deps=[base],
                 key="default mix" if mix else "output,tok_embd types %d,%d" % llama_overrides(t, cfg))
    for t in types:
        if t in LLAMA_MIXES:
            if t not in lcpp_file:
                raise SystemExit(f"{t}: pyllm does not write this type; its file comes from llama.cpp, which is not importable")
            pyllm_file[t] = lcpp_file[t]  # both engines run llama.cpp's file

    engines = [e for e in ENGINES if e == "pyllm" or lcpp_file]
    run_cfg = dict(mode="bench", n_ctx=n_ctx, seed=0, tg_prompt=8, tg=a.gen, pp=a.prompt, long_prompt=a.long_prompt,
                   long_gen=a.long_gen, check=16, kv=a.kv_type, fa=a.flash_attn, pyllm_kv=a.pyllm_kv)

    def run(engine, t, mode="bench", path=None):
        if path is None:
            path = (pyllm_file.get(t) or hf) if engine == "pyllm" else lcpp_file[t]
        quant = t if engine == "pyllm" and os.path.isdir(path) else "-"
        return run_worker(WORKER, [engine, path, quant, a.threads, json.dumps({**run_cfg, "mode": mode})],
                          f"{engine} {t} ({path})", env=pyenv, cwd=wcwd, retries=2)

    # ------------------------------------------------------------------ cross-check
    checks = {}
    if lcpp_file:
        for t in types:
            path, whose = ((pyllm_file[t], "pyllm's") if t in pyllm_file and t not in LLAMA_MIXES
                           else (lcpp_file[t], "llama.cpp's"))
            got = {}
            for e in ENGINES:
                try:
                    got[e] = run(e, t, "check", path)
                except SystemExit as ex:
                    got[e] = str(ex).strip().splitlines()[-1][:200]
            if any(isinstance(v, str) for v in got.values()):
                verdict = "; ".join(f"{e} failed: {v}" for e, v in got.items() if isinstance(v, str))
            else:
                (x, gx), (y, gy) = ((got[e]["tokens"], got[e]["gaps"]) for e in ENGINES)
                i = next((i for i in range(len(x)) if x[i] != y[i]), None)
                verdict = "match" if i is None else (
                    f"differ at {i} (pyllm {x[i]}, llama.cpp {y[i]}; gap between the top two logits there: "
                    f"pyllm {gx[i]:.4f}, llama.cpp {gy[i]:.4f}; pyllm's median gap over the {len(gx)} steps "
                    f"{statistics.median(gx):.4f})")
            checks[t] = (f"cross-check on {whose} {t} GGUF, greedy {run_cfg['check']} tokens after an "
                         f"{run_cfg['tg_prompt']}-token prompt, pyllm vs llama.cpp: {verdict}")
            print(f"{checks[t]}", flush=True)

    # ------------------------------------------------------------------ benchmark
    res = {(t, e): [] for t in types for e in engines}
    for rep in range(a.reps):
        for t in types:
            for e in (engines if rep % 2 == 0 else engines[::-1]):
                r = run(e, t)
                res[t, e].append(r)
                print(f"rep {rep} {t} {e:9s} load {r['load']:6.2f} s  pp{a.prompt} {r['pp']:8.1f} tok/s  "
                      f"tg{a.gen} {r['tg']:7.2f} tok/s  tg{a.long_gen}@{a.long_prompt} {r['tg_long']:7.2f} tok/s  "
                      f"peak RSS {mib(r['rss']):7.0f} MiB", flush=True)
    for t in types:
        vocab = {res[t, e][0]["n_vocab"] for e in engines}
        if len(vocab) > 1:
            print(f"warning: {t}: the engines report different vocabulary sizes {vocab}, so their prompts differ")
    builds = {r["build"] for t in types for r in res[t, "pyllm"]}
    if len(builds) > 1:
        print(f"warning: pyllm's engine (.so) was rebuilt during the benchmark: the runs saw {len(builds)} builds")

    # ------------------------------------------------------------------ report
    info = {e: res[types[0], e][0]["info"] for e in engines}
    print(f"\nmedians of {a.reps} runs, {a.threads} threads, n_ctx {n_ctx}: {hf}")
    print(f"machine: {start_machine}; load average at the end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"pyllm: {build_note}; ISA {info['pyllm']}, KV cache {a.pyllm_kv}, model from "
          + ("its GGUF files (tools/quantize.py)" if source == "gguf" else "the HF folder, quantized while loading"))
    if lcpp_file:
        print(f"llama.cpp: llama-cpp-python {lcpp_version}, KV cache {a.kv_type}, flash attention {a.flash_attn}; "
              f"CPU features: {info['llama.cpp']}")
    rows = (("load", "load s", 1), ("pp", f"prefill pp{a.prompt} tok/s", 1), ("tg", f"decode tg{a.gen} tok/s", 1),
            ("tg_long", f"decode tg{a.long_gen}@{a.long_prompt} tok/s", 1), ("rss", "peak RSS MiB", 2**20))
    for t in types:
        med = {e: medians(res[t, e]) for e in engines}
        files, tt = [], {}
        for e, fs in (("pyllm", pyllm_file), ("llama.cpp", lcpp_file)):
            if t in fs and not (e == "pyllm" and t in LLAMA_MIXES):
                tt[e] = tensor_types(fs[t], gguf_py)
                files.append(f"{e} {mib(os.path.getsize(fs[t])):.1f} MiB ({census(tt[e])})")
        print(f"\n{t}" + (": files " + "; ".join(files) if files else ""))
        if len(tt) == 2:
            x, y = tt["pyllm"], tt["llama.cpp"]
            diff = [f"{n} {x.get(n, '-')}/{y.get(n, '-')}" for n in sorted(set(x) | set(y)) if x.get(n) != y.get(n)]
            print("tensor types pyllm/llama.cpp: " + ("identical" if not diff else
                  f"{len(diff)} differ: " + ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")))
        print(f"{'metric':26s}" + "".join(f"{e:>12s}" for e in engines)
              + ("     ratio   paired (min-max)" if len(engines) == 2 else ""))
        for k, label, scale in rows:
            vals = [med[e][k] / scale for e in engines]
            line = f"{label:26s}" + "".join(f"{v:12.2f}" for v in vals) + (ratio(*vals) if len(vals) == 2 else "")
            if len(engines) == 2:
                # the two engines' runs of one rep are back to back: their ratio is less exposed to the
                # machine drifting over the whole benchmark than the ratio of the two medians
                pr = [x[k] / y[k] for x, y in zip(res[t, engines[0]], res[t, engines[1]]) if y[k]]
                if pr:
                    line += f"   {statistics.median(pr):.2f}x ({min(pr):.2f}-{max(pr):.2f})"
            print(line)
        if t in checks:
            print(checks[t])


if __name__ == "__main__":
    main()
