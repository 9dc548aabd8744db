"""test_chat.py: Model.apply_chat_template / chat / submit_chat on tiny random models with real
tokenizers and templates: the prompt text and ids are transformers', replies stop at the
template's end-of-turn token, streaming gives the same text, a model without a template says to
pass chat_template=, and a GGUF file carries the template."""
from __future__ import annotations

import os

import pytest

import pyllm

MESSAGES = [
    {"role": "system", "content": "You are terse.  "},
    {"role": "user", "content": "Bonjour! Ça va? 你好 🙂"},
    {"role": "assistant", "content": "Fine.\n\nAnd you?"},
    {"role": "user", "content": "  Tell me more.\n"},
]


@pytest.fixture(scope="module")
def llama3(checkpoint):
    return checkpoint("llama3", "bfloat16")


@pytest.fixture(scope="module")
def model(llama3):
    return pyllm.load(llama3, n_threads=2)


@pytest.fixture(scope="module")
def hf_tok(llama3):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(llama3)


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_apply_chat_template_is_transformers(model, hf_tok, gen, n):
    msgs = MESSAGES[:n]
    assert model.apply_chat_template(msgs, add_generation_prompt=gen) == \
        hf_tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)


def test_chat_prompt_ids_are_transformers(model, hf_tok):
    req = model.submit_chat(MESSAGES, max_tokens=1, temperature=0)
    req.result()
    want = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(want, dict) or hasattr(want, "keys"):
        want = want["input_ids"]
    assert req.prompt_ids == list(want)


def test_reply_stops_at_end_of_turn(model):
    eot = model.tokenizer.piece_to_id("<|eot_id|>")
    assert eot in model.end_of_turn_ids
    assert model.tokenizer.piece_to_id("<|eom_id|>") in model.end_of_turn_ids
    # the turn ends at an end-of-turn token, which is not part of the reply
    r = model.submit_chat(MESSAGES, max_tokens=12, temperature=0, logit_bias={eot: 100.0}).result()
    assert (r.finish_reason, r.token_ids, r.text) == ("stop", [], "")
    # and at any extra stop token, after the tokens before it
    free = model.submit_chat(MESSAGES, max_tokens=12, temperature=0, ignore_eos=True).result()
    k = next(i for i in range(3, 12) if free.token_ids[i] not in free.token_ids[:i])
    r = model.submit_chat(MESSAGES, max_tokens=12, temperature=0, stop_token_ids=[free.token_ids[k]]).result()
    assert r.token_ids == free.token_ids[:k] and r.finish_reason == "stop"
    # ignore_eos runs through it
    r2 = model.submit_chat(MESSAGES, max_tokens=3, temperature=0, ignore_eos=True, logit_bias={eot: 100.0}).result()
    assert r2.token_ids == [eot] * 3 and r2.finish_reason == "length"
    assert r2.text == ""  # a control token: not shown unless special=True
    r3 = model.submit_chat(MESSAGES, max_tokens=3, temperature=0, ignore_eos=True, logit_bias={eot: 100.0},
                           special=True).result()
    assert r3.text == "<|eot_id|>" * 3


def test_chat_stream_equals_chat(model):
    whole = model.chat(MESSAGES, max_tokens=20, temperature=0, ignore_eos=True)
    pieces = list(model.chat(MESSAGES, stream=True, max_tokens=20, temperature=0, ignore_eos=True))
    assert "".join(pieces) == whole and len(pieces) > 1


def test_next_turn_reuses_the_conversation_cache(model):
    model.engine.clear_cache()
    history = MESSAGES[:2]
    first = model.submit_chat(history, max_tokens=8, temperature=0, ignore_eos=True)
    reply = first.result()
    history2 = history + [{"role": "assistant", "content": reply.text}, {"role": "user", "content": "Why?"}]
    second = model.submit_chat(history2, max_tokens=4, temperature=0)
    second.result()
    # the previous turn's prompt is reused (its reply may re-tokenize differently from what was sampled)
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert second.cached_tokens < second.prompt_tokens


def test_model_without_template(tmp_path):
    m = pyllm.load(n_threads=1)  # the shipped model has no chat template
    with pytest.raises(pyllm.ChatTemplateError, match="chat_template="):
        m.chat([{"role": "user", "content": "hi"}])
    t = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    assert m.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=t) == "user: hi\nassistant:"
    assert isinstance(m.chat([{"role": "user", "content": "hi"}], chat_template=t, max_tokens=3), str)
    with pytest.raises(pyllm.ChatTemplateError):
        m.chat("hi", chat_template=t)
    with pytest.raises(pyllm.ChatTemplateError):
        m.chat([{"content": "no role"}], chat_template=t)


def test_gguf_file_carries_the_template(model, llama3, tmp_path):
    from pyllm.gguf_export import export_gguf

    out = str(tmp_path / "m.gguf")
    export_gguf(llama3, out, "f16")
    g = pyllm.load(out, n_threads=2)
    assert os.path.getsize(out) > 0
    assert g.apply_chat_template(MESSAGES) == model.apply_chat_template(MESSAGES)
    assert g.end_of_turn_ids == model.end_of_turn_ids
