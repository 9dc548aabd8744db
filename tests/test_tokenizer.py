# Tests for pyllm.tokenizer: encode/decode parity with transformers' AutoTokenizer on real tokenizer files
# (Llama 2 and Mistral SentencePiece, Llama 3 tokenizer.json), streaming decode, and bad input.
import json
import pathlib
import random
import shutil

import numpy as np
import pytest

import pyllm
from pyllm.tokenizer import Tokenizer, parse_sentencepiece_model

import transformers  # test-only dependency (it needs protobuf to read tokenizer.model files)
from transformers import AutoTokenizer

transformers.logging.set_verbosity_error()

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "tokenizers"
NAMES = ["llama2", "mistral", "llama3"]
SHIPPED = pathlib.Path(pyllm.__file__).parent / "models" / "shakespeare-4m"

TEXTS = [
    "",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "don't can't I'm you're we've it's 'quoted' \"double\" end .",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nclass A:\n\tpass\n",
    "    x = [1, 2, 3]  # comment\n        y = {'a': (x, None)}\n",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "こんにちは、世界。東京は日本の首都です。カタカナもテスト。",
    "안녕하세요 세계",
    "龘靐齉 𠀀𪚥 rare ideographs",
    "I ❤️ 🍕! 👨‍👩‍👧‍👦 family, flags 🇺🇸🇯🇵🏳️‍🌈, skin 👍🏽 and 😀😁😂",
    "e\u0301 vs \u00e9, n\u0303, a\u0300\u0301\u0302, Z\u0351\u0352\u0353",
    "Tiếng Việt có dấu: Hà Nội, Thành phố Hồ Chí Minh, người, được",
    "नमस्ते दुनिया, हिन्दी भाषा क्षत्रिय",
    "مرحبا بالعالم",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero width \ufeffBOM \x00\x01 controls",
    "a  b   c    d     e",
    "    leading four",
    "trailing   ",
    "  both  ",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t\t\t",
    "line1\nline2\r\n\tline3\t\ttab",
    "a \n b \n\n  c \t\n",
    "1234567890 3.14159 1,000,000 123456789012345678901234567890 0x1F 2024-06-01",
    "<div class=\"x\">Hi</div>\n# Title\n- item *bold* `code`",
    "Mixed: English, 中文, 日本語, emoji 😀, math ∑∫√, accents café naïve",
    "<s>",
    "</s>",
    "<unk>",
    "<s>Hello</s>",
    "Hello <s> world </s> end",
    "Hello<s>world</s>end",
    "</s><s>",
    "< s > <s <s/>",
    "[INST] What is 2+2? [/INST]",
    "<s>[INST] hi [/INST] ok</s>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nhi",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "text<|eot_id|>more <|reserved_special_token_5|> x",
]


@pytest.fixture(scope="module")
def toks():
    return {name: Tokenizer.from_dir(FIXTURES / name) for name in NAMES}


@pytest.fixture(scope="module")
def refs():
    return {name: AutoTokenizer.from_pretrained(str(FIXTURES / name)) for name in NAMES}


@pytest.fixture(scope="module")
def ref_ids(refs):
    """Reference ids of every text, with and without special tokens."""
    return {
        (name, special): [refs[name](t, add_special_tokens=special)["input_ids"] for t in TEXTS]
        for name in NAMES
        for special in (True, False)
    }


# ---------------------------------------------------------------- encode


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("special", [True, False], ids=["special", "nospecial"])
def test_encode_parity(toks, refs, ref_ids, name, special):
    tok, ref = toks[name], refs[name]
    for text, want in zip(TEXTS, ref_ids[(name, special)]):
        assert tok.encode(text, add_special_tokens=special) == want, (name, text)
        if special:
            assert tok.encode(text) == ref.encode(text), (name, text)


