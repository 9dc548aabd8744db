"""test_fuzz_readers.py: property-based fuzzing (hypothesis) of everything that reads untrusted input:
the GGUF reader and loader (pyllm/gguf_file.py, gguf_loader.py and the engine's size checks), the
safetensors reader and folder loader, tokenizer folders (tokenizer.json, tokenizer.model,
tokenizer_config.json), tokenizers built from GGUF metadata, and the streaming decoder.

Inputs are valid files made by pyllm's own writers from a tiny random-weight Llama (the shipped
model's 1024-token SentencePiece vocabulary), then mutated: bit flips, bytes and integers written
over the header's fields (huge counts, lengths and offsets), truncation, insertions, and values of
the wrong type in metadata and JSON. Every input must either work (and the model it gives must run)
or raise the documented exception (ModelLoadError for files, ValueError for GGUF tokenizer
metadata), within a time limit (no hang).

Budget: a small, derandomized run by default (reproducible in CI); PYLLM_FUZZ_EXAMPLES=N runs N
random examples per test for a longer search by hand, e.g.
    PYLLM_FUZZ_EXAMPLES=5000 nice pytest tests/test_fuzz_readers.py -q
Each test prints how many inputs it tried and how they ended (pytest -s shows it)."""
from __future__ import annotations

import collections
import contextlib
import faulthandler
import json
import os
import shutil
import signal
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyllm
from pyllm.errors import ModelLoadError
from pyllm.gguf_file import GGUFFile
from pyllm.safetensors_file import SafetensorsFile
from pyllm.tokenizer import Tokenizer

