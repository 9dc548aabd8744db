"""test_llama_cpp_vocab.py: llama.cpp's own tokenizer test cases (its test-tokenizer-0: encode each
text without BOS, compare the ids) on the vocabularies in tests/fixtures/llama_cpp_vocab, through
pyllm's tokenizer built from the GGUF file's metadata. A GGUF file tokenizes as llama.cpp (its own
engine) does."""
from __future__ import annotations

import gzip
import os
import shutil

import pytest

from pyllm.gguf_file import GGUFFile
from pyllm.gguf_tokenizer import tokenizer_from_metadata

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "llama_cpp_vocab")
VOCABS = ["qwen2"]


def cases(name):
    with open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.inp"), encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.out"), encoding="utf-8") as f:
        ids = [[int(x) for x in line.split()] for line in f.read().split("\n")]
    assert len(texts) == len(ids)
    return list(zip(texts, ids))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            path = str(tmp_path_factory.mktemp("vocab") / f"ggml-vocab-{name}.gguf")
            with gzip.open(os.path.join(HERE, f"ggml-vocab-{name}.gguf.gz")) as f, open(path, "wb") as g:
                shutil.copyfileobj(f, g)
            made[name] = tokenizer_from_metadata(GGUFFile(path).metadata)
        return made[name]

    return get


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_tokenizer_cases(tokenizer, name):
    tok = tokenizer(name)
    all_cases = cases(name)
    assert len(all_cases) >= 40
    bad = [(text, tok.encode(text, add_special_tokens=False), want) for text, want in all_cases
           if tok.encode(text, add_special_tokens=False) != want]
    assert not bad, f"{len(bad)} of {len(all_cases)} differ; first: {bad[0]!r}"
    for text, want in all_cases:  # byte-level: decoding gives the text back
        assert tok.decode(want) == text
