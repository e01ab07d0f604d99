"""Where a stage runs: a device name from params (auto | cpu | cuda | cuda:N) resolved on this machine."""
from __future__ import annotations

import torch


def resolve_device(name: str, parameter: str = "train.device") -> torch.device:
    """`auto` is CUDA where available, else the CPU; an explicit CUDA device on a machine without one is an error
    naming `parameter`, the params key the name came from."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{parameter}={name!r} but CUDA is not available on this machine")
    return device
