# Tests for pyllm.chat: real chat templates (tests/fixtures/chat_templates) rendered by pyllm and by transformers'
# apply_chat_template(tokenize=False) on tokenizers built from tests/fixtures/tokenizers must give the same text (or
# both refuse); plus template selection, named templates loaded from folders and GGUF, the special-token map, the
# sandbox, and clear errors for bad templates and bad messages.
import copy
import dataclasses
import datetime
import json
import pathlib
import shutil

import jinja2
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

from pyllm.chat import ChatTemplateError, end_of_turn_ids, render_chat_template, select_chat_template  # noqa: E402
from pyllm.chat.template import END_OF_TURN_TOKENS  # noqa: E402
from pyllm.errors import PyllmError  # noqa: E402
from pyllm.gguf_tokenizer import tokenizer_from_metadata, tokenizer_metadata  # noqa: E402
from pyllm.tokenizer import Tokenizer  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
TEMPLATES_DIR = FIXTURES / "chat_templates"
TEMPLATES = {p.stem: p.read_text(encoding="utf-8") for p in sorted(TEMPLATES_DIR.glob("*.jinja"))}

# Tokenizer folders whose special tokens fit each model family: (base fixture, tokenizer_config overrides, extra
# special tokens appended to the vocabulary). Built in a temporary folder, loaded by both libraries.
PROFILES = {
    "llama2": ("llama2", {}, []),
    "llama3": ("llama3", {}, []),
    "mistral": ("mistral", {}, []),
    "zephyr": ("mistral", {"pad_token": "</s>"}, []),
    "phi3": ("llama2", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
             ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"]),
    "qwen2": ("llama3", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
              ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "gemma": ("llama2", {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                         "unk_token": "<unk>", "pad_token": "<pad>",
                         "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
              ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]),
}
TEMPLATE_PROFILE = {
    "llama-2-chat": "llama2",
    "meta-llama-3-instruct": "llama3",
    "llama-3.1-instruct": "llama3",
    "llama-3.2-instruct": "llama3",
    "mistral-7b-instruct-v0.1": "mistral",
    "mistral-7b-instruct-v0.2": "mistral",
    "mistral-7b-instruct-v0.3": "mistral",
    "mistral-nemo-instruct-2407": "mistral",
    "zephyr-7b-beta": "zephyr",
    "phi-3-mini-instruct": "phi3",
    "phi-3.5-mini-instruct": "phi3",
    "qwen2.5-instruct": "qwen2",
    "gemma-2-it": "gemma",
}


def make_tokenizer_dir(dst: pathlib.Path, base: str, overrides: dict, added=(), chat_template=None):
    """A copy of tests/fixtures/tokenizers/<base> (files linked) with tokenizer_config.json changed."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (TOKENIZERS / base).iterdir():
        if f.name != "tokenizer_config.json":
            (dst / f.name).symlink_to(f)
    cfg = json.loads((TOKENIZERS / base / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update(copy.deepcopy(overrides))
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    if added:
        atd = cfg.setdefault("added_tokens_decoder", {})
        first = 128256 if base == "llama3" else 32000
        for i, text in enumerate(added):
            atd[str(first + i)] = {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": True}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """profile name -> (pyllm Tokenizer, transformers tokenizer) for the same folder, built once."""
    cache = {}

    def get(profile):
        if profile not in cache:
            base, overrides, added = PROFILES[profile]
            d = make_tokenizer_dir(tmp_path_factory.mktemp(profile), base, overrides, added)
            cache[profile] = (Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d)))
        return cache[profile]

    return get


def hf_render(hf, template, messages, **kw):
    return hf.apply_chat_template(copy.deepcopy(messages), chat_template=template, tokenize=False, **kw)


def py_render(tok, template, messages, **kw):
    return render_chat_template(select_chat_template(tok, template, kw.get("tools")), messages,
                                special_tokens=tok.special_tokens_map, **kw)


def compare(tok, hf, template, messages, **kw):
    """pyllm's rendering equals transformers', or both raise (pyllm with ChatTemplateError carrying transformers'
    message). Returns whether transformers raised."""
    kw.setdefault("add_generation_prompt", True)
    try:
        expected = hf_render(hf, template, messages, **kw)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises, pyllm must refuse too
        with pytest.raises(ChatTemplateError) as info:
            py_render(tok, template, messages, **kw)
        if type(e) is jinja2.exceptions.TemplateError:  # raise_exception(): the template's own message
            assert str(info.value) == str(e)
        return True
    got = py_render(tok, template, messages, **kw)
    assert got == expected, (template[:60], messages)
    return False


# ---------------------------------------------------------------- conversations

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "unicode": [
        {"role": "user", "content": "你好，世界！🦙 Ça va? naïve café — «quotes» Ελληνικά"},
        {"role": "assistant", "content": "こんにちは 😀👍🏽 👨‍👩‍👧 — e\u0301 vs \u00e9"},
        {"role": "user", "content": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero width, \"double\" and 'single' quotes, \\ backslash"},
    ],
    "whitespace": [
        {"role": "system", "content": "  padded system prompt  \n"},
        {"role": "user", "content": "  leading and trailing  "},
        {"role": "assistant", "content": "\nline one\n\n  line two\t\n"},
        {"role": "user", "content": "\ttab\r\nCRLF and a trailing newline\n"},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
    ],
}
# (template, conversation) pairs that transformers refuses (the template raises); pyllm must refuse them too.
# Listed so that a matrix where everything fails cannot pass unnoticed.
EXPECTED_REFUSALS = {
    ("gemma-2-it", "system"), ("gemma-2-it", "multi_turn"), ("gemma-2-it", "whitespace"),
    ("mistral-7b-instruct-v0.1", "system"), ("mistral-7b-instruct-v0.1", "multi_turn"),
    ("mistral-7b-instruct-v0.1", "whitespace"),
    ("mistral-7b-instruct-v0.2", "system"), ("mistral-7b-instruct-v0.2", "multi_turn"),
    ("mistral-7b-instruct-v0.2", "whitespace"),
}


def test_fixtures_present():
    assert set(TEMPLATES) == set(TEMPLATE_PROFILE)
    # the Llama 2 and Mistral fixtures are the templates of the tokenizer fixtures
    assert TEMPLATES["llama-2-chat"] == Tokenizer.from_dir(TOKENIZERS / "llama2").chat_template
    assert TEMPLATES["mistral-7b-instruct-v0.2"] == Tokenizer.from_dir(TOKENIZERS / "mistral").chat_template


@pytest.mark.parametrize("name", list(TEMPLATE_PROFILE))
def test_special_tokens_map_matches_transformers(pair, name):
    tok, hf = pair(TEMPLATE_PROFILE[name])
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.special_tokens_map is not tok.special_tokens_map  # a copy each time


@pytest.mark.parametrize("name", list(TEMPLATE_PROFILE))
def test_templates_match_transformers(pair, name):
    tok, hf = pair(TEMPLATE_PROFILE[name])
    template = TEMPLATES[name]
    for conv_name, messages in CONVERSATIONS.items():
        refused = [compare(tok, hf, template, messages, add_generation_prompt=gen) for gen in (True, False)]
        assert refused[0] == refused[1]
        assert refused[0] == ((name, conv_name) in EXPECTED_REFUSALS), conv_name


def test_refusals_carry_the_template_message(pair):
    tok, hf = pair("gemma")
    msgs = CONVERSATIONS["system"]
    with pytest.raises(Exception) as ref:
        hf_render(hf, TEMPLATES["gemma-2-it"], msgs)
    with pytest.raises(ChatTemplateError) as got:
        py_render(tok, TEMPLATES["gemma-2-it"], msgs)
    assert str(got.value) == str(ref.value) and "System role" in str(got.value)
    assert isinstance(got.value, ValueError) and isinstance(got.value, PyllmError)

    tok, hf = pair("mistral")
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception) as ref:
        hf_render(hf, TEMPLATES["mistral-7b-instruct-v0.2"], msgs)
    with pytest.raises(ChatTemplateError, match="alternate") as got:
        py_render(tok, TEMPLATES["mistral-7b-instruct-v0.2"], msgs)
    assert str(got.value) == str(ref.value)


# ---------------------------------------------------------------- tools

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location — «now».",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL_BARE = {  # a bare function schema (no {"type": "function"} wrapper): passed through as given
    "name": "get_time",
    "description": "The current time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": []},
}
TOOL_CALL = {"id": "call00001", "type": "function",
             "function": {"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}}
TOOL_CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "What's the weather in Paris? 🌦"},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call00001", "name": "get_current_weather",
     "content": "{\"temperature\": 22, \"sky\": \"clear ☀\"}"},
]
TOOL_CONVERSATION_DONE = TOOL_CONVERSATION + [
    {"role": "assistant", "content": "It is 22 °C and clear in Paris."},
    {"role": "user", "content": "Thanks!"},
]
TOOL_TEMPLATES = ["llama-3.1-instruct", "llama-3.2-instruct", "qwen2.5-instruct", "mistral-7b-instruct-v0.3",
                  "mistral-nemo-instruct-2407"]


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_tool_templates_match_transformers(pair, name):
    tok, hf = pair(TEMPLATE_PROFILE[name])
    template = TEMPLATES[name]
    cases = [
        (CONVERSATIONS["system"], [WEATHER_TOOL]),
        (CONVERSATIONS["single"], [WEATHER_TOOL]),
        (TOOL_CONVERSATION, [WEATHER_TOOL]),
        (TOOL_CONVERSATION_DONE, [WEATHER_TOOL]),
        (CONVERSATIONS["multi_turn"], []),  # an empty tool list is not "no tools" for every template
    ]
    if not name.startswith("mistral"):  # Mistral's templates read tool["function"]
        cases.append((TOOL_CONVERSATION, [WEATHER_TOOL, TIME_TOOL_BARE]))
    for messages, tools in cases:
        for gen in (True, False):
            assert not compare(tok, hf, template, messages, tools=tools, add_generation_prompt=gen), messages
    # the tools really reach the template
    rendered = py_render(tok, template, CONVERSATIONS["system"], tools=[WEATHER_TOOL])
    assert "get_current_weather" in rendered and "«now»" in rendered


def test_llama31_options_match_transformers(pair):
    tok, hf = pair("llama3")
    template = TEMPLATES["llama-3.1-instruct"]
    assert not compare(tok, hf, template, TOOL_CONVERSATION, tools=[WEATHER_TOOL], tools_in_user_message=False)
    assert not compare(tok, hf, template, CONVERSATIONS["system"], tools=[WEATHER_TOOL], date_string="01 Jan 2025")
    builtin = [
        {"role": "user", "content": "Search the web for the weather in Paris"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "brave_search", "arguments": {"query": "weather Paris"}}}]},
        {"role": "ipython", "content": "Sunny, 22 °C"},
    ]
    assert not compare(tok, hf, template, builtin, builtin_tools=["brave_search", "wolfram_alpha"])
    text = py_render(tok, template, builtin, builtin_tools=["brave_search", "wolfram_alpha"])
    assert "Environment: ipython\nTools: brave_search, wolfram_alpha" in text and "<|python_tag|>" in text
    # the date comes from strftime_now in Llama 3.2's template (both read the clock within the same second)
    before = datetime.datetime.now().strftime("%d %b %Y")
    text = py_render(tok, TEMPLATES["llama-3.2-instruct"], CONVERSATIONS["single"])
    assert any("Today Date: " + day in text for day in (before, datetime.datetime.now().strftime("%d %b %Y")))


@pytest.mark.parametrize("name", ["llama-3.1-instruct", "qwen2.5-instruct", "zephyr-7b-beta", "phi-3.5-mini-instruct",
                                  "llama-2-chat", "gemma-2-it"])
def test_continue_final_message_matches_transformers(pair, name):
    tok, hf = pair(TEMPLATE_PROFILE[name])
    for prefix in ("Autumn leaves", "Autumn leaves  ", "Nuit d'été —"):
        messages = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": prefix}]
        assert not compare(tok, hf, TEMPLATES[name], messages, add_generation_prompt=False,
                           continue_final_message=True)
        assert py_render(tok, TEMPLATES[name], messages, add_generation_prompt=False,
                         continue_final_message=True).rstrip().endswith(prefix.rstrip())


BLOCKS_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content is defined %}[{{ m.reasoning_content }}]"
    "{% endif %}{% if m.content is string %}{{ m.content }}{% elif m.content is defined %}{% for b in m.content %}"
    "{{ b.text }}{% endfor %}{% endif %}</{{ m.role }}>{% endfor %}{{ tools | length }}"
)


def test_continue_content_blocks_and_reasoning(pair):
    tok, hf = pair("llama2")
    messages = copy.deepcopy(TOOL_CONVERSATION) + [
        {"role": "assistant", "content": [{"type": "text", "text": "Part one"}, {"type": "image"},
                                          {"type": "text", "text": "part two "}], "reasoning": "hmm  "}]
    tools = [copy.deepcopy(WEATHER_TOOL)]
    before = copy.deepcopy((messages, tools))
    for cont in (True, "content", "reasoning_content", "reasoning", "thinking"):
        assert not compare(tok, hf, BLOCKS_TEMPLATE, messages, tools=tools, add_generation_prompt=False,
                           continue_final_message=cont), cont
        assert (messages, tools) == before  # pyllm leaves its inputs alone
    assert py_render(tok, BLOCKS_TEMPLATE, messages, tools=tools, add_generation_prompt=False,
                     continue_final_message=True).endswith("Part onepart two ")


# ---------------------------------------------------------------- the environment, compared on an inline template

FEATURES_TEMPLATE = """\
{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}
{%- if m.role == 'system' %}{% continue %}{% endif -%}
{%- set ns.n = ns.n + 1 -%}
[{{ ns.n }}] {{ m.role }}: {{ (m.content if m.content is defined else 'NO CONTENT') | tojson }}
{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}{% endif %}
{%- if loop.index > 4 %}{% break %}{% endif %}
{% endfor -%}
{{ dict(b=[1, 2], a='é') | tojson(indent=2, sort_keys=True) }}
{{ {'z': 'é', 'a': none} | tojson(separators=(',', ':'), ensure_ascii=True) }}
{{ documents | tojson }} {{ tools | tojson }}
{{ add_generation_prompt }} {{ bos_token }} {{ custom_var }} {{ pad_token is defined }} {{ eos_token }}
{%- for m in messages if m.thinking is defined %} thinking={{ m.thinking }} rc={{ m.reasoning_content }}{% endfor %}
{{ messages[1].score }} {{ messages[1].flag }} {{ messages[1].obj }} {{ messages[1]['items'] | tojson }}
{{ messages | map(attribute='role') | join(',') }} {{ 'content' in messages[2] }}
    {% if messages %}
  indented blocks (lstrip_blocks, trim_blocks)
    {% endif %}
end
"""


@dataclasses.dataclass
class _Msg:
    role: str
    content: str


def test_environment_matches_transformers(pair):
    tok, hf = pair("llama2")
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Ünïcödé \"q\" <b>html</b> & 🦙", "score": np.float32(0.5),
         "flag": np.bool_(False), "obj": object(), "items": (1, np.int64(2), "3")},
        {"role": "assistant", "content": None, "reasoning": "because"},
        _Msg("user", "from a dataclass"),
    ] + [{"role": "user", "content": f"m{i}"} for i in range(5)]
    kw = dict(documents=[{"title": "Doc", "text": "Körper 📄"}], tools=[TIME_TOOL_BARE], custom_var="cv",
              eos_token="<override>")
    for gen in (True, False):
        assert not compare(tok, hf, FEATURES_TEMPLATE, messages, add_generation_prompt=gen, **kw)
    text = py_render(tok, FEATURES_TEMPLATE, messages, **kw)
    assert "<override>" in text and "thinking=because rc=because" in text and "<object>" in text


def test_strftime_now():
    before = datetime.datetime.now().strftime("%Y-%m-%d %H")
    text = render_chat_template("{{ strftime_now('%Y-%m-%d %H') }}", [{"role": "user", "content": "x"}])
    assert text in (before, datetime.datetime.now().strftime("%Y-%m-%d %H"))


# ---------------------------------------------------------------- bad templates

BAD_TEMPLATES = {
    "syntax": ("{% for m in messages %}{{ m.content }}", "syntax error"),
    "unknown filter": ("{{ messages | frobnicate }}", "frobnicate"),
    "class escape": ("{{ ''.__class__.__mro__ }}", "sandbox"),
    "globals escape": ("{{ cycler.__init__.__globals__ }}", "sandbox"),
    "mutation": ("{{ messages.append({'role': 'x'}) }}", "sandbox"),
    "namespace dunder": ("{% set ns = namespace(_secret=1) %}{{ ns }}", "sandbox"),
    "type error": ("{{ 1 + 'a' }}", "TypeError"),
    "undefined": ("{{ nothing.attr }}", "undefined"),
    "raise_exception": ("{{ raise_exception('No system messages, please: ' ~ messages[0].role) }}",
                        "No system messages, please: user"),
}


@pytest.mark.parametrize("case", list(BAD_TEMPLATES))
def test_bad_templates_raise_chat_template_error(pair, case):
    tok, hf = pair("llama2")
    template, needle = BAD_TEMPLATES[case]
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(Exception):
        hf_render(hf, template, messages)
    with pytest.raises(ChatTemplateError, match=needle):
        py_render(tok, template, messages)
    if case == "raise_exception":
        with pytest.raises(ChatTemplateError) as info:
            py_render(tok, template, messages)
        assert str(info.value) == "No system messages, please: user"


# ---------------------------------------------------------------- bad inputs

TEMPLATE = TEMPLATES["zephyr-7b-beta"]


@pytest.mark.parametrize("messages, needle", [
    ("hello", "must be a list"),
    ({"role": "user", "content": "hi"}, "must be a list"),
    (None, "must be a list"),
    ([], "empty conversation"),
    ([{"content": "no role"}], r"messages\[0\] has no 'role'"),
    ([{"role": "user", "content": "ok"}, {"role": None, "content": "x"}], r"messages\[1\] has no 'role'"),
    ([{"role": 3, "content": "x"}], r"messages\[0\]\['role'\] must be a string"),
    ([{"role": "user", "content": "ok"}, "just text"], r"messages\[1\] must be a dict"),
    ([[{"role": "user", "content": "hi"}]], "one conversation"),
])
def test_bad_messages(messages, needle):
    with pytest.raises(ChatTemplateError, match=needle):
        render_chat_template(TEMPLATE, messages, special_tokens={"eos_token": "</s>"})


def _a_tool(location: str) -> str:
    """Get the weather."""
    return location


@pytest.mark.parametrize("kw, needle", [
    (dict(tools=WEATHER_TOOL), "tools must be a list"),
    (dict(tools="get_weather"), "tools must be a list"),
    (dict(tools=[_a_tool]), "JSON schemas"),
    (dict(tools=[WEATHER_TOOL, 5]), r"tools\[1\]"),
    (dict(documents={"title": "x"}), "documents must be a list"),
    (dict(documents=["text"]), r"documents\[0\]"),
    (dict(special_tokens=["<s>"]), "special_tokens must be a dict"),
    (dict(special_tokens={"bos_token": 1}), "special_tokens must map"),
    (dict(continue_final_message=True), "cannot both be set"),
    (dict(continue_final_message=True, add_generation_prompt=False), "never reads"),
])
def test_bad_arguments(kw, needle):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "partial"}]
    template = TEMPLATE if "never reads" not in needle else "{{ messages | length }}"
    with pytest.raises(ChatTemplateError, match=needle):
        render_chat_template(template, messages, **kw)


def test_not_a_template():
    with pytest.raises(ChatTemplateError, match="must be a string"):
        render_chat_template(None, [{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------- selecting a template

NAMED = [
    {"name": "default", "template": "D{% for m in messages %}{{ m.content }}{% endfor %}"},
    {"name": "tool_use", "template": "T{{ tools | length }}{% for m in messages %}{{ m.content }}{% endfor %}"},
    {"name": "rag", "template": "R{{ documents | length }}"},
]


def _tok_dir(tmp_path, base="llama2", **overrides):
    return make_tokenizer_dir(tmp_path / "tok", base, overrides)


def test_named_templates_from_config_list(tmp_path):
    d = _tok_dir(tmp_path, chat_template=NAMED)
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_templates == hf.chat_template == {e["name"]: e["template"] for e in NAMED}
    assert tok.chat_template == NAMED[0]["template"]
    for name, tools in [(None, None), (None, [WEATHER_TOOL]), (None, []), ("rag", None), ("tool_use", None),
                        ("default", [WEATHER_TOOL]), ("{{ 'inline' }}", [WEATHER_TOOL])]:
        assert select_chat_template(tok, name, tools) == hf.get_chat_template(name, tools), (name, tools)
    messages = [{"role": "user", "content": "hi"}]
    for name, tools in [(None, None), (None, [WEATHER_TOOL]), ("rag", None)]:
        got = render_chat_template(select_chat_template(tok, name, tools), messages, tools=tools,
                                   documents=[{"title": "t", "text": "x"}], special_tokens=tok.special_tokens_map)
        assert got == hf.apply_chat_template(messages, chat_template=name, tools=tools, tokenize=False,
                                             add_generation_prompt=True, documents=[{"title": "t", "text": "x"}])
    with pytest.raises(ChatTemplateError, match="no chat template named 'chatml'.*default, rag, tool_use"):
        select_chat_template(tok, "chatml")
    with pytest.raises(ChatTemplateError, match="must be a Jinja template string"):
        select_chat_template(tok, 42)


def test_named_templates_without_default(tmp_path):
    d = _tok_dir(tmp_path, chat_template=NAMED[1:])
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_templates == hf.chat_template
    with pytest.raises(ValueError):
        hf.get_chat_template(None, None)
    with pytest.raises(ChatTemplateError, match="none is named 'default'.*'rag', 'tool_use'"):
        select_chat_template(tok)
    assert select_chat_template(tok, tools=[WEATHER_TOOL]) == hf.get_chat_template(None, [WEATHER_TOOL])


def test_template_files_in_folder(tmp_path):
    # chat_template.jinja and additional_chat_templates/*.jinja replace the config's template (as transformers)
    d = _tok_dir(tmp_path, chat_template="from the config")
    (d / "chat_template.jinja").write_text("jinja default {{ messages[0].content }}\n", encoding="utf-8")
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text("tools: {{ tools | tojson }}", encoding="utf-8")
    (d / "additional_chat_templates" / "notes.txt").write_text("not a template", encoding="utf-8")
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_templates == hf.chat_template == {"default": "jinja default {{ messages[0].content }}\n",
                                                       "tool_use": "tools: {{ tools | tojson }}"}
    assert select_chat_template(tok, tools=[WEATHER_TOOL]) == hf.get_chat_template(None, [WEATHER_TOOL])

    (d / "chat_template.jinja").unlink()  # named files only: the config's template is not used
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_templates == hf.chat_template == {"tool_use": "tools: {{ tools | tojson }}"}

    shutil.rmtree(d / "additional_chat_templates")
    (d / "chat_template.jinja").write_text("only {{ bos_token }}", encoding="utf-8")
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_template == hf.chat_template == "only {{ bos_token }}"
    assert tok.chat_templates == {"default": "only {{ bos_token }}"}
    assert select_chat_template(tok) == hf.get_chat_template()


@pytest.mark.parametrize("name", ["llama-3.1-instruct", "qwen2.5-instruct", "gemma-2-it", "phi-3-mini-instruct"])
def test_model_default_template_end_to_end(tmp_path, name):
    # what Model.apply_chat_template does: the folder's own template, its special tokens
    base, overrides, added = PROFILES[TEMPLATE_PROFILE[name]]
    d = make_tokenizer_dir(tmp_path / "m", base, overrides, added, chat_template=TEMPLATES[name])
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_template == TEMPLATES[name]
    messages = CONVERSATIONS["multi_turn_no_system"]
    got = render_chat_template(select_chat_template(tok, None, None), messages, add_generation_prompt=True,
                               special_tokens=tok.special_tokens_map)
    assert got == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the text tokenizes the same way in both (control tokens as single ids)
    assert tok.encode(got, add_special_tokens=False) == hf(got, add_special_tokens=False)["input_ids"]


def test_no_template(tmp_path):
    d = _tok_dir(tmp_path, chat_template=None)
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.chat_template is None and tok.chat_templates == {} and hf.chat_template is None
    with pytest.raises(ValueError):
        hf.get_chat_template()
    with pytest.raises(ChatTemplateError, match="no chat template; pass chat_template="):
        select_chat_template(tok)
    with pytest.raises(ChatTemplateError, match="chat_template="):
        select_chat_template(None)
    assert select_chat_template(tok, "{{ messages[0].content }}") == "{{ messages[0].content }}"


@pytest.mark.parametrize("bad", [[{"template": "x"}], [{"name": "default", "template": 3}], 7])
def test_malformed_config_templates(tmp_path, bad):
    d = _tok_dir(tmp_path, chat_template=bad)
    with pytest.raises(ValueError, match="chat_template|chat template"):
        Tokenizer.from_dir(d)


# ---------------------------------------------------------------- special tokens of other configs

@pytest.mark.parametrize("base, overrides, added, stm", [
    ("llama3", {"image_token": "<|image|>", "extra_special_tokens": {"audio_token": "<|audio|>"}},
     ["<|image|>", "<|audio|>"], None),
    ("llama3", {"video_token": {"__type": "AddedToken", "content": "<|video|>", "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False, "special": True}}, ["<|video|>"], None),
    ("llama2", {"bos_token": None, "pad_token": "<unk>", "sep_token": "</s>", "mask_token": "<mask>",
                "cls_token": "<s>"}, ["<mask>"], None),
    ("llama2", {"tokenizer_class": "LlamaTokenizerFast"}, [], None),
    ("mistral", {"added_tokens_decoder": None}, [],
     {"bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
      "eos_token": "</s>", "pad_token": "</s>", "image_token": {"content": "<unk>"}}),
])
def test_special_tokens_map_other_configs(tmp_path, base, overrides, added, stm):
    d = make_tokenizer_dir(tmp_path / "t", base, overrides, added)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    if cfg.get("added_tokens_decoder") is None:
        cfg.pop("added_tokens_decoder", None)
    if base != "llama3" and "tokenizer_class" not in overrides:
        for key in ("bos_token", "eos_token", "unk_token"):
            if key not in overrides:
                cfg.pop(key, None)  # the class defaults apply
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    if stm is not None:
        (d / "special_tokens_map.json").write_text(json.dumps(stm))
    tok, hf = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    assert tok.special_tokens_map == hf.special_tokens_map


# ---------------------------------------------------------------- GGUF

def test_gguf_metadata_round_trip(tmp_path):
    d = _tok_dir(tmp_path, chat_template=NAMED, pad_token="<unk>")
    tok = Tokenizer.from_dir(d)
    md = tokenizer_metadata(str(d))
    assert md["tokenizer.chat_template"] == NAMED[0]["template"]
    assert md["tokenizer.chat_template.tool_use"] == NAMED[1]["template"]
    assert sorted(md["tokenizer.chat_templates"]) == ["rag", "tool_use"]
    back = tokenizer_from_metadata(md)
    assert back.chat_templates == tok.chat_templates and back.chat_template == tok.chat_template
    assert back.special_tokens_map == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                       "pad_token": "<unk>"} == {**tok.special_tokens_map, "pad_token": "<unk>"}
    for name, tools in [(None, None), (None, [WEATHER_TOOL]), ("rag", None)]:
        assert select_chat_template(back, name, tools) == select_chat_template(tok, name, tools)
    # a single template stays a single template; a bad named one is refused
    single = tokenizer_from_metadata({**md, "tokenizer.chat_template.tool_use": "x"})
    assert single.chat_templates["tool_use"] == "x"
    with pytest.raises(ValueError, match="tokenizer.chat_template.rag"):
        tokenizer_from_metadata({**md, "tokenizer.chat_template.rag": 5})


def test_gguf_file_round_trip(tmp_path):
    # written by gguf-py (as llama.cpp's converter writes named templates), read by pyllm's GGUF reader
    gguf = pytest.importorskip("gguf")
    from pyllm.gguf_file import open_gguf
    from pyllm.gguf_tokenizer import GGUF_VALUE_TYPES

    d = _tok_dir(tmp_path, base="llama3")
    md = tokenizer_metadata(str(d))
    path = str(tmp_path / "tok.gguf")
    w = gguf.GGUFWriter(path, "llama")
    types = {"str": w.add_string, "u32": w.add_uint32, "bool": w.add_bool}
    for key, value in md.items():
        if key.startswith("tokenizer.chat_template"):
            continue
        tag = GGUF_VALUE_TYPES[key]
        if tag.endswith("[]"):
            w.add_array(key, list(value))
        else:
            types[tag](key, value)
    w.add_chat_template(NAMED)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_gguf(path) as gf:
        tok = tokenizer_from_metadata(gf.metadata)
    assert tok.chat_templates == {e["name"]: e["template"] for e in NAMED}
    assert tok.special_tokens_map == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    assert select_chat_template(tok, tools=[WEATHER_TOOL]) == NAMED[1]["template"]


# ---------------------------------------------------------------- end of turn

def test_end_of_turn_ids(pair):
    for profile in PROFILES:
        tok, hf = pair(profile)
        ids = end_of_turn_ids(tok)
        assert tok.eos_id in ids
        added = tok.backend.get_added_tokens_decoder()
        for i in ids:  # only turn-ending tokens, and only the tokenizer's added/special ones
            assert i == tok.eos_id or (i in added and added[i].content in END_OF_TURN_TOKENS)
        for text in END_OF_TURN_TOKENS:
            i = tok.piece_to_id(text)
            if i is not None and i in added:
                assert i in ids, (profile, text)
    ids = end_of_turn_ids(pair("llama3")[0])
    tok = pair("llama3")[0]
    assert {tok.piece_to_id("<|eot_id|>"), tok.piece_to_id("<|eom_id|>"), tok.piece_to_id("<|end_of_text|>")} <= ids
    assert tok.piece_to_id("<|start_header_id|>") not in ids
    tok = pair("qwen2")[0]
    assert {tok.piece_to_id("<|im_end|>"), tok.piece_to_id("<|endoftext|>")} <= end_of_turn_ids(tok)
    assert tok.piece_to_id("<|im_start|>") not in end_of_turn_ids(tok)


def test_end_of_turn_ids_harmony(tmp_path):
    # where <|return|>/<|call|> exist (gpt-oss), <|end|> ends a message inside a turn, not the turn
    d = make_tokenizer_dir(tmp_path / "h", "llama3", {"eos_token": "<|return|>"}, ["<|end|>", "<|return|>", "<|call|>"])
    tok = Tokenizer.from_dir(d)
    ids = end_of_turn_ids(tok)
    assert tok.piece_to_id("<|end|>") not in ids
    assert {tok.piece_to_id("<|return|>"), tok.piece_to_id("<|call|>")} <= ids
