# Tokenizer <-> GGUF metadata: the "tokenizer.*" keys llama.cpp's convert_hf_to_gguf.py writes (model "llama" for
# SentencePiece vocabularies, "gpt2" for byte-level BPE), built from a Hugging Face folder, and a pyllm Tokenizer
# rebuilt from such keys (ours or llama.cpp's), so GGUF files carry their tokenizer.
"""Tokenizer <-> GGUF ``tokenizer.*`` metadata.

``tokenizer_metadata(model_dir)`` gives, as plain Python values, the tokenizer keys llama.cpp's converter writes
for a Hugging Face folder; ``GGUF_VALUE_TYPES`` says which GGUF type each key is stored as.
``tokenizer_from_metadata(md)`` builds a :class:`pyllm.tokenizer.Tokenizer` from the key/values of a GGUF file.

A GGUF file tokenizes as llama.cpp (its own engine) does; a Hugging Face folder (pyllm.tokenizer) as transformers
does. Supported ``tokenizer.ggml.model`` values:

* ``"llama"``: a SentencePiece vocabulary (tokens, scores, token types): the text is cut at control, user-defined
  and unknown tokens, every piece between them gets the "▁" dummy prefix (``tokenizer.ggml.add_space_prefix``,
  default true: at the start and after each special token), spaces become "▁", adjacent pieces merge by the
  score of the token they form (the leftmost pair on a tie), characters without a token become <0xXX> byte
  tokens. The merges run in the tokenizers library, ranked by score; a file where most merged tokens share one
  score (gguf-py's LlamaHfVocab writes -1000 for all; ``tokenizer_metadata`` writes scores that follow the
  folder's merges instead) is tokenized by llama.cpp's algorithm in Python, as no ranking gives leftmost-first.
* ``"gpt2"``: a byte-level BPE vocabulary with merges, split first by the regexes llama.cpp uses for
  ``tokenizer.ggml.pre`` (``SUPPORTED_BPE_PRE``: llama-bpe (Llama 3), qwen2, qwen35, tekken (Mistral Nemo),
  gpt-4o, gpt-2, mpt, starcoder, refact, command-r, falcon, deepseek-llm, deepseek-coder, deepseek-v3,
  "default", and the names llama.cpp treats as one of these); a file without the key gets llama.cpp's "default"
  splits, with a warning as llama.cpp gives.

Chat templates: ``tokenizer.chat_template`` is the default one; named ones (e.g. "tool_use") are
``tokenizer.chat_template.NAME`` strings listed in ``tokenizer.chat_templates``, as gguf-py writes them.

Where the converter's metadata cannot say what the Hugging Face folder says, one extra key (ignored by llama.cpp)
is written, only when needed: ``pyllm.tokenizer.eos_token_ids`` (end-of-generation ids beyond the ones llama.cpp
derives from the file).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import numbers
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend
from tokenizers.models import BPE

from .config import read_json_file
from .tokenizer import Tokenizer, parse_sentencepiece_model

__all__ = ["tokenizer_metadata", "tokenizer_from_metadata", "GGUF_VALUE_TYPES", "SUPPORTED_MODELS",
           "SUPPORTED_BPE_PRE"]

# GGUF token types (= SentencePiece piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_UNDEFINED = 0

K_MODEL = "tokenizer.ggml.model"
K_PRE = "tokenizer.ggml.pre"
K_TOKENS = "tokenizer.ggml.tokens"
K_SCORES = "tokenizer.ggml.scores"
K_TYPES = "tokenizer.ggml.token_type"
K_MERGES = "tokenizer.ggml.merges"
K_BOS = "tokenizer.ggml.bos_token_id"
K_EOS = "tokenizer.ggml.eos_token_id"
K_EOT = "tokenizer.ggml.eot_token_id"
K_EOM = "tokenizer.ggml.eom_token_id"
K_UNK = "tokenizer.ggml.unknown_token_id"
K_PAD = "tokenizer.ggml.padding_token_id"
K_ADD_BOS = "tokenizer.ggml.add_bos_token"
K_ADD_EOS = "tokenizer.ggml.add_eos_token"
K_ADD_SEP = "tokenizer.ggml.add_sep_token"
K_ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
K_FIM_PRE = "tokenizer.ggml.fim_pre_token_id"
K_FIM_SUF = "tokenizer.ggml.fim_suf_token_id"
K_FIM_MID = "tokenizer.ggml.fim_mid_token_id"
K_FIM_PAD = "tokenizer.ggml.fim_pad_token_id"
K_FIM_REP = "tokenizer.ggml.fim_rep_token_id"
K_FIM_SEP = "tokenizer.ggml.fim_sep_token_id"
K_CHAT = "tokenizer.chat_template"
K_CHAT_PREFIX = "tokenizer.chat_template."  # + name: a named chat template (gguf-py's add_chat_template)
K_CHAT_NAMES = "tokenizer.chat_templates"  # the names of those templates
K_EOS_IDS = "pyllm.tokenizer.eos_token_ids"

#: key -> type tag for the GGUF writer: "str", "u32", "bool", "f32[]", "i32[]", "str[]".
GGUF_VALUE_TYPES: dict[str, str] = {
    K_MODEL: "str",
    K_PRE: "str",
    K_TOKENS: "str[]",
    K_SCORES: "f32[]",
    K_TYPES: "i32[]",
    K_MERGES: "str[]",
    K_BOS: "u32",
    K_EOS: "u32",
    K_EOT: "u32",
    K_EOM: "u32",
    K_UNK: "u32",
    K_PAD: "u32",
    K_ADD_BOS: "bool",
    K_ADD_EOS: "bool",
    K_ADD_SEP: "bool",
    K_ADD_PREFIX: "bool",
    K_CHAT: "str",
    K_CHAT_NAMES: "str[]",
    K_EOS_IDS: "i32[]",
}

SUPPORTED_MODELS = ("llama", "gpt2")

# tokenizer.json's pre-tokenizer regexes of Llama 3 and Qwen2 (how _bpe_pre_name recognizes a folder's)
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The splits llama.cpp applies for each tokenizer.ggml.pre (llm_tokenizer_bpe), as Oniguruma regexes: each regex
# splits every piece left by the previous ones into its matches and the text between them. llama.cpp spells
# the contractions' case-insensitivity out ('[sS], not (?i:'s), which would also match a long s or Kelvin sign).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RE_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
_RE_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_RE_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek's CJK run (as its tokenizer.json writes it: U+0800..U+4E00 is one range there)
_RE_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# DeepSeek LLM's cased letters (its tokenizer.json's class). llama.cpp runs DeepSeek LLM's regexes with
# std::wregex; measured against it (random texts), its punctuation class leaves U+3000 (ideographic space) out,
# so it is spelled U+3001-U+3002 here.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b"
    "\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
# Tekken (Mistral Nemo and later) and GPT-4o (Phi-4-mini, Llama 4): words split at case changes. llama.cpp spells
# "uppercase-like" as a letter that is not a-z and "lowercase-like" as one that is not A-Z (it has one class for
# all non-ASCII letters), and so does this.
_UPPERISH, _LOWERISH = r"(?:(?=\p{L})[^a-z])", r"(?:(?=\p{L})[^A-Z])"
_RE_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*|\p{{N}}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+{_CONTRACTIONS}?"
             rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*{_CONTRACTIONS}?"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek V3: up to three digits, CJK / kana runs, then words with punctuation split off
_PRE_DEEPSEEK3 = (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                  r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                  r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
_PRE_GPT2 = (_RE_GPT2,)
_PRE_LLAMA3 = (_RE_LLAMA3,)
_PRE_QWEN2 = (_RE_QWEN2,)
_PRE_STARCODER = (r"\p{N}", _RE_GPT2)
_PRE_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, "[0-9][0-9][0-9]")
_PRE_DEEPSEEK_LLM = ("[\r\n]", r"\s?[" + _DEEPSEEK_LETTERS + "]+",
                     r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3001-\u3002]+", r"\s+\z", _RE_CJK, r"\p{N}+")
_PRE_DEEPSEEK_CODER = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _RE_CJK, r"\p{N}")

# tokenizer.ggml.pre -> (regexes, ignore_merges: a piece that is a token is not split, llama.cpp's add_bos
# default). The names llama.cpp maps to the same splits and flags share an entry.
_BPE_PRE: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "default": (_PRE_DEFAULT, False, False),
    **{k: (_PRE_LLAMA3, True, True) for k in ("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral",
                                              "midm-2.0", "lfm2")},
    **{k: (_PRE_LLAMA3, False, False) for k in ("dbrx", "smaug-bpe")},
    **{k: (_PRE_GPT2, False, False) for k in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion",
                                              "granite-docling", "gigachat", "a.x-4.0", "mellum")},
    **{k: (_PRE_QWEN2, False, False) for k in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez",
                                               "stablelm2", "hunyuan", "solar-open")},
    "qwen35": ((_RE_QWEN35,), False, False),
    **{k: (_PRE_STARCODER, False, False) for k in ("starcoder", "refact", "command-r", "smollm", "codeshell",
                                                   "exaone", "minerva-7b", "mellum2")},
    "falcon": (_PRE_FALCON, False, False),
    "tekken": ((_RE_TEKKEN,), True, True),
    **{k: (_PRE_DEEPSEEK3, False, False) for k in ("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4")},
    **{k: ((_RE_GPT4O,), False, False) for k in ("gpt-4o", "llama4", "kanana2", "talkie")},
    "deepseek-llm": (_PRE_DEEPSEEK_LLM, False, False),
    "deepseek-coder": (_PRE_DEEPSEEK_CODER, False, False),
}
SUPPORTED_BPE_PRE = tuple(_BPE_PRE)

# How convert_hf_to_gguf.py names a BPE pre-tokenizer: the sha256 of str(ids) of this text, encoded with
# add_special_tokens=True (get_vocab_base_pre). Only the hashes of pre-tokenizers supported here are listed.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B (Qwen2, 2.5)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
}

# Token texts llama.cpp treats as end of generation whatever the metadata says (llama_vocab::impl::load)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
))
# llama.cpp's EOT / EOM auto-detection (used when the file has no eot/eom id)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")

# Fill-in-the-middle token texts llama.cpp looks for when the file names no such token (GGUF key -> texts)
_FIM_TEXTS = {
    K_FIM_PRE: ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    K_FIM_SUF: ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    K_FIM_MID: ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    K_FIM_PAD: ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    K_FIM_REP: ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    K_FIM_SEP: ("<|file_sep|>",),
}
# gpt-oss tokens llama.cpp always renders (user-defined whatever the file says)
_GPT_OSS_SHOWN = frozenset(("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"))

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SP_DEFAULT_IDS = {"bos": 1, "eos": 2, "unk": 0}  # llama.cpp's defaults for tokenizer.ggml.model "llama"


# ----------------------------------------------------------------------------------------------------------------
# HF folder -> metadata
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    return read_json_file(path)  # ModelLoadError naming the file for anything unreadable


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _config_vocab_size(model_cfg: Mapping[str, Any]) -> int:
    n = model_cfg.get("vocab_size")
    if n is None and isinstance(model_cfg.get("text_config"), Mapping):
        n = model_cfg["text_config"].get("vocab_size")
    return int(n) if _is_int(n) and n > 0 else 0


def _merge_strings(merges: Any, path: Path) -> list[str]:
    """tokenizer.json merges as the converter writes them: "left right", a space inside a part as U+0120."""
    if not isinstance(merges, list):
        raise ValueError(f"{path}: the BPE model has no merges list")
    if merges and all(isinstance(m, str) for m in merges):
        return list(merges)
    try:
        out = [a + " " + b for a, b in merges]
    except (TypeError, ValueError):
        bad = next(m for m in merges
                   if not (isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(p, str) for p in m)))
        raise ValueError(f"{path}: unknown merges format ({bad!r})") from None
    for k, s in enumerate(out):
        if s.count(" ") != 1:
            out[k] = " ".join(p.replace(" ", "\u0120") for p in merges[k])
    return out


def _template_add_sep(tj: Mapping[str, Any], config: Mapping[str, Any]) -> bool | None:
    """add_sep_token as gguf-py's SpecialVocab reads it from a tokenizer.json TemplateProcessing (None: not set)."""
    post = tj.get("post_processor")
    if not isinstance(post, Mapping):
        return None
    eos, sep = _content(config.get("eos_token")), _content(config.get("sep_token"))
    if not eos and sep:
        eos = sep

    def special_id(item):
        return item.get("SpecialToken", {}).get("id") if isinstance(item, Mapping) else None

    def seq_id(item):
        return item.get("Sequence", {}).get("id") if isinstance(item, Mapping) else None

    add_sep = None
    procs = post.get("processors", [post])
    for proc in procs if isinstance(procs, list) else []:
        if not isinstance(proc, Mapping):
            continue
        if proc.get("type") == "RobertaProcessing":
            add_sep = True
            continue
        if proc.get("type") != "TemplateProcessing":
            continue
        single, pair = proc.get("single") or [], proc.get("pair") or []
        first = last = None
        if len(single) > 1:
            first, last = special_id(single[0]), special_id(single[-1])
            if last:
                eos = last
        if pair:
            start = 1 if first and special_id(pair[0]) == first else 0
            stop = -1 if last and special_id(pair[-1]) == last else None
            pair = pair[start:stop]
            if pair and seq_id(pair[0]) == "A" and seq_id(pair[-1]) == "B" and pair[1:-1]:
                mid = pair[1:-1]
                found = False
                entry = special_id(mid[0])
                if entry and entry in (sep, eos) and not last:
                    found = True
                if len(mid) == 2 and special_id(mid[1]) in (sep, eos) and special_id(mid[1]):
                    found = True
                add_sep = found
    return add_sep


