"""pyllm: CPU inference for open LLMs. `pyllm.load(path)` gives a Model with generate(),
stream(), logits() and a stateful sequence API; the heavy lifting is in the C engine."""
from __future__ import annotations

from . import _engine
from .arch import SUPPORTED_ARCHITECTURES
from .config import ModelConfig
from .errors import (ContextLengthError, DeviceError, ModelLoadError, PyllmError, QueueFullError,
                     UnsupportedArchitectureError)
from .loader import default_model_path, load
from .model import Model, Sequence
from .sampling import SamplingParams
from .generation.options import GenerationOptions
from .serving.request import Chunk, Completion, Request
from .chat.template import ChatTemplateError

__version__ = "0.1.0"
__all__ = [
    "load", "default_model_path", "Model", "Sequence", "ModelConfig", "SamplingParams", "PyllmError",
    "ModelLoadError", "DeviceError", "UnsupportedArchitectureError", "ContextLengthError", "QueueFullError",
    "SUPPORTED_ARCHITECTURES", "GenerationOptions", "Request", "Chunk", "Completion", "ChatTemplateError",
]
