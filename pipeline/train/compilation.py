"""torch.compile for training (train.compile): the whole backbone, or only its PReLU activations.

Why the activations alone: on a CPU, eager PReLU's backward is a third of a MobileFaceNet step
(reports/bench/train_throughput.md). Compiled, its input and weight gradients come from one fused pass, which buys
most of what compiling the whole backbone buys, for seconds of compiling instead of a minute or more.
"""
from __future__ import annotations

import functools
import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import CompileMode

log = logging.getLogger("facerepro.train")


@functools.cache
def _compiled_prelu():
    # dynamic shapes: one graph serves every layer's shape (static shapes compile once per shape, past dynamo's limit)
    return torch.compile(F.prelu, dynamic=True)


def _compiled_prelu_forward(self: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    return _compiled_prelu()(x, self.weight.view(-1))  # a view: dynamo keeps a parameter's shape static


def compile_activations(model: nn.Module) -> int:
    """Route every nn.PReLU of `model` through one compiled prelu, in place; returns how many. Parameters, state dict
    and module tree stay as they were (the forward is bound on the instance)."""
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    for module in prelus:
        module.forward = types.MethodType(_compiled_prelu_forward, module)
    return len(prelus)


@functools.cache
def activations_compile() -> bool:
    """Whether the compiled prelu builds and runs here (inductor needs a working C++ compiler on the CPU); probed
    once per process, on the shapes training uses, and logged once."""
    try:
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        _compiled_prelu()(x, torch.full((3,), 0.25, requires_grad=True)).sum().backward()
    except Exception as error:  # inductor raises many kinds (missing compiler, failed build): any means eager
        log.info("train.compile auto: eager PReLU (compiling failed here: %s)", str(error).splitlines()[0][:200])
        return False
    log.info("train.compile auto: compiled PReLU activations")
    return True


def effective_compile_mode(mode: CompileMode) -> CompileMode:
    """`auto` resolved: `activations` where compiling works, else `none`; the other modes as given. The resolved mode
    is part of a run's identity, since a compiled PReLU's weight gradient differs in the last bits."""
    if mode == "auto":
        return "activations" if activations_compile() else "none"
    return mode


def compile_for_training(model: nn.Module, mode: CompileMode) -> nn.Module:
    """The module to train with under `mode`: `model` itself, its activations compiled, or a compiled wrapper."""
    mode = effective_compile_mode(mode)
    if mode == "activations":
        compile_activations(model)
        return model
    if mode == "backbone":
        return torch.compile(model)
    return model
