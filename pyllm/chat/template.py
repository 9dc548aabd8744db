# Chat templates: renders a model's Jinja chat template into prompt text exactly as transformers'
# `tokenizer.apply_chat_template(messages, tokenize=False, ...)` does (same sandbox, globals, filters, variables and
# message preprocessing), picks which of a tokenizer's templates to use, and finds the ids that end a chat turn.
"""Chat-template rendering.

``render_chat_template(template, messages, ...)`` turns a conversation (a list of ``{"role": ..., "content": ...}``
dicts) into the prompt string the model was trained on. The template runs in jinja2's
``ImmutableSandboxedEnvironment`` set up as transformers 5 sets it up: ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension, the ``{% generation %}`` tag, the ``raise_exception``/``strftime_now`` globals, a
``tojson`` filter with ``ensure_ascii=False``, and the restricted ``dict``/``namespace`` globals. The variables it
sees are ``messages``, ``tools``, ``documents``, ``add_generation_prompt``, the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) and any extra keyword arguments.

``select_chat_template(tokenizer, chat_template, tools)`` picks the template string to use, as transformers'
``get_chat_template`` does. Every problem (no template, a syntax error, an exception raised by or inside the
template, malformed messages) raises :class:`ChatTemplateError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from datetime import datetime
from typing import Any, Mapping

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import PyllmError

__all__ = ["ChatTemplateError", "render_chat_template", "select_chat_template", "end_of_turn_ids"]


class ChatTemplateError(PyllmError, ValueError):
    """A chat template is missing, malformed or failed to render, or the messages given to it are malformed."""


# Names a message's reasoning may come under; templates read the first (transformers fills it from the others).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# A chat_template argument that is just a name (no Jinja, no spaces) is looked up among the tokenizer's templates.
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")

# Token texts that end an assistant turn in common chat templates.
END_OF_TURN_TOKENS = (
    "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|im_end|>", "<end_of_turn>", "</s>", "<|endoftext|>",
    "<|end_of_text|>", "<eos>", "<|END_OF_TURN_TOKEN|>", "<|return|>", "<|call|>", "<｜end▁of▁sentence｜>",
    "<end_of_utterance>", "<|end_of_turn|>",
)


def _jinja_version_ok() -> bool:
    parts = []
    for p in jinja2.__version__.split(".")[:3]:
        m = re.match(r"\d+", p)
        parts.append(int(m.group()) if m else 0)
    return tuple(parts) >= (3, 1, 6)


# ----------------------------------------------------------------------------------------------------------------
# The Jinja environment
# ----------------------------------------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise ChatTemplateError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; chat templates expect plain json.dumps output
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """The ``dict`` global: builds dicts, but gives templates no access to the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _check_namespace_name(name):
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates cannot set underscore-prefixed attributes on a namespace ({name!r})")


