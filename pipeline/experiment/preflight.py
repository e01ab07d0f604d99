"""Checks before any stage runs: every parameter a stage reads, against this machine and the data it will make.

Beyond the typed config (pipeline.core.config): the synthetic benchmark's spec and the held-out protocols, the device
names against this machine, and every model a run will build. Each backbone and head is built on the meta device
(shapes, no weights), so whatever their constructors refuse (an unknown name, a margin out of range) is refused
here, named by the params key it came from, and a training step's memory is bounded from those shapes against the
machine's. Stage validate runs `check`; the machine is a record so that tests can pose as another one."""
from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.core.config import Config, text_number_hint
from pipeline.data import insightface, lfw
from pipeline.data.folders import HELDOUT_PROTOCOL
from pipeline.data.synthetic import SyntheticSpec
from pipeline.data.heldout.base import HeldoutSpec
from pipeline.data.heldout.kinds import parse
from pipeline.experiment.recipes import BOOTSTRAP, PRETRAIN, STUDENT, TEACHER, Recipe, recipes
from pipeline.experiment.runs import build_backbone, build_head

GIB = 2**30
# fp32 weight, gradient and SGD momentum of every parameter (under AMP too: the optimizer keeps fp32 weights)
BYTES_PER_PARAMETER = 12
LFW_VIEW2_FOLDS = 10  # LFW View 2 is defined as 10 folds of 600 pairs (Huang et al. 2007)
# Without the synthetic source the class count is known only once stage synthesize reads the data: the heads are
# built with the fewest classes every head accepts (AdaCos needs 3).
FEWEST_CLASSES = 3


@dataclass(frozen=True)
class Machine:
    """What the checks need of the machine the stages run on (tests pass their own)."""

    memory_bytes: int  # physical memory
    cuda_memory_bytes: tuple[int, ...]  # each CUDA device's memory; empty without CUDA


def this_machine() -> Machine:
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_available() else range(0)
    return Machine(
        memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        cuda_memory_bytes=tuple(torch.cuda.get_device_properties(index).total_memory for index in cuda),
    )


def check(cfg: Config, machine: Machine) -> None:
    """Refuse what a later stage would refuse or misread, naming the params key: the synthetic spec and held-out
    protocols, a row with a reserved name, a device this machine lacks, a batch larger than the data, evaluate.folds
    unlike the protocols' own, and every model's backbone and head with the memory one training step needs."""
    synthetic = synthetic_spec(cfg.data.synthetic)
    heldout = parse(cfg.protocols)
    models = recipes(cfg)  # refuses a row that takes a reserved model name
    for parameter, name in devices_read(cfg).items():
        check_device(parameter, name, machine)
    if cfg.data.source == "synthetic":
        check_batch_fits_data(cfg.train.batch_size, synthetic)
    check_folds(cfg.evaluate.folds, pair_protocol_folds(cfg, synthetic, heldout))
    check_models(cfg, models, synthetic, machine)


def unknown_keys(values: object, kind: type, path: str) -> dict[str, list[str]]:
    """Each key in `values` that dataclass `kind` has no field for, as its dotted path -> the fields known there;
    fields that are dataclasses, or dicts of them (data.synthetic.nuisance, .protocols.<name>), are walked too."""
    if not isinstance(values, dict):
        return {}  # not a mapping: SyntheticSpec.from_dict names it
    fields = typing.get_type_hints(kind)
    found: dict[str, list[str]] = {}
    for key, value in values.items():
        hint = fields.get(key)
        if hint is None:
            found[f"{path}.{key}"] = sorted(fields)
        elif dataclasses.is_dataclass(hint):
            found |= unknown_keys(value, hint, f"{path}.{key}")
        elif typing.get_origin(hint) is dict and isinstance(value, dict):
            item_kind = typing.get_args(hint)[1]
            if dataclasses.is_dataclass(item_kind):
                for name, item in value.items():
                    found |= unknown_keys(item, item_kind, f"{path}.{key}.{name}")
    return found


def synthetic_spec(values: dict[str, Any]) -> SyntheticSpec:
    """The synthetic benchmark's spec (data.synthetic), an unknown key named by its full dotted path."""
    unknown = unknown_keys(values, SyntheticSpec, "data.synthetic")
    if unknown:
        raise ValueError("; ".join(f"{path}: unknown parameter (known there: {', '.join(known)})"
                                   for path, known in unknown.items()))
    return SyntheticSpec.from_dict(values, "data.synthetic")


