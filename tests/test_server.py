"""test_server.py: `pyllm serve` (pyllm/serving/server.py) over real HTTP on 127.0.0.1. A uvicorn server
runs in a thread of this process with the shipped shakespeare-4m model (a copy whose tokenizer_config.json
gets a small chat template), driven by the openai client and raw httpx: completions and chat, streamed and
not, against the library's own output; stop strings, logprobs and usage; 16 concurrent streams against
the same requests run alone; client disconnects freeing their sequence; every kind of bad request getting
an OpenAI error body; a full queue answering 429; and the CLI entry point in a subprocess."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

import pyllm
from conftest import shipped_model_with_template
from pyllm.serving.server import create_app

KEY = "sk-test-key"
MODEL_ID = "shakespeare-4m"
N_CTX = 512
# ROLE:\ncontent\n\n turns, as the Shakespeare text the model learned; no system role (a template error)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('this template has no system role') }}{% endif %}"
    "{{ m['role'] | upper }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo", "KING HENRY:", "First Citizen:\nBefore we proceed", "HAMLET:\nTo be",
           "MENENIUS:", "GLOUCESTER:\nNow is the winter", "LADY ANNE:"]
DEADLINE_S = 20  # every wait on the server is bounded by this


# ---------------------------------------------------------------------------------------- fixtures
def _model_copy(tmp_path_factory) -> str:
    """The shipped model folder with a chat template in its tokenizer_config.json."""
    return shipped_model_with_template(str(tmp_path_factory.mktemp("models") / MODEL_ID), CHAT_TEMPLATE)


class Served:
    """A running server: its port, model, the engine requests it submitted, and clients."""

    def __init__(self, app, model):
        self.model = model
        self.requests = []  # every engine Request the server made, in order
        for name in ("submit", "submit_chat"):
            orig = getattr(model, name)

            def recorder(*a, _orig=orig, **kw):
                req = _orig(*a, **kw)
                if not any(r is req for r in self.requests):  # submit_chat goes through submit
                    self.requests.append(req)
                return req

            setattr(model, name, recorder)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[sock]), daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() - t0 < DEADLINE_S, "the server did not start"
            time.sleep(0.01)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=30)

    def stats(self) -> dict:
        r = self.http.get("/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_idle(self) -> dict:
        """Stats once nothing runs or waits (bounded)."""
        t0 = time.monotonic()
        while True:
            st = self.stats()
            if st["running"] == 0 and st["waiting"] == 0 and st["server"]["active"] == 0:
                return st
            assert time.monotonic() - t0 < DEADLINE_S, f"the engine did not go idle: {st}"
            time.sleep(0.02)

    def close(self) -> None:
        self.http.close()
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=DEADLINE_S)
        self.sock.close()
        self.model.close()
        assert not self.thread.is_alive(), "the server did not shut down"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _model_copy(tmp_path_factory)


@pytest.fixture(scope="module")
def served(model_dir):
    model = pyllm.load(model_dir, n_ctx=N_CTX)
    model.configure_engine(max_sequences=16, max_queue=64)
    s = Served(create_app(model, api_key=KEY), model)
    yield s
    s.close()


def _sse(response):
    """The data payloads of an SSE response: parsed JSON objects, and the string "[DONE]"."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _special_pieces(model) -> set:
    return {model.tokenizer.id_to_piece(i) for i in model.tokenizer.special_ids}


def _chat_prompt_tokens(model, messages) -> int:
    return len(model.tokenizer.encode(model.apply_chat_template(messages), add_special_tokens=False))


