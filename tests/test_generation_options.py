"""test_generation_options.py: per-request generation options on the shipped model, each checked
against a reference computed here from the model's own logits: stop strings (also split across
tokens, never emitted), OpenAI presence/frequency penalties and logit_bias, logprobs, finish
reasons, control tokens skipped unless special=True, and every bad value named in its error."""
from __future__ import annotations

import numpy as np
import pytest

import pyllm
from pyllm.generation.logprobs import log_softmax
from pyllm.generation.stop_strings import StopStringFilter

PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def model():
    return pyllm.load(n_threads=2)


def greedy_reference(model, prompt_ids, n, presence=0.0, frequency=0.0, bias=None):
    """Greedy decode through the Sequence API with OpenAI's penalty formula applied by hand."""
    seq = model.sequence()
    logits = seq.append(prompt_ids)
    out, counts = [], {}
    for _ in range(n):
        x = logits.astype(np.float64)
        for t, b in (bias or {}).items():
            x[t] += b
        for t, c in counts.items():
            x[t] -= c * frequency + presence
        tok = int(np.argmax(x))
        if tok in model.eos_ids:
            break
        out.append(tok)
        counts[tok] = counts.get(tok, 0) + 1
        logits = seq.append([tok])
    return out


def test_stop_string_filter_split_across_pieces():
    f = StopStringFilter(["END"])
    assert f.push("abc E") == ("abc ", False)
    assert f.push("N") == ("", False)
    assert f.push("Dxyz") == ("", True)
    assert f.flush() == ""
    g = StopStringFilter(["xy", "abc"])
    assert g.push("a") == ("", False)
    assert g.push("b!") == ("ab!", False)  # "ab!" can no longer become "abc"
    assert g.push("zzab") == ("zz", False)
    assert g.flush() == "ab"  # the stream ended: held text is text after all
    h = StopStringFilter(["bc", "abcd"])
    assert h.push("xabcd") == ("x", True)  # the stop string that starts first wins


def test_stop_string_ends_text_and_is_not_emitted(model):
    full = model.complete(PROMPT, max_tokens=60, temperature=0, ignore_eos=True)
    text = full.text
    # a stop string made of the end of one token and the start of the next
    pieces = [model.detokenize(full.token_ids[: i + 1], skip_special_tokens=True) for i in range(len(full.token_ids))]
    k = next(i for i in range(5, len(pieces)) if len(pieces[i]) - len(pieces[i - 1]) >= 2)
    at = len(pieces[k - 1]) - 1  # last char of token k-1 and first of token k
    stop = text[at : at + 2]
    first = text.find(stop)
    r = model.complete(PROMPT, max_tokens=60, temperature=0, ignore_eos=True, stop=[stop])
    assert r.finish_reason == "stop"
    assert r.text == text[:first]
    assert stop not in r.text
    # streamed the same way
    assert "".join(model.stream(PROMPT, max_tokens=60, temperature=0, ignore_eos=True, stop=stop)) == text[:first]


@pytest.mark.parametrize("presence,frequency", [(1.5, 0.0), (0.0, 1.2), (0.7, 0.9), (-1.0, 0.0)])
def test_presence_and_frequency_penalties(model, presence, frequency):
    ids = model.tokenize(PROMPT)
    want = greedy_reference(model, ids, 40, presence=presence, frequency=frequency)
    got = model.generate_tokens(ids, max_tokens=40, temperature=0, presence_penalty=presence,
                                frequency_penalty=frequency)
    assert got == want
    assert got != model.generate_tokens(ids, max_tokens=40, temperature=0)  # the penalties did something


def test_logit_bias(model):
    ids = model.tokenize(PROMPT)
    plain = model.generate_tokens(ids, max_tokens=12, temperature=0)
    bias = {plain[0]: -100.0, plain[1]: 5.0}
    assert model.generate_tokens(ids, max_tokens=12, temperature=0, logit_bias=bias) == \
        greedy_reference(model, ids, 12, bias=bias)
    forced = model.tokenize("Juliet", add_special_tokens=False)[-1]
    assert model.generate_tokens(ids, max_tokens=5, temperature=0.8, seed=1, logit_bias={str(forced): 100}) == [forced] * 5


def test_logprobs_match_the_models_distribution(model):
    ids = model.tokenize(PROMPT)
    r = model.complete(ids, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5)
    assert len(r.logprobs) == len(r.token_ids) == 10
    rows = model.logits(ids + r.token_ids)[len(ids) - 1 : -1]
    for lp, tok, row in zip(r.logprobs, r.token_ids, rows):
        ref = log_softmax(row)
        assert lp.token_id == tok
        assert lp.logprob == pytest.approx(ref[tok], abs=1e-9)
        best = np.argsort(-ref, kind="stable")[:5]
        assert [v for _, v, _ in lp.top] == pytest.approx(ref[best].tolist(), abs=1e-9)
        assert lp.top[0][1] == pytest.approx(lp.logprob, abs=1e-9)  # greedy picks the most likely
        assert bytes(lp.bytes).decode("utf-8", "replace") == lp.token
    assert model.complete(ids, max_tokens=3, temperature=0).logprobs is None


def test_finish_reasons(model):
    assert model.complete(PROMPT, max_tokens=5, temperature=0, ignore_eos=True).finish_reason == "length"
    eos = min(model.eos_ids)
    r = model.complete(PROMPT, max_tokens=5, temperature=0, logit_bias={eos: 100})
    assert (r.finish_reason, r.token_ids, r.text) == ("stop", [], "")
    small = pyllm.load(n_ctx=16, n_threads=2)
    r = small.complete(PROMPT, max_tokens=100, temperature=0, ignore_eos=True)
    # every position of the context is filled, and the last one's logits give one more token
    assert r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 16 + 1


def test_control_tokens_skipped_unless_special(model):
    bos = model.tokenizer.bos_id
    assert model.generate(PROMPT, max_tokens=3, temperature=0, logit_bias={bos: 100}) == ""
    assert model.generate(PROMPT, max_tokens=3, temperature=0, logit_bias={bos: 100}, special=True) == "<s>" * 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"),
    (dict(top_logprobs=21), "top_logprobs"),
    (dict(logit_bias={"x": 1}), "logit_bias"),
    (dict(logit_bias={5: 200}), "logit_bias"),
    (dict(logit_bias={10**6: 1}), "outside the vocabulary"),
    (dict(logit_bias=[1, 2]), "logit_bias"),
    (dict(stop=[""]), "stop"),
    (dict(stop=5), "stop"),
    (dict(stop=["a"] * 17), "stop"),
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(seed=-3), "seed"),
    (dict(logprobs="yes"), "logprobs"),
])
def test_bad_options_are_named(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(PROMPT, **kwargs)
    assert model.engine_stats()["running"] == 0


def test_unknown_option_is_a_type_error(model):
    with pytest.raises(TypeError, match="temprature"):
        model.generate(PROMPT, temprature=0.5)
