# Tests for pyllm.gguf_tokenizer: HF tokenizer folder -> GGUF tokenizer.* metadata -> pyllm Tokenizer round trips
# (Llama 2, Mistral, Llama 3 and the shipped model), agreement with llama.cpp's convert_hf_to_gguf.py output
# (recorded in tests/fixtures/gguf_tokenizer), end-of-generation ids, and rejection of bad metadata.
# A GGUF file tokenizes as llama.cpp does, a folder as transformers does: for byte-level BPE the two agree; for
# SentencePiece vocabularies ("llama") the GGUF side is compared with llama.cpp's rules computed by the
# sentencepiece library (SpmReference), the folder side with transformers, and decoding with transformers.
import copy
import hashlib
import io
import json
import pathlib
import random

import numpy as np
import pytest

import pyllm
from pyllm.gguf_tokenizer import GGUF_VALUE_TYPES, tokenizer_from_metadata, tokenizer_metadata
from pyllm.tokenizer import Tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
CONVERTER = FIXTURES / "gguf_tokenizer"
SHIPPED = pathlib.Path(pyllm.__file__).parent / "models" / "shakespeare-4m"
DIRS = {"llama2": TOKENIZERS / "llama2", "mistral": TOKENIZERS / "mistral", "llama3": TOKENIZERS / "llama3",
        "shipped": SHIPPED}

TEXTS = [
    "",
    "Hello, world! How are you today?",
    "don't can't I'm you're we've it's 'quoted' \"double\" end .",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nclass A:\n\tpass\n",
    "你好，世界！今天天气很好。こんにちは、世界。안녕하세요 세계 龘靐齉 𠀀𪚥",
    "I ❤️ 🍕! 👨‍👩‍👧‍👦 family, flags 🇺🇸🇯🇵🏳️‍🌈, skin 👍🏽 and 😀😁😂",
    "e\u0301 vs \u00e9, n\u0303, a\u0300\u0301\u0302, Z\u0351\u0352\u0353 Tiếng Việt नमस्ते مرحبا",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero width \ufeffBOM \x00\x01 controls",
    "a  b   c    d     e",
    "    leading four",
    "trailing   ",
    " ",
    "\n\n\n",
    "\t\t\t",
    "line1\nline2\r\n\tline3\t\ttab  \n \n\n  c \t\n",
    "1234567890 3.14159 1,000,000 123456789012345678901234567890 0x1F 2024-06-01",
    "<s>",
    "</s>",
    "<unk>",
    "<s>Hello</s>",
    "Hello <s> world </s> end",
    "Hello<s>world</s>end",
    "< s > <s <s/>",
    "<s>[INST] hi [/INST] ok</s>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "text<|eot_id|>more <|reserved_special_token_5|> x",
    "ROMEO:\nAy, my good lord.\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?",
]


def _typed_ok(tag, value):
    """Whether a plain Python value fits a GGUF_VALUE_TYPES tag (what the GGUF writer will store)."""
    scalar = {
        "str": lambda v: isinstance(v, str),
        "u32": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "bool": lambda v: isinstance(v, bool),
        "i32": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
        "f32": lambda v: isinstance(v, float),
    }
    if tag.endswith("[]"):
        return isinstance(value, list) and all(scalar[tag[:-2]](v) for v in value)
    return scalar[tag](value)


def _as_gguf(md, numpy_arrays=False):
    """What a GGUF reader gives back: scores rounded to float32, optionally numpy arrays for numeric arrays."""
    out = copy.copy(md)
    for key, tag in GGUF_VALUE_TYPES.items():
        if key not in out:
            continue
        if tag == "f32[]":
            arr = np.asarray(out[key], dtype=np.float32)
            out[key] = arr if numpy_arrays else arr.tolist()
        elif tag == "i32[]" and numpy_arrays:
            out[key] = np.asarray(out[key], dtype=np.int32)
    return out


@pytest.fixture(scope="module")
def refs():
    return {name: Tokenizer.from_dir(path) for name, path in DIRS.items()}


@pytest.fixture(scope="module")
def metas():
    return {name: tokenizer_metadata(path) for name, path in DIRS.items()}


