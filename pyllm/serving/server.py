"""server.py: `pyllm serve`, an OpenAI-compatible HTTP server (FastAPI, uvicorn, sse-starlette) for one
loaded model: GET /health, GET /v1/models, POST /v1/completions and /v1/chat/completions (streamed as
server-sent events or not) and GET /stats (the engine's counters). The JSON types and OpenAI-only
limits of a request are checked here, the option values by the engine; every error is an OpenAI-style
JSON body naming the field at fault. create_app() builds the app; add_arguments() and run() are the
CLI subcommand."""

import argparse
import asyncio
import codecs
import functools
import hmac
import json
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
from typing import Any, Optional

log = logging.getLogger("pyllm.serve")

MAX_LOGPROBS = 20  # OpenAI's limit on top log-probabilities per token
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_BODY_BYTES = 16 << 20  # a larger request body is refused (413) before it is read


# ---------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _bad(param: Optional[str], message: str, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------------- JSON field checks
def _describe(v: Any) -> str:
    """A JSON value's type as a message shows it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({json.dumps(v)})"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, str):
        s = v if len(v) <= 40 else v[:37] + "..."
        return f"a string ({json.dumps(s)})"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v))


def _opt_int(body: dict, name: str) -> Optional[int]:
    v = body.get(name)
    if v is not None and not _is_int(v):
        raise _bad(name, f"{name} must be an integer, got {_describe(v)}")
    return v


def _opt_number(body: dict, name: str) -> Optional[float]:
    v = body.get(name)
    if v is not None and not _is_number(v):
        raise _bad(name, f"{name} must be a number, got {_describe(v)}")
    return v


def _opt_bool(body: dict, name: str) -> Optional[bool]:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _bad(name, f"{name} must be true or false, got {_describe(v)}")
    return v


def _opt_str(body: dict, name: str) -> Optional[str]:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise _bad(name, f"{name} must be a string, got {_describe(v)}")
    return v


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes) -> dict:
    if not raw.strip():
        raise _bad(None, "the request body is empty: expected a JSON object")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise _bad(None, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise _bad(None, f"the request body must be a JSON object, got {_describe(body)}")
    return body


def _token_ids(v, param: str, vocab_size: int) -> list:
    for i, t in enumerate(v):
        if not _is_int(t):
            raise _bad(param, f"{param}[{i}] must be a token id (an integer), got {_describe(t)}")
        if not 0 <= t < vocab_size:
            raise _bad(param, f"{param}[{i}] is token id {t}, outside the vocabulary (0..{vocab_size - 1})")
    return list(v)


# ---------------------------------------------------------------------------------------- request -> engine options
def _sampling_options(body: dict, vocab_size: int) -> dict:
    """The options /v1/completions and /v1/chat/completions share, as the engine's keyword arguments."""
    opts: dict = {}
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repeat_penalty"):
        v = _opt_number(body, name)
        if v is not None:
            opts[name] = v
    for name in ("seed", "top_k"):
        v = _opt_int(body, name)
        if v is not None:
            opts[name] = v
    ignore_eos = _opt_bool(body, "ignore_eos")
    if ignore_eos is not None:
        opts["ignore_eos"] = ignore_eos
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        elif not isinstance(stop, list):
            raise _bad("stop", f"stop must be a string or an array of strings, got {_describe(stop)}")
        for i, s in enumerate(stop):
            if not isinstance(s, str):
                raise _bad("stop", f"stop[{i}] must be a string, got {_describe(s)}")
        if stop:
            opts["stop"] = stop
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise _bad("logit_bias", f"logit_bias must be an object mapping token ids to biases, got {_describe(bias)}")
        clean = {}
        for k, b in bias.items():
            if not re.fullmatch(r"[0-9]{1,10}", k):
                raise _bad("logit_bias", f"logit_bias keys must be token ids (strings of digits), got {json.dumps(k)}")
            if int(k) >= vocab_size:
                raise _bad("logit_bias", f"logit_bias names token id {k}, outside the vocabulary (0..{vocab_size - 1})")
            if not _is_number(b):
                raise _bad("logit_bias", f"logit_bias[{json.dumps(k)}] must be a number, got {_describe(b)}")
            clean[int(k)] = b
        if clean:
            opts["logit_bias"] = clean
    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise _bad("n", f"n must be 1 (one choice per request is supported), got {n}")
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind != "text":
            raise _bad("response_format", "response_format: only {\"type\": \"text\"} is supported")
    return opts


