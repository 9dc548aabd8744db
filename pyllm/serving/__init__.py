"""pyllm.serving: many requests on one model. engine.py batches every running request's next token
into one forward (continuous batching, prefix reuse, a KV budget); request.py is what a caller
holds; server.py is the OpenAI-compatible HTTP server (`pyllm serve`, the `server` extra)."""
from .engine import Engine
from .request import Chunk, Completion, Request

__all__ = ["Engine", "Request", "Chunk", "Completion"]