def test_encode_special_token_text(toks):
    l2, l3 = toks["llama2"], toks["llama3"]
    # special-token strings inside the text become their ids, and no "▁" prefix follows them (legacy: false)
    assert l2.encode("<s>Hello</s>", add_special_tokens=False) == [1, l2.piece_to_id("Hello"), 2]
    assert l2.encode("Hello", add_special_tokens=False) == [l2.piece_to_id("▁Hello")]
    assert l3.encode("<|eot_id|>", add_special_tokens=False) == [128009]
    assert l3.encode("<|start_header_id|>user<|end_header_id|>\n\nhi")[0] == 128000
    assert l3.encode("<|start_header_id|>user<|end_header_id|>\n\nhi")[1] == 128006


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip", [False, True], ids=["keep", "skip"])
def test_decode_parity(toks, refs, ref_ids, name, skip):
    tok, ref = toks[name], refs[name]
    for special in (True, False):
        for text, ids in zip(TEXTS, ref_ids[(name, special)]):
            want = ref.decode(ids, skip_special_tokens=skip)
            assert tok.decode(ids, skip_special_tokens=skip) == want, (name, text)


@pytest.mark.parametrize("name", NAMES)
def test_decode_random_ids_parity(toks, refs, name):
    tok, ref = toks[name], refs[name]
    rng = random.Random(name)
    for _ in range(20):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


def test_round_trip(toks):
    for name, tok in toks.items():
        for text in TEXTS:
            if "<" in text or (text.startswith(" ") and name != "llama3"):
                continue  # special-token text; SentencePiece decoders drop one leading space (as transformers)
            got = tok.decode(tok.encode(text), skip_special_tokens=True)
            assert got == text, (name, text)


# ---------------------------------------------------------------- attributes


@pytest.mark.parametrize("name", NAMES)
def test_attributes(toks, refs, name):
    tok, ref = toks[name], refs[name]
    assert tok.vocab_size == len(ref)
    assert tok.bos_id == ref.bos_token_id
    assert tok.eos_ids == [ref.eos_token_id]
    assert tok.add_bos is True
    assert tok.encode("hi")[0] == tok.bos_id
    assert tok.chat_template == ref.chat_template and tok.chat_template
    assert tok.bos_token == ref.bos_token and tok.eos_token == ref.eos_token
    for i in (0, 1, 2, 100, 1000, tok.vocab_size - 1):
        assert tok.id_to_piece(i) == ref.convert_ids_to_tokens(i)
    assert tok.is_special(tok.bos_id) and not tok.is_special(tok.encode("hi", add_special_tokens=False)[0])