def devices_read(cfg: Config) -> dict[str, str]:
    """The device parameters the stages resolve: train.device (training, cleaning, evaluation), and align.device
    where a detector runs."""
    found = {"train.device": cfg.train.device}
    if cfg.align.detector != "none":
        found["align.device"] = cfg.align.device
    return found


def check_device(parameter: str, name: str, machine: Machine) -> None:
    if not name.startswith("cuda"):
        return
    count = len(machine.cuda_memory_bytes)
    if not count:
        raise ValueError(f"{parameter} is {name!r} but CUDA is not available on this machine: write `cpu`, or "
                         "`auto` (CUDA where available, else the CPU)")
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        devices = ", ".join(f"cuda:{i}" for i in range(count))
        raise ValueError(f"{parameter} is {name!r} but this machine has {count} CUDA device{'s' * (count > 1)} "
                         f"({devices})")


def check_batch_fits_data(batch_size: int, synthetic: SyntheticSpec) -> None:
    """The training sampler refuses a batch larger than the training set (pipeline.train.order), but only once the
    data is made; the synthetic source fixes the set's size in params (cleaning can only make it smaller)."""
    images = synthetic.train_identities * synthetic.train_images_per_identity
    if batch_size > images:
        raise ValueError(f"train.batch_size {batch_size} exceeds the {images} training images of the synthetic "
                         f"benchmark (data.synthetic.train_identities {synthetic.train_identities} x "
                         f"train_images_per_identity {synthetic.train_images_per_identity})")


def pair_protocol_folds(
    cfg: Config, synthetic: SyntheticSpec, heldout: dict[str, HeldoutSpec]
) -> dict[str, tuple[int, str]]:
    """Each pair protocol a model is evaluated on -> (its own number of folds, what sets it), for this data source."""
    found: dict[str, tuple[int, str]] = {}
    if cfg.data.source == "synthetic":
        for name, spec in synthetic.protocols.items():
            found[name] = (spec.folds, f"data.synthetic.protocols.{name}.folds")
    evaluated = {name for model in cfg.evaluated_models() for name in cfg.protocols_for(model)}
    for name, spec in heldout.items():
        folds = spec.pair_folds()  # None: an identification set, scored without folds
        if name in evaluated and folds is not None and spec.unavailable(cfg) is None:
            found[name] = (folds, f"protocols.{name}.folds")
    if cfg.data.source == "lfw":
        found[lfw.DEVTEST] = (lfw.DEVTEST_FOLDS, "pipeline.data.lfw.DEVTEST_FOLDS")
    elif cfg.data.lfw_root:
        found[lfw.VIEW2] = (LFW_VIEW2_FOLDS, "LFW View 2's own folds")
    if cfg.data.source == "folders" and cfg.data.folders_heldout > 0:
        found[HELDOUT_PROTOCOL] = (cfg.data.folders_folds, "data.folders_folds")
    for name in cfg.data.benchmarks_bin:
        found[name] = (insightface.BIN_FOLDS, f"pipeline.data.insightface.BIN_FOLDS, for data.benchmarks_bin.{name}")
    return found


def check_folds(folds: int, protocols: dict[str, tuple[int, str]]) -> None:
    """Stage evaluate scores a pair protocol on the folds it was made with, and refuses evaluate.folds otherwise."""
    for name, (own, source) in protocols.items():
        if own != folds:
            raise ValueError(f"evaluate.folds is {folds} but pair protocol {name} has {own} folds ({source}), and "
                             "stage evaluate scores every pair protocol on its own folds")


def model_keys(cfg: Config, name: str) -> dict[str, str]:
    """The params keys recipe `name`'s backbone, embedding size, head and margins come from."""
    if name == TEACHER:
        return {"backbone": "distill.teacher_backbone", "embedding_size": "distill.teacher_embedding_size",
                "head": "distill.teacher_head", "margins": "distill.teacher_margins"}
    section = "pretrain" if name == PRETRAIN else f"{cfg.params_key('rows', name)}.{name}"
    return {"backbone": "backbone.name", "embedding_size": "backbone.embedding_size",
            "head": f"{section}.head", "margins": f"{section}.margins"}