def _max_tokens(body: dict, names: tuple, default: int) -> tuple:
    """(max_tokens, the field it came from)."""
    for name in names:  # the first one set wins (chat: max_completion_tokens, then max_tokens)
        v = _opt_int(body, name)
        if v is not None:
            if v <= 0:
                raise _bad(name, f"{name} must be a positive integer, got {v}")
            return v, name
    return default, names[-1]


def _stream_options(body: dict) -> tuple:
    """(stream, include_usage)."""
    stream = bool(_opt_bool(body, "stream"))
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise _bad("stream_options", f"stream_options must be an object, got {_describe(so)}")
        iu = so.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise _bad("stream_options", f"stream_options.include_usage must be true or false, got {_describe(iu)}")
        include_usage = bool(iu)
    return stream, include_usage


def _chat_messages(body: dict) -> list:
    msgs = body.get("messages")
    if msgs is None:
        raise _bad("messages", "messages is required: an array of {\"role\", \"content\"} objects")
    if not isinstance(msgs, list):
        raise _bad("messages", f"messages must be an array, got {_describe(msgs)}")
    if not msgs:
        raise _bad("messages", "messages must hold at least one message")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, f"{where} must be an object, got {_describe(m)}")
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise _bad(f"{where}.role", f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {_describe(role)}")
        content = m.get("content")
        if content is None:
            if role != "assistant":
                raise _bad(f"{where}.content", f"{where}.content is required for a {role} message")
            content = ""
        elif isinstance(content, list):  # content parts: only text ones
            texts = []
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise _bad(pw, f"{pw} must be an object, got {_describe(part)}")
                if part.get("type") != "text":
                    kind = _describe(part.get("type"))
                    raise _bad(pw, f"{pw}: only text content parts are supported, got type {kind}")
                if not isinstance(part.get("text"), str):
                    raise _bad(pw, f"{pw}.text must be a string, got {_describe(part.get('text'))}")
                texts.append(part["text"])
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise _bad(f"{where}.content", f"{where}.content must be a string or an array of content parts, "
                                           f"got {_describe(content)}")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        for key, kind in (("name", str), ("tool_call_id", str), ("tool_calls", list)):
            v = m.get(key)
            if v is not None:
                if not isinstance(v, kind):
                    raise _bad(f"{where}.{key}", f"{where}.{key} must be {'a string' if kind is str else 'an array'}, "
                                                 f"got {_describe(v)}")
                msg[key] = v
        out.append(msg)
    return out


def _param_of(message: str, names: dict) -> Optional[str]:
    """The request field an engine ValueError is about: the option name its message mentions first
    (engine names, mapped to the request's own by names)."""
    best = None
    for engine_name, field in names.items():
        m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(engine_name)}(?![A-Za-z0-9_])", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), field)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------- logprobs formats
class _CompletionLogprobs:
    """OpenAI's /v1/completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}. A token's
    offset is the character where its text starts, counted from the start of the prompt (as OpenAI and
    llama-cpp-python report them): the characters of the tokens before it, from their UTF-8 bytes (a
    byte token inside a character is at that character), control tokens the text skips counting none.
    Tokens cut by a stop string keep the offsets they would have had."""

    def __init__(self, base_offset: int, hidden_ids=frozenset()):
        self.offset = base_offset
        self.hidden = hidden_ids
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.all = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, lps) -> dict:
        part = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in lps or ():
            top = {tok: lp for tok, lp, _b in t.top}
            top.setdefault(t.token, t.logprob)  # the chosen token is always there (up to n+1 entries)
            part["tokens"].append(t.token)
            part["token_logprobs"].append(t.logprob)
            part["top_logprobs"].append(top)
            part["text_offset"].append(self.offset)
            if t.token_id not in self.hidden:
                self.offset += len(self.utf8.decode(bytes(t.bytes)))
        for k, v in part.items():
            self.all[k].extend(v)
        return part


