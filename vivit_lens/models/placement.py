"""Where a model runs and in which float type: device and dtype names checked before anything is built.

    device = parse_device("cuda:0")       # PlacementError (one line) when this torch or machine has no such device
    dtype = parse_dtype("bf16")           # torch.bfloat16; also float32/fp32, float16/fp16/half, float64/fp64/double
    model = HookedViViT.from_pretrained(name, device=device, dtype=dtype)
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}  # fmt: skip
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DEVICE_TYPES = ("cpu", "cuda", "mps", "meta")


class PlacementError(ValueError):
    """A device or dtype that cannot be used here; says what was asked for and what exists."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A float dtype from its torch object or its name (`"bfloat16"`, `"bf16"`, `"torch.float16"` ...)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOAT_DTYPES:
            raise PlacementError(f"dtype must be one of float32, bfloat16, float16, float64, got {dtype}")
        return dtype
    if not isinstance(dtype, str) or dtype.strip().lower().removeprefix("torch.") not in DTYPES:
        raise PlacementError(f"unknown dtype {dtype!r}; expected float32, bfloat16, float16 or float64 "
                             "(or fp32, bf16, fp16, half, fp64, double)")
    return DTYPES[dtype.strip().lower().removeprefix("torch.")]


def parse_device(device: str | torch.device | None) -> torch.device:
    """A device that exists on this machine: `cpu`, `cuda`, `cuda:N`, `mps` or `meta` (None: cpu)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PlacementError(f"unknown device {device!r}; expected cpu, cuda, cuda:N, mps or meta") from None
    if dev.type not in DEVICE_TYPES:
        raise PlacementError(f"device {device!r} is not supported; expected cpu, cuda, cuda:N, mps or meta")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"no CUDA GPU is visible (torch {torch.__version__}, CUDA {torch.version.cuda})")  # fmt: skip
            raise PlacementError(f"device {str(device)!r} was requested but {why}; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise PlacementError(f"device {str(device)!r} does not exist: this machine has {n} CUDA GPU(s), "
                                 f"cuda:0 .. cuda:{n - 1}")  # fmt: skip
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise PlacementError(f"device {str(device)!r} was requested but MPS (Apple GPU) is not available here")
    return dev


def gpus_available() -> int:
    """How many CUDA GPUs this process can use (0 on a CPU-only build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


__all__ = ["DTYPES", "FLOAT_DTYPES", "PlacementError", "gpus_available", "parse_device", "parse_dtype"]