def _llamacpp_eog(tokens: list[str], eos: int | None, eot: int | None, eom: int | None,
                  fim: Mapping[str, int | None] | None = None) -> set[int]:
    """The end-of-generation ids llama.cpp derives from a vocabulary (special_eog_ids); ``fim``: the file's
    fill-in-the-middle ids by GGUF key (its pad, repo and file-separator tokens end generation too)."""
    ids = {i for i, t in enumerate(tokens) if t in _EOG_TEXTS}
    index = {}
    for i, t in enumerate(tokens):
        index.setdefault(t, i)
    if eot is None:
        eot = next((index[t] for t in _EOT_TEXTS if t in index), None)
    if eom is None:
        eom = index.get("<|eom_id|>")
    ids.update(i for i in (eos, eot, eom) if i is not None)
    for key in (K_FIM_PAD, K_FIM_REP, K_FIM_SEP):
        i = (fim or {}).get(key)
        if i is None:
            i = next((index[t] for t in _FIM_TEXTS[key] if t in index), None)
        if i is not None:
            ids.add(i)
    texts = {tokens[i] for i in ids}
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        ids.discard(index["<|end|>"])  # o200k_harmony / solar-open: <|end|> is not the end of generation
    if ("<|tool_response>" in texts or "<|plamo:eos|>" in texts) and "</s>" in texts:
        ids.discard(index["</s>"])
    return ids