def build_on_meta(build: Callable[[], nn.Module], name_key: str, settings_key: str, settings: dict) -> nn.Module:
    """`build()` on the meta device (shapes, no memory); a refusal is re-raised naming the params key at fault:
    an unknown name (KeyError) `name_key`, any other `settings_key`."""
    try:
        with torch.device("meta"):
            return build()
    except KeyError as error:
        raise ValueError(f"{name_key}: {error.args[0]}") from None
    except (ValueError, TypeError) as error:
        hints = [hint for value in settings.values() if (hint := text_number_hint(value))]
        raise ValueError(f"{settings_key}: {error}" + "".join(f"; {hint}" for hint in hints)) from None


def activation_bytes(backbone: nn.Module, batch_size: int, crop_size: int, element_bytes: int) -> int:
    """A lower bound on what one training step keeps for the backward pass: the output of every convolution and
    linear layer (the BatchNorm or activation after each saves it), from a forward pass on the meta device."""
    total = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * element_bytes

    hooks = [m.register_forward_hook(count) for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        # eval mode: the same shapes, without batch statistics (slow to trace on meta, and none for a batch of 1)
        with torch.no_grad():
            backbone.eval()(torch.empty(batch_size, 3, crop_size, crop_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def training_memory(device: str, machine: Machine) -> tuple[int, str]:
    """The memory a training step runs in (bytes, in words): the CUDA device's where `device` resolves to one."""
    if device == "auto":
        device = "cuda" if machine.cuda_memory_bytes else "cpu"
    if device == "cpu":
        return machine.memory_bytes, "this machine's memory"
    index = int(device.partition(":")[2] or 0)
    return machine.cuda_memory_bytes[index], f"CUDA device cuda:{index}"


def check_models(cfg: Config, models: dict[str, Recipe], synthetic: SyntheticSpec, machine: Machine) -> None:
    """Build every model's backbone and head as a run would, and bound a training step's memory."""
    if cfg.data.source == "synthetic":
        classes, classes_key = synthetic.train_identities, "data.synthetic.train_identities"
    else:
        classes, classes_key = FEWEST_CLASSES, "the fewest any head takes: the data's count is not known yet"
    available, where = training_memory(cfg.train.device, machine)
    element_bytes = 4 if cfg.train.amp == "none" else 2
    crop, batch = cfg.align.crop_size, cfg.train.batch_size
    measured: dict[tuple[str, int], tuple[int, int]] = {}  # (backbone, embedding size) -> (parameters, activations)
    for name, recipe in models.items():
        if name in (BOOTSTRAP, STUDENT):
            continue  # built as a row is: the bootstrap is N-Softmax on the rows' backbone, the student its row
        keys = model_keys(cfg, name)
        size = (recipe.backbone, recipe.embedding_size)
        if size not in measured:
            sizes = f"{keys['backbone']} at align.crop_size={crop}, {keys['embedding_size']}={recipe.embedding_size}"
            backbone = build_on_meta(lambda: build_backbone(recipe, crop), keys["backbone"], sizes, {})
            parameters = sum(p.numel() for p in backbone.parameters())
            measured[size] = (parameters, activation_bytes(backbone, batch, crop, element_bytes))
        head = build_on_meta(lambda: build_head(recipe, classes, cfg.train.scale), keys["head"], keys["margins"],
                             recipe.margins)
        parameters = measured[size][0] + sum(p.numel() for p in head.parameters())
        weights, activations = parameters * BYTES_PER_PARAMETER, measured[size][1]
        if weights + activations > available:
            raise ValueError(
                f"{keys['backbone']} {recipe.backbone!r} with {keys['head']} {recipe.head!r}: training needs at least "
                f"{(weights + activations) / GIB:,.1f} GiB ({parameters:,} parameters with their gradients and "
                f"momentum: {weights / GIB:,.1f} GiB; one batch's activations: {activations / GIB:,.1f} GiB), "
                f"more than the {available / GIB:,.1f} GiB of {where}; its sizes: align.crop_size={crop}, "
                f"train.batch_size={batch}, {keys['embedding_size']}={recipe.embedding_size}, "
                f"{classes} classes ({classes_key})"
            )
