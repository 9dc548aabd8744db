"""errors.py: pyllm's own exceptions, all PyllmErrors. Those about bad input (a model file, a
prompt; also ChatTemplateError in pyllm/chat/template.py) are ValueErrors too, so callers that
already catch ValueError keep working; each message names the file/key/value at fault.
QueueFullError is about load, not input."""


class PyllmError(Exception):
    """Base class of pyllm's own errors (not itself a ValueError: see the subclasses)."""


class ModelLoadError(PyllmError, ValueError):
    """A model file or folder is missing, truncated, corrupt, or inconsistent with its config."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's architecture (or one of its options) is not implemented."""


class ContextLengthError(PyllmError, ValueError):
    """A prompt or sequence does not fit in the model's context."""


class DeviceError(PyllmError, RuntimeError):
    """The device asked for cannot run the model: a build without its kernels, no such device on this
    machine, or a forward not implemented there yet (the message says which)."""


class QueueFullError(PyllmError):
    """The batching engine's queue of waiting requests is full: try again later (HTTP 429)."""