def _llamacpp_types(tokens: list[str], types: list[int], eog: set[int], fim: Mapping[str, int | None]) -> list[int]:
    """The token types llama.cpp tokenizes with (which texts it cuts out as special tokens): it makes control
    tokens of the end-of-generation texts and, where the file names no fill-in-the-middle token, of the FIM texts,
    and user-defined tokens of gpt-oss's always-shown ones; <|end|> of o200k_harmony / solar-open (not an end of
    generation there) is user-defined and a </s> that is not an end of generation a normal token."""
    out = list(types)
    promote = set(_EOG_TEXTS)
    for key, texts in _FIM_TEXTS.items():
        if fim.get(key) is None:
            promote.update(texts)
    eog_texts = {tokens[i] for i in eog}
    harmony = bool({"<|call|>", "<|calls|>"} & eog_texts and {"<|return|>", "<|flush|>"} & eog_texts)
    normal_s = bool({"<|tool_response>", "<|plamo:eos|>"} & eog_texts)
    for i, t in enumerate(tokens):
        if t in _GPT_OSS_SHOWN or (t == "<|end|>" and harmony):
            out[i] = USER_DEFINED
        elif t == "</s>" and normal_s:
            out[i] = NORMAL
        elif t in promote and out[i] not in (CONTROL, USER_DEFINED, UNKNOWN):
            out[i] = CONTROL
    return out