SHIPPED = os.path.join(os.path.dirname(pyllm.__file__), "models", "shakespeare-4m")
LONG_RUN = int(os.environ.get("PYLLM_FUZZ_EXAMPLES", "0") or 0)
# A single example takes well under a second; this limit only has to tell a hang (or a blow-up
# that grows with a corrupt count) from a slow step on a loaded, shared 2-core machine.
TIME_LIMIT_S = 30.0

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 1023, 1024, 65535, 65536, 2**31 - 1, 2**31,
                    2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def fuzz_settings(ci_examples: int):
    """ci_examples derandomized examples (same inputs every run), or PYLLM_FUZZ_EXAMPLES random ones."""
    return settings(
        max_examples=LONG_RUN or ci_examples,
        derandomize=not LONG_RUN,
        deadline=None,  # hangs are caught by time_limit; hypothesis's deadline would flake on a busy machine
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(what: str, seconds: float = TIME_LIMIT_S):
    """Fail (Hang) if the block runs longer than seconds. The flag catches a Hang that the code under
    test swallowed or wrapped; faulthandler ends the process with a traceback if the block is stuck
    in C code, where the alarm cannot interrupt it."""
    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise Hang(f"{what}: no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()
        if fired:
            raise Hang(f"{what}: no result after {seconds} s")


class Outcomes:
    """Counts how fuzzed inputs ended (printed at the end of each test) so a run reports what it tried."""

    def __init__(self, name: str):
        self.name, self.counts = name, collections.Counter()

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def report(self) -> None:
        total = sum(self.counts.values())
        print(f"\n[fuzz] {self.name}: {total} inputs: " + ", ".join(f"{k} {v}" for k, v in self.counts.most_common()))


@contextlib.contextmanager
def expect_only(outcomes: Outcomes, allowed: tuple, what: str):
    """Run a block that may raise only the exceptions in allowed (counted by type)."""
    try:
        with time_limit(what):
            yield
    except allowed as e:
        outcomes.add(type(e).__name__)
        assert str(e), f"{what}: {type(e).__name__} without a message"
    else:
        outcomes.add("ok")


# ---------------------------------------------------------------- a tiny model and its files

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    "vocab_size": 1024, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "hidden_act": "silu",
}


def write_tiny_checkpoint(folder: str) -> str:
    """A random-weight one-layer Llama with the shipped model's tokenizer files (float32 safetensors)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    c = TINY_CONFIG
    h, f, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    p = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": w(v, h), "lm_head.weight": w(v, h), "model.norm.weight": 1 + w(h),
        p + "input_layernorm.weight": 1 + w(h), p + "post_attention_layernorm.weight": 1 + w(h),
        p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
        p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
        p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h), p + "mlp.down_proj.weight": w(h, f),
    }
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(c, fh)
    for name in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(SHIPPED, name), folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, its GGUF export in q8_0) both known to load and run."""
    from pyllm.gguf_export import export_gguf

    base = tmp_path_factory.mktemp("tiny")
    folder = write_tiny_checkpoint(str(base / "hf"))
    gguf_path = str(base / "tiny-q8_0.gguf")
    export_gguf(folder, gguf_path, "q8_0")
    for path in (folder, gguf_path):
        m = pyllm.load(path, n_ctx=16, n_threads=1)
        assert np.isfinite(m.logits([1, 5, 9])).all()
    return folder, gguf_path


def run_loaded(path: str) -> None:
    """Load a (possibly corrupt) model; when it loads, it must also run and tokenize. The default n_ctx
    (the file's context length, at most 4096), as an n_ctx argument larger than a corrupt file's context
    length is an argument error (ValueError), not a load error."""
    m = pyllm.load(path, n_threads=1)
    ids = m.tokenize("To be, or not")
    ids = [i for i in ids if 0 <= i < m.config.vocab_size][:min(6, m.n_ctx)] or [0]
    m.logits(ids)
    m.tokenizer.decode(ids)


# ---------------------------------------------------------------- byte-level mutations


def gguf_field_slots(path: str) -> list[tuple[int, int]]:
    """(offset, width) of every integer the GGUF header stores (counts, lengths, value types, tensor
    dimensions, types and offsets): where a corrupt value does the most damage. Found by walking the
    file with gguf-py's reader, independent of pyllm's."""
    import gguf

    r = gguf.GGUFReader(path)
    slots = [(4, 4), (8, 8), (16, 8)]  # version, tensor count, metadata count
    fields = list(r.fields.values()) + [t.field for t in r.tensors]
    for f in fields:
        if f.name.startswith("GGUF."):
            continue
        pos = f.offset
        for part in f.parts:
            n = part.nbytes
            if part.dtype.kind in "iu" and n in (4, 8) and len(part) == 1:
                slots.append((pos, n))
            elif part.dtype.kind in "iu" and n > 8 and part.dtype.itemsize in (4, 8) and len(slots) < 20000:
                # an array of ints (token types, ids): its first few elements
                for j in range(min(len(part), 4)):
                    slots.append((pos + j * part.dtype.itemsize, part.dtype.itemsize))
            pos += n
    return slots


def byte_mutation(size: int, slots: list[tuple[int, int]] | None, header_end: int):
    """A strategy for one mutation of a file of size bytes, as a function bytes -> bytes."""
    pos = st.one_of(st.integers(0, max(header_end - 1, 0)), st.integers(0, size - 1))
    ops = [
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
    ]
    if slots:
        value = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**64 - 1))
        ops.append(st.tuples(st.just("slot"), st.sampled_from(slots), value))
        ops.append(st.tuples(st.just("slot_delta"), st.sampled_from(slots), st.integers(-3, 3)))

    def apply(op, data: bytearray) -> bytearray:
        kind = op[0]
        if kind == "flip":
            data[op[1]] ^= 1 << op[2]
        elif kind == "byte":
            data[op[1]] = op[2]
        elif kind == "truncate":
            del data[op[1]:]
        elif kind == "insert":
            data[op[1]:op[1]] = op[2]
        elif kind == "delete":
            del data[op[1]:op[1] + op[2]]
        else:
            (off, width), v = op[1], op[2]
            fmt = "<I" if width == 4 else "<Q"
            if off + width > len(data):
                return data
            if kind == "slot_delta":
                (old,) = struct.unpack_from(fmt, data, off)
                v = old + v
            struct.pack_into(fmt, data, off, v % (1 << (8 * width)))
        return data

    return st.one_of(ops).map(lambda op: (op, apply))


def mutate(base: bytes, draws) -> bytes:
    data = bytearray(base)
    for op, apply in draws:
        if not data:
            break
        if op[0] in ("flip", "byte", "insert", "delete") and op[1] >= len(data):
            continue
        data = apply(op, data)
    return bytes(data)


# ---------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def gguf_base(tiny):
    path = tiny[1]
    with open(path, "rb") as fh:
        data = fh.read()
    with GGUFFile(path) as gf:
        header_end = gf.data_offset
    return data, gguf_field_slots(path), header_end


