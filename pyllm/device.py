"""device.py: which device a model runs on, checked before anything is loaded, and the GPU side of a
loaded model. "cpu" (the default) is the C engine; "cuda" needs a build with the CUDA kernels (pip install
. -Ccmake.define.PYLLM_CUDA=ON) and an NVIDIA GPU, and runs the whole forward there (csrc/cuda/): the
weights are uploaded once in the types the model holds them (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1, Q4_K, Q5_K, Q6_K), the KV caches live on the device and only the logits asked for come back."""
from __future__ import annotations

from . import _engine
from .errors import DeviceError

DEVICES = ("cpu", "cuda")


def check_device(device) -> str:
    """The device name if pyllm can run a model there, else an error naming the problem: ValueError for
    a name that is not a device, DeviceError for "cuda" on a build or machine that cannot."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "cpu":
        return device
    info = _engine.cuda_info()
    if not info["built"]:
        raise DeviceError(info["error"])
    if not info["devices"]:
        raise DeviceError(f"device='cuda': no CUDA device: {info['error']}")
    return device


def cuda_model(cmodel) -> "_engine.CudaModel":
    """The loaded CPU model's weights uploaded to the GPU; a model the GPU kernels cannot run yet (its
    weight types, mixture-of-experts layers, LongRoPE, unmerged LoRA adapters) is a DeviceError naming
    what, and what to do instead."""
    try:
        return _engine.CudaModel(cmodel)
    except ValueError as e:
        msg = str(e)
        raise DeviceError(msg if msg.startswith("device='cuda'") else f"device='cuda': {msg}") from None