def test_sentencepiece_without_add_bos_key_adds_bos(tmp_path):
    shutil.copy(FIXTURES / "llama2" / "tokenizer.model", tmp_path)
    cfg = json.loads((FIXTURES / "llama2" / "tokenizer_config.json").read_text())
    del cfg["add_bos_token"], cfg["add_eos_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.add_bos and tok.encode("Hello")[0] == 1
    cfg["add_bos_token"], cfg["add_eos_token"] = False, True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert not tok.add_bos and tok.add_eos
    assert tok.encode("Hello") == ref("Hello")["input_ids"] == [tok.piece_to_id("▁Hello"), 2]


def test_added_tokens_json_as_transformers(tmp_path):
    """Older folders list tokens past the SentencePiece vocabulary in added_tokens.json (no
    added_tokens_decoder in the config): the ones named as special tokens are special, the rest plain
    added tokens; ids, text and decoding as AutoTokenizer gives them."""
    shutil.copy(FIXTURES / "llama2" / "tokenizer.model", tmp_path)
    cfg = json.loads((FIXTURES / "llama2" / "tokenizer_config.json").read_text())
    cfg["pad_token"] = "<pad>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": 32000, "<extra_tok>": 32001}))
    tok = Tokenizer.from_dir(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.vocab_size == len(ref) == 32002
    assert tok.piece_to_id("<extra_tok>") == 32001 and tok.is_special(32000) and not tok.is_special(32001)
    for text in ["Hello <pad> world<extra_tok>!", "<extra_tok> x <pad>", "a<extra_tok>b <pad>c"]:
        ids = tok.encode(text)
        assert ids == ref(text)["input_ids"]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": "x"}))
    with pytest.raises(ValueError, match="added_tokens.json"):
        Tokenizer.from_dir(tmp_path)


def test_construction_without_files(toks):
    # (from_dir itself goes through from_sentencepiece_bytes / from_tokenizers_json)
    ref = toks["mistral"]
    cfg = json.loads((FIXTURES / "mistral" / "tokenizer_config.json").read_text())
    m = parse_sentencepiece_model((FIXTURES / "mistral" / "tokenizer.model").read_bytes())
    assert len(m.pieces) == 32000 and m.byte_fallback and (m.bos_id, m.eos_id, m.unk_id) == (1, 2, 0)
    from_lists = Tokenizer.from_sentencepiece_vocab(m.pieces, m.scores, m.types, cfg)
    assert (from_lists.bos_id, from_lists.eos_ids, from_lists.add_bos) == (1, [2], True)
    for text in TEXTS:
        want = ref.encode(text)
        assert from_lists.encode(text) == want, text
        assert from_lists.decode(want) == ref.decode(want)
    l3 = toks["llama3"]
    wrapped = Tokenizer(l3.backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", eos_ids=[128001])
    for text in TEXTS:
        assert wrapped.encode(text) == l3.encode(text), text
    assert wrapped.eos_ids == [128009, 128001] and wrapped.add_bos and wrapped.bos_id == 128000
    no_bos = Tokenizer(ref.backend, bos_token="<s>", eos_token="</s>", add_bos=False, add_eos=True)
    assert not no_bos.add_bos and no_bos.add_eos and no_bos.encode("hi") == ref.encode("hi")[1:] + [2]
    assert ref.encode("hi") == [1, 12014]  # the shared backend is left as it was


@pytest.fixture(scope="module")
def llama2_json_dir(refs, tmp_path_factory):
    """The Llama 2 tokenizer saved by transformers as tokenizer.json (what most Hub repos ship)."""
    path = tmp_path_factory.mktemp("llama2_json")
    refs["llama2"].save_pretrained(str(path))
    (path / "tokenizer.model").unlink(missing_ok=True)
    assert (path / "tokenizer.json").is_file()
    return path


def test_llama_tokenizer_json_matches_autotokenizer(llama2_json_dir):
    tok = Tokenizer.from_dir(llama2_json_dir)
    ref = AutoTokenizer.from_pretrained(str(llama2_json_dir))
    assert json.loads((llama2_json_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == ref.decode(ids), text


def test_folder_options_as_transformers(llama2_json_dir, tmp_path):
    # with tokenizer.json, add_bos_token/add_eos_token are ignored (the file's post-processor rules);
    # special_tokens_map.json overrides the config when it has no added_tokens_decoder; chat_template.jinja wins;
    # eos_ids gathers eos_token, generation_config.json's eos_token_id (int or list) and config.json's
    (tmp_path / "tokenizer.json").symlink_to(llama2_json_dir / "tokenizer.json")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "add_bos_token": False, "add_eos_token": True, "chat_template": "config"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<unk>"}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9, "model_type": "llama"}))
    tok = Tokenizer.from_dir(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("hi") == ref("hi")["input_ids"] == [1, 7251]
    assert tok.eos_token == ref.eos_token == "<unk>"
    assert tok.eos_ids == [0, 7, 2, 9]
    assert tok.bos_id == 1
    assert tok.chat_template == ref.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"


SP_CORPUS = [
    " ".join(random.Random(i).choice("the quick brown fox jumps over a lazy dog while happy children sing".split())
             for _ in range(12))
    for i in range(300)
] + ["你好，世界！今天天气很好。", "naïve café 1234 tab\tnew\nline"]
SP_TEXTS = TEXTS + ["hello <|user|> foo bar<ctrl>x", "foofoo <s> the  dog\n  x", "<|user|>hi", "a<ctrl>"]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
@pytest.mark.parametrize("tokenizer_class", ["LlamaTokenizer", None])
def test_trained_sentencepiece_models(tmp_path, model_type, tokenizer_class):
    # SentencePiece models with user-defined and control pieces, BPE and unigram, Llama and generic conversion
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_CORPUS), model_writer=buf, vocab_size=330, model_type=model_type,
        byte_fallback=True, user_defined_symbols=["<|user|>", "foo"], control_symbols=["<ctrl>"],
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    cfg = {"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}
    if tokenizer_class:
        cfg["tokenizer_class"] = tokenizer_class
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SP_TEXTS:
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids, text
        for skip in (False, True):
            want = ref.decode(ids, skip_special_tokens=skip)
            assert tok.decode(ids, skip_special_tokens=skip) == want, text
            assert _stream(tok, ids, skip)[0] == want, text


def test_shipped_model_tokenizer():
    if not (SHIPPED / "tokenizer.model").is_file():
        pytest.skip("shipped model not present in this checkout")
    tok = Tokenizer.from_dir(SHIPPED)
    ref = AutoTokenizer.from_pretrained(str(SHIPPED))
    assert tok.vocab_size == len(ref) == 1024
    assert tok.bos_id == 1 and 2 in tok.eos_ids and tok.add_bos
    texts = TEXTS + ["ROMEO:\nAy, my good lord.\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?"]
    for text in texts:
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids, text
        assert tok.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
            assert _stream(tok, ids, skip)[0] == tok.decode(ids, skip_special_tokens=skip)


# ---------------------------------------------------------------- streaming


def _stream(tok, ids, skip):
    """Stream ids one at a time; return the joined text, the pieces, and the largest decoded window in excess of
    the longest run of byte-fallback tokens (such a run decodes all-or-nothing, so it is held whole)."""
    dec = tok.stream_decoder(skip_special_tokens=skip)
    pieces = []
    max_window = run = max_run = 0
    for i in ids:
        pieces.append(dec.push(i))
        max_window = max(max_window, len(dec._win))
        if i in tok._byte_ids:
            run += 1
        elif not (skip and tok.is_special(i)):
            run = 0
        max_run = max(max_run, run)
    pieces.append(dec.flush())
    return "".join(pieces), pieces, max_window - max_run


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip", [False, True], ids=["keep", "skip"])
def test_stream_matches_decode(toks, ref_ids, name, skip):
    tok = toks[name]
    for special in (True, False):
        for text, ids in zip(TEXTS, ref_ids[(name, special)]):
            full = tok.decode(ids, skip_special_tokens=skip)
            joined, pieces, max_window = _stream(tok, ids, skip)
            assert joined == full, (name, text)
            if "\ufffd" not in full:
                assert not any("\ufffd" in p for p in pieces), (name, text, pieces)
            # the decoded window stays small (no re-decoding of the whole history)
            assert max_window <= 4, (name, text, max_window)


@pytest.mark.parametrize("name", NAMES)
def test_stream_long_text_window_bounded(toks, name):
    tok = toks[name]
    text = " ".join(TEXTS[1:30]) * 3
    ids = tok.encode(text)
    joined, _, max_window = _stream(tok, ids, False)
    assert joined == tok.decode(ids) and len(ids) > 300 and max_window <= 4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip", [False, True], ids=["keep", "skip"])
def test_stream_random_ids(toks, name, skip):
    # arbitrary id sequences, rich in byte-fallback, special and whitespace tokens
    tok = toks[name]
    rng = random.Random(f"{name}{skip}")
    pool = sorted(tok.special_ids)[:50] + sorted(tok._byte_ids) + list(range(tok.vocab_size - 300, tok.vocab_size))
    pool += tok.encode(" \n  \t x  ", add_special_tokens=False) + tok.encode("😀中é", add_special_tokens=False)
    for _ in range(30):
        ids = [rng.choice(pool) if rng.random() < 0.6 else rng.randrange(tok.vocab_size) for _ in range(60)]
        assert _stream(tok, ids, skip)[0] == tok.decode(ids, skip_special_tokens=skip), ids


def test_stream_reports_text_as_soon_as_complete(toks):
    tok = toks["llama3"]
    dec = tok.stream_decoder()
    ids = tok.encode("Hello world", add_special_tokens=False)
    assert [dec.push(i) for i in ids] == ["Hello", " world"]
    assert dec.flush() == ""
    # a character split over several tokens is returned once complete, never as U+FFFD
    emoji = tok.encode("👨‍👩‍👧", add_special_tokens=False)
    outs = [dec.push(i) for i in emoji] + [dec.flush()]
    assert "".join(outs) == "👨‍👩‍👧" and all("\ufffd" not in o for o in outs)


@pytest.mark.parametrize("name", NAMES)
def test_stream_after_prompt(toks, name):
    # the prompt's text is not returned; what follows comes out with the spacing it has after the prompt
    tok = toks[name]
    for text in ["Hello world, how are you?", "你好，世界！龘靐 ok", "x 😀👍🏽 y\n\n  z", "[INST] hi [/INST] sure</s>"]:
        ids = tok.encode(text)
        for cut in range(1, len(ids)):
            prompt, rest = ids[:cut], ids[cut:]
            # a prompt that ends inside a character decodes to a trailing U+FFFD; that character comes out whole
            head, full = tok.decode(prompt).rstrip("\ufffd"), tok.decode(ids)
            dec = tok.stream_decoder(prompt_ids=prompt)
            out = "".join(dec.push(i) for i in rest) + dec.flush()
            assert full.startswith(head) and out == full[len(head):], (name, text, cut)


# ---------------------------------------------------------------- bad input


def test_missing_files(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match=str(tmp_path)):
        Tokenizer.from_dir(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Tokenizer.from_dir(missing)


@pytest.mark.parametrize("seed", range(5))
def test_corrupt_sentencepiece_model(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(rng.randbytes(rng.randrange(10, 20000)))
    with pytest.raises(ValueError, match="tokenizer.model"):
        Tokenizer.from_dir(tmp_path)


def test_truncated_sentencepiece_model(tmp_path):
    data = (FIXTURES / "llama2" / "tokenizer.model").read_bytes()
    (tmp_path / "tokenizer.model").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError):
        Tokenizer.from_sentencepiece_bytes(b"")


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": [1, 2')
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_config(tmp_path):
    shutil.copy(FIXTURES / "mistral" / "tokenizer.model", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_ids(toks, name):
    tok = toks[name]
    for bad in ([-1], [tok.vocab_size], [5, 10**12]):
        with pytest.raises(ValueError):
            tok.decode(bad)
    with pytest.raises(ValueError):
        tok.id_to_piece(tok.vocab_size)
    with pytest.raises(ValueError):
        tok.stream_decoder().push(tok.vocab_size)
    with pytest.raises(TypeError):
        tok.decode([1.5])
    # a bool is an int to Python but never a token id (a mask passed for ids): refused as the model's
    # token-id checks refuse it, not read as token 1 / 0
    for bad in ([1, True], True, [np.bool_(False)], np.array([True, False])):
        with pytest.raises(TypeError, match="integers"):
            tok.decode(bad)
    with pytest.raises(TypeError):
        tok.id_to_piece(True)
    with pytest.raises(TypeError):
        tok.stream_decoder().push(False)


def test_decode_accepts_numpy_and_single_ids(toks):
    import numpy as np

    tok = toks["llama3"]
    ids = tok.encode("Hello world")
    assert tok.decode(np.array(ids, dtype=np.int64)) == tok.decode(ids) == "<|begin_of_text|>Hello world"
    assert tok.decode(np.int32(ids[1])) == tok.decode(ids[1]) == tok.decode([ids[1]]) == "Hello"
    assert tok.decode(np.array(ids), skip_special_tokens=True) == "Hello world"
