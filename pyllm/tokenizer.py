# Tokenizer layer for pyllm: turns text into token ids and back for Hugging Face model folders
# (SentencePiece `tokenizer.model` or `tokenizers` `tokenizer.json`, plus tokenizer_config.json and friends),
# reproducing what transformers' AutoTokenizer does, and decodes generated ids incrementally for streaming.
"""Text <-> token ids.

Every tokenizer is wrapped around a ``tokenizers.Tokenizer`` (the Rust library) that is configured exactly as
transformers 5 configures it, so ``encode``/``decode`` match ``AutoTokenizer`` on the same folder:

* ``tokenizer.json`` is loaded as is (as ``TokenizersBackend`` does), and its post-processor is rebuilt only when
  tokenizer_config.json says ``add_bos_token``/``add_eos_token`` explicitly.
* ``tokenizer.model`` (SentencePiece) is read with a small built-in protobuf reader (no ``protobuf`` or
  ``sentencepiece`` package needed) and converted the way transformers' ``LlamaTokenizer`` converts it: a BPE
  model over the piece vocabulary with merges derived from it, byte fallback, a ``Metaspace`` pre-tokenizer
  (``legacy: false`` -> the "▁" prefix only at the very start of the text, not after special tokens) and a decoder
  that strips the one leading space.

Construction paths that need no files (for vocabularies embedded elsewhere, e.g. GGUF):
``Tokenizer.from_sentencepiece_bytes``, ``Tokenizer.from_sentencepiece_vocab``,
``Tokenizer.from_tokenizers_json`` and the plain constructor ``Tokenizer(backend, ...)``.
"""

from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend
from tokenizers.models import BPE, Unigram

from .config import read_json_file
from .errors import ModelLoadError
from .mapped_file import read_small_file

__all__ = ["Tokenizer", "StreamDecoder", "SentencePieceModel", "parse_sentencepiece_model"]

_LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast"}
_NAMED_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Special tokens a transformers tokenizer class has when tokenizer_config.json does not name them (its __init__
# defaults); they are part of the special_tokens_map chat templates see.
_CLASS_DEFAULT_TOKENS = {
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "GemmaTokenizer": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                       "mask_token": "<mask>"},
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
}
_CHAT_TEMPLATE_DIR = "additional_chat_templates"  # <name>.jinja files: named chat templates (transformers 5)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# SentencePiece piece types (sentencepiece_model.proto)
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


# ----------------------------------------------------------------------------------------------------------------
# Minimal protobuf reader for SentencePiece's ModelProto
# ----------------------------------------------------------------------------------------------------------------


class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _ProtoError("malformed varint")


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) for one protobuf message; raise _ProtoError on malformed data."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise _ProtoError("field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > n:
                raise _ProtoError("truncated fixed64")
            val = buf[pos : pos + 8]
            pos += 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise _ProtoError("truncated length-delimited field")
            val = buf[pos : pos + ln]
            pos += ln
        elif wt == 5:
            if pos + 4 > n:
                raise _ProtoError("truncated fixed32")
            val = buf[pos : pos + 4]
            pos += 4
        else:
            raise _ProtoError(f"unsupported wire type {wt}")
        yield num, wt, val


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _expect(wt: int, want: int, what: str) -> None:
    if wt != want:
        raise _ProtoError(f"wrong wire type for {what}")


