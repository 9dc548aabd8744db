"""pyllm: CPU inference for open LLMs. `pyllm.load(path)` gives a Model with generate(),
stream(), logits() and a stateful sequence API; the heavy lifting is in the C engine."""
from __future__ import annotations

import os

# The engine's OpenMP threads meet at a barrier ~15 times per layer. libgomp's default is to spin
# ~300k iterations there before sleeping, so where another process holds a core a waiting thread
# burns its time slice on a descheduled partner and decoding stalls. A short spin measured the same
# on a quiet 2-core machine and 1.5x faster (mean tok/s) with a CPU hog on one core. libgomp reads
# this when it loads (with the engine, just below); a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from . import _engine  # noqa: E402
from .arch import SUPPORTED_ARCHITECTURES  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .errors import ContextLengthError, ModelLoadError, PyllmError, QueueFullError, UnsupportedArchitectureError  # noqa: E402
from .loader import default_model_path, load  # noqa: E402
from .model import Model, Sequence  # noqa: E402
from .sampling import SamplingParams  # noqa: E402
from .generation.options import GenerationOptions  # noqa: E402
from .serving.request import Chunk, Completion, Request  # noqa: E402
from .chat.template import ChatTemplateError  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "load", "default_model_path", "Model", "Sequence", "ModelConfig", "SamplingParams", "PyllmError",
    "ModelLoadError", "UnsupportedArchitectureError", "ContextLengthError", "QueueFullError", "SUPPORTED_ARCHITECTURES",
    "GenerationOptions", "Request", "Chunk", "Completion", "ChatTemplateError",
]