def tokenizer_metadata(model_dir: str) -> dict:
    """The ``tokenizer.*`` GGUF keys for a Hugging Face model/tokenizer folder, as llama.cpp's
    convert_hf_to_gguf.py writes them, as plain Python values (see ``GGUF_VALUE_TYPES`` for their GGUF types).

    The vocabulary is the one ``Tokenizer.from_dir`` loads (so ``tokenizer_from_metadata`` of the result encodes
    and decodes exactly like it), padded with "[PADi]" unused entries up to config.json's ``vocab_size``.
    Raises FileNotFoundError when the folder has no tokenizer, ValueError for one that GGUF cannot describe."""
    folder = Path(model_dir)
    tok = Tokenizer.from_dir(folder)
    backend = tok.backend
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    model_cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    tm, tj_path = folder / "tokenizer.model", folder / "tokenizer.json"
    tj = _read_json(tj_path) if tj_path.is_file() else None

    if tj is not None:  # from_dir reads tokenizer.json first
        model = tj.get("model") if isinstance(tj.get("model"), Mapping) else {}
        if '"ByteLevel"' in json.dumps(tj.get("pre_tokenizer")):
            kind = "gpt2"
        elif model.get("type") == "BPE" and model.get("byte_fallback"):
            kind = "llama"  # a SentencePiece-style BPE saved as tokenizer.json (convert_hf_to_gguf: LlamaHfVocab)
        else:
            raise ValueError(f"{tj_path}: a {model.get('type')} tokenizer without byte-level pre-tokenization; "
                             f"GGUF tokenizer models supported here: {', '.join(SUPPORTED_MODELS)}")
    else:
        kind = "llama"

    n = max(tok.vocab_size, _config_vocab_size(model_cfg))
    added = backend.get_added_tokens_decoder()
    cfg_added = set()
    atd = config.get("added_tokens_decoder")
    if isinstance(atd, Mapping):
        for key in atd:
            try:
                cfg_added.add(int(key))
            except (TypeError, ValueError):
                pass

    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    sp = parse_sentencepiece_model(tm.read_bytes()) if kind == "llama" and tm.is_file() else None
    merge_scores = _merge_scores(tj, tj_path) if kind == "llama" and sp is None else {}
    unmerged_score = min(merge_scores.values(), default=0.0) - 1.0  # below every merge
    for i in range(n):
        text = backend.id_to_token(i)
        if text is None:  # a row of the embedding with no token
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            scores.append(-10000.0)
            continue
        if sp is not None:  # tokenizer.model: SentencePiece's own types and scores
            in_sp = i < len(sp.pieces)
            base = sp.types[i] if in_sp else NORMAL
            score = sp.scores[i] if in_sp else -1000.0
        elif kind == "llama":  # a SentencePiece-style tokenizer.json: types as gguf-py's LlamaHfVocab
            base = BYTE if len(text) == 6 and _BYTE_PIECE.fullmatch(text) else NORMAL
            score = merge_scores.get(text, unmerged_score)
        else:
            base, score = NORMAL, 0.0
        t = added.get(i)
        if t is not None and (i in cfg_added or base in (NORMAL, USER_DEFINED)):
            # added tokens: special ones are control tokens, the others user-defined (as the converter marks the
            # entries of added_tokens_decoder)
            base = CONTROL if t.special else USER_DEFINED
            if i in cfg_added:
                score = -1000.0
        tokens.append(text)
        types.append(base)
        scores.append(float(score))

    md: dict[str, Any] = {K_MODEL: kind}
    if kind == "gpt2":
        md[K_PRE] = _bpe_pre_name(tok, tj, tj_path)
    else:
        md[K_PRE] = "default"
    md[K_TOKENS] = tokens
    if kind == "llama":
        md[K_SCORES] = scores
    md[K_TYPES] = types
    if kind == "gpt2":
        md[K_MERGES] = _merge_strings((tj.get("model") or {}).get("merges"), tj_path)

    if tok.bos_id is not None:
        md[K_BOS] = tok.bos_id
    if tok.eos_id is not None:
        md[K_EOS] = tok.eos_id
    unk = _special_id(backend, config.get("unk_token"), model_cfg.get("unk_token_id"), n)
    if unk is None and sp is not None and 0 <= sp.unk_id < len(sp.pieces):
        unk = sp.unk_id
    if unk is not None:
        md[K_UNK] = unk
    pad = _special_id(backend, config.get("pad_token"), model_cfg.get("pad_token_id"), n)
    if pad is not None:
        md[K_PAD] = pad
    md[K_ADD_BOS] = bool(tok.add_bos)
    md[K_ADD_EOS] = bool(tok.add_eos)
    if tj is not None:
        add_sep = _template_add_sep(tj, config)
        if add_sep is not None:
            md[K_ADD_SEP] = add_sep
    if kind == "gpt2" and isinstance(config.get("add_prefix_space"), bool):
        md[K_ADD_PREFIX] = config["add_prefix_space"]  # the converter copies it for any Llama-family model
    templates = dict(tok.chat_templates)
    default = templates.pop("default", None)
    if default is None and tok.chat_template is not None and not templates:
        default = tok.chat_template
    if default is not None:
        md[K_CHAT] = default
    names = []
    for key, template in templates.items():  # as gguf-py: tokenizer.chat_template.NAME, NAME made alphanumeric
        key = "".join(c if c.isascii() and c.isalnum() else "_" for c in key)
        if key and key != "default":
            md[K_CHAT_PREFIX + key] = template
            names.append(key)
    if names:
        md[K_CHAT_NAMES] = names
    if kind == "llama":
        md[K_ADD_PREFIX] = _llama_add_prefix(config, tj)
    derived = _llamacpp_eog(tokens, md.get(K_EOS), None, None)
    if not set(tok.eos_ids) <= derived:
        md[K_EOS_IDS] = list(tok.eos_ids)
    return md