# ---------------------------------------------------------------------------------------- basics
def test_health_models_and_auth(served):
    r = httpx.get(served.url + "/health", timeout=10)  # no key needed
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    models = served.client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert served.client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("gpt-4")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (("GET", "/v1/models", None), ("GET", "/stats", None),
                                   ("POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 2}),
                                   ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
            r = httpx.request(method, served.url + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (headers, path, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid_api_key" and err["message"]
    bad_client = openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        bad_client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=2)
    bad_client.close()


def test_completion_matches_library(served):
    model = served.model
    for prompt in PROMPTS[:3]:
        want = model.complete(prompt, max_tokens=20, temperature=0)
        got = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=20, temperature=0)
        assert got.object == "text_completion" and got.model == MODEL_ID and got.id.startswith("cmpl-")
        (choice,) = got.choices
        assert choice.text == want.text and choice.finish_reason == want.finish_reason
        assert choice.logprobs is None
        assert got.usage.prompt_tokens == len(model.tokenize(prompt))
        assert got.usage.completion_tokens == len(want.token_ids)
        assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
    # model omitted is fine; a prompt of token ids, ["text"] and [[ids]] are one prompt each
    ids = model.tokenize(PROMPTS[0])
    want = model.generate(ids, max_tokens=10, temperature=0)
    for prompt in (ids, [ids], [PROMPTS[0]]):
        r = served.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 10, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
        assert r.json()["usage"]["prompt_tokens"] == len(ids)


def test_completion_stream_and_echo(served):
    prompt = PROMPTS[1]
    full = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=0)
    chunks = list(served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].text for c in body) == full.choices[0].text
    reasons = [c.choices[0].finish_reason for c in body]
    assert reasons[-1] == full.choices[0].finish_reason and not any(reasons[:-1])
    assert len({c.id for c in chunks}) == 1
    # the wire format: data: lines, ending with [DONE]; no usage chunk unless asked
    with served.http.stream("POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 24, "temperature": 0,
                                                             "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) and "usage" not in e for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == full.choices[0].text
    # echo: the prompt first
    r = served.http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 24, "temperature": 0, "echo": True})
    assert r.json()["choices"][0]["text"] == prompt + full.choices[0].text
    with served.http.stream("POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 24, "temperature": 0,
                                                             "echo": True, "stream": True}) as r:
        events = _sse(r)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == prompt + full.choices[0].text


def test_chat(served):
    model = served.model
    messages = [{"role": "user", "content": "Good morrow, what news?"}]
    want = model.submit_chat(messages, max_tokens=30, temperature=0).result()
    got = served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=30, temperature=0)
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    (choice,) = got.choices
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == _chat_prompt_tokens(model, messages)
    assert got.usage.completion_tokens == len(want.token_ids)
    # max_completion_tokens (preferred over max_tokens), content parts, a multi-turn conversation
    parts = [{"type": "text", "text": "Good morrow,"}, {"type": "text", "text": "what news?"}]
    conv = [{"role": "user", "content": parts},
            {"role": "assistant", "content": "None, my lord."}, {"role": "user", "content": "Speak again."}]
    plain = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
              "\n".join(p["text"] for p in m["content"])} for m in conv]
    want2 = model.submit_chat(plain, max_tokens=12, temperature=0).result()
    got2 = served.client.chat.completions.create(model=MODEL_ID, messages=conv, max_tokens=99, temperature=0,
                                                 extra_body={"max_completion_tokens": 12})
    assert got2.choices[0].message.content == want2.text
    assert got2.usage.completion_tokens == len(want2.token_ids) <= 12
    assert got2.usage.prompt_tokens == _chat_prompt_tokens(model, plain)
    # streamed: a role delta first, then content deltas, then an empty delta with the finish reason
    chunks = list(served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=30,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *body, last = chunks
    assert last.choices == [] and last.usage.model_dump() == got.usage.model_dump()
    assert body[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in body) == want.text
    assert body[-1].choices[0].finish_reason == want.finish_reason and body[-1].choices[0].delta.content is None
    assert not any(c.choices[0].finish_reason for c in body[:-1])


def test_stop_strings(served):
    prompt = PROMPTS[2]
    base = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=40, temperature=0,
                                            extra_body={"ignore_eos": True})
    text = base.choices[0].text
    assert len(text) >= 14 and base.choices[0].finish_reason == "length", text
    stop = text[10:14]
    want = text[: text.index(stop)]
    got = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=40, temperature=0,
                                           stop=["never in this text \u2603", stop], extra_body={"ignore_eos": True})
    assert got.choices[0].text == want and got.choices[0].finish_reason == "stop"
    streamed = list(served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=40, temperature=0,
                                                     stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"
    # chat too
    messages = [{"role": "user", "content": "Speak."}]
    chat_text = served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=40, temperature=0,
                                                      extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(chat_text) >= 10, chat_text
    cstop = chat_text[6:9]
    got = served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=40, temperature=0,
                                                stop=cstop, extra_body={"ignore_eos": True})
    assert got.choices[0].message.content == chat_text[: chat_text.index(cstop)]
    assert got.choices[0].finish_reason == "stop"


