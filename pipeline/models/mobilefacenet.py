"""MobileFaceNet (Chen et al. 2018, Table 1) and the GDC network family it defines (AirFace is a deeper, wider member)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models import BACKBONES
from pipeline.models.blocks import CBAMSpec, ConvBN, GDCEmbedding, InvertedResidual, check_input, final_map_size


@dataclass(frozen=True)
class Bottleneck:
    """One row of a MobileNetV2-style table: expansion t, output channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


@dataclass(frozen=True)
class GDCNetSpec:
    stem_channels: int
    stages: tuple[Bottleneck, ...]
    last_channels: int  # the conv1x1 before the GDC
    attention: CBAMSpec | None = None  # CBAM in every bottleneck when set
    # each identity bottleneck's last BN starts at gamma 0, so every residual branch starts as zero and the network
    # as a shallow one (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1)
    zero_init_residual: bool = False


MOBILEFACENET = GDCNetSpec(
    stem_channels=64,
    stages=(Bottleneck(2, 64, 5, 2), Bottleneck(4, 128, 1, 2), Bottleneck(2, 128, 6, 1),
            Bottleneck(4, 128, 1, 2), Bottleneck(2, 128, 2, 1)),
    last_channels=512,
)


class GDCNet(nn.Module):
    """conv3x3 s2 -> depthwise conv3x3 -> inverted-residual stages -> conv1x1 -> linear GDC -> linear conv1x1 + BN."""

    def __init__(self, spec: GDCNetSpec, embedding_size: int, input_size: int, name: str) -> None:
        super().__init__()
        self.name = name
        self.input_size = input_size
        self.stem = ConvBN(3, spec.stem_channels, 3, stride=2)
        self.stem_dw = ConvBN(spec.stem_channels, spec.stem_channels, 3, groups=spec.stem_channels)
        blocks: list[InvertedResidual] = []
        channels = spec.stem_channels
        for stage in spec.stages:
            for repeat in range(stage.n):
                stride = stage.s if repeat == 0 else 1
                blocks.append(InvertedResidual(channels, stage.c, stride, stage.t, spec.attention))
                channels = stage.c
        self.blocks = nn.Sequential(*blocks)
        if spec.zero_init_residual:
            for block in blocks:
                if block.residual:
                    nn.init.zeros_(block.project.bn.weight)
        self.last = ConvBN(channels, spec.last_channels, 1)
        # Only the 3x3 convs change the map size on the main path (1x1 convs keep it).
        main_path = [self.stem.conv, self.stem_dw.conv] + [block.depthwise.conv for block in blocks]
        self.final_map_size = final_map_size(input_size, main_path, name)
        self.embedding = GDCEmbedding(spec.last_channels, self.final_map_size, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_size, self.name)
        return self.embedding(self.last(self.blocks(self.stem_dw(self.stem(x)))))

    def embedding_layers(self) -> list[nn.Module]:
        return self.embedding.layers()


@BACKBONES.register("mobilefacenet")
def mobilefacenet(embedding_size: int = 128, input_size: int = 112) -> GDCNet:
    return GDCNet(MOBILEFACENET, embedding_size, input_size, "mobilefacenet")