def _merge_scores(tj: Mapping[str, Any], path: Path) -> dict[str, float]:
    """Scores for a SentencePiece-style BPE tokenizer.json: -(rank + 1) of the first merge making each token, so
    that llama.cpp's merge-by-score order is the file's merge order. (gguf-py's LlamaHfVocab writes -1000 for every
    token: llama.cpp then merges the leftmost pair first, whatever the file's merges say.)"""
    merges = (tj.get("model") or {}).get("merges")
    _merge_strings(merges, path)  # checks the format
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        merged = merge.replace(" ", "", 1) if isinstance(merge, str) else merge[0] + merge[1]
        scores.setdefault(merged, -float(rank + 1))
    return scores


def _llama_add_prefix(config: Mapping[str, Any], tj: Mapping[str, Any] | None) -> bool:
    """add_space_prefix for a SentencePiece-style folder: whether its tokenizer puts "▁" before the text."""
    if tj is None or config.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast"):
        return config.get("add_prefix_space") is not False  # transformers' LlamaTokenizer
    # a tokenizer.json used as it is: its own Metaspace scheme / "Prepend" normalizer decide
    pre, norm = json.dumps(tj.get("pre_tokenizer")), json.dumps(tj.get("normalizer"))
    if '"Prepend"' in norm:
        return True
    if '"Metaspace"' in pre:
        scheme = re.search(r'"prepend_scheme": "(\w+)"', pre)
        scheme = scheme.group(1) if scheme else ("always" if '"add_prefix_space": true' in pre else "never")
        return scheme != "never"
    return False


def _special_id(backend: _Backend, token: Any, cfg_id: Any, n: int) -> int | None:
    text = _content(token)
    if text is not None:
        i = backend.token_to_id(text)
        if i is not None and 0 <= i < n:
            return i
    if _is_int(cfg_id) and 0 <= cfg_id < n:
        return int(cfg_id)
    return None


def _bpe_pre_name(tok: Tokenizer, tj: Mapping[str, Any], path: Path) -> str:
    """tokenizer.ggml.pre as the converter finds it (hash of the ids of a check text), else by the structure
    of the pre-tokenizer."""
    digest = hashlib.sha256(str(tok.encode(_CHKTXT)).encode()).hexdigest()
    if digest in _PRE_HASHES:
        return _PRE_HASHES[digest]
    pre = tj.get("pre_tokenizer")
    if isinstance(pre, Mapping):
        items = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
        items = items if isinstance(items, list) else []
        if (len(items) == 2 and isinstance(items[0], Mapping) and isinstance(items[1], Mapping)
                and items[0].get("type") == "Split"
                and items[0].get("pattern", {}).get("Regex") in (_LLAMA3_REGEX, _QWEN2_REGEX)
                and items[1].get("type") == "ByteLevel" and not items[1].get("use_regex", True)
                and not items[1].get("add_prefix_space", False)):
            return "llama-bpe" if items[0]["pattern"]["Regex"] == _LLAMA3_REGEX else "qwen2"
        if (len(items) == 1 and isinstance(items[0], Mapping) and items[0].get("type") == "ByteLevel"
                and items[0].get("use_regex", True) and not items[0].get("add_prefix_space", False)):
            return "gpt-2"
    raise ValueError(f"{path}: unrecognized byte-level BPE pre-tokenizer (check-text hash {digest}); "
                     f"supported tokenizer.ggml.pre: {', '.join(SUPPORTED_BPE_PRE)}")


# ----------------------------------------------------------------------------------------------------------------
# metadata -> Tokenizer
# ----------------------------------------------------------------------------------------------------------------


