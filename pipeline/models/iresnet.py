"""IResNet, ArcFace's improved ResNet (Deng et al. 2019): BN-conv-BN-PReLU-conv-BN units and a BN-Dropout-FC-BN output."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models import BACKBONES
from pipeline.models.blocks import check_input, final_map_size

WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class IResNetSpec:
    units: tuple[int, int, int, int]  # residual units per stage
    widths: tuple[int, int, int, int] = WIDTHS


class IRUnit(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride here) -> BN, plus a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.shortcut(x)


class IResNet(nn.Module):
    """Stem conv3x3 64 s1 + BN + PReLU, four stages (first unit stride 2), then BN -> Dropout -> flatten -> FC -> BN1d."""

    def __init__(self, spec: IResNetSpec, embedding_size: int, input_size: int, dropout: float, name: str) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"{name}: embedding_size must be >= 1, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        self.name = name
        self.input_size = input_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, spec.widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(spec.widths[0]), nn.PReLU(spec.widths[0])
        )
        units: list[IRUnit] = []
        channels = spec.widths[0]
        for count, width in zip(spec.units, spec.widths, strict=True):
            for index in range(count):
                units.append(IRUnit(channels, width, 2 if index == 0 else 1))
                channels = width
        self.body = nn.Sequential(*units)
        # conv1 keeps the size; conv2 carries the stride (the shortcut's 1x1 s2 gives the same size).
        self.final_map_size = final_map_size(input_size, [self.stem[0]] + [unit.conv2 for unit in units], name)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        # No FC bias: the BatchNorm1d right after it would cancel it.
        self.fc = nn.Linear(channels * self.final_map_size**2, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_size, self.name)
        x = self.dropout(self.bn(self.body(self.stem(x))))
        return self.features(self.fc(x.flatten(1)))

    def embedding_layers(self) -> list[nn.Module]:
        return [self.bn, self.dropout, self.fc, self.features]


@BACKBONES.register("iresnet18")
def iresnet18(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    return IResNet(IResNetSpec((2, 2, 2, 2)), embedding_size, input_size, dropout, "iresnet18")


@BACKBONES.register("iresnet34")
def iresnet34(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    return IResNet(IResNetSpec((3, 4, 6, 3)), embedding_size, input_size, dropout, "iresnet34")


@BACKBONES.register("iresnet50")
def iresnet50(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    return IResNet(IResNetSpec((3, 4, 14, 3)), embedding_size, input_size, dropout, "iresnet50")
