"""Building blocks shared by the backbones: conv-BN(-PReLU), the inverted-residual bottleneck, CBAM, the GDC embedding."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

Gate = Literal["one_plus_tanh", "sigmoid"]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution, floor((i + 2p - k) / s) + 1 (Dumoulin & Visin 2016, relationship 6)."""
    if size + 2 * padding < kernel:
        raise ValueError(f"a {kernel}x{kernel} convolution with padding {padding} does not fit a map of size {size}")
    return (size + 2 * padding - kernel) // stride + 1


def final_map_size(input_size: int, convs: Iterable[nn.Conv2d], network: str) -> int:
    """Walk the main-path convolutions with the conv arithmetic; refuse an input some downsampling layer cannot halve."""
    if input_size < 1:
        raise ValueError(f"{network}: input_size must be a positive integer, got {input_size}")
    size = input_size
    for index, conv in enumerate(convs):
        (kernel, _), (stride, _), (padding, _) = conv.kernel_size, conv.stride, conv.padding
        if stride > 1 and size < stride:
            raise ValueError(
                f"{network}: input_size={input_size} is too small: main-path conv #{index} (stride {stride}) "
                f"would get a {size}x{size} map and could not downsample it"
            )
        size = conv_output_size(size, kernel, stride, padding)
    return size


def check_input(x: torch.Tensor, input_size: int, network: str) -> None:
    """The GDC / FC layers are sized for one square input; any other size would give a wrong-shaped embedding."""
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (input_size, input_size):
        raise ValueError(
            f"{network} was built for input_size={input_size}: expected N x 3 x {input_size} x {input_size}, "
            f"got {tuple(x.shape)}"
        )


class ConvBN(nn.Module):
    """Conv2d (no bias: the BN after it has one) -> BatchNorm2d -> PReLU, or no activation when `linear`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, linear: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act: nn.Module = nn.Identity() if linear else nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class OnePlusTanh(nn.Module):
    """Attention gate 1 + tanh(x) in (0, 2), AirFace's replacement of CBAM's sigmoid (AirFace Sec. 3.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At initialisation the pre-activation is near 0, so the map is near 1: attention starts as identity.
        return 1 + torch.tanh(x)


def make_gate(gate: Gate) -> nn.Module:
    if gate == "one_plus_tanh":
        return OnePlusTanh()
    if gate == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"gate must be 'one_plus_tanh' or 'sigmoid', got {gate!r}")


@dataclass(frozen=True)
class CBAMSpec:
    reduction: int = 16  # CBAM's default MLP reduction ratio r
    gate: Gate = "one_plus_tanh"

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise ValueError(f"CBAM reduction must be >= 1, got {self.reduction}")
        make_gate(self.gate)  # fail at spec time, not when the first block is built


class ChannelAttention(nn.Module):
    """M_c(F) = gate(MLP(AvgPool(F)) + MLP(MaxPool(F))), one shared MLP (CBAM, Woo et al. 2018, Eq. 2)."""

    def __init__(self, channels: int, reduction: int, gate: Gate) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        # 1x1 convs on the pooled N x C x 1 x 1 maps: the MLP without a reshape, channels_last-safe.
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.gate = make_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])
        avg, peak = self.mlp(pooled).chunk(2)  # one MLP call for both poolings
        return self.gate(avg + peak)


class SpatialAttention(nn.Module):
    """M_s(F) = gate(f7x7([AvgPool_c(F); MaxPool_c(F)])) (CBAM, Woo et al. 2018, Eq. 3)."""

    def __init__(self, gate: Gate, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)
        self.gate = make_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return self.gate(self.conv(maps))


class CBAM(nn.Module):
    """F' = M_c(F) * F, then F'' = M_s(F') * F' (CBAM, Woo et al. 2018, Eq. 1)."""

    def __init__(self, channels: int, spec: CBAMSpec) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, spec.reduction, spec.gate)
        self.spatial = SpatialAttention(spec.gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel(x) * x
        return self.spatial(x) * x


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (t x in) -> 3x3 depthwise (stride) -> linear 1x1 project, then optional CBAM;
    identity shortcut when stride is 1 and in == out."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int, attention: CBAMSpec | None = None
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, 1)
        self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, 1, linear=True)
        # CBAM refines the residual branch before the addition, as in the CBAM paper's ResNet integration.
        self.attention: nn.Module = nn.Identity() if attention is None else CBAM(out_channels, attention)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attention(self.project(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class GDCEmbedding(nn.Module):
    """Linear global depthwise conv (kernel = final map) + BN, then linear 1x1 conv to the embedding + BN
    (MobileFaceNets, Chen et al. 2018, Sec. 2.2 and Table 1)."""

    def __init__(self, channels: int, map_size: int, embedding_size: int) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        self.gdc = nn.Conv2d(channels, channels, map_size, groups=channels, bias=False)
        self.gdc_bn = nn.BatchNorm2d(channels)
        self.linear = nn.Conv2d(channels, embedding_size, 1, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.gdc_bn(self.gdc(x))).flatten(1))

    def layers(self) -> list[nn.Module]:
        return [self.gdc, self.gdc_bn, self.linear, self.bn]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (eval mode; `model` itself untouched) with every BatchNorm that directly follows a
    convolution in a ConvBN block or the GDC embedding folded into it: W' = W g/sqrt(v + eps), b' = beta - m g/sqrt(v +
    eps) (Ioffe & Szegedy 2015, Algorithm 2: inference BN is a per-channel affine map). The same function up to float
    rounding, without a pass over every feature map per BatchNorm; other layers are copied as they are."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBN):
            module.conv, module.bn = fuse_conv_bn_eval(module.conv, module.bn), nn.Identity()
        elif isinstance(module, GDCEmbedding):
            module.gdc, module.gdc_bn = fuse_conv_bn_eval(module.gdc, module.gdc_bn), nn.Identity()
            module.linear, module.bn = fuse_conv_bn_eval(module.linear, module.bn), nn.Identity()
    return folded