def test_fuzz_gguf_bytes(gguf_base, tmp_path_factory):
    """Mutated GGUF bytes: the reader and the loader raise ModelLoadError or give a model that runs."""
    data, slots, header_end = gguf_base
    out = str(tmp_path_factory.mktemp("fuzz-gguf") / "m.gguf")
    outcomes = Outcomes("GGUF bytes")

    @fuzz_settings(60)
    @given(st.lists(byte_mutation(len(data), slots, header_end), min_size=1, max_size=4))
    def check(draws):
        with open(out, "wb") as fh:
            fh.write(mutate(data, draws))
        with expect_only(outcomes, (ModelLoadError,), "pyllm.load(mutated GGUF)"):
            GGUFFile(out).close()
            run_loaded(out)

    check()
    outcomes.report()


def json_value():
    """Any JSON value, biased to the ones that break readers: huge and negative integers, wrong types."""
    scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING_INTS),
                        st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=12))
    return st.recursive(scalars, lambda ch: st.one_of(st.lists(ch, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), ch, max_size=3)),
                        max_leaves=8)


def gguf_value():
    """(value, GGUFValueType or None for 'the writer picks') of a random type for a metadata key."""
    import gguf

    T = gguf.GGUFValueType
    ints = st.sampled_from(INTERESTING_INTS)
    return st.one_of(
        st.tuples(ints.map(lambda v: v % 2**32), st.just(T.UINT32)),
        st.tuples(st.integers(-2**31, 2**31 - 1), st.just(T.INT32)),
        st.tuples(ints.map(lambda v: v % 2**64), st.just(T.UINT64)),
        st.tuples(st.integers(0, 255), st.just(T.UINT8)),
        st.tuples(st.floats(width=32), st.just(T.FLOAT32)),
        st.tuples(st.booleans(), st.just(T.BOOL)),
        st.tuples(st.text(max_size=16), st.just(T.STRING)),
        st.tuples(st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=8), st.just(T.ARRAY)),  # the writer refuses []
        st.tuples(st.lists(st.text(max_size=8), min_size=1, max_size=8), st.just(T.ARRAY)),
    )