def test_logprobs(served):
    prompt = PROMPTS[3]
    got = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    choice = got.choices[0]
    lp = choice.logprobs
    n = got.usage.completion_tokens
    assert n >= 4 and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    # control tokens (the model writes <s> between speeches) are in the logprobs, not in the text
    shown = ["" if t in _special_pieces(served.model) else t for t in lp.tokens]
    assert "".join(shown) == choice.text
    assert lp.text_offset == [len(prompt) + len("".join(shown[:i])) for i in range(n)]
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert tlp <= 0 and 3 <= len(top) <= 4
        assert tok in top and top[tok] == pytest.approx(tlp)
        assert tlp == pytest.approx(max(top.values()))  # greedy: the chosen token is the most likely one
    want = served.model.complete(prompt, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    assert lp.token_logprobs == pytest.approx([t.logprob for t in want.logprobs])
    # streamed logprobs add up to the same
    chunks = list(served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0,
                                                   logprobs=3, stream=True))
    toks = [t for c in chunks for t in c.choices[0].logprobs.tokens]
    offs = [o for c in chunks for o in c.choices[0].logprobs.text_offset]
    assert toks == lp.tokens and offs == lp.text_offset
    # chat: content entries with token, logprob, bytes and top_logprobs
    messages = [{"role": "user", "content": "Who goes there?"}]
    got = served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens == 6
    specials = _special_pieces(served.model)
    assert "".join(e.token for e in content if e.token not in specials) == got.choices[0].message.content
    for e in content:
        assert e.bytes == list(e.token.encode("utf-8")) and e.logprob <= 0
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
    chunks = list(served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=6, temperature=0,
                                                        logprobs=True, top_logprobs=2, stream=True,
                                                        extra_body={"ignore_eos": True}))
    streamed = [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in content]
    # without logprobs asked: none
    got = served.client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, temperature=0)
    assert got.choices[0].logprobs is None


def test_sampling_options_reach_the_engine(served):
    model = served.model
    prompt = PROMPTS[0]
    # logit_bias: banning the greedy first token changes the text, as it does in the library
    first_id = model.complete(prompt, max_tokens=1, temperature=0).token_ids[0]
    want = model.complete(prompt, max_tokens=6, temperature=0, logit_bias={first_id: -100}, ignore_eos=True)
    assert want.token_ids[0] != first_id
    got = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=6, temperature=0,
                                           logit_bias={str(first_id): -100}, extra_body={"ignore_eos": True})
    assert got.choices[0].text == want.text
    # seeded sampling with every sampling option: the library's text; another seed (almost surely) differs
    opts = dict(temperature=1.0, top_p=0.95, presence_penalty=0.5, frequency_penalty=0.3)
    extra = dict(top_k=50, min_p=0.01, repeat_penalty=1.1, ignore_eos=True)
    runs = [served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=40, seed=seed, **opts,
                                             extra_body=extra).choices[0].text for seed in (7, 7, 8)]
    assert runs[0] == runs[1] == model.generate(prompt, max_tokens=40, seed=7, **opts, **extra)
    assert runs[0] != runs[2]