class _TemplateNamespace(jinja2.utils.Namespace):
    """The ``namespace`` global: jinja's Namespace, refusing attribute names that start with an underscore."""

    def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja's Namespace (allows self=...)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def compile_chat_template(template: str) -> jinja2.Template:
    """The compiled template (cached per template string). Raises ChatTemplateError for a syntax error."""
    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template must be a string, not {type(template).__name__}")
    if not _jinja_version_ok():
        raise ChatTemplateError(f"chat templates need jinja2>=3.1.6 (older versions have sandbox escapes); "
                                f"installed: {jinja2.__version__}")
    try:
        return _compile(template)
    except TemplateSyntaxError as e:
        where = f" at line {e.lineno}" if e.lineno else ""
        raise ChatTemplateError(f"chat template syntax error{where}: {e.message}") from None
    except TemplateError as e:  # e.g. an unknown filter or test
        raise ChatTemplateError(f"invalid chat template: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# Input preprocessing (as transformers: plain JSON-like data only, None-valued message keys dropped)
# ----------------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A copy of ``value`` made of plain str/int/float/bool/None/dict/list/tuple only: mappings, dataclasses and
    pydantic models become dicts, str/int/float subclasses (enums, numpy scalars) their base type, and anything
    else a placeholder naming its type (e.g. "<ndarray>"), so a template can never call methods of rich objects."""
    t = type(value)
    if value is None or t in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())  # numpy scalar (np.bool_ would otherwise be a truthy placeholder)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{t.__name__}>"


def _prepare_messages(messages: Any) -> list[dict]:
    messages = getattr(messages, "messages", messages)  # a Conversation-like object
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts like {{'role': 'user', 'content': '...'}}, "
                                f"not {type(messages).__name__}")
    if len(messages) == 0:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation; give at least one message")
    if isinstance(messages[0], (list, tuple)) or hasattr(messages[0], "messages"):
        raise ChatTemplateError("messages must be one conversation (a list of message dicts), not a batch of "
                                "conversations; render each conversation separately")
    out = []
    for i, msg in enumerate(messages):
        plain = _plain(msg)
        if not isinstance(plain, dict):
            raise ChatTemplateError(f"messages[{i}] must be a dict like {{'role': 'user', 'content': '...'}}, "
                                    f"not {type(msg).__name__}")
        plain = {k: v for k, v in plain.items() if v is not None}  # as transformers (e.g. content=None)
        role = plain.get("role")
        if role is None:
            raise ChatTemplateError(f"messages[{i}] has no 'role' (e.g. 'system', 'user', 'assistant', 'tool')")
        if not isinstance(role, str):
            raise ChatTemplateError(f"messages[{i}]['role'] must be a string, not {type(role).__name__} {role!r}")
        reasoning = next((plain[k] for k in _REASONING_FIELDS if plain.get(k) is not None), None)
        if reasoning is not None:  # fill reasoning_content from older names, and thinking for templates reading it
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        out.append(plain)
    return out


def _prepare_tools(tools: Any) -> list | None:
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, (list, tuple)):
        raise ChatTemplateError(f"tools must be a list of JSON schemas (dicts), not {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            out.append(_plain(tool))
        elif callable(tool):
            name = getattr(tool, "__name__", type(tool).__name__)
            raise ChatTemplateError(
                f"tools[{i}] is a Python callable ({name}); pass tools as JSON schemas, e.g. {{'type': 'function', "
                f"'function': {{'name': ..., 'description': ..., 'parameters': {{...}}}}}} "
                f"(transformers.utils.get_json_schema(fn) converts a documented, type-hinted function)")
        else:
            raise ChatTemplateError(f"tools[{i}] must be a JSON schema (a dict), not {type(tool).__name__}")
    return out


def _prepare_documents(documents: Any) -> list | None:
    if documents is None:
        return None
    if not isinstance(documents, (list, tuple)):
        raise ChatTemplateError(f"documents must be a list of dicts with 'title' and 'text' keys, "
                                f"not {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, Mapping):
            raise ChatTemplateError(f"documents[{i}] must be a dict with 'title' and 'text' keys, "
                                    f"not {type(doc).__name__}")
    return _plain(list(documents))


def _mark_final_message(chat: list[dict], template: str, continue_final_message) -> str:
    """Append the continuation tag to the last message's text (as transformers does for continue_final_message);
    return the text to look for after rendering."""
    field = continue_final_message if isinstance(continue_final_message, str) else "content"
    last = chat[-1]
    final = last.get(field)
    if final is None:
        raise ChatTemplateError(f"continue_final_message is set but the final message has no {field!r} to continue")
    fields = [field]
    if field in _REASONING_FIELDS:  # reasoning is copied under several names: tag each copy
        fields = [f for f in _REASONING_FIELDS if last.get(f) == final]
    if not any(f in template for f in fields):
        raise ChatTemplateError(f"continue_final_message is set to {field!r} but the chat template never reads "
                                f"that field")
    if isinstance(final, (list, tuple)):
        for block in reversed(final):
            if isinstance(block, dict) and "text" in block:
                final = block["text"]
                block["text"] = block["text"] + _CONTINUE_TAG
                break
        else:
            raise ChatTemplateError("continue_final_message is set but the final message has no text block to "
                                    "continue")
    else:
        for f in fields:
            last[f] = last[f] + _CONTINUE_TAG
    return final


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def render_chat_template(
    template: str,
    messages,
    *,
    add_generation_prompt: bool = True,
    tools=None,
    documents=None,
    special_tokens: Mapping[str, str] | None = None,
    continue_final_message: bool | str = False,
    **kwargs,
) -> str:
    """Render ``messages`` with the Jinja chat ``template``; the result equals transformers'
    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=..., tools=..., documents=...,
    chat_template=template, **kwargs)`` when ``special_tokens`` is that tokenizer's ``special_tokens_map``.

    ``messages``: a list of dicts with a string ``role`` (and usually ``content``; tool calls, tool results and
    reasoning fields are passed through; keys whose value is None are dropped). ``tools``: a list of JSON-schema
    dicts. ``documents``: a list of dicts (for RAG templates). ``special_tokens``: ``{"bos_token": "<s>", ...}``
    (pyllm's ``Tokenizer.special_tokens_map``); ``kwargs`` are extra template variables and override them.
    ``continue_final_message``: leave the last message open (no end-of-turn) so the model continues it (True, or
    the name of the field to continue); not together with ``add_generation_prompt``.
    Raises ChatTemplateError for any problem with the template or the inputs."""
    compiled = compile_chat_template(template)
    chat = _prepare_messages(messages)
    tool_schemas = _prepare_tools(tools)
    docs = _prepare_documents(documents)
    variables: dict[str, Any] = {}
    if special_tokens is not None:
        if not isinstance(special_tokens, Mapping):
            raise ChatTemplateError(f"special_tokens must be a dict like {{'bos_token': '<s>'}}, "
                                    f"not {type(special_tokens).__name__}")
        for k, v in special_tokens.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ChatTemplateError(f"special_tokens must map names to token strings; got {k!r}: {v!r}")
        variables.update(special_tokens)
    variables.update(kwargs)  # as transformers: keyword arguments override the special tokens
    variables = _plain(variables)

    final = None
    if continue_final_message:
        if add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set: the first "
                                    "continues the last message, the second starts a new assistant message")
        final = _mark_final_message(chat, template, continue_final_message)

    try:
        rendered = compiled.render(messages=chat, tools=tool_schemas, documents=docs,
                                   add_generation_prompt=add_generation_prompt, **variables)
    except ChatTemplateError:
        raise  # raise_exception() in the template: its message as is
    except SecurityError as e:
        raise ChatTemplateError(f"chat template tried an operation the sandbox forbids: {e}") from None
    except UndefinedError as e:
        raise ChatTemplateError(f"chat template used an undefined value: {e}") from None
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template failed: too deep recursion") from None
    except Exception as e:  # TypeError, KeyError, ... raised while evaluating the template on these inputs
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None

    if final is not None:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in rendered or tag not in rendered:
            raise ChatTemplateError("continue_final_message is set but the final message does not appear in the "
                                    "rendered chat (the template changes or drops it)")
        loc = rendered.rindex(tag)
        if rendered[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            rendered = rendered[:loc]
        else:  # the template trimmed the message's trailing space
            rendered = rendered[:loc].rstrip()
    return rendered


def _tokenizer_templates(tokenizer) -> dict[str, str]:
    if tokenizer is None:
        return {}
    named = getattr(tokenizer, "chat_templates", None)
    if isinstance(named, Mapping) and named:
        return dict(named)
    single = getattr(tokenizer, "chat_template", None)
    if isinstance(single, Mapping):  # a transformers tokenizer with several templates
        return dict(single)
    return {"default": single} if isinstance(single, str) else {}


def select_chat_template(tokenizer, chat_template: str | None = None, tools=None) -> str:
    """The template string to render, chosen as transformers' ``get_chat_template`` chooses it.

    ``chat_template``: a Jinja template string (used as is), or the name of one of the tokenizer's templates
    (``tokenizer.chat_templates``, e.g. "default", "tool_use", "rag"), or None for the tokenizer's own: with
    several named templates, "tool_use" when ``tools`` is given and the tokenizer has one, else "default".
    Raises ChatTemplateError when there is none."""
    templates = _tokenizer_templates(tokenizer)
    if chat_template is not None:
        if not isinstance(chat_template, str):
            raise ChatTemplateError(f"chat_template must be a Jinja template string or a template name, "
                                    f"not {type(chat_template).__name__}")
        if chat_template in templates:
            return templates[chat_template]
        if _TEMPLATE_NAME.fullmatch(chat_template):
            known = ", ".join(sorted(templates)) if templates else "none"
            raise ChatTemplateError(f"the model has no chat template named {chat_template!r} (its templates: "
                                    f"{known}); pass chat_template= a Jinja template string or one of those names")
        return chat_template
    if not templates:
        raise ChatTemplateError("this model has no chat template; pass chat_template= (a Jinja template string, "
                                "e.g. the chat_template of a tokenizer_config.json)")
    if len(templates) == 1 and "default" in templates:
        return templates["default"]
    if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ChatTemplateError(f"this model has several chat templates and none is named 'default'; pass "
                            f"chat_template= one of {sorted(templates)} (or a Jinja template string)")


def end_of_turn_ids(tokenizer) -> set[int]:
    """Ids of the tokens that end an assistant turn in common chat templates ("<|eot_id|>", "<|eom_id|>",
    "<|end|>", "<|im_end|>", "<end_of_turn>", "</s>", "<|endoftext|>", ...) that the tokenizer has as special or
    added tokens, plus the id of its eos token. For use as stop ids when generating a chat reply."""
    ids: set[int] = set()
    backend = getattr(tokenizer, "backend", None)
    added = backend.get_added_tokens_decoder() if backend is not None else {}
    by_text = {t.content: i for i, t in added.items()}
    texts = END_OF_TURN_TOKENS
    if "<|return|>" in by_text or "<|call|>" in by_text:
        texts = tuple(t for t in texts if t != "<|end|>")  # harmony format: <|end|> ends a message, not the turn
    for text in texts:
        i = by_text.get(text)
        if i is not None:
            ids.add(int(i))
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        ids.add(int(eos))
    return ids
