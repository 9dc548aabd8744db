"""device.py: which device a model runs on, checked before anything is loaded. "cpu" (the default) is
the C engine; "cuda" needs a build with the CUDA kernels (pip install . -Ccmake.define.PYLLM_CUDA=ON) and
an NVIDIA GPU, and the GPU forward itself is not written yet (issue 11): so far csrc/cuda/ has the
device query, weight upload and decode's GEMV kernels (Q4_0, Q8_0, F16, BF16), reachable as
_engine.cuda_info() and _engine.CudaWeight, tested against the CPU reference."""
from __future__ import annotations

from . import _engine
from .errors import DeviceError

DEVICES = ("cpu", "cuda")


def check_device(device) -> str:
    """The device name if pyllm can run a model there, else an error naming the problem: ValueError for
    a name that is not a device, DeviceError for "cuda" on a build or machine that cannot (or, in this
    version, a forward that does not exist yet)."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "cpu":
        return device
    info = _engine.cuda_info()
    if not info["built"]:
        raise DeviceError(info["error"])
    if not info["devices"]:
        raise DeviceError(f"device='cuda': no CUDA device: {info['error']}")
    names = ", ".join(d["name"] for d in info["device_list"])
    raise DeviceError(f"device='cuda': the CUDA forward is not implemented in this version (found {names}); this build "
                      "has the CUDA device query, weight upload and decode GEMV kernels (Q4_0, Q8_0, F16, BF16) "
                      "only: load with device='cpu'")