def rewrite_gguf(src: str, dst: str, set_kv: dict, drop: set) -> None:
    """src rewritten at dst with gguf-py's writer: metadata keys in drop left out, set_kv {key: (value,
    type)} replacing or adding values (of any type: the point is a wrong one)."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop or name in set_kv:
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for k, (v, t) in set_kv.items():
        if t == gguf.GGUFValueType.ARRAY:
            sub = gguf.GGUFValueType.STRING if v and isinstance(v[0], str) else gguf.GGUFValueType.INT32
            w.add_key_value(k, v, t, sub_type=sub)
        else:
            w.add_key_value(k, v, t)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # quantized: shape in bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_fuzz_gguf_metadata_types(tiny, tmp_path_factory):
    """Metadata keys (model shape, tokenizer, sampling defaults) dropped or given values of a wrong type
    or range: ModelLoadError, or a model that runs."""
    import gguf

    src = tiny[1]
    keys = sorted(k for k in gguf.GGUFReader(src).fields if not k.startswith("GGUF.") and k != "general.architecture")
    out = str(tmp_path_factory.mktemp("fuzz-gguf-md") / "m.gguf")
    outcomes = Outcomes("GGUF metadata values")

    @fuzz_settings(40)
    @given(st.dictionaries(st.sampled_from(keys), gguf_value(), max_size=3), st.sets(st.sampled_from(keys), max_size=2))
    def check(set_kv, drop):
        rewrite_gguf(src, out, set_kv, drop)
        with expect_only(outcomes, (ModelLoadError,), "pyllm.load(GGUF with odd metadata)"):
            run_loaded(out)

    check()
    outcomes.report()


# ---------------------------------------------------------------- GGUF tokenizer metadata


def test_fuzz_gguf_tokenizer_metadata(tiny):
    """tokenizer_from_metadata on mutated tokenizer.ggml.* values: ValueError or a working tokenizer."""
    from pyllm.gguf_tokenizer import tokenizer_from_metadata

    with GGUFFile(tiny[1]) as gf:
        base = {k: v for k, v in gf.metadata.items() if k.startswith("tokenizer.")}
    keys = sorted(base) + ["tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.eot_token_id",
                           "tokenizer.ggml.eos_token_ids", "tokenizer.chat_template.tool_use"]
    list_keys = sorted(k for k, v in base.items() if isinstance(v, list))
    outcomes = Outcomes("GGUF tokenizer metadata")
    token_text = st.one_of(st.text(max_size=6), st.sampled_from(["<s>", "</s>", "<unk>", "<0x0A>", "<0xFF>", "▁",
                                                                  "", "<0x", "▁the", "<|eot_id|>"]))
    element = st.one_of(json_value(), token_text, st.integers(-2, 7))

    @fuzz_settings(80)
    @given(st.data())
    def check(data):
        md = {k: (list(v) if isinstance(v, list) else v) for k, v in base.items()}
        for _ in range(data.draw(st.integers(1, 4))):
            key = data.draw(st.sampled_from(keys))
            kind = data.draw(st.sampled_from(["value", "element", "truncate", "drop", "model"]))
            if kind == "value":
                md[key] = data.draw(st.one_of(json_value(), token_text))
            elif kind == "drop":
                md.pop(key, None)
            elif kind == "model":
                md["tokenizer.ggml.model"] = data.draw(st.sampled_from(["llama", "gpt2", "bert", "", "t5"]))
                md["tokenizer.ggml.pre"] = data.draw(st.sampled_from(["default", "llama-bpe", "qwen2", "gpt-2", "x"]))
            else:
                key = data.draw(st.sampled_from(list_keys))
                vals = md.get(key)
                if not isinstance(vals, list) or not vals:
                    continue
                if kind == "truncate":
                    md[key] = vals[:data.draw(st.integers(0, len(vals)))]
                else:
                    vals[data.draw(st.integers(0, len(vals) - 1))] = data.draw(element)
        with expect_only(outcomes, (ValueError,), "tokenizer_from_metadata"):
            tok = tokenizer_from_metadata(md)
            ids = tok.encode("Hello <s> wor\nld </s> ünï")
            tok.decode(ids)
            tok.decode(list(range(min(tok.vocab_size, 64))), skip_special_tokens=True)

    check()
    outcomes.report()


# ---------------------------------------------------------------- safetensors


def test_fuzz_safetensors_header(tiny, tmp_path_factory):
    """The header's entries given wrong types, sizes and offsets (and a wrong header length): the
    reader and the folder loader raise ModelLoadError or load a model that runs."""
    folder = tiny[0]
    with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
        raw = fh.read()
    (hlen,) = struct.unpack_from("<Q", raw)
    header, body = json.loads(raw[8:8 + hlen]), raw[8 + hlen:]
    names = sorted(header)
    work = str(tmp_path_factory.mktemp("fuzz-st") / "m")
    shutil.copytree(folder, work)
    target = os.path.join(work, "model.safetensors")
    outcomes = Outcomes("safetensors header")
    field = st.sampled_from(["dtype", "shape", "data_offsets"])
    near = st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "BOOL", "f32", ""])

    @fuzz_settings(60)
    @given(st.data())
    def check(data):
        h = json.loads(json.dumps(header))
        for _ in range(data.draw(st.integers(1, 3))):
            name = data.draw(st.sampled_from(names))
            kind = data.draw(st.sampled_from(["field", "dtype", "dim", "offset", "drop", "rename", "meta", "entry"]))
            entry = h.get(name)
            if not isinstance(entry, dict) or name == "__metadata__":
                continue
            if kind == "field":
                entry[data.draw(field)] = data.draw(json_value())
            elif kind == "dtype":
                entry["dtype"] = data.draw(near)
            elif kind == "dim" and isinstance(entry.get("shape"), list) and entry["shape"]:
                i = data.draw(st.integers(0, len(entry["shape"]) - 1))
                entry["shape"][i] = data.draw(st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-5, 5)))
            elif kind == "offset" and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2:
                i = data.draw(st.integers(0, 1))
                entry["data_offsets"][i] = data.draw(st.one_of(st.sampled_from(INTERESTING_INTS),
                                                               st.integers(-8, len(body) + 8)))
            elif kind == "drop":
                del h[name]
            elif kind == "rename":
                h[data.draw(st.text(max_size=40))] = h.pop(name)
            elif kind == "meta":
                h["__metadata__"] = data.draw(json_value())
            else:
                h[name] = data.draw(json_value())
        text = json.dumps(h).encode()
        n = len(text) + data.draw(st.sampled_from([0, 0, 0, -1, 1, 2**63]))
        blob = struct.pack("<Q", n % 2**64) + text + body
        blob = blob[:data.draw(st.sampled_from([len(blob)] * 4 + [len(blob) - 1, 8 + len(text), 8]))]
        with open(target, "wb") as fh:
            fh.write(blob)
        with expect_only(outcomes, (ModelLoadError,), "pyllm.load(mutated safetensors)"):
            SafetensorsFile(target)
            run_loaded(work)

    check()
    outcomes.report()


def test_fuzz_safetensors_bytes(tiny, tmp_path_factory):
    """Byte-level mutations of a safetensors file (header text and data)."""
    folder = tiny[0]
    with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
        raw = fh.read()
    (hlen,) = struct.unpack_from("<Q", raw)
    work = str(tmp_path_factory.mktemp("fuzz-stb") / "m")
    shutil.copytree(folder, work)
    target = os.path.join(work, "model.safetensors")
    outcomes = Outcomes("safetensors bytes")

    @fuzz_settings(40)
    @given(st.lists(byte_mutation(len(raw), [(0, 8)], 8 + hlen), min_size=1, max_size=4))
    def check(draws):
        with open(target, "wb") as fh:
            fh.write(mutate(raw, draws))
        with expect_only(outcomes, (ModelLoadError,), "pyllm.load(mutated safetensors bytes)"):
            run_loaded(work)

    check()
    outcomes.report()


# ---------------------------------------------------------------- tokenizer folders


def json_paths(doc, prefix=(), limit=4000):
    """Paths (tuples of keys/indices) to the values inside a JSON document (breadth-first, at most limit)."""
    out, queue = [], collections.deque([(prefix, doc)])
    while queue and len(out) < limit:
        path, v = queue.popleft()
        out.append(path)
        if isinstance(v, dict):
            queue.extend((path + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            queue.extend((path + (i,), x) for i, x in enumerate(v))
    return out


def mutate_json(data, doc):
    """A copy of doc with one to three values replaced, deleted or truncated, drawn from data."""
    doc = json.loads(json.dumps(doc))
    paths = json_paths(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent, node = None, doc
        try:
            for p in path:
                parent, node = node, node[p]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed it
        kind = data.draw(st.sampled_from(["replace", "replace", "delete", "truncate"]))
        if not path:
            if kind == "replace":
                doc = data.draw(json_value())
            continue
        if kind == "replace":
            parent[path[-1]] = data.draw(json_value())
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(node, (list, str)):
            parent[path[-1]] = node[:data.draw(st.integers(0, len(node)))]
    return doc


@pytest.fixture(scope="module")
def tokenizer_json_text():
    """A tokenizer.json (tokenizers' format) equivalent to the shipped SentencePiece model."""
    return Tokenizer.from_dir(SHIPPED).backend.to_str()


CONFIG_KEYS = ["bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "add_eos_token", "legacy",
               "tokenizer_class", "clean_up_tokenization_spaces", "chat_template", "added_tokens_decoder",
               "additional_special_tokens", "add_prefix_space", "model_max_length", "extra_special_tokens"]


def test_fuzz_tokenizer_folder(tiny, tokenizer_json_text, tmp_path_factory):
    """Tokenizer folders whose tokenizer.json / tokenizer.model / tokenizer_config.json are mutated:
    Tokenizer.from_dir raises ModelLoadError or gives a tokenizer that encodes, decodes and streams."""
    with open(os.path.join(SHIPPED, "tokenizer_config.json")) as fh:
        config = json.load(fh)
    with open(os.path.join(SHIPPED, "tokenizer.model"), "rb") as fh:
        sp_model = fh.read()
    tj = json.loads(tokenizer_json_text)
    outcomes = Outcomes("tokenizer folders")
    root = tmp_path_factory.mktemp("fuzz-tok")
    counter = iter(range(10**9))

    @fuzz_settings(50)
    @given(st.data())
    def check(data):
        folder = root / f"t{next(counter)}"
        folder.mkdir()
        cfg = dict(config)
        for _ in range(data.draw(st.integers(0, 3))):
            cfg[data.draw(st.sampled_from(CONFIG_KEYS))] = data.draw(json_value())
        if data.draw(st.booleans()):
            cfg = mutate_json(data, cfg)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
        which = data.draw(st.sampled_from(["json", "json-bytes", "model"]))
        if which == "json":
            (folder / "tokenizer.json").write_text(json.dumps(mutate_json(data, tj)))
        elif which == "json-bytes":
            raw = tokenizer_json_text.encode()
            draws = data.draw(st.lists(byte_mutation(len(raw), None, len(raw)), min_size=1, max_size=3))
            (folder / "tokenizer.json").write_bytes(mutate(raw, draws))
        else:
            draws = data.draw(st.lists(byte_mutation(len(sp_model), None, len(sp_model)), min_size=1, max_size=3))
            (folder / "tokenizer.model").write_bytes(mutate(sp_model, draws))
        with expect_only(outcomes, (ModelLoadError,), "Tokenizer.from_dir(mutated folder)"):
            tok = Tokenizer.from_dir(folder)
            ids = tok.encode("Hello <s> wor\nld </s> ünï 😀")
            text = tok.decode(ids)
            dec = tok.stream_decoder()
            assert "".join(dec.push(i) for i in ids) + dec.flush() == text
        shutil.rmtree(folder)

    check()
    outcomes.report()


# ---------------------------------------------------------------- streaming decoder


@pytest.fixture(scope="module")
def tokenizers(checkpoint, tiny):
    """The tokenizers the decoder is fuzzed with: SentencePiece with byte fallback (shipped, Llama 2),
    byte-level BPE (Llama 3) and the one rebuilt from the tiny GGUF's metadata."""
    from pyllm.gguf_tokenizer import tokenizer_from_metadata

    with GGUFFile(tiny[1]) as gf:
        gguf_tok = tokenizer_from_metadata(gf.metadata)
    return {
        "shipped": Tokenizer.from_dir(SHIPPED),
        "llama2": Tokenizer.from_dir(checkpoint("llama2")),
        "llama3": Tokenizer.from_dir(checkpoint("llama3")),
        "gguf": gguf_tok,
    }


def id_sequences(tok: Tokenizer):
    """Random id sequences biased to what is hard to stream: byte-fallback tokens (often invalid or
    incomplete UTF-8), special tokens among them, tokens of multi-byte characters, spaces."""
    n = tok.vocab_size
    specials = sorted(tok.special_ids)
    bytes_ = sorted(tok._byte_ids)
    text_ids = sorted(set(tok.encode("Hello world  ünï 你好 😀 \n\n x", add_special_tokens=False)))
    pools = [st.integers(0, n - 1), st.sampled_from(text_ids)]
    if specials:
        pools.append(st.sampled_from(specials))
    if bytes_:
        pools += [st.sampled_from(bytes_), st.sampled_from(bytes_)]
    return st.lists(st.one_of(pools), max_size=24)


@pytest.mark.parametrize("name", ["shipped", "llama2", "llama3", "gguf"])
def test_fuzz_stream_decoder(tokenizers, name):
    """Streamed pieces (plus flush) concatenate to decode(all ids), with and without skipping special
    tokens; after a prompt (prime), they are the text decode(prompt + ids) adds to the prompt's."""
    tok = tokenizers[name]
    outcomes = Outcomes(f"stream decoder ({name})")

    @fuzz_settings(100)
    @given(id_sequences(tok), st.booleans(), st.integers(0, 8))
    def check(ids, skip, n_prompt):
        with time_limit("StreamDecoder"):
            dec = tok.stream_decoder(skip_special_tokens=skip)
            pieces = [dec.push(i) for i in ids] + [dec.flush()]
            assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip), pieces
            prompt, rest = ids[:n_prompt], ids[n_prompt:]
            head = tok.decode(prompt, skip_special_tokens=skip).rstrip("\ufffd")
            full = tok.decode(ids, skip_special_tokens=skip)
            if not full.startswith(head):  # the prompt's text is changed by what follows (checked above)
                outcomes.add("ok, prompt text changed by later ids")
                return
            dec = tok.stream_decoder(skip_special_tokens=skip, prompt_ids=prompt)
            assert "".join(dec.push(i) for i in rest) + dec.flush() == full[len(head):]
        outcomes.add("ok")

    check()
    outcomes.report()