# ---------------------------------------------------------------------------------------- concurrency
def _stream_text(served, job) -> str:
    kind, prompt, extra = job
    if kind == "chat":
        stream = served.client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
                                                       max_tokens=32, stream=True, **extra)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stream = served.client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=32, stream=True, **extra)
    return "".join(c.choices[0].text for c in stream if c.choices)


def test_concurrent_streams_match_solo(served):
    jobs = []
    for i in range(16):
        kind = "chat" if i % 4 == 3 else "completion"
        extra = {"temperature": 0} if i < 12 else {"temperature": 0.9, "seed": 1000 + i}
        jobs.append((kind, PROMPTS[i % len(PROMPTS)] + ("" if i < 8 else " and"), extra))
    solo = [_stream_text(served, job) for job in jobs]
    assert all(solo), solo
    before = served.wait_idle()
    barrier = threading.Barrier(len(jobs), timeout=DEADLINE_S)

    def run(job):
        barrier.wait()
        return _stream_text(served, job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs, timeout=60))
    after = served.wait_idle()
    for job, a, b in zip(jobs, solo, together):
        assert a == b, (job, a, b)
    # they really ran together: steps decoded several sequences at once
    decoded = after["decoded_tokens"] - before["decoded_tokens"]
    steps = after["steps"] - before["steps"]
    assert decoded / max(steps, 1) > 1.5, (decoded, steps)


# ---------------------------------------------------------------------------------------- disconnects
def _wait_finished(req) -> str:
    t0 = time.monotonic()
    while req.finish_reason is None:
        assert time.monotonic() - t0 < DEADLINE_S, "the engine request did not end"
        time.sleep(0.01)
    return req.finish_reason


def test_stream_disconnect_cancels(served):
    served.wait_idle()
    before = served.stats()["server"]["disconnects"]
    n_before = len(served.requests)
    max_tokens = N_CTX - 16
    body = {"prompt": PROMPTS[0], "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break
    (req,) = served.requests[n_before:]
    assert _wait_finished(req) == "cancelled"
    assert req.completion_tokens < max_tokens
    st = served.wait_idle()
    assert st["running"] == 0 and st["waiting"] == 0
    assert st["server"]["disconnects"] == before + 1
    # the server goes on serving
    got = served.client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=4, temperature=0)
    assert got.usage.completion_tokens == 4 or got.choices[0].finish_reason == "stop"


def test_non_stream_disconnect_cancels(served):
    served.wait_idle()
    n_before = len(served.requests)
    max_tokens = N_CTX - 16
    body = {"messages": [{"role": "user", "content": "Tell a long tale."}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        # the client gives up (read timeout) as soon as the request is running
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.05))
    t0 = time.monotonic()
    while len(served.requests) == n_before:  # on a loaded machine the server may get to it later
        assert time.monotonic() - t0 < DEADLINE_S, "the request never reached the engine"
        time.sleep(0.01)
    (req,) = served.requests[n_before:]
    assert _wait_finished(req) == "cancelled"
    assert req.completion_tokens < max_tokens
    served.wait_idle()
    got = served.client.chat.completions.create(model=MODEL_ID, messages=body["messages"], max_tokens=3)
    assert got.choices[0].message.content is not None


