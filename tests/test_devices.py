"""Device names from params resolved on the machine: auto, cpu, an absent CUDA named in the error."""
import pytest
import torch

from pipeline.core.devices import resolve_device


def test_auto_is_cuda_where_available_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_explicit_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_names_the_parameter(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"align\.device='cuda:0' but CUDA is not available"):
        resolve_device("cuda:0", "align.device")
    with pytest.raises(ValueError, match=r"train\.device='cuda'"):
        resolve_device("cuda")
