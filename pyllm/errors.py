"""errors.py: the exceptions pyllm raises for bad input. All derive from ValueError so callers
that already catch ValueError keep working; each message names the file/key/value at fault."""


class PyllmError(Exception):
    """Base class of pyllm's own errors."""


class ModelLoadError(PyllmError, ValueError):
    """A model file or folder is missing, truncated, corrupt, or inconsistent with its config."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's architecture (or one of its options) is not implemented."""


class ContextLengthError(PyllmError, ValueError):
    """A prompt or sequence does not fit in the model's context."""


class QueueFullError(PyllmError):
    """The batching engine's queue of waiting requests is full: try again later (HTTP 429)."""