class _Md:
    """Typed, validated access to GGUF metadata values."""

    def __init__(self, md: Mapping[str, Any], name: str):
        if not isinstance(md, Mapping):
            raise ValueError(f"{name}: metadata must be a mapping of GGUF keys, not {type(md).__name__}")
        self.md = md
        self.name = name

    def err(self, msg: str) -> ValueError:
        return ValueError(f"{self.name}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.md and self.md[key] is not None

    def str(self, key: str, required: bool = False) -> str | None:
        if not self.has(key):
            if required:
                raise self.err(f"missing {key}")
            return None
        v = self.md[key]
        if isinstance(v, (bytes, bytearray)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise self.err(f"{key} is not valid UTF-8") from None
        if not isinstance(v, str):
            raise self.err(f"{key} must be a string, not {type(v).__name__}")
        return v

    def bool(self, key: str) -> bool | None:
        if not self.has(key):
            return None
        v = self.md[key]
        if type(v).__name__ in ("bool", "bool_"):
            return bool(v)
        raise self.err(f"{key} must be a bool, not {type(v).__name__} {v!r}")

    def id(self, key: str, n: int) -> int | None:
        if not self.has(key):
            return None
        v = self.md[key]
        if not _is_int(v):
            raise self.err(f"{key} must be an integer token id, not {type(v).__name__} {v!r}")
        v = int(v)
        if not 0 <= v < n:
            raise self.err(f"{key} = {v} is out of range: the vocabulary has {n} tokens")
        return v

    def list(self, key: str, required: bool = False) -> list | None:
        if not self.has(key):
            if required:
                raise self.err(f"missing {key}")
            return None
        v = self.md[key]
        if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
            v = v.tolist()
        if not isinstance(v, (list, tuple)):
            raise self.err(f"{key} must be an array, not {type(v).__name__}")
        return list(v)


def _str_list(m: _Md, key: str, required: bool) -> list[str] | None:
    vals = m.list(key, required)
    if vals is None:
        return None
    if not all(type(v) is str for v in vals):
        for i, v in enumerate(vals):
            if not isinstance(v, str):
                raise m.err(f"{key}[{i}] must be a string, not {type(v).__name__} {v!r}")
    return vals


def tokenizer_from_metadata(md: Mapping[str, Any], name: str = "<gguf>") -> Tokenizer:
    """Build a pyllm Tokenizer from GGUF key/value metadata (plain Python values, lists for arrays).

    Supports ``tokenizer.ggml.model`` "llama" and "gpt2" (pre-tokenizers ``SUPPORTED_BPE_PRE``). ``eos_ids``
    holds ``tokenizer.ggml.eos_token_id`` first, then every other end-of-generation id llama.cpp would use (eot /
    eom ids and tokens such as "<|eot_id|>", "<|end_of_text|>"). Raises ValueError for anything missing,
    mistyped, inconsistent or unsupported."""
    m = _Md(md, name)
    model = m.str(K_MODEL)
    if model is None:
        raise m.err(f"missing {K_MODEL}; supported tokenizer models: {', '.join(SUPPORTED_MODELS)}")
    if model not in SUPPORTED_MODELS:
        raise m.err(f"unsupported {K_MODEL} {model!r}; supported: {', '.join(SUPPORTED_MODELS)}")

    tokens = _str_list(m, K_TOKENS, required=True)
    n = len(tokens)
    if n == 0:
        raise m.err(f"{K_TOKENS} is empty")
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # as llama.cpp does
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        j = seen.setdefault(t, i)
        if j != i:
            raise m.err(f"{K_TOKENS}: token {t!r} appears twice (ids {j} and {i})")

    types = m.list(K_TYPES)
    if types is None:
        types = [NORMAL] * n
    else:
        if len(types) != n:
            raise m.err(f"{K_TYPES} has {len(types)} entries but {K_TOKENS} has {n}")
        for i, t in enumerate(types):
            if not _is_int(t) or not _UNDEFINED <= t <= BYTE:
                raise m.err(f"{K_TYPES}[{i}] = {t!r} is not a token type (0..6)")
        types = [NORMAL if t == _UNDEFINED else int(t) for t in types]
    scores = m.list(K_SCORES)
    if scores is not None:
        if len(scores) != n:
            raise m.err(f"{K_SCORES} has {len(scores)} entries but {K_TOKENS} has {n}")
        for i, s in enumerate(scores):
            if not isinstance(s, numbers.Real) or isinstance(s, bool):
                raise m.err(f"{K_SCORES}[{i}] = {s!r} is not a number")
        scores = [float(s) for s in scores]

    ids = {key: m.id(key, n) for key in (K_BOS, K_EOS, K_UNK, K_PAD, K_EOT, K_EOM) + tuple(_FIM_TEXTS)}
    add_bos, add_eos = m.bool(K_ADD_BOS), m.bool(K_ADD_EOS)
    add_prefix = m.bool(K_ADD_PREFIX)
    m.bool(K_ADD_SEP)
    template = m.str(K_CHAT)
    templates = {"default": template} if template is not None else {}
    for key in md:
        if isinstance(key, str) and key.startswith(K_CHAT_PREFIX) and len(key) > len(K_CHAT_PREFIX):
            templates[key[len(K_CHAT_PREFIX):]] = m.str(key)
    pre = m.str(K_PRE)
    extra_eos = m.list(K_EOS_IDS) or []
    for i, v in enumerate(extra_eos):
        if not _is_int(v) or not 0 <= v < n:
            raise m.err(f"{K_EOS_IDS}[{i}] = {v!r} is not a token id in [0, {n})")

    if model == "llama":
        for key, kind in (("bos", K_BOS), ("eos", K_EOS), ("unk", K_UNK)):
            if ids[kind] is None and not m.has(kind) and _SP_DEFAULT_IDS[key] < n:
                ids[kind] = _SP_DEFAULT_IDS[key]
        default_add_bos = True
    else:
        if pre is None:  # as llama.cpp: no pre-tokenizer name means its "default" splits
            warnings.warn(f"{name}: no {K_PRE}; using llama.cpp's 'default' pre-tokenizer (the file's own "
                          f"tokenizer may split text differently)", stacklevel=2)
            pre = "default"
        if pre not in _BPE_PRE:
            raise m.err(f"unsupported {K_PRE} {pre!r} for {K_MODEL} 'gpt2'; supported: {', '.join(SUPPORTED_BPE_PRE)}")
        default_add_bos = _BPE_PRE[pre][2]
    bos, eos = ids[K_BOS], ids[K_EOS]
    if add_bos and bos is None:
        raise m.err(f"{K_ADD_BOS} is true but there is no {K_BOS}")
    if add_eos and eos is None:
        raise m.err(f"{K_ADD_EOS} is true but there is no {K_EOS}")
    if add_bos is None:
        add_bos = default_add_bos and bos is not None
    add_eos = bool(add_eos)

    fim = {k: ids[k] for k in _FIM_TEXTS}
    llama_eog = _llamacpp_eog(tokens, eos, ids[K_EOT], ids[K_EOM], fim)
    eog = llama_eog | {int(v) for v in extra_eos}
    eog.discard(eos)
    more_eos = [int(v) for v in extra_eos if int(v) != eos]
    more_eos += sorted(i for i in eog if i not in more_eos)

    types = _llamacpp_types(tokens, types, llama_eog, fim)
    try:
        if model == "llama":
            return _build_llama(m, tokens, scores, types, ids, add_bos, add_eos, add_prefix, templates, more_eos)
        merges = _str_list(m, K_MERGES, required=True)
        return _build_gpt2(m, tokens, types, merges, pre, ids, add_bos, add_eos, templates, more_eos)
    except ValueError:
        raise
    except BaseException as e:  # the tokenizers library rejected what the metadata holds (a Rust panic is a
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":  # BaseException)
            raise
        raise m.err(f"cannot build a tokenizer from this metadata: {e}") from None


def _special_strings(tokens, ids) -> dict[str, str]:
    """The named special tokens a chat template sees (bos/eos/unk/pad, as transformers reads them from GGUF)."""
    return {key: tokens[ids[k]] for key, k in (("bos_token", K_BOS), ("eos_token", K_EOS), ("unk_token", K_UNK),
                                                ("pad_token", K_PAD)) if ids[k] is not None}


def _spm_merges(tokens, scores):
    """llama.cpp's SentencePiece merge order as BPE merges: two adjacent pieces merge when their concatenation is
    a token, the highest-scoring such token first (llama_vocab's SPM session; any token type counts). Ranked by
    (score descending, id): tokens with equal scores are merged in id order where llama.cpp takes the leftmost pair
    (files where that matters are tokenized by _SpmSession instead, see _tie_heavy)."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, t in enumerate(tokens):
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            if left in index and right in index:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


# Token texts llama.cpp does not right-strip in Phi-3 files (the other special tokens drop the whitespace after them)
_PHI3_NO_RSTRIP = frozenset(("<unk>", "<s>", "<|endoftext|>"))


def _is_phi3(md: Mapping[str, Any]) -> bool:
    """llama.cpp's Phi-3 rule: general.name contains "phi-3" or "phi3" (any case)."""
    name = md.get("general.name")
    return isinstance(name, str) and ("phi-3" in name.lower() or "phi3" in name.lower())


def _build_llama(m, tokens, scores, types, ids, add_bos, add_eos, add_prefix, templates, more_eos):
    """A SentencePiece vocabulary tokenized as llama.cpp does it: the text is split at special and user-defined
    tokens; each remaining piece gets a "▁" prefix (add_space_prefix, default true: llama.cpp prefixes the text
    at the start and after every special token), spaces become "▁", pieces merge by score (the leftmost pair on a
    tie), and characters without a token become <0xXX> byte tokens."""
    bos, eos, unk = ids[K_BOS], ids[K_EOS], ids[K_UNK]
    if scores is None:
        scores = [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    byte_fallback = any(t == BYTE for t in types)
    merges = _spm_merges(tokens, scores)
    spm = None
    if _tie_heavy(tokens, scores, merges):
        spm = _SpmSession(tokens, scores, [i for i, ty in enumerate(types) if ty in (CONTROL, USER_DEFINED, UNKNOWN)],
                          add_prefix is not False, unk)
    backend = _Backend(BPE(vocab=vocab, merges=merges,
                           unk_token=tokens[unk] if unk is not None else None, fuse_unk=True,
                           byte_fallback=byte_fallback, dropout=None))
    norm = [normalizers.Replace(" ", "\u2581")]
    if add_prefix is not False:
        # the normalizer runs on each piece between added tokens: llama.cpp's prefix after special tokens
        norm.insert(0, normalizers.Prepend("\u2581"))
    backend.normalizer = normalizers.Sequence(norm)
    backend.pre_tokenizer = None
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix is not False:
        dec.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(dec)
    added = [AddedToken(t, special=(ty != USER_DEFINED), normalized=False)
             for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED, UNKNOWN)]
    if added:
        backend.add_tokens(added)  # already in the vocabulary: they keep their ids
    return _finish(m, backend, tokens, ids, add_bos, add_eos, templates, more_eos, spm)


class _LlamaCppTokenizer(Tokenizer):
    """A Tokenizer with llama.cpp rules the tokenizers library cannot express.

    ``_rstrip``: llama.cpp's Phi-3 rule, the whitespace after a special token (but <unk>, <s>, <|endoftext|>) is
    dropped; llama.cpp drops ASCII whitespace only (C isspace), where the library's rstrip would drop any Unicode
    whitespace, so it is dropped here before encoding.
    ``_spm``: a _SpmSession for SentencePiece vocabularies whose merged tokens mostly share one score (gguf-py's
    LlamaHfVocab writes -1000 for all): llama.cpp then merges the leftmost pair first, which no merge ranking
    reproduces, so such files are tokenized here by llama.cpp's algorithm itself."""

    _rstrip: re.Pattern | None = None
    _spm: "_SpmSession | None" = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if isinstance(text, str) and self._rstrip is not None:
            text = self._rstrip.sub(r"\1", text)
        if self._spm is None or not isinstance(text, str):
            return super().encode(text, add_special_tokens)
        ids = self._spm.encode(text)
        if add_special_tokens:
            ids = ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])
        return ids


