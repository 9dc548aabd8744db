"""test_llama_cpp_vocab.py: llama.cpp's own tokenizer test cases (its test-tokenizer-0: encode each
text without BOS, compare the ids) on the vocabularies in tests/fixtures/llama_cpp_vocab, through
pyllm's tokenizer built from the GGUF file's metadata. A GGUF file tokenizes as llama.cpp (its own
engine) does: SentencePiece vocabularies ("llama") and byte-level BPE ones ("gpt2") with each
pre-tokenizer (tokenizer.ggml.pre) that has a vocabulary here."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings

import pytest

from pyllm.gguf_file import GGUFFile
from pyllm.gguf_tokenizer import tokenizer_from_metadata

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "llama_cpp_vocab")

# test cases -> (the gzipped GGUF vocabulary they run on, metadata changed on top of it). llama.cpp's qwen35
# vocabulary is its qwen2 one with tokenizer.ggml.pre "qwen35", and its gpt-neox one its mpt one without a
# tokenizer.ggml.pre (llama.cpp then uses its "default" splits): they share those files (see the README).
DROP = object()
VOCABS = {
    "llama-spm": ("llama-spm", {}),
    "phi-3": ("phi-3", {}),
    "llama-bpe": ("llama-bpe", {}),
    "qwen2": ("qwen2", {}),
    "qwen35": ("qwen2", {"tokenizer.ggml.pre": "qwen35"}),
    "deepseek-llm": ("deepseek-llm", {}),
    "deepseek-coder": ("deepseek-coder", {}),
    "falcon": ("falcon", {}),
    "starcoder": ("starcoder", {}),
    "mpt": ("mpt", {}),
    "gpt-neox": ("mpt", {"tokenizer.ggml.pre": DROP, "general.name": "gpt-neox-20b"}),
}


def cases(name):
    with open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.inp"), encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.out"), encoding="utf-8") as f:
        ids = [[int(x) for x in line.split()] for line in f.read().split("\n")]
    assert len(texts) == len(ids)
    return list(zip(texts, ids))


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    read = {}

    def get(name):
        if name not in read:
            path = str(tmp_path_factory.mktemp("vocab") / f"ggml-vocab-{name}.gguf")
            with gzip.open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.gz")) as f, open(path, "wb") as g:
                shutil.copyfileobj(f, g)
            read[name] = GGUFFile(path).metadata
        return read[name]

    return get


def vocab_metadata(metadata, name):
    file, changes = VOCABS[name]
    md = dict(metadata(file))
    for key, value in changes.items():
        if value is DROP:
            del md[key]
        else:
            md[key] = value
    return md


@pytest.mark.parametrize("name", list(VOCABS))
def test_llama_cpp_tokenizer_cases(metadata, name):
    md = vocab_metadata(metadata, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = tokenizer_from_metadata(md, name=name)
    # llama.cpp warns that a file without a pre-tokenizer name gets its "default" splits; so does pyllm
    assert any("tokenizer.ggml.pre" in str(w.message) for w in caught) == ("tokenizer.ggml.pre" not in md)
    all_cases = cases(name)
    assert len(all_cases) >= 40
    bad = [(text, tok.encode(text, add_special_tokens=False), want) for text, want in all_cases
           if tok.encode(text, add_special_tokens=False) != want]
    assert not bad, f"{len(bad)} of {len(all_cases)} differ; first: {bad[0]!r}"
    for text, want in all_cases:  # decoding gives the text back
        assert tok.decode(want) == text


def test_add_bos_defaults_as_llama_cpp(metadata):
    # llama.cpp adds BOS for SentencePiece and Llama 3 files unless the file says otherwise, not for GPT-2 style
    # ones; tokenizer.ggml.add_bos_token overrides it
    for name, add_bos in (("llama-spm", True), ("llama-bpe", True), ("falcon", False), ("starcoder", False)):
        md = vocab_metadata(metadata, name)
        md.pop("tokenizer.ggml.add_bos_token", None)
        tok = tokenizer_from_metadata(md, name=name)
        assert tok.add_bos is add_bos, name
        assert tok.encode("Hello")[:1] == ([md["tokenizer.ggml.bos_token_id"]] if add_bos else
                                          tok.encode("Hello", add_special_tokens=False)[:1])
    md = vocab_metadata(metadata, "deepseek-coder")
    assert md["tokenizer.ggml.add_bos_token"] is True and tokenizer_from_metadata(md).add_bos


def test_unknown_pre_tokenizer_is_named(metadata):
    md = vocab_metadata(metadata, "starcoder")
    md["tokenizer.ggml.pre"] = "no-such-splitter"
    with pytest.raises(ValueError, match="'no-such-splitter'.*supported: .*starcoder"):
        tokenizer_from_metadata(md, name="x.gguf")


def special_cases():
    with open(os.path.join(HERE, "special_cases.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(special_cases()))
def test_special_tokens_in_text_as_llama_cpp(metadata, name):
    # special_cases.json: texts with control, user-defined and fill-in-the-middle token texts, and the ids llama.cpp
    # gives them when it parses special tokens (as its server and CLI do for prompts). This checks which texts it
    # cuts out (control-looking texts such as qwen2's normal "</s>" or the FIM texts become control tokens), the
    # "▁" prefix after them (SentencePiece) and Phi-3's right-stripping of the spaces after its special tokens.
    tok = tokenizer_from_metadata(vocab_metadata(metadata, name), name=name)
    for text, want in special_cases()[name]:
        assert tok.encode(text, add_special_tokens=False) == want, text


@pytest.fixture(scope="module")
def random_cases():
    with gzip.open(os.path.join(HERE, "random_cases.json.gz"), "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", list(VOCABS))
def test_random_texts_as_llama_cpp(metadata, random_cases, name):
    # random_cases.json.gz: 160 random texts per vocabulary (letters of many scripts, digits, punctuation, Unicode
    # spaces and marks, emoji; the last 40 with special-token texts, parsed) and llama.cpp's ids for them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpt-neox: no tokenizer.ggml.pre (tested above)
        tok = tokenizer_from_metadata(vocab_metadata(metadata, name), name=name)
    cases = random_cases[name]
    assert len(cases) == 160 and sum(parse for _, parse, _ in cases) == 40
    bad = [(text, want) for text, parse, want in cases if tok.encode(text, add_special_tokens=False) != want]
    assert not bad, f"{len(bad)} of {len(cases)} differ; first: {bad[0]!r}"


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "falcon",
                                  "starcoder", "mpt"])
def test_control_characters_as_llama_cpp(metadata, name):
    # control_char_cases.json.gz: 207 texts mixing ASCII control characters into words, and llama.cpp's ids for
    # them. falcon's vocabulary has no token for some of those bytes (vertical tab, 0x03...): llama.cpp drops such
    # a byte but does not merge its neighbours across it ("he\x0bllo" is "he" "llo", not "hello")
    with gzip.open(os.path.join(HERE, "control_char_cases.json.gz"), "rt", encoding="utf-8") as f:
        cases = json.load(f)[name]
    tok = tokenizer_from_metadata(vocab_metadata(metadata, name), name=name)
    assert len(cases) == 207
    bad = [(text, want) for text, want in cases if tok.encode(text, add_special_tokens=False) != want]
    assert not bad, f"{len(bad)} of {len(cases)} differ; first: {bad[0]!r}"


def test_end_of_generation_ids_as_llama_cpp(metadata):
    # eog_ids.json: every id llama.cpp's llama_vocab_is_eog is true for, on the original files
    with open(os.path.join(HERE, "eog_ids.json"), encoding="utf-8") as f:
        want = json.load(f)
    assert set(want) == set(VOCABS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpt-neox: no tokenizer.ggml.pre
        for name in VOCABS:
            tok = tokenizer_from_metadata(vocab_metadata(metadata, name), name=name)
            assert sorted(tok.eos_ids) == want[name], name


@pytest.mark.parametrize("pre,add_bos", [("tekken", True), ("gpt-4o", False), ("deepseek-v3", False)])
def test_pre_tokenizers_without_a_vocabulary(metadata, pre, add_bos):
    # other_pre_cases.json.gz: llama.cpp ships no vocabulary for these pre-tokenizers (Mistral Nemo's tekken,
    # GPT-4o's for Phi-4-mini / Llama 4, DeepSeek V3's), so the llama-bpe one with tokenizer.ggml.pre replaced was
    # given to llama.cpp: its 47 texts and 200 random ones, and the ids llama.cpp split and merged them into
    with gzip.open(os.path.join(HERE, "other_pre_cases.json.gz"), "rt", encoding="utf-8") as f:
        cases = json.load(f)[pre]
    md = dict(metadata("llama-bpe"), **{"tokenizer.ggml.pre": pre})
    tok = tokenizer_from_metadata(md, name=pre)
    assert len(cases) == 247 and tok.add_bos is add_bos
    bad = [(text, want) for text, want in cases if tok.encode(text, add_special_tokens=False) != want]
    assert not bad, f"{len(bad)} of {len(cases)} differ; first: {bad[0]!r}"
