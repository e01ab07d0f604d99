"""Parameters and multiply-accumulates of the backbones; `python -m pipeline.models.complexity` writes
reports/models.md and reports/models.json beside the figures the papers quote."""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.models import BACKBONES, build
from pipeline.models.iresnet import IResNet, IResNetSpec

SIZES = (112, 56)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(model: nn.Module, input_size: int) -> int:
    """MACs of one input_size x input_size image: FlopCounterMode's FLOPs / 2 (it counts a multiply-add as 2 FLOPs).

    Only convolutions and matrix products are counted: BN, PReLU, pooling, gates and additions are not,
    as in the papers' MAdds / FLOPs figures.
    """
    parameter = next(model.parameters())
    image = torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()  # batch 1 is not allowed through BatchNorm1d in training mode
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    if flops % 2:
        raise RuntimeError(f"FlopCounterMode returned an odd FLOP count {flops}; MACs = FLOPs / 2 would not be whole")
    return flops // 2


@dataclass(frozen=True)
class PaperFigures:
    source: str
    parameters: int | None = None
    macs: int | None = None  # multiply-accumulates at 112x112
    flops: int | None = None  # as the paper prints them (AirFace Table 4 uses FLOPs = 2 x MACs for MobileFaceNet)


PAPER: dict[str, PaperFigures] = {
    "mobilefacenet": PaperFigures(
        "MobileFaceNets (Chen et al. 2018): 0.99M params, 221M MAdds; AirFace Table 4: 440M FLOPs",
        parameters=990_000, macs=221_000_000, flops=440_000_000,
    ),
    "airface": PaperFigures("AirFace Table 4: 1G FLOPs (no parameter count quoted)", flops=1_000_000_000),
    "iresnet100": PaperFigures("AirFace Table 4 (R100, from ArcFace): 27G FLOPs", flops=27_000_000_000),
}

# Not registered (too slow to train here); measured only to set the IResNet code beside the one IResNet figure quoted.
REPORT_ONLY = {"iresnet100": lambda input_size: IResNet(IResNetSpec((3, 13, 30, 3)), 512, input_size, 0.0, "iresnet100")}


def default_embedding_size(name: str) -> int:
    return inspect.signature(BACKBONES.get(name)).parameters["embedding_size"].default


def measure(name: str, input_size: int) -> dict[str, int | str | bool]:
    if name in REPORT_ONLY:
        model, embedding_size, registered = REPORT_ONLY[name](input_size), 512, False
    else:
        embedding_size, registered = default_embedding_size(name), True
        model = build(name, embedding_size, input_size, seed=0)
    return {
        "backbone": name, "registered": registered, "input_size": input_size, "embedding_size": embedding_size,
        "final_map_size": model.final_map_size, "parameters": count_parameters(model),
        "macs": count_macs(model, input_size),
    }


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.2f}M"


def _ratio(flops: int, paper: PaperFigures | None) -> str:
    return "-" if paper is None or paper.flops is None else f"{flops / paper.flops:.2f}"


def render(rows: list[dict[str, int | str | bool]]) -> str:
    lines = [
        "# Backbone complexity",
        "",
        "MACs = multiply-accumulates of one image, counted by `torch.utils.flop_counter.FlopCounterMode` as FLOPs / 2;",
        "only convolutions and matrix products count (BN, PReLU, pooling, attention gates and additions do not).",
        "FLOPs below = 2 x MACs. Written by `python -m pipeline.models.complexity`.",
        "",
        "| backbone | input | emb | final map | params | MACs | FLOPs (2xMACs) | paper params | paper MACs | paper FLOPs "
        "| FLOPs / paper FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        paper = PAPER.get(str(row["backbone"])) if row["input_size"] == 112 else None
        name = f"{row['backbone']}" + ("" if row["registered"] else " (report only)")
        lines.append(
            f"| {name} | {row['input_size']} | {row['embedding_size']} | {row['final_map_size']} "
            f"| {_millions(int(row['parameters']))} | {_millions(int(row['macs']))} | {_millions(2 * int(row['macs']))} "
            f"| {_millions(paper.parameters if paper else None)} | {_millions(paper.macs if paper else None)} "
            f"| {_millions(paper.flops if paper else None)} | {_ratio(2 * int(row['macs']), paper)} |"
        )
    lines += ["", "Sources of the paper figures:", ""]
    lines += [f"- {name}: {figures.source}" for name, figures in PAPER.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)  # a shared machine; MAC counts do not depend on speed
    names = BACKBONES.names() + sorted(REPORT_ONLY)
    rows = [measure(name, size) for name in names for size in SIZES]
    write_json_atomic(
        PROJECT_ROOT / "reports" / "models.json",
        {"rows": rows, "paper": {name: asdict(figures) for name, figures in PAPER.items()},
         "macs_definition": "FlopCounterMode FLOPs / 2 (conv and matmul only)", "torch": torch.__version__},
    )
    write_text_atomic(PROJECT_ROOT / "reports" / "models.md", render(rows))


if __name__ == "__main__":
    main()