class _SpmSession:
    """llama.cpp's SentencePiece tokenization (llama_vocab::impl::tokenize, llm_tokenizer_spm_session) in Python:
    the text is cut at special token texts (the longest first, each occurrence left to right); every text piece
    gets " " in front (add_space_prefix), spaces become "▁", its characters merge pairwise, the highest-scoring
    resulting token first and the leftmost on a tie, and characters without a token become <0xXX> tokens."""

    def __init__(self, tokens: list[str], scores: list[float], specials: list[int], add_prefix: bool,
                 unk: int | None):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.scores = scores
        self.specials = sorted(specials, key=lambda i: -len(tokens[i]))
        self.tokens = tokens
        self.prefix = add_prefix
        self.unk = unk

    def encode(self, text: str) -> list[int]:
        parts: list = [text] if text else []  # str: text to tokenize, int: a special token
        for i in self.specials:
            t, cut = self.tokens[i], []
            for part in parts:
                if isinstance(part, int) or t not in part:
                    cut.append(part)
                    continue
                for k, piece in enumerate(part.split(t)):
                    if k:
                        cut.append(i)
                    if piece:
                        cut.append(piece)
            parts = cut
        out: list[int] = []
        for part in parts:  # a text part starts the text or follows a special token: it gets the prefix
            if isinstance(part, int):
                out.append(part)
            else:
                self._merge((" " + part if self.prefix else part).replace(" ", "\u2581"), out)
        return out

    def _merge(self, text: str, out: list[int]) -> None:
        if not text:
            return
        sym = list(text)  # each symbol's text ("" once merged into its left neighbour)
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        vocab, scores, heap = self.vocab, self.scores, []

        def push(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                i = vocab.get(sym[left] + sym[right])
                if i is not None:
                    heapq.heappush(heap, (-scores[i], left, right, len(sym[left]) + len(sym[right])))

        for k in range(n - 1):
            push(k, k + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue  # one of them has merged since
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        k = 0 if n else -1
        while k >= 0:
            i = vocab.get(sym[k])
            if i is not None:
                out.append(i)
            else:  # a character without a token: its UTF-8 bytes
                for byte in sym[k].encode("utf-8"):
                    i = vocab.get(f"<0x{byte:02X}>", vocab.get(chr(byte), self.unk))
                    if i is not None:
                        out.append(i)
            k = nxt[k]


def _tie_heavy(tokens: list[str], scores: list[float], merges: list[tuple[str, str]]) -> bool:
    """Whether most tokens that merges make share one score (where the merge ranking's id order and llama.cpp's
    leftmost-first order part)."""
    index = {t: i for i, t in enumerate(tokens)}
    made = {index[a + b] for a, b in merges}
    if len(made) < 2:
        return False
    counts: dict[float, int] = {}
    for i in made:
        counts[scores[i]] = counts.get(scores[i], 0) + 1
    return max(counts.values()) * 2 > len(made)


def _finish(m, backend, tokens, ids, add_bos, add_eos, templates, more_eos, spm=None):
    """BOS/EOS post-processor and the pyllm Tokenizer around a built backend."""
    bos, eos = ids[K_BOS], ids[K_EOS]
    bos_tok = tokens[bos] if bos is not None else None
    eos_tok = tokens[eos] if eos is not None else None
    single = " ".join(([f"{bos_tok}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos_tok}:0"] if add_eos else []))
    pair = " ".join([single] + ([f"{bos_tok}:1"] if add_bos else []) + ["$B:1"]
                    + ([f"{eos_tok}:1"] if add_eos else []))
    special = [(bos_tok, bos)] if add_bos else []
    if add_eos and not (add_bos and eos == bos):
        special.append((eos_tok, eos))
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    phi3 = _is_phi3(m.md)
    tok = (_LlamaCppTokenizer if phi3 or spm is not None else Tokenizer)(
        backend, bos_token=bos_tok, eos_token=eos_tok, eos_ids=more_eos, add_bos=add_bos, add_eos=add_eos,
        chat_templates=templates, name=m.name, special_tokens=_special_strings(tokens, ids))
    tok._spm = spm
    if phi3:
        strip = sorted((t.content for t in backend.get_added_tokens_decoder().values()
                        if t.content not in _PHI3_NO_RSTRIP), key=len, reverse=True)
        tok._rstrip = re.compile("(" + "|".join(map(re.escape, strip)) + ")[ \t\n\x0b\x0c\r]+") if strip else None
    return tok


def _re_class_char(c: str) -> str:
    """c written for a regex character class."""
    return "\\" + c if c in "\\]^-[" else c


def _build_gpt2(m, tokens, types, merges, pre, ids, add_bos, add_eos, templates, more_eos):
    regexes, ignore_merges, _ = _BPE_PRE[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(s.split(" ", 1)) for s in merges]
    for k, p in enumerate(pairs):
        if len(p) != 2 or not p[0] or not p[1]:
            s = merges[k]
            cut = s.find(" ", 1)  # as llama.cpp: the first part is at least one character
            if cut < 0 or cut == len(s) - 1:
                raise m.err(f"{K_MERGES}[{k}] = {s!r} is not two tokens separated by a space")
            pairs[k] = (s[:cut], s[cut + 1:])
        if pairs[k][0] + pairs[k][1] not in vocab:
            raise m.err(f"{K_MERGES}[{k}] = {merges[k]!r}: the merged token is not in {K_TOKENS}")
    unk = ids[K_UNK]
    backend = _Backend(BPE(vocab=vocab, merges=pairs, unk_token=tokens[unk] if unk is not None else None,
                           fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges, dropout=None))
    backend.normalizer = None
    # A byte the vocabulary has no token for (falcon's lacks a few control characters) is dropped by llama.cpp
    # after merging, so its neighbours stay apart; the library's BPE would drop it first and merge across it.
    # Splitting it off into a word of its own (after the byte-level mapping) gives llama.cpp's result.
    absent = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in vocab]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
        + ([pre_tokenizers.Split(Regex("[" + "".join(map(_re_class_char, sorted(absent))) + "]"),
                                 behavior="isolated", invert=False)] if absent else []))
    backend.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=(ty == CONTROL), normalized=False)
             for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
    if added:
        backend.add_tokens(added)  # already in the vocabulary: they keep their ids
    return _finish(m, backend, tokens, ids, add_bos, add_eos, templates, more_eos)