@pytest.fixture(scope="module")
def loaded(metas):
    return {name: tokenizer_from_metadata(_as_gguf(md, numpy_arrays=(name == "mistral")), name=name)
            for name, md in metas.items()}


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num, value):
    """One protobuf field: bytes/str length-delimited, float fixed32, bool/int varint."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(num << 3 | 5) + np.float32(value).tobytes()
    return _varint(num << 3) + _varint(int(value))


class SpmReference:
    """llama.cpp's tokenization of a GGUF "llama" (SentencePiece) vocabulary, computed independently of pyllm: the
    text is cut at control, user-defined and unknown token texts (longest first, each occurrence left to right, as
    llama.cpp's tokenizer_st_partition), and each piece between them is encoded by the sentencepiece library with
    a BPE model holding the file's pieces, scores and types: the "▁" dummy prefix llama.cpp adds at the start and
    after a special token (add_space_prefix), spaces as "▁", pairs merged by score (the leftmost on a tie), bytes
    as <0xXX> pieces."""

    def __init__(self, md):
        import sentencepiece as spm

        tokens, types = md["tokenizer.ggml.tokens"], [int(t) for t in md["tokenizer.ggml.token_type"]]
        scores = [float(x) for x in md["tokenizer.ggml.scores"]]
        ids = [md.get(f"tokenizer.ggml.{k}_token_id", -1) for k in ("unknown", "bos", "eos")]
        unk = ids[0] if ids[0] >= 0 else 0
        # sentencepiece allows one unknown piece: the others (Phi-3's [PAD...] entries, which no two pieces of the
        # vocabulary form) are given to it as control pieces
        sp_types = [3 if ty == 2 and i != unk else ty for i, ty in enumerate(types)]
        pieces = b"".join(_field(1, _field(1, t) + _field(2, sc) + _field(3, ty))
                          for t, sc, ty in zip(tokens, scores, sp_types))
        trainer = (_field(3, 2) + _field(4, len(tokens)) + _field(35, 6 in types)
                   + b"".join(_field(40 + k, v) for k, v in enumerate(ids) if v >= 0))
        self.add_prefix = md.get("tokenizer.ggml.add_space_prefix", True)
        normalizer = (_field(1, "identity") + _field(3, self.add_prefix) + _field(4, False) + _field(5, True))
        self.sp = spm.SentencePieceProcessor(model_proto=pieces + _field(2, trainer) + _field(3, normalizer))
        self.specials = sorted((i for i, ty in enumerate(types) if ty in (2, 3, 4)), key=lambda i: -len(tokens[i]))
        self.tokens = tokens
        self.bos, self.eos = md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")
        self.add_bos = md.get("tokenizer.ggml.add_bos_token", True)
        self.add_eos = md.get("tokenizer.ggml.add_eos_token", False)

    def encode(self, text, add_special_tokens=True):
        parts = [text] if text else []  # str: text still to tokenize, int: a special token
        for i in self.specials:
            t, cut = self.tokens[i], []
            for part in parts:
                if isinstance(part, int):
                    cut.append(part)
                    continue
                pieces = part.split(t)
                for k, piece in enumerate(pieces):
                    if k:
                        cut.append(i)
                    if piece:
                        cut.append(piece)
            parts = cut
        out = [self.bos] if add_special_tokens and self.add_bos else []
        for part in parts:  # every text part starts the text or follows a special token: it gets the prefix
            out += [part] if isinstance(part, int) else self.sp.encode(part)
        return out + ([self.eos] if add_special_tokens and self.add_eos else [])


def llama_cpp_of(md):
    """The llama.cpp reference for a SentencePiece GGUF vocabulary; None for byte-level BPE (compared with the
    folder's tokenizer: llama.cpp and transformers agree there, see test_llama_cpp_vocab.py)."""
    return SpmReference(md) if md["tokenizer.ggml.model"] == "llama" else None


def assert_same_tokenizer(tok, ref, texts=TEXTS, seed=0, llama_cpp=None):
    """tok (from GGUF metadata) encodes as llama_cpp (a SpmReference) or, for byte-level BPE, as the folder's
    tokenizer ref; it decodes, streams and describes itself as ref."""
    for text in texts:
        for special in (True, False):
            ids = ref.encode(text, add_special_tokens=special)
            want = ids if llama_cpp is None else llama_cpp.encode(text, add_special_tokens=special)
            assert tok.encode(text, add_special_tokens=special) == want, (text, special)
            for skip in (False, True):
                assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    rng = random.Random(seed)
    for _ in range(10):
        ids = [rng.randrange(ref.vocab_size) for _ in range(rng.randrange(1, 30))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    ids = ref.encode(" ".join(texts))
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == ref.decode(ids)
    assert tok.vocab_size == ref.vocab_size
    assert tok.special_ids == ref.special_ids
    assert (tok.bos_id, tok.bos_token, tok.add_bos, tok.add_eos) == (ref.bos_id, ref.bos_token, ref.add_bos,
                                                                     ref.add_eos)
    assert tok.eos_id == ref.eos_id and set(ref.eos_ids) <= set(tok.eos_ids)
    assert tok.chat_template == ref.chat_template


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(DIRS))
def test_round_trip(refs, metas, loaded, name):
    md = metas[name]
    for key, value in md.items():
        assert key in GGUF_VALUE_TYPES and _typed_ok(GGUF_VALUE_TYPES[key], value), key
    n = len(md["tokenizer.ggml.tokens"])
    assert n == len(md["tokenizer.ggml.token_type"]) == refs[name].vocab_size
    assert_same_tokenizer(loaded[name], refs[name], llama_cpp=llama_cpp_of(md))


def test_metadata_values(metas, loaded, refs):
    l2 = metas["llama2"]
    assert l2["tokenizer.ggml.model"] == "llama" and l2["tokenizer.ggml.pre"] == "default"
    assert l2["tokenizer.ggml.tokens"][:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert l2["tokenizer.ggml.token_type"][:4] == [2, 3, 3, 6] and set(l2["tokenizer.ggml.token_type"][259:]) == {1}
    assert len(l2["tokenizer.ggml.scores"]) == 32000 and l2["tokenizer.ggml.scores"][-1] == -31740.0
    assert (l2["tokenizer.ggml.bos_token_id"], l2["tokenizer.ggml.eos_token_id"],
            l2["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert l2["tokenizer.ggml.add_bos_token"] is True and l2["tokenizer.ggml.add_eos_token"] is False
    assert l2["tokenizer.ggml.add_space_prefix"] is True
    assert l2["tokenizer.chat_template"].startswith("{% if messages[0]['role'] == 'system' %}")
    assert "tokenizer.ggml.padding_token_id" not in l2 and "tokenizer.ggml.merges" not in l2
    assert "tokenizer.chat_template" not in metas["shipped"]

    l3 = metas["llama3"]
    assert l3["tokenizer.ggml.model"] == "gpt2" and l3["tokenizer.ggml.pre"] == "llama-bpe"
    assert "tokenizer.ggml.scores" not in l3 and "tokenizer.ggml.add_space_prefix" not in l3
    assert len(l3["tokenizer.ggml.merges"]) == 280147 and l3["tokenizer.ggml.merges"][0] == "Ġ Ġ"
    types = l3["tokenizer.ggml.token_type"]
    assert set(types[:128000]) == {1} and set(types[128000:]) == {3}
    assert l3["tokenizer.ggml.tokens"][128009] == "<|eot_id|>"
    assert (l3["tokenizer.ggml.bos_token_id"], l3["tokenizer.ggml.eos_token_id"]) == (128000, 128009)
    assert l3["tokenizer.ggml.add_bos_token"] is True and l3["tokenizer.ggml.add_sep_token"] is False
    # named as the converter names it: by the hash of the ids of its check text (not by our structural fallback)
    from pyllm.gguf_tokenizer import _CHKTXT, _PRE_HASHES

    ids = refs["llama3"].encode(_CHKTXT)
    assert _PRE_HASHES[hashlib.sha256(str(ids).encode()).hexdigest()] == "llama-bpe"
    assert not any(k.startswith("pyllm.") for md in metas.values() for k in md)


def test_llama3_end_of_generation(loaded):
    # as llama.cpp: the eos id first, then <|end_of_text|>, <|eom_id|> (and <|eot_id|>) found by their text
    tok = loaded["llama3"]
    assert tok.eos_id == 128009 and tok.eos_ids == [128009, 128001, 128008]
    assert loaded["llama2"].eos_ids == [2] and loaded["shipped"].eos_ids == [2]


def test_end_of_generation_as_llama_cpp():
    md = _gpt2_md()
    md["tokenizer.ggml.tokens"] += ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "<|end|>"]
    md["tokenizer.ggml.token_type"] += [3, 3, 3, 3]
    md["tokenizer.ggml.eos_token_id"] = 6  # a base model's metadata: eos <|end_of_text|>
    tok = tokenizer_from_metadata(md)
    assert tok.eos_id == 6 and tok.eos_ids == [6, 5, 7, 8, 9]
    md["tokenizer.ggml.eot_token_id"] = 3  # an explicit eot id is an end of generation too
    assert tokenizer_from_metadata(md).eos_ids == [6, 3, 5, 7, 8, 9]
    md["tokenizer.ggml.tokens"] += ["<|return|>", "<|call|>"]  # gpt-oss: <|end|> is not an end of generation
    md["tokenizer.ggml.token_type"] += [3, 3]
    assert tokenizer_from_metadata(md).eos_ids == [6, 3, 5, 7, 8, 10, 11]


# ---------------------------------------------------------------- llama.cpp's converter


def _digest(value):
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _converter_view(md):
    """Our metadata less the keys llama.cpp's converter leaves out for these folders: add_space_prefix (written
    only when tokenizer_config.json has add_prefix_space) and, for SentencePiece, unknown_token_id (read only
    from config.json)."""
    md = dict(md)
    if md["tokenizer.ggml.model"] == "llama":
        md.pop("tokenizer.ggml.add_space_prefix")
        md.pop("tokenizer.ggml.unknown_token_id")
    return md


@pytest.mark.parametrize("name", ["llama2", "mistral", "llama3"])
def test_matches_converter(metas, refs, name):
    want = json.loads((CONVERTER / "converter_digests.json").read_text())[name]
    conv = _converter_view(metas[name])
    assert {k: _digest(v) for k, v in conv.items()} == want
    # so the converter's own metadata (equal to `conv`) loads as a tokenizer identical to from_dir's
    if conv != metas[name]:  # (for llama3 they are the same: loaded and checked in test_round_trip)
        assert_same_tokenizer(tokenizer_from_metadata(_as_gguf(conv)), refs[name], TEXTS[::3], seed=1,
                              llama_cpp=llama_cpp_of(conv))


def test_shipped_model_converter_metadata(metas, refs):
    conv = json.loads((CONVERTER / "shakespeare-4m.converter.json").read_text())["metadata"]
    assert _converter_view(metas["shipped"]) == conv
    assert_same_tokenizer(tokenizer_from_metadata(conv, name="converter"), refs["shipped"],
                          llama_cpp=llama_cpp_of(conv))


# ---------------------------------------------------------------- other folders


def _write(path, name, data):
    (path / name).write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")


def test_legacy_folder_and_extra_eos(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((SHIPPED / "tokenizer.model").read_bytes())
    cfg = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    _write(tmp_path, "tokenizer_config.json", dict(cfg, legacy=True))
    _write(tmp_path, "generation_config.json", {"eos_token_id": [2, 7]})
    _write(tmp_path, "config.json", {"model_type": "llama", "vocab_size": 1026})
    ref = Tokenizer.from_dir(tmp_path)
    md = tokenizer_metadata(tmp_path)
    # legacy only changes how transformers tokenizes the folder; a GGUF file tokenizes as llama.cpp: no key for it
    assert md["pyllm.tokenizer.eos_token_ids"] == [2, 7] and not any("legacy" in k for k in md)
    assert md["tokenizer.ggml.tokens"][-2:] == ["[PAD1024]", "[PAD1025]"]
    assert md["tokenizer.ggml.token_type"][-2:] == [5, 5]
    tok = tokenizer_from_metadata(md)
    assert tok.eos_ids == [2, 7] and tok.vocab_size == 1026
    llama_cpp = SpmReference(md)
    for text in [t for t in TEXTS if "<s>" in t or "</s>" in t] + TEXTS[:6]:
        assert tok.encode(text) == llama_cpp.encode(text), text
        ids = ref.encode(text)
        assert tok.decode(ids) == ref.decode(ids)
    # llama.cpp puts the "▁" prefix after a special token too, and keeps a leading space as a second "▁"
    assert tok.encode("<s>Hello") == [1, 1] + tok.encode("Hello", add_special_tokens=False)
    assert tok.encode(" Hello", add_special_tokens=False) == llama_cpp.sp.encode(" Hello")
    assert "".join(map(tok.id_to_piece, tok.encode(" Hello", add_special_tokens=False))) == "\u2581\u2581Hello"


def test_sentencepiece_user_defined_and_control_pieces(tmp_path):
    import sentencepiece as spm

    corpus = [" ".join(random.Random(i).choice("the quick brown fox jumps over a lazy dog".split())
                       for _ in range(10)) for i in range(200)] + ["你好，世界！", "naïve café 1234 tab\tnew\nline"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=340, model_type="bpe", byte_fallback=True,
        user_defined_symbols=["<|user|>", "foo"], control_symbols=["<ctrl>"], character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    _write(tmp_path, "tokenizer_config.json", {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                               "eos_token": "</s>", "unk_token": "<unk>", "legacy": False,
                                               "add_eos_token": True, "chat_template": "{{ x }}"})
    ref = Tokenizer.from_dir(tmp_path)
    md = tokenizer_metadata(tmp_path)
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert types[tokens.index("<|user|>")] == 4 and types[tokens.index("foo")] == 4
    assert types[tokens.index("<ctrl>")] == 3 and md["tokenizer.ggml.add_eos_token"] is True
    texts = TEXTS + ["hello <|user|> foo bar<ctrl>x", "foofoo <s> the  dog\n  x", "<|user|>hi", "a<ctrl>"]
    assert_same_tokenizer(tokenizer_from_metadata(md), ref, texts, llama_cpp=llama_cpp_of(md))


def test_sentencepiece_style_tokenizer_json(tmp_path, refs):
    # a Llama-style SentencePiece tokenizer saved as tokenizer.json (no tokenizer.model): "llama" metadata, as the
    # converter's LlamaHfVocab path writes it
    (tmp_path / "tokenizer.json").write_text(refs["shipped"].backend.to_str(), encoding="utf-8")
    cfg = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    _write(tmp_path, "tokenizer_config.json", dict(cfg, tokenizer_class="LlamaTokenizerFast"))
    md = tokenizer_metadata(tmp_path)
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 6]
    ref, tok = Tokenizer.from_dir(tmp_path), tokenizer_from_metadata(md)
    assert_same_tokenizer(tok, ref, llama_cpp=llama_cpp_of(md))
    # the scores follow the file's merges (gguf-py writes -1000 for all: llama.cpp would then merge left to right),
    # so where llama.cpp's and transformers' rules agree (no leading space, no special token) so do the ids
    merged = [sc for sc, ty in zip(md["tokenizer.ggml.scores"], md["tokenizer.ggml.token_type"]) if ty == 1]
    assert len(set(merged)) > 0.9 * len(merged)
    for text in ["Hello, world! How are you today?", TEXTS[-1], TEXTS[3]]:
        assert tok.encode(text) == ref.encode(text), text
    # the file llama.cpp's converter writes (every score -1000): llama.cpp merges left to right, and so does pyllm
    flat = dict(md, **{"tokenizer.ggml.scores": [-1000.0] * len(md["tokenizer.ggml.scores"])})
    assert SpmReference(flat).encode(TEXTS[-1]) != ref.encode(TEXTS[-1])
    assert_same_tokenizer(tokenizer_from_metadata(flat), ref, llama_cpp=SpmReference(flat))


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_spm_reference_is_llama_cpp(name, tmp_path):
    # the reference above gives llama.cpp's own ids for its test cases (tests/fixtures/llama_cpp_vocab)
    import gzip

    from pyllm.gguf_file import GGUFFile

    vocab = FIXTURES / "llama_cpp_vocab"
    (tmp_path / "v.gguf").write_bytes(gzip.decompress((vocab / f"ggml-vocab-{name}.gguf.gz").read_bytes()))
    reference = SpmReference(GGUFFile(str(tmp_path / "v.gguf")).metadata)
    texts = (vocab / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = [[int(x) for x in line.split()]
           for line in (vocab / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")]
    assert len(texts) == len(ids) >= 40
    for text, want in zip(texts, ids):
        assert reference.encode(text, add_special_tokens=False) == want, text


def test_gpt2_style_byte_level_bpe(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    corpus = ["def f(x):\n    return x + 1  # 123 😀", "the quick brown fox jumps over the lazy dog", "héllo wörld"]
    bt = ByteLevelBPETokenizer()
    bt.train_from_iterator(corpus * 20, vocab_size=400, special_tokens=["<|endoftext|>", "<|im_end|>"],
                           show_progress=False)
    bt.add_tokens(["hello world"])
    bt.save(str(tmp_path / "tokenizer.json"))
    _write(tmp_path, "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                               "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
    ref = Tokenizer.from_dir(tmp_path)
    md = tokenizer_metadata(tmp_path)
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "gpt-2"
    assert md["tokenizer.ggml.add_bos_token"] is False
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert types[tokens.index("<|im_end|>")] == 3 and types[tokens.index("hello world")] == 4
    tok = tokenizer_from_metadata(md)
    assert_same_tokenizer(tok, ref, TEXTS + ["hello world<|im_end|>x<|endoftext|>"])
    assert tok.eos_ids == [1, 0]  # <|im_end|>, then <|endoftext|> (an end-of-generation text for llama.cpp)


def test_unsupported_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        tokenizer_metadata(tmp_path / "missing")
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordPiece

    Backend(WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="WordPiece"):
        tokenizer_metadata(tmp_path)


# ---------------------------------------------------------------- bad metadata


@pytest.fixture(scope="module")
def small_md():
    conv = json.loads((CONVERTER / "shakespeare-4m.converter.json").read_text())["metadata"]
    return conv


def _gpt2_md():
    vocab = ["a", "b", "ab", "c", "abc", "<|endoftext|>"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": vocab,
            "tokenizer.ggml.token_type": [1, 1, 1, 1, 1, 3], "tokenizer.ggml.merges": ["a b", "ab c"],
            "tokenizer.ggml.bos_token_id": 5, "tokenizer.ggml.eos_token_id": 5}


def test_small_gpt2_metadata():
    tok = tokenizer_from_metadata(_gpt2_md())
    assert tok.encode("abcab<|endoftext|>") == [4, 2, 5] and not tok.add_bos and tok.eos_ids == [5]
    assert tok.decode([4, 5, 0]) == "abc<|endoftext|>a"


def test_control_looking_tokens_as_llama_cpp():
    # llama.cpp cuts end-of-generation and fill-in-the-middle texts out of a prompt as control tokens even when the
    # file types them normal, and gpt-oss's always-shown tokens as user-defined ones (cut out, kept in text)
    md = _gpt2_md()
    md["tokenizer.ggml.tokens"] += ["<|fim_prefix|>", "<|channel|>", "</s>"]
    md["tokenizer.ggml.token_type"] += [1, 3, 1]
    tok = tokenizer_from_metadata(md)
    assert tok.encode("a<|fim_prefix|>b</s>c<|channel|>a") == [0, 6, 1, 8, 3, 7, 0]
    assert {6, 8} <= tok.special_ids and 7 not in tok.special_ids and 8 in tok.eos_ids
    assert tok.decode([0, 6, 7, 8], skip_special_tokens=True) == "a<|channel|>"
    md["tokenizer.ggml.fim_pre_token_id"] = 5  # the file names its FIM token: no text is looked for
    assert 6 not in tokenizer_from_metadata(md).encode("a<|fim_prefix|>b")
    md["tokenizer.ggml.tokens"].append("<|tool_response>")  # Gemma 4: </s> is a normal token there
    md["tokenizer.ggml.token_type"].append(1)
    tok = tokenizer_from_metadata(md)
    assert 8 not in tok.encode("b</s>") and 8 not in tok.eos_ids and 9 in tok.eos_ids
    # the FIM pad / repo / file-separator tokens end generation, found by their text or named by the file
    md["tokenizer.ggml.tokens"] += ["<|fim_pad|>", "<|file_sep|>"]
    md["tokenizer.ggml.token_type"] += [1, 3]
    tok = tokenizer_from_metadata(md)
    assert {10, 11} <= set(tok.eos_ids) and tok.encode("a<|fim_pad|>") == [0, 10]
    md["tokenizer.ggml.fim_sep_token_id"] = 3
    assert 3 in tokenizer_from_metadata(md).eos_ids and 11 not in tokenizer_from_metadata(md).eos_ids


BAD = [
    ("not a mapping", lambda md: [1, 2], "mapping"),
    ("missing model", lambda md: md.pop("tokenizer.ggml.model"), "missing tokenizer.ggml.model.*llama, gpt2"),
    ("bert", lambda md: md.update({"tokenizer.ggml.model": "bert"}), "'bert'.*llama, gpt2"),
    ("rwkv", lambda md: md.update({"tokenizer.ggml.model": "rwkv"}), "'rwkv'.*llama, gpt2"),
    ("model type", lambda md: md.update({"tokenizer.ggml.model": 3}), "tokenizer.ggml.model must be a string"),
    ("missing tokens", lambda md: md.pop("tokenizer.ggml.tokens"), "missing tokenizer.ggml.tokens"),
    ("empty tokens", lambda md: md.update({"tokenizer.ggml.tokens": []}), "empty"),
    ("tokens not array", lambda md: md.update({"tokenizer.ggml.tokens": "abc"}), "must be an array"),
    ("int token", lambda md: md["tokenizer.ggml.tokens"].__setitem__(7, 7), r"tokens\[7\] must be a string"),
    ("None token", lambda md: md["tokenizer.ggml.tokens"].__setitem__(9, None), r"tokens\[9\] must be a string"),
    ("bytes token", lambda md: md["tokenizer.ggml.tokens"].__setitem__(9, b"x"), r"tokens\[9\] must be a string"),
    ("duplicate token", lambda md: md["tokenizer.ggml.tokens"].__setitem__(300, md["tokenizer.ggml.tokens"][301]),
     "appears twice"),
    ("short scores", lambda md: md["tokenizer.ggml.scores"].pop(), "scores has 1023 entries but .* has 1024"),
    ("long types", lambda md: md["tokenizer.ggml.token_type"].append(1), "token_type has 1025 entries"),
    ("bad type", lambda md: md["tokenizer.ggml.token_type"].__setitem__(5, 9), r"token_type\[5\] = 9"),
    ("float type", lambda md: md["tokenizer.ggml.token_type"].__setitem__(5, 1.0), r"token_type\[5\]"),
    ("str score", lambda md: md["tokenizer.ggml.scores"].__setitem__(5, "x"), r"scores\[5\] = 'x' is not a number"),
    ("bos out of range", lambda md: md.update({"tokenizer.ggml.bos_token_id": 1024}), "bos_token_id = 1024 is out"),
    ("eos negative", lambda md: md.update({"tokenizer.ggml.eos_token_id": -1}), "eos_token_id = -1 is out"),
    ("unk out of range", lambda md: md.update({"tokenizer.ggml.unknown_token_id": 5000}), "unknown_token_id"),
    ("pad out of range", lambda md: md.update({"tokenizer.ggml.padding_token_id": 2**32 - 1}), "padding_token_id"),
    ("eot out of range", lambda md: md.update({"tokenizer.ggml.eot_token_id": 1024}), "eot_token_id"),
    ("bool id", lambda md: md.update({"tokenizer.ggml.bos_token_id": True}), "must be an integer"),
    ("str id", lambda md: md.update({"tokenizer.ggml.eos_token_id": "2"}), "must be an integer"),
    ("float id", lambda md: md.update({"tokenizer.ggml.eos_token_id": 2.0}), "must be an integer"),
    ("flag type", lambda md: md.update({"tokenizer.ggml.add_bos_token": "yes"}), "add_bos_token must be a bool"),
    ("flag int", lambda md: md.update({"tokenizer.ggml.add_eos_token": 1}), "add_eos_token must be a bool"),
    ("template type", lambda md: md.update({"tokenizer.chat_template": 5}), "chat_template must be a string"),
    ("extra eos", lambda md: md.update({"pyllm.tokenizer.eos_token_ids": [2, 4096]}), "eos_token_ids"),
]


@pytest.mark.parametrize("label,mutate,match", BAD, ids=[b[0] for b in BAD])
def test_bad_llama_metadata(small_md, label, mutate, match):
    md = copy.deepcopy(small_md)
    out = mutate(md)
    with pytest.raises(ValueError, match=match):
        tokenizer_from_metadata(out if label == "not a mapping" else md, name="x.gguf")


BAD_GPT2 = [
    ("missing merges", lambda md: md.pop("tokenizer.ggml.merges"), "missing tokenizer.ggml.merges"),
    ("merge without space", lambda md: md["tokenizer.ggml.merges"].append("abc"), "not two tokens"),
    ("merge trailing space", lambda md: md["tokenizer.ggml.merges"].append("a "), "not two tokens"),
    ("merge unknown part", lambda md: md["tokenizer.ggml.merges"].append("a zz"), "not in tokenizer.ggml.tokens"),
    ("merged not in vocab", lambda md: md["tokenizer.ggml.merges"].append("b c"), "not in tokenizer.ggml.tokens"),
    ("merge not str", lambda md: md["tokenizer.ggml.merges"].append(["a", "b"]), r"merges\[2\] must be a string"),
    ("unknown pre", lambda md: md.update({"tokenizer.ggml.pre": "no-such-pre"}), "'no-such-pre'.*llama-bpe"),
    ("pre not str", lambda md: md.update({"tokenizer.ggml.pre": 3}), "tokenizer.ggml.pre must be a string"),
    ("add_bos without bos", lambda md: (md.pop("tokenizer.ggml.bos_token_id"),
                                        md.update({"tokenizer.ggml.add_bos_token": True})), "no tokenizer.ggml.bos"),
    ("bos out of range", lambda md: md.update({"tokenizer.ggml.bos_token_id": 6}), "out of range"),
]


@pytest.mark.parametrize("label,mutate,match", BAD_GPT2, ids=[b[0] for b in BAD_GPT2])
def test_bad_gpt2_metadata(label, mutate, match):
    md = _gpt2_md()
    mutate(md)
    with pytest.raises(ValueError, match=match):
        tokenizer_from_metadata(md)


JUNK = [None, True, 0, -1, 7, 2**40, 1.5, float("nan"), "", "x", b"x", [], [None], [1, "a"], {"a": 1},
        np.array([1, 2]), np.int64(3)]


@pytest.mark.filterwarnings("ignore:.*no tokenizer.ggml.pre")  # a dropped pre-tokenizer name: llama.cpp's default
@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_random_corruption_only_raises_value_error(small_md, model):
    base = small_md if model == "llama" else _gpt2_md()
    rng = random.Random(model)
    for _ in range(150):
        md = copy.deepcopy(base)
        for _ in range(rng.randrange(1, 4)):
            key = rng.choice(list(md) + list(GGUF_VALUE_TYPES))
            r = rng.random()
            if r < 0.3:
                md.pop(key, None)
            elif r < 0.7 or not isinstance(md.get(key), list):
                md[key] = rng.choice(JUNK)
            else:
                lst = md[key]
                if lst:
                    j = rng.randrange(len(lst))
                    lst[j] = rng.choice(JUNK + [lst[(j + 1) % len(lst)]])
        try:
            tok = tokenizer_from_metadata(md)
        except ValueError:
            continue
        tok.decode(tok.encode("hello <s> world abc"))