def _chat_logprobs(lps) -> list:
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(b)} for tok, lp, b in t.top]}
            for t in lps or ()]


def _usage(req) -> dict:
    p, c = int(req.prompt_tokens), int(req.completion_tokens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _model_id(model) -> str:
    path = os.fspath(getattr(model, "path", "") or "").rstrip("/\\")
    name = os.path.basename(path)
    if not os.path.isdir(path) and name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return name or "model"


async def _in_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) in the event loop's default thread pool. If the caller is cancelled meanwhile
    (server shutdown), the engine request fn returns is cancelled when it arrives, not left running."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def drop(f):
            if not f.cancelled() and f.exception() is None:
                f.result().cancel()

        fut.add_done_callback(drop)
        raise


# ---------------------------------------------------------------------------------------- the app
class _Counters:
    def __init__(self):
        self.requests = 0  # generation requests accepted by the engine
        self.active = 0  # of those, not finished yet
        self.disconnects = 0  # cancelled because the client went away


def create_app(model, *, api_key: Optional[str] = None, model_id: Optional[str] = None,
               chat_template: Optional[str] = None):
    """The FastAPI app serving `model` (a pyllm Model; configure its engine before the first request).
    api_key: when set, /v1/* and /stats need `Authorization: Bearer <api_key>`. model_id: the name
    clients pass as `model` (default: the model folder's name, or the .gguf file's name without the
    suffix). chat_template: a Jinja template used instead of the model's own for chat requests."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    from ..chat import ChatTemplateError
    from ..errors import ContextLengthError, QueueFullError

    api_key = api_key or None  # an empty key is no key
    served_id = model_id or _model_id(model)
    created = int(time.time())
    vocab_size = int(model.vocab_size)
    counters = _Counters()

    app = FastAPI(title="pyllm", description="OpenAI-compatible API for a pyllm model", docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.model = model
    app.state.model_id = served_id
    app.state.counters = counters

    # ---- error bodies: everything a client sees as an error is OpenAI's shape
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = f"{param or 'request'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(msg, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        if exc.status_code == 404:
            msg = f"unknown request URL: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed for {request.url.path}"
        else:
            msg = str(exc.detail)
        return JSONResponse(error_body(msg, code=None if exc.status_code != 404 else "unknown_url"),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal server error: {type(exc).__name__}", type="server_error"),
                            status_code=500)

    def check_key(request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization")
        if not auth:
            raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_model(body: dict) -> None:
        name = body.get("model")
        if name is None:
            return
        if not isinstance(name, str):
            raise _bad("model", f"model must be a string, got {_describe(name)}")
        if name != served_id:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{served_id}'",
                           param="model", code="model_not_found")

    async def read_body(request) -> dict:
        check_key(request)
        too_big = APIError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise too_big
        raw = bytearray()
        try:
            async for part in request.stream():
                raw += part
                if len(raw) > MAX_BODY_BYTES:
                    raise too_big
        except ClientDisconnect:  # gone before its request arrived: nobody reads the answer
            raise _bad(None, "the client disconnected while sending the request") from None
        body = parse_json_body(bytes(raw))
        check_model(body)
        return body

    async def submit(fn, args: tuple, kwargs: dict, names: dict, prompt_param: str):
        """Hands the request to the engine; its synchronous checks become 400 / 429 answers. Run in a
        worker thread: rendering and tokenizing a long prompt must not hold up the other streams."""
        try:
            req = await _in_thread(fn, *args, **kwargs)
        except Exception as e:
            if isinstance(e, QueueFullError):
                raise APIError(429, f"the server is busy (its request queue is full), try again later: {e}",
                               code="queue_full", type="server_overloaded", headers={"Retry-After": "1"}) from None
            if isinstance(e, ContextLengthError):
                raise _bad(prompt_param, str(e), code="context_length_exceeded") from None
            if isinstance(e, ChatTemplateError):
                if chat_template is None and getattr(model.tokenizer, "chat_template", None) is None:
                    msg = "this model has no chat template: start the server with --chat-template FILE"
                else:
                    msg = f"the chat template failed: {e}"
                raise _bad("messages", msg, code="chat_template_error") from None
            if isinstance(e, (ValueError, TypeError)):
                raise _bad(_param_of(str(e), names), str(e)) from None
            log.exception("submitting a request failed")
            raise APIError(500, f"internal server error: {type(e).__name__}: {e}", type="server_error") from None
        counters.requests += 1
        counters.active += 1
        return _Tracked(req)

    async def watch_disconnect(request, tracked) -> None:
        """For a non-streamed answer: cancel the engine request once the client goes away."""
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                tracked.close(disconnected=tracked.req.finish_reason is None)
                return

    async def run_to_end(request, tracked, on_chunk) -> None:
        watcher = asyncio.ensure_future(watch_disconnect(request, tracked))
        try:
            async for chunk in tracked.req:
                on_chunk(chunk)
        finally:
            watcher.cancel()
            tracked.close()

    def sse(obj) -> dict:
        return {"data": json.dumps(obj, ensure_ascii=False)}

    class _Tracked:
        """One engine request's end, whichever way it comes: cancel it (a no-op once it is done) and
        count it off, once."""

        def __init__(self, req):
            self.req = req
            self.open = True

        def close(self, disconnected: bool = False) -> None:
            self.req.cancel()
            if self.open:
                self.open = False
                counters.active -= 1
                if disconnected:
                    counters.disconnects += 1

    class _GuardedEventSource(EventSourceResponse):
        """Closes its engine request when the response ends however it ends, also when the client
        leaves before the event generator has started (an unstarted generator runs no finally)."""

        def __init__(self, tracked: "_Tracked", *a, **kw):
            super().__init__(*a, **kw)
            self._tracked = tracked

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self._tracked.close(disconnected=self._tracked.req.finish_reason is None)

    def stream_response(tracked: "_Tracked", chunk_events, include_usage: bool, base: dict):
        """An SSE response: the chunks chunk_events() makes, a usage chunk if asked, then [DONE]. A client
        that disconnects cancels the generator (sse-starlette cancels its task group) and so the request."""
        req = tracked.req

        async def events():
            try:
                async for ev in chunk_events():
                    if include_usage:
                        ev["usage"] = None
                    yield sse(ev)
                if include_usage:
                    yield sse({**base, "choices": [], "usage": _usage(req)})
                yield {"data": "[DONE]"}
            except Exception as e:  # the engine failed mid-stream: tell the client, end the stream
                log.exception("generation failed")
                yield sse(error_body(f"generation failed: {type(e).__name__}: {e}", type="server_error"))
            finally:
                tracked.close(disconnected=req.finish_reason is None)

        return _GuardedEventSource(tracked, events(), sep="\n", headers={"Cache-Control": "no-cache"})

    # ---- endpoints
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    def model_card() -> dict:
        return {"id": served_id, "object": "model", "created": created, "owned_by": "pyllm"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request):
        check_key(request)
        if name != served_id:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{served_id}'",
                           param="model", code="model_not_found")
        return model_card()

    @app.get("/stats")
    async def stats(request: Request):
        check_key(request)
        out = dict(model.engine_stats())
        out["server"] = {"requests": counters.requests, "active": counters.active,
                         "disconnects": counters.disconnects}
        return out

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        prompt = body.get("prompt")
        if prompt is None:
            raise _bad("prompt", "prompt is required: a string or an array of token ids")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # ["text"] or [[ids]]: one prompt
        if isinstance(prompt, list):
            if not prompt:
                raise _bad("prompt", "prompt must not be empty")
            if any(isinstance(p, (str, list)) for p in prompt):
                raise _bad("prompt", f"prompt holds {len(prompt)} prompts; one prompt per request is supported")
            prompt = _token_ids(prompt, "prompt", vocab_size)
        elif not isinstance(prompt, str):
            raise _bad("prompt", f"prompt must be a string or an array of token ids, got {_describe(prompt)}")
        opts = _sampling_options(body, vocab_size)
        max_tokens, mt_name = _max_tokens(body, ("max_tokens",), DEFAULT_COMPLETION_MAX_TOKENS)
        opts["max_tokens"] = max_tokens
        lp = _opt_int(body, "logprobs")
        if lp is not None:
            if not 0 <= lp <= MAX_LOGPROBS:
                raise _bad("logprobs", f"logprobs must be an integer in 0..{MAX_LOGPROBS}, got {lp}")
            opts["logprobs"] = True
            opts["top_logprobs"] = lp
        echo = bool(_opt_bool(body, "echo"))
        if echo and lp is not None:
            raise _bad("echo", "echo together with logprobs is not supported (the prompt's log-probabilities are "
                               "not computed)")
        suffix = _opt_str(body, "suffix")
        if suffix:
            raise _bad("suffix", "suffix (insertion) is not supported")
        best_of = _opt_int(body, "best_of")
        if best_of is not None and best_of != 1:
            raise _bad("best_of", f"best_of must be 1, got {best_of}")
        stream, include_usage = _stream_options(body)
        names = {k: k for k in opts}
        names.update(top_logprobs="logprobs", max_tokens=mt_name)
        prompt_text = prompt if isinstance(prompt, str) else model.detokenize(prompt, skip_special_tokens=True)

        tracked = await submit(model.submit, (prompt,), opts, names, "prompt")
        req = tracked.req
        rid = f"cmpl-{uuid.uuid4().hex}"
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": served_id}
        lp_builder = (_CompletionLogprobs(len(prompt_text), model.tokenizer.special_ids) if lp is not None else None)

        if stream:
            async def chunk_events():
                if echo:
                    yield {**base, "choices": [{"text": prompt_text, "index": 0, "logprobs": None,
                                                "finish_reason": None}]}
                async for c in req:
                    part = lp_builder.add(c.logprobs) if lp_builder else None
                    if c.text or (part and part["tokens"]):
                        yield {**base, "choices": [{"text": c.text, "index": 0, "logprobs": part,
                                                    "finish_reason": None}]}
                    if c.finish_reason is not None:
                        empty = {k: [] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
                        yield {**base, "choices": [{"text": "", "index": 0, "logprobs": empty if lp_builder else None,
                                                    "finish_reason": c.finish_reason}]}

            return stream_response(tracked, chunk_events, include_usage, base)

        pieces, finish = [prompt_text] if echo else [], [None]

        def on_chunk(c):
            pieces.append(c.text)
            if lp_builder:
                lp_builder.add(c.logprobs)
            if c.finish_reason is not None:
                finish[0] = c.finish_reason

        await run_to_end(request, tracked, on_chunk)
        return {**base, "choices": [{"text": "".join(pieces), "index": 0,
                                     "logprobs": lp_builder.all if lp_builder else None,
                                     "finish_reason": finish[0] or req.finish_reason}],
                "usage": _usage(req)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        messages = _chat_messages(body)
        opts = _sampling_options(body, vocab_size)
        max_tokens, mt_name = _max_tokens(body, ("max_completion_tokens", "max_tokens"), int(model.n_ctx))
        opts["max_tokens"] = max_tokens
        want_lp = bool(_opt_bool(body, "logprobs"))
        top = _opt_int(body, "top_logprobs")
        if top is not None:
            if not 0 <= top <= MAX_LOGPROBS:
                raise _bad("top_logprobs", f"top_logprobs must be an integer in 0..{MAX_LOGPROBS}, got {top}")
            if top and not want_lp:
                raise _bad("top_logprobs", "top_logprobs needs logprobs: true")
        if want_lp:
            opts["logprobs"] = True
            opts["top_logprobs"] = top or 0
        tools = body.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
            raise _bad("tools", f"tools must be an array of objects, got {_describe(tools)}")
        if body.get("tool_choice") == "none":
            tools = None
        stream, include_usage = _stream_options(body)
        names = {k: k for k in opts}
        names.update(max_tokens=mt_name)
        kwargs = dict(opts)
        if tools:
            kwargs["tools"] = tools
        if chat_template is not None:
            kwargs["chat_template"] = chat_template

        tracked = await submit(model.submit_chat, (messages,), kwargs, names, "messages")
        req = tracked.req
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": served_id}

        def choice(delta: dict, lps=None, finish=None) -> dict:
            return {"index": 0, "delta": delta,
                    "logprobs": {"content": _chat_logprobs(lps), "refusal": None} if lps else None,
                    "finish_reason": finish}

        if stream:
            async def chunk_events():
                yield {**base, "choices": [choice({"role": "assistant", "content": ""})]}
                async for c in req:
                    if c.text or (want_lp and c.logprobs):
                        yield {**base, "choices": [choice({"content": c.text}, c.logprobs if want_lp else None)]}
                    if c.finish_reason is not None:
                        yield {**base, "choices": [choice({}, finish=c.finish_reason)]}

            return stream_response(tracked, chunk_events, include_usage, base)

        pieces, lps, finish = [], [], [None]

        def on_chunk(c):
            pieces.append(c.text)
            if want_lp and c.logprobs:
                lps.extend(c.logprobs)
            if c.finish_reason is not None:
                finish[0] = c.finish_reason

        await run_to_end(request, tracked, on_chunk)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "logprobs": {"content": _chat_logprobs(lps), "refusal": None} if want_lp else None,
                             "finish_reason": finish[0] or req.finish_reason}],
                "usage": _usage(req)}

    return app


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..adapters import add_lora_argument

    """The options of `pyllm serve`."""
    parser.add_argument("model", nargs="?", default=None,
                        help="Hugging Face checkpoint folder or .gguf file (default: the shipped shakespeare-4m)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $PYLLM_API_KEY, else none)")
    parser.add_argument("--model-id", default=None,
                        help="the model name clients pass (default: the model folder's or file's name)")
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="Jinja chat template file to use instead of the model's own")
    parser.add_argument("-t", "--threads", type=int, default=None, help="engine threads (default: all CPUs)")
    parser.add_argument("-c", "--ctx", type=int, default=None, help="context length (default: model's, at most 4096)")
    parser.add_argument("--max-sequences", type=int, default=16, help="sequences generated together (default 16)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a sequence before new ones get 429 (default 64)")
    parser.add_argument("--kv-type", choices=("f32", "f16"), default="f32", help="KV cache element type (default f32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="run the model on the CPU (default) or an NVIDIA GPU (a PYLLM_CUDA build)")
    add_lora_argument(parser, "applied to the model")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default info)")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (so that --port 0 can report the port it got, and a busy port is a clear error)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    """`pyllm serve`: load the model, configure the engine, serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        print(f"pyllm serve: error: {e.name or e} is not installed; install the server extra: "
              "pip install 'pyllm[server]'", file=sys.stderr)
        return 2

    from ..adapters import lora_spec
    from ..loader import load

    for name in ("max_sequences", "max_queue"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("PYLLM_API_KEY") or None
    template = None
    if args.chat_template is not None:
        try:
            with open(args.chat_template, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            raise OSError(f"cannot read chat template {args.chat_template}: {e.strerror or e}") from None
        from ..chat.template import compile_chat_template

        try:  # a syntax error is reported now, not on every chat request
            compile_chat_template(template)
        except ValueError as e:
            raise ValueError(f"--chat-template {args.chat_template}: {e}") from None
    sock = _bind(args.host, args.port)  # a busy port fails before a long model load
    try:
        model = load(args.model, n_threads=args.threads, n_ctx=args.ctx, kv_type=args.kv_type, lora=lora_spec(args.lora),
                     device=args.device)
        model.configure_engine(max_sequences=args.max_sequences, max_queue=args.max_queue)
    except BaseException:
        sock.close()
        raise
    app = create_app(model, api_key=api_key, model_id=args.model_id, chat_template=template)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"pyllm serve: {app.state.model_id} ({model.path}) listening on http://{shown}:{port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pyllm serve: warning: listening on {args.host} without an API key (--api-key)", file=sys.stderr,
              flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly, then re-raises the signal
        pass
    finally:
        sock.close()
        model.close()
    print("pyllm serve: stopped", flush=True)
    return 0


__all__ = ["create_app", "add_arguments", "run", "APIError"]