def _utf8(val: bytes, what: str) -> str:
    try:
        return bytes(val).decode("utf-8")
    except UnicodeDecodeError:
        raise _ProtoError(f"{what} is not valid UTF-8") from None


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece ModelProto that tokenization needs (defaults as in the .proto file)."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: int = 1  # 1 unigram, 2 BPE, 3 word, 4 char
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    extra: dict = field(default_factory=dict)


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Parse a serialized SentencePiece ``ModelProto``. Raises ValueError when ``data`` is not one."""
    import struct

    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    m = SentencePieceModel(pieces, scores, types)
    try:
        for num, wt, val in _fields(data):
            if num == 1:  # repeated SentencePiece pieces
                _expect(wt, 2, "piece")
                piece, score, ptype = None, 0.0, SP_NORMAL
                for pn, pwt, pval in _fields(val):
                    if pn == 1:
                        _expect(pwt, 2, "piece.piece")
                        piece = _utf8(pval, "piece")
                    elif pn == 2:
                        _expect(pwt, 5, "piece.score")
                        score = struct.unpack("<f", pval)[0]
                    elif pn == 3:
                        _expect(pwt, 0, "piece.type")
                        ptype = _int32(pval)
                if piece is None:
                    raise _ProtoError("piece without text")
                if ptype not in (1, 2, 3, 4, 5, 6):
                    raise _ProtoError(f"unknown piece type {ptype}")
                pieces.append(piece)
                scores.append(score)
                types.append(ptype)
            elif num == 2:  # TrainerSpec
                _expect(wt, 2, "trainer_spec")
                for tn, twt, tval in _fields(val):
                    if tn == 3 and twt == 0:
                        m.model_type = _int32(tval)
                    elif tn == 35 and twt == 0:
                        m.byte_fallback = bool(tval)
                    elif tn in (40, 41, 42, 43) and twt == 0:
                        setattr(m, {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[tn], _int32(tval))
                    elif tn in (45, 46, 47, 48) and twt == 2:
                        name = {45: "unk_piece", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}[tn]
                        setattr(m, name, _utf8(tval, name))
            elif num == 3:  # NormalizerSpec
                _expect(wt, 2, "normalizer_spec")
                for nn, nwt, nval in _fields(val):
                    if nn == 1 and nwt == 2:
                        m.normalizer_name = _utf8(nval, "normalizer name")
                    elif nn == 2 and nwt == 2:
                        m.precompiled_charsmap = bytes(nval)
                    elif nn == 3 and nwt == 0:
                        m.add_dummy_prefix = bool(nval)
                    elif nn == 4 and nwt == 0:
                        m.remove_extra_whitespaces = bool(nval)
                    elif nn == 5 and nwt == 0:
                        m.escape_whitespaces = bool(nval)
    except _ProtoError as e:
        raise ValueError(f"not a SentencePiece model: {e}") from None
    if not pieces:
        raise ValueError("not a SentencePiece model: it has no pieces")
    if m.model_type not in (1, 2, 3, 4):
        raise ValueError(f"not a SentencePiece model: unknown model type {m.model_type}")
    return m


# ----------------------------------------------------------------------------------------------------------------
# Helpers replicating transformers' conversion
# ----------------------------------------------------------------------------------------------------------------


def _generate_merges(vocab: Mapping[str, int], skip_tokens: Iterable[str] = ()) -> list[tuple[str, str]]:
    """transformers' ``generate_merges(vocab)``: every split of a piece into two pieces, ranked by the id of the
    merged piece (then by the lengths of the parts)."""
    skip = set(skip_tokens)
    merges = []
    for merge, piece_score in vocab.items():
        if merge in skip:
            continue
        local = []
        for index in range(1, len(merge)):
            left, right = merge[:index], merge[index:]
            if left in skip or right in skip:
                continue
            if left in vocab and right in vocab:
                local.append((left, right, piece_score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])))
    return [(a, b) for a, b, _ in merges]


def _token_content(value: Any) -> str | None:
    """A special-token entry of a config: a string, an AddedToken-like dict, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_token(value: Any, special: bool) -> AddedToken | None:
    if isinstance(value, str):
        return AddedToken(value, special=special, normalized=not special)
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return AddedToken(
            value["content"],
            single_word=bool(value.get("single_word", False)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            normalized=bool(value.get("normalized", not value.get("special", special))),
            special=bool(value.get("special", special)),
        )
    return None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _token_id(x) -> int:
    """x as a token id (an int or a numpy integer). A bool is refused: Python counts True / False as
    ints, but one among token ids is a caller's bug (a mask passed for ids), not token 1 / 0."""
    if isinstance(x, bool):
        raise TypeError(f"token ids must be integers, got {x!r}")
    return operator.index(x)


def _clean_up_tokenization(text: str) -> str:
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _read_json(path: Path) -> dict:
    return read_json_file(path)  # ModelLoadError naming the file for anything unreadable


def _chat_templates(value: Any, name: str) -> dict[str, str]:
    """tokenizer_config.json's ``chat_template`` as {name: template}: a string is the "default" template, a list
    holds {"name": ..., "template": ...} entries (a dict is already by name)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError(f"{name}: chat_template[{i}] is not a {{\"name\": ..., \"template\": ...}} entry")
            items.append((entry["name"], entry.get("template")))
    else:
        raise ValueError(f"{name}: chat_template must be a string or a list of named templates, "
                         f"not {type(value).__name__}")
    out = {}
    for key, template in items:
        if not isinstance(key, str) or not isinstance(template, str):
            raise ValueError(f"{name}: chat template {key!r} is not a string")
        out[key] = template
    return out


def _special_tokens_map(config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens transformers' tokenizer gets from this config (its ``special_tokens_map``, which
    chat templates see as variables): the standard names, the class's defaults for those the config does not
    mention, and model-specific ``*_token`` entries (e.g. "image_token") and ``extra_special_tokens`` dicts."""
    out: dict[str, str] = {}
    cls_name = config.get("tokenizer_class")
    if isinstance(cls_name, str):
        defaults = _CLASS_DEFAULT_TOKENS.get(cls_name.removesuffix("Fast"), {})
        out.update({k: v for k, v in defaults.items() if k not in config})
    for key in _NAMED_SPECIAL_KEYS:
        v = _token_content(config.get(key))
        if v is not None:
            out[key] = v
    for key, value in config.items():
        if key.endswith("_token") and key not in _NAMED_SPECIAL_KEYS:
            if isinstance(value, str):
                out[key] = value
            elif isinstance(value, Mapping) and value.get("__type") == "AddedToken":
                v = _token_content(value)
                if v is not None:
                    out[key] = v
    for key in ("additional_special_tokens", "extra_special_tokens"):
        vals = config.get(key)
        if isinstance(vals, Mapping):
            for k, v in vals.items():
                v = _token_content(v)
                if isinstance(k, str) and v is not None:
                    out[k] = v
    return out


def _template_post_processor(backend: _Backend, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool):
    """transformers' ``TokenizersBackend.update_post_processor``."""
    bos_id = backend.token_to_id(bos) if bos is not None else None
    eos_id = backend.token_to_id(eos) if eos is not None else None
    add_bos = add_bos and bos is not None and bos_id is not None
    add_eos = add_eos and eos is not None and eos_id is not None
    single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
    pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
    special = []
    if add_bos:
        special.append((bos, bos_id))
    if add_eos:
        special.append((eos, eos_id))
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _llama_backend(
    vocab: dict[str, int], merges: list[tuple[str, str]], *, legacy: bool, add_prefix_space: bool
) -> _Backend:
    """The backend transformers' ``LlamaTokenizer.__init__`` builds (BPE + byte fallback + Metaspace)."""
    backend = _Backend(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    backend.normalizer = None
    if add_prefix_space:
        scheme = "always" if legacy else "first"
    else:
        scheme = "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    seq = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        seq.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(seq)
    return backend


def _spm_faithful_backend(m: SentencePieceModel, vocab: dict[str, int], legacy: bool) -> _Backend:
    """transformers' ``SpmConverter.build_tokenizer_from_spm_proto``: follow the SentencePiece model's own normalizer
    settings (used for SentencePiece files whose tokenizer_class is not a Llama one)."""
    id_to_token = {i: t for t, i in vocab.items()}
    user_defined = [id_to_token[i] for i, t in enumerate(m.types) if t == SP_USER_DEFINED and i in id_to_token]
    if m.model_type == 1:  # unigram
        backend = _Backend(
            Unigram(vocab=list(zip(m.pieces, m.scores)), unk_id=m.unk_id, byte_fallback=m.byte_fallback)
        )
    else:
        normal = {
            id_to_token[i]: (m.scores[i], i) for i, t in enumerate(m.types) if t == SP_NORMAL and i in id_to_token
        }
        ranked = []
        for token, rank in normal.items():
            for split in range(1, len(token)):
                left, right = token[:split], token[split:]
                if left in normal and right in normal:
                    ranked.append((-rank[0], rank[1], left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        backend = _Backend(
            BPE(
                vocab=vocab,
                merges=merges,
                unk_token=m.unk_piece,
                fuse_unk=True,
                byte_fallback=m.byte_fallback,
                dropout=None,
                ignore_merges=bool(user_defined),
            )
        )
    norms = []
    if m.precompiled_charsmap:
        norms.append(normalizers.Precompiled(m.precompiled_charsmap))
    if m.remove_extra_whitespaces:
        norms += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if m.escape_whitespaces:
        norms.append(normalizers.Replace(" ", "▁"))
    scheme = "always" if legacy else "first"
    if m.add_dummy_prefix and legacy:
        norms.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
    backend.normalizer = normalizers.Sequence(norms)
    pres = []
    if m.add_dummy_prefix:
        pres.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False))
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        pres.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if pres:
        backend.pre_tokenizer = pre_tokenizers.Sequence(pres)
    decs = [decoders.Replace("▁", " ")]
    if m.byte_fallback:
        decs.append(decoders.ByteFallback())
    if m.add_dummy_prefix:
        decs += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    elif m.byte_fallback:
        decs.append(decoders.Fuse())
    backend.decoder = decoders.Sequence(decs)
    # transformers deep-copies this object, i.e. round-trips it through JSON, which rounds Unigram scores
    return _Backend.from_str(backend.to_str())


def _decoder_types(backend: _Backend) -> set[str]:
    """The ``type`` names appearing in the backend's decoder configuration."""
    dec = backend.decoder
    if dec is None:
        return set()
    try:
        state = json.loads(dec.__getstate__())
    except Exception:  # pragma: no cover - very old tokenizers
        return set()
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(state)
    return found


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


class Tokenizer:
    """A text tokenizer around a configured ``tokenizers.Tokenizer`` backend.

    Attributes: ``vocab_size`` (number of ids, added tokens included), ``bos_id``, ``eos_ids`` (every id that ends
    generation), ``add_bos`` (whether ``encode(..., add_special_tokens=True)`` puts BOS first), ``add_eos``,
    ``bos_token``/``eos_token`` (strings), ``chat_template`` (the default chat template or None),
    ``chat_templates`` (every chat template by name: {"default": ..., "tool_use": ...}; empty when none) and
    ``special_tokens_map`` (the special-token strings chat templates see, as transformers passes them).
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_ids: Iterable[int] = (),
        add_bos: bool | None = None,
        add_eos: bool | None = None,
        chat_template: str | None = None,
        clean_up_tokenization_spaces: bool = False,
        name: str = "<memory>",
        chat_templates: Mapping[str, str] | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ):
        """Wrap a ready ``tokenizers.Tokenizer``. ``eos_ids`` are extra end-of-generation ids (the id of
        ``eos_token`` always comes first). ``add_bos``/``add_eos``: None keeps what the backend's post-processor
        adds; True/False replaces it (on a copy of the backend) by one that adds BOS/EOS or not.
        ``chat_templates``: named chat templates ({"default": ..., "tool_use": ...}); by default
        {"default": chat_template}. ``special_tokens``: the named special-token strings chat templates see
        ({"bos_token": "<s>", ...}); by default bos_token and eos_token."""
        if not isinstance(backend, _Backend):
            raise TypeError("backend must be a tokenizers.Tokenizer")
        self._backend = backend
        self.name = name
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        if added:
            self.vocab_size = max(self.vocab_size, max(added) + 1)
        self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)

        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id: int | None = backend.token_to_id(bos_token) if bos_token is not None else None
        eos_list: list[int] = []
        eos_tok_id = backend.token_to_id(eos_token) if eos_token is not None else None
        for i in ([eos_tok_id] if eos_tok_id is not None else []) + list(eos_ids):
            i = operator.index(i)
            if 0 <= i < self.vocab_size and i not in eos_list:
                eos_list.append(i)
        self.eos_ids: list[int] = eos_list
        self.eos_id: int | None = eos_list[0] if eos_list else None
        if chat_templates is None:
            templates = {"default": chat_template} if chat_template is not None else {}
        else:
            templates = dict(chat_templates)
            if chat_template is None and templates:
                chat_template = templates.get("default", next(iter(templates.values())))
        for key, value in [("chat_template", chat_template)] + list(templates.items()):
            if value is not None and not isinstance(value, str) or not isinstance(key, str):
                raise TypeError(f"chat template {key!r} must be a string, not {type(value).__name__}")
        self.chat_template: str | None = chat_template
        self.chat_templates: dict[str, str] = templates
        if special_tokens is None:
            special_tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
        for key, value in special_tokens.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"special_tokens must map names to token strings; got {key!r}: {value!r}")
        self._special_tokens: dict[str, str] = dict(special_tokens)

        # What the post-processor adds, found by encoding an empty text.
        probe = backend.encode("", add_special_tokens=True).ids
        found_bos = self.bos_id is not None and probe[:1] == [self.bos_id]
        found_eos = eos_tok_id is not None and probe[-1:] == [eos_tok_id] and len(probe) > int(found_bos)
        if (add_bos is not None and bool(add_bos) != found_bos) or (add_eos is not None and bool(add_eos) != found_eos):
            # rebuild the post-processor on a copy (the given backend may be shared)
            backend = _Backend.from_str(backend.to_str())
            backend.post_processor = _template_post_processor(
                backend, bos_token, eos_token,
                found_bos if add_bos is None else bool(add_bos),
                found_eos if add_eos is None else bool(add_eos),
            )
            self._backend = backend
            probe = backend.encode("", add_special_tokens=True).ids
            found_bos = self.bos_id is not None and probe[:1] == [self.bos_id]
            found_eos = eos_tok_id is not None and probe[-1:] == [eos_tok_id] and len(probe) > int(found_bos)
        self.add_bos: bool = found_bos
        self.add_eos: bool = found_eos

        # Cleanup (transformers skips it for BPE models: it would corrupt their output).
        model_type = type(backend.model).__name__
        self._clean_up = bool(clean_up_tokenization_spaces) and model_type != "BPE"

        # Byte-fallback ids: a run of them is decoded as one unit (all-or-nothing UTF-8), so streaming holds them.
        self._byte_ids: frozenset[int] = frozenset()
        if "ByteFallback" in _decoder_types(backend):
            self._byte_ids = frozenset(i for t, i in backend.get_vocab(with_added_tokens=True).items()
                                       if len(t) == 6 and _BYTE_PIECE.fullmatch(t))

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a Hugging Face model/tokenizer folder: ``tokenizer.json`` or ``tokenizer.model``, plus the optional
        tokenizer_config.json, special_tokens_map.json, generation_config.json, config.json and chat template
        files."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {folder}")
        try:
            return cls._from_dir(folder)
        except ModelLoadError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
            # what the files hold is wrong: a load error, naming the folder unless the message names a file in it
            msg = str(e) if str(folder) in str(e) else f"{folder}: cannot build the tokenizer: {e}"
            raise ModelLoadError(msg) from None

    @classmethod
    def _from_dir(cls, folder: Path) -> "Tokenizer":
        config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        stm_path = folder / "special_tokens_map.json"
        if stm_path.is_file() and "added_tokens_decoder" not in config:
            # as transformers: the legacy map is only read for configs without added_tokens_decoder, and wins
            for k, v in _read_json(stm_path).items():
                if k in _NAMED_SPECIAL_KEYS or k in ("additional_special_tokens", "extra_special_tokens"):
                    config[k] = v
                elif k.endswith("_token") and _token_content(v) is not None:
                    config[k] = _token_content(v)  # a model-specific special token, e.g. "image_token"
        at_path = folder / "added_tokens.json"
        if at_path.is_file() and "added_tokens_decoder" not in config:
            # as transformers (legacy folders): {token: id} for tokens past the model's vocabulary; a token named as
            # a special one in the config is special (and not normalized), the others are plain added tokens
            at = _read_json(at_path)
            specials = {_token_content(config.get(k)) for k in _NAMED_SPECIAL_KEYS}
            for key in ("additional_special_tokens", "extra_special_tokens"):
                vals = config.get(key)
                vals = list(vals.values()) if isinstance(vals, Mapping) else vals
                if isinstance(vals, list):
                    specials.update(_token_content(v) for v in vals)
            atd = {}
            for content, idx in at.items():
                if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                    raise ValueError(f"{at_path}: id of {content!r} is {idx!r}, not a token id")
                special = content in specials
                atd[str(idx)] = {"content": content, "lstrip": False, "rstrip": False, "normalized": not special,
                                 "special": special, "single_word": False}
            config["added_tokens_decoder"] = atd
        # As transformers: template files (chat_template.jinja: "default", additional_chat_templates/NAME.jinja:
        # NAME) replace the config's templates. chat_template.json (a processor's file) is a last resort.
        files = {}
        if (folder / "chat_template.jinja").is_file():
            files["default"] = folder / "chat_template.jinja"
        if (folder / _CHAT_TEMPLATE_DIR).is_dir():
            for p in sorted((folder / _CHAT_TEMPLATE_DIR).glob("*.jinja")):
                files[p.name.removesuffix(".jinja")] = p
        if files:
            templates = {}
            for key, p in files.items():
                try:
                    templates[key] = read_small_file(str(p)).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ModelLoadError(f"{p}: not valid UTF-8 ({e})") from None
            config["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
        elif config.get("chat_template") is None and (folder / "chat_template.json").is_file():
            config["chat_template"] = _read_json(folder / "chat_template.json").get("chat_template")
        gen = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
        model_cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}

        tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
        if tj.is_file():
            try:
                text = read_small_file(str(tj)).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ModelLoadError(f"{tj}: not valid UTF-8 ({e})") from None
            return cls.from_tokenizers_json(text, config, generation_config=gen, model_config=model_cfg, name=str(tj))
        if tm.is_file():
            data = read_small_file(str(tm))
            return cls.from_sentencepiece_bytes(data, config, generation_config=gen, model_config=model_cfg,
                                                name=str(tm))
        raise ModelLoadError(f"{folder}: no tokenizer.json or tokenizer.model (a model folder needs one of them)")

    @classmethod
    def from_tokenizers_json(
        cls,
        json_str: str,
        config: Mapping[str, Any] | None = None,
        *,
        generation_config: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        name: str = "tokenizer.json",
    ) -> "Tokenizer":
        """Build from the text of a ``tokenizer.json`` and a tokenizer_config dict. As in transformers, the file's
        post-processor decides what is added around a sequence (``add_bos_token``/``add_eos_token`` are ignored)."""
        config = dict(config or {})
        config.pop("add_bos_token", None)
        config.pop("add_eos_token", None)
        try:
            backend = _Backend.from_str(json_str)
        except Exception as e:
            raise ValueError(f"{name}: not a valid tokenizers file: {e}") from None
        try:
            return cls._build_json(backend, json_str, config, generation_config, model_config, name)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{name}: cannot build a tokenizer from it: {e}") from None

    @classmethod
    def _build_json(cls, backend, json_str, config, generation_config, model_config, name) -> "Tokenizer":
        cls_name = config.get("tokenizer_class")
        if cls_name in _LLAMA_CLASSES and '"ByteLevel"' not in json_str:
            # transformers rebuilds a Llama backend from the file's vocab and merges
            data = json.loads(json_str)
            model = data.get("model") or {}
            if model.get("type") == "BPE" and isinstance(model.get("vocab"), dict):
                vocab = dict(model["vocab"])
                merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
                post = backend.post_processor
                backend = _llama_backend(vocab, merges, legacy=bool(config.get("legacy", False)),
                                         add_prefix_space=config.get("add_prefix_space") is not False)
                backend.post_processor = post
                added = [_added_token(t, bool(t.get("special"))) for t in data.get("added_tokens") or []]
                added = [t for t in added if t is not None]
                if added:
                    backend.add_tokens(added)
        return cls._finish(backend, config, generation_config, model_config, name, default_add_bos=False)

    @classmethod
    def from_sentencepiece_bytes(
        cls,
        model_bytes: bytes,
        config: Mapping[str, Any] | None = None,
        *,
        generation_config: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        name: str = "tokenizer.model",
    ) -> "Tokenizer":
        """Build from the bytes of a SentencePiece ``tokenizer.model`` and a tokenizer_config dict."""
        try:
            m = parse_sentencepiece_model(bytes(model_bytes))
        except ValueError as e:
            raise ModelLoadError(f"{name}: {e}") from None
        return cls._from_sp_model(m, config, generation_config, model_config, name)

    @classmethod
    def from_sentencepiece_vocab(
        cls,
        pieces: Sequence[str],
        scores: Sequence[float] | None = None,
        types: Sequence[int] | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        model_type: int = 2,
        byte_fallback: bool | None = None,
        unk_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        generation_config: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None,
        name: str = "<sentencepiece vocab>",
    ) -> "Tokenizer":
        """Build from a SentencePiece vocabulary given as lists (e.g. GGUF's tokenizer.ggml.tokens / scores /
        token_type, whose type codes are SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user-defined,
        5 unused, 6 byte)."""
        pieces = list(pieces)
        if not pieces:
            raise ValueError(f"{name}: empty vocabulary")
        scores = [float(s) for s in scores] if scores is not None else [0.0] * len(pieces)
        types = [int(t) for t in types] if types is not None else [SP_NORMAL] * len(pieces)
        if len(scores) != len(pieces) or len(types) != len(pieces):
            raise ValueError(f"{name}: pieces, scores and types differ in length")
        if byte_fallback is None:
            byte_fallback = any(t == SP_BYTE for t in types)
        m = SentencePieceModel(pieces, scores, types, model_type=model_type, byte_fallback=byte_fallback,
                               unk_id=unk_id, bos_id=bos_id, eos_id=eos_id)
        m.unk_piece = pieces[unk_id] if 0 <= unk_id < len(pieces) else "<unk>"
        m.bos_piece = pieces[bos_id] if 0 <= bos_id < len(pieces) else "<s>"
        m.eos_piece = pieces[eos_id] if 0 <= eos_id < len(pieces) else "</s>"
        return cls._from_sp_model(m, config, generation_config, model_config, name)

    @classmethod
    def _from_sp_model(cls, m: SentencePieceModel, config, generation_config, model_config, name) -> "Tokenizer":
        try:
            return cls._build_sp(m, config, generation_config, model_config, name)
        except ValueError:
            raise
        except Exception as e:  # the tokenizers library rejected what the model holds
            raise ValueError(f"{name}: cannot build a tokenizer from it: {e}") from None

    @classmethod
    def _build_sp(cls, m: SentencePieceModel, config, generation_config, model_config, name) -> "Tokenizer":
        config = dict(config or {})
        # Default named tokens come from the model itself (as LlamaTokenizer's defaults <unk>, <s>, </s> do).
        if "bos_token" not in config and 0 <= m.bos_id < len(m.pieces):
            config["bos_token"] = m.bos_piece
        if "eos_token" not in config and 0 <= m.eos_id < len(m.pieces):
            config["eos_token"] = m.eos_piece
        if "unk_token" not in config and 0 <= m.unk_id < len(m.pieces):
            config["unk_token"] = m.unk_piece
        vocab = {p: i for i, p in enumerate(m.pieces)}
        legacy = bool(config.get("legacy", False))
        llama = config.get("tokenizer_class") in _LLAMA_CLASSES
        if llama:
            merges = _generate_merges(vocab)
            backend = _llama_backend(vocab, merges, legacy=legacy,
                                     add_prefix_space=config.get("add_prefix_space") is not False)
        else:
            backend = _spm_faithful_backend(m, vocab, legacy=bool(config.get("legacy", True)))
        # Control pieces are special tokens. User-defined pieces are plain added tokens for LlamaTokenizer; the
        # faithful backend isolates them in its pre-tokenizer instead.
        kinds = (SP_CONTROL, SP_USER_DEFINED) if llama else (SP_CONTROL,)
        extra = [
            AddedToken(p, normalized=False, special=(t == SP_CONTROL))
            for p, t in zip(m.pieces, m.types)
            if t in kinds
        ]
        if extra:
            backend.add_tokens(extra)
        return cls._finish(backend, config, generation_config, model_config, name, default_add_bos=True)

    @classmethod
    def _finish(cls, backend, config, generation_config, model_config, name, default_add_bos) -> "Tokenizer":
        """Apply tokenizer_config.json the way TokenizersBackend does: added tokens, named special tokens and the
        BOS/EOS post-processor."""
        generation_config = generation_config or {}
        model_config = model_config or {}

        # added_tokens_decoder entries, in id order
        atd = config.get("added_tokens_decoder") or {}
        if isinstance(atd, Mapping):
            present = backend.get_added_tokens_decoder()
            new = []
            entries = []
            for key, value in atd.items():
                try:
                    entries.append((int(key), value))
                except (TypeError, ValueError):
                    raise ValueError(f"{name}: bad added_tokens_decoder key {key!r} in tokenizer_config") from None
            for idx, value in sorted(entries, key=lambda e: e[0]):
                tok = _added_token(value, special=True)
                if tok is None:
                    continue
                if idx in present and present[idx].content == tok.content:
                    continue
                new.append(tok)
            if new:
                backend.add_tokens(new)
        # named special tokens and extra special tokens
        specials = []
        for key in _NAMED_SPECIAL_KEYS:
            tok = _added_token(config.get(key), special=True)
            if tok is not None:
                specials.append(tok)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            vals = config.get(key)
            if isinstance(vals, Mapping):
                vals = list(vals.values())
            for v in vals or []:
                tok = _added_token(v, special=True)
                if tok is not None:
                    specials.append(tok)
        if specials:
            # (re-)added as special, as transformers' _post_init does; pieces already in the vocabulary keep their id
            backend.add_special_tokens(specials)

        bos_token = _token_content(config.get("bos_token"))
        eos_token = _token_content(config.get("eos_token"))
        if bos_token is None:
            for src in (config, generation_config, model_config):
                bid = src.get("bos_token_id")
                if isinstance(bid, int) and not isinstance(bid, bool) and backend.id_to_token(bid) is not None:
                    bos_token = backend.id_to_token(bid)
                    break

        explicit = "add_bos_token" in config or "add_eos_token" in config
        add_bos_cfg = config.get("add_bos_token")
        if add_bos_cfg is None:
            add_bos_cfg = default_add_bos
        add_eos_cfg = bool(config.get("add_eos_token", False))
        if explicit or backend.post_processor is None:
            backend.post_processor = _template_post_processor(backend, bos_token, eos_token, bool(add_bos_cfg),
                                                              add_eos_cfg)

        eos_ids = _as_id_list(generation_config.get("eos_token_id")) + _as_id_list(model_config.get("eos_token_id"))

        templates = _chat_templates(config.get("chat_template"), name)
        template = templates.get("default", next(iter(templates.values()), None))

        return cls(
            backend,
            bos_token=bos_token,
            eos_token=eos_token,
            eos_ids=eos_ids,
            chat_template=template,
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            name=name,
            chat_templates=templates,
            special_tokens=_special_tokens_map(config),
        )

    # -- encode / decode ---------------------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens as strings ({"bos_token": "<s>", "eos_token": "</s>", "unk_token": ...}), as
        transformers' ``tokenizer.special_tokens_map``: the variables ``apply_chat_template`` gives a chat template
        besides the messages. A new dict each time."""
        return dict(self._special_tokens)

    @property
    def backend(self) -> _Backend:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_ids={self.eos_ids})"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special-token strings inside the text (e.g. "</s>") become their ids;
        ``add_special_tokens`` adds what the tokenizer adds around a sequence (usually BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def _check_ids(self, ids) -> list[int]:
        if isinstance(ids, (str, bytes)):
            raise TypeError("decode() takes a sequence of token ids")
        try:
            out = [_token_id(i) for i in ids]
        except TypeError:
            raise TypeError("token ids must be integers") from None
        n = self.vocab_size
        for i in out:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} out of range [0, {n})")
        return out

    def _decode_checked(self, ids: list[int], skip_special_tokens: bool) -> str:
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._clean_up:
            text = _clean_up_tokenization(text)
        return text

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (as transformers' ``tokenizer.decode``)."""
        try:
            ids = [_token_id(ids)]  # a single id
        except TypeError:
            if hasattr(ids, "tolist"):  # numpy array
                ids = ids.tolist()
        return self._decode_checked(self._check_ids(ids), skip_special_tokens)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry (token string) of id ``i``, e.g. "▁Hello" or "<0x0A>"."""
        i = _token_id(i)
        piece = self._backend.id_to_token(i) if 0 <= i < self.vocab_size else None
        if piece is None:
            raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
        return piece

    def piece_to_id(self, piece: str) -> int | None:
        """The id of a vocabulary entry, or None."""
        return self._backend.token_to_id(piece)

    def is_special(self, i: int) -> bool:
        """Whether id ``i`` is a special token (skipped by ``skip_special_tokens``)."""
        return i in self.special_ids

    def stream_decoder(self, skip_special_tokens: bool = False, prompt_ids: Iterable[int] | None = None
                       ) -> "StreamDecoder":
        """An incremental decoder: push ids one at a time, get back newly completed text. ``prompt_ids``, if
        given, are fed as context whose text is not returned (see ``StreamDecoder.prime``)."""
        dec = StreamDecoder(self, skip_special_tokens)
        if prompt_ids is not None:
            dec.prime(prompt_ids)
        return dec


class StreamDecoder:
    """Incremental detokenizer whose outputs, concatenated with ``flush()``, equal ``Tokenizer.decode(ids)``.

    It decodes a small window: one "anchor" token whose text is already out, plus the tokens after it. Text that
    may still change is held back: an incomplete UTF-8 character (trailing U+FFFD), a run of byte-fallback tokens
    (decoded all-or-nothing), and, when cleanup of tokenization spaces is on, a space near the end.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = bool(skip_special_tokens)
        self._reset()

    def _reset(self) -> None:
        self._win: list[int] = []  # ids decoded together; win[0] is the anchor once the stream has advanced
        self._emitted = 0  # characters of decode(win) already returned

    def _decode(self, ids: list[int]) -> str:
        return self._tok._decode_checked(ids, self._skip)

    def _can_anchor(self, i: int) -> bool:
        # Any token after which all text is out can start the window, except a byte-fallback token (its run may
        # go on). Skipped special tokens never get here: with no text of their own, the decoder's leading-space
        # strip would move on to the next token. A token that starts inside a UTF-8 character is fine: its stray
        # continuation bytes decode to the same U+FFFD characters with or without what follows.
        return i not in self._tok._byte_ids

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly "")."""
        tid = _token_id(token_id)
        if not 0 <= tid < self._tok.vocab_size:
            raise ValueError(f"token id {tid} out of range [0, {self._tok.vocab_size})")
        if self._skip and tid in self._tok.special_ids:
            return ""  # no text, and decoding drops it anyway (it does not even end a byte-fallback run)
        self._win.append(tid)
        if tid in self._tok._byte_ids:
            return ""  # a byte-fallback run is decoded as a whole
        text = self._decode(self._win)
        end = len(text)
        while end > self._emitted and text[end - 1] == "\ufffd":
            end -= 1  # possibly an incomplete character
        if self._tok._clean_up:
            k = text.rfind(" ", max(self._emitted, end - 4), end)
            if k >= 0:
                end = k
        out = text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        if end == len(text) and len(self._win) > 1 and self._can_anchor(tid):
            # everything is out: restart the window at this token
            self._win = [tid]
            self._emitted = len(self._decode(self._win))
        return out

    def prime(self, ids: Iterable[int]) -> None:
        """Feed context ids (e.g. the prompt) whose text is not to be returned. Later pushes return only the
        new text, spaced as it is after this context (e.g. the leading space of the first generated word)."""
        for i in ids:
            self.push(i)
        if self._win:
            text = self._decode(self._win)
            end = len(text)
            while end > self._emitted and text[end - 1] == "\ufffd":
                end -= 1  # an incomplete character is returned whole once the next ids complete it
            self._emitted = max(self._emitted, end)

    def flush(self) -> str:
        """Return whatever text is still held back, and reset the decoder for a new stream."""
        out = ""
        if self._win:
            text = self._decode(self._win)
            out = text[self._emitted :]
        self._reset()
        return out