# ---------------------------------------------------------------------------------------- bad requests
LONG_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? " * 60
CHAT = [{"role": "user", "content": "hi"}]
BAD = [
    # (path, body (bytes: sent as is), status, param, code)
    ("/v1/completions", b'{"prompt": "ROMEO:", ', 400, None, None),
    ("/v1/completions", b"", 400, None, None),
    ("/v1/completions", b"[1, 2]", 400, None, None),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, None, None),
    ("/v1/completions", b"\xff\xfe{", 400, None, None),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt", None),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", None),
    ("/v1/completions", {"prompt": ["ROMEO:", "JULIET:"]}, 400, "prompt", None),
    ("/v1/completions", {"prompt": []}, 400, "prompt", None),
    ("/v1/completions", {"prompt": [1, "x"]}, 400, "prompt", None),
    ("/v1/completions", {"prompt": [1, 10 ** 6]}, 400, "prompt", None),
    ("/v1/completions", {"prompt": LONG_PROMPT}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", {"prompt": "x", "model": 3}, 400, "model", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": "10"}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens", None),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", None),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ("/v1/completions", {"prompt": "x", "top_p": [1]}, 400, "top_p", None),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, 400, "presence_penalty", None),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": True}, 400, "frequency_penalty", None),
    ("/v1/completions", {"prompt": "x", "seed": "s"}, 400, "seed", None),
    ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop", None),
    ("/v1/completions", {"prompt": "x", "stop": ["a", 1]}, 400, "stop", None),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop", None),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": "x"}}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 500}}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999": 1}}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": "x", "logit_bias": [1]}, 400, "logit_bias", None),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs", None),
    ("/v1/completions", {"prompt": "x", "logprobs": "yes"}, 400, "logprobs", None),
    ("/v1/completions", {"prompt": "x", "logprobs": 2, "echo": True}, 400, "echo", None),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n", None),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of", None),
    ("/v1/completions", {"prompt": "x", "suffix": "end"}, 400, "suffix", None),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream", None),
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": []}, 400, "stream_options", None),
    ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {"messages": ["hi"]}, 400, "messages[0]", None),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", None),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0].role", None),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages[0].content[0]", None),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."}] + CHAT}, 400, "messages",
     "chat_template_error"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}]}, 400, "messages",
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 2}, 400, "n", None),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "max_tokens", None),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": -1}, 400, "max_completion_tokens", None),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": 1}, 400, "logprobs", None),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs", None),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 30}, 400, "top_logprobs", None),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": {}}, 400, "temperature", None),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}}, 400, "response_format",
     None),
]


@pytest.mark.parametrize("path,body,status,param,code", BAD,
                         ids=[f"{i}-{'chat' if 'chat' in b[0] else 'completions'}" for i, b in enumerate(BAD)])
def test_bad_request(served, path, body, status, param, code):
    if isinstance(body, bytes):
        r = served.http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = served.http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param and err["code"] == code, err
    if param is not None and not param.startswith("messages"):
        assert param in err["message"]  # the message names the field at fault


def test_bad_requests_leave_the_server_serving(served):
    # unknown URL and wrong method: OpenAI-style bodies too, no FastAPI 422/detail leaks
    r = served.http.post("/v1/engines", json={})
    assert r.status_code == 404 and "error" in r.json()
    r = served.http.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = served.http.post("/v1/completions", content=b'{"prompt": "' + b"a" * (17 << 20) + b'"}')
    assert r.status_code == 413 and "error" in r.json()
    with pytest.raises(openai.BadRequestError) as e:
        served.client.completions.create(model=MODEL_ID, prompt="ROMEO:", n=2)
    assert e.value.status_code == 400 and e.value.param == "n"
    # unknown fields are ignored, as OpenAI does
    r = served.http.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 2, "user": "u", "frobnicate": 1})
    assert r.status_code == 200, r.text
    st = served.wait_idle()
    assert st["server"]["active"] == 0
    got = served.client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=3, temperature=0)
    assert got.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------------------------------- a full queue
def test_queue_full_gives_429(model_dir):
    model = pyllm.load(model_dir, n_ctx=N_CTX)
    model.configure_engine(max_sequences=1, max_queue=1)
    s = Served(create_app(model, api_key=KEY), model)
    try:
        long = {"prompt": PROMPTS[0], "max_tokens": N_CTX - 16, "temperature": 0, "stream": True, "ignore_eos": True}
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json=long) as ra:
                lines_a = ra.iter_lines()
                first = next(line for line in lines_a if line.startswith("data: "))  # A runs
                assert json.loads(first[6:])["choices"]
                with c.stream("POST", "/v1/completions", json=long) as rb:  # B waits for A's sequence
                    assert rb.status_code == 200
                    t0 = time.monotonic()
                    while s.stats()["waiting"] != 1:
                        assert time.monotonic() - t0 < DEADLINE_S, s.stats()
                        time.sleep(0.005)
                    # C: no room to wait in
                    with pytest.raises(openai.RateLimitError) as e:
                        s.client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=4)
                    assert e.value.status_code == 429 and e.value.code == "queue_full"
                    r = s.http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4})
                    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
                    assert r.headers.get("retry-after")
                    # A and B both complete in full
                    events_a = [json.loads(x[6:]) for x in lines_a if x.startswith("data: {")]
                    events_b = [e for e in _sse(rb) if e != "[DONE]"]
            for events in (events_a, events_b):
                assert events[-1]["choices"][0]["finish_reason"] == "length"
        st = s.wait_idle()
        assert st["server"]["requests"] == 2 and st["server"]["disconnects"] == 0
        got = s.client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=4, temperature=0)
        assert got.choices[0].text == model.generate("ROMEO:", max_tokens=4, temperature=0)
    finally:
        s.close()


# ---------------------------------------------------------------------------------------- the CLI
def _read_line(stream, deadline_s: float) -> str:
    box = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(deadline_s)
    assert box, "no output from the server in time"
    return box[0]


def test_cli_serve(tmp_path):
    """`pyllm serve` end to end: the key from $PYLLM_API_KEY, --port 0, --chat-template, Ctrl-C exits 0."""
    template = tmp_path / "template.jinja"
    template.write_text(CHAT_TEMPLATE, encoding="utf-8")
    env = dict(os.environ, PYLLM_API_KEY="env-key")
    proc = subprocess.Popen([sys.executable, "-m", "pyllm", "serve", "--port", "0", "-c", "128", "-t", "1", "--max-sequences", "2",
                             "--kv-type", "f16", "--chat-template", str(template), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(proc.stdout, 60)
        assert "listening on http://127.0.0.1:" in line, (line, proc.poll())
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list().data] == [MODEL_ID]
        got = client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=5, temperature=0)
        assert got.choices[0].message.role == "assistant" and got.usage.completion_tokens <= 5
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0, err


def test_cli_serve_bad_arguments(tmp_path):
    """A broken chat template file or a port already taken is a clear error, not a traceback."""
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in %}", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "pyllm", "serve", "--chat-template", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--chat-template" in r.stderr and "Traceback" not in r.stderr, r.stderr
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pyllm", "serve", "--port", str(port), "-c", "64"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    finally:
        taken.close()


# ---------------------------------------------------------------------------------------- app options
def test_model_without_template_and_app_options(tmp_path):
    """The shipped model has no chat template: chat says how to give one; create_app's chat_template and
    model_id are used; with no api_key nothing asks for one."""
    from fastapi.testclient import TestClient

    from pyllm.serving.server import _model_id

    model = pyllm.load(n_ctx=128)
    try:
        with TestClient(create_app(model)) as c:
            assert c.get("/v1/models").json()["data"][0]["id"] == MODEL_ID
            r = c.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
            err = r.json()["error"]
            assert r.status_code == 400 and err["code"] == "chat_template_error" and "--chat-template" in err["message"]
        with TestClient(create_app(model, model_id="bard", chat_template=CHAT_TEMPLATE)) as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["bard"]
            r = c.post("/v1/chat/completions", json={"model": "bard", "messages": CHAT, "max_tokens": 4,
                                                     "temperature": 0})
            assert r.status_code == 200, r.text
            want = model.submit_chat(CHAT, chat_template=CHAT_TEMPLATE, max_tokens=4, temperature=0).result()
            assert r.json()["choices"][0]["message"]["content"] == want.text
            assert c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "x"}).status_code == 404
    finally:
        model.close()
    gguf = tmp_path / "llama-7b.Q4_0.gguf"
    gguf.write_bytes(b"")

    class Fake:
        path = str(gguf)

    assert _model_id(Fake) == "llama-7b.Q4_0"
    Fake.path = str(tmp_path) + "/"
    assert _model_id(Fake) == tmp_path.name
