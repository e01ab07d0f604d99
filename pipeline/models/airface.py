"""The AirFace network (AirFace paper Table 1): a deeper, wider MobileFaceNet with CBAM (gate 1+tanh) in every bottleneck."""
from __future__ import annotations

from pipeline.models import BACKBONES
from pipeline.models.blocks import CBAMSpec, Gate
from pipeline.models.mobilefacenet import Bottleneck, GDCNet, GDCNetSpec

AIRFACE_STAGES = (
    Bottleneck(2, 64, 1, 2), Bottleneck(2, 64, 9, 1), Bottleneck(4, 128, 1, 2),
    Bottleneck(2, 128, 16, 1), Bottleneck(8, 256, 1, 2), Bottleneck(2, 256, 6, 1),
)


@BACKBONES.register("airface")
def airface(embedding_size: int = 512, input_size: int = 112, reduction: int = 16, gate: Gate = "one_plus_tanh") -> GDCNet:
    # gate="sigmoid" gives plain CBAM, for an ablation of the paper's change.
    spec = GDCNetSpec(stem_channels=64, stages=AIRFACE_STAGES, last_channels=1024,
                      attention=CBAMSpec(reduction=reduction, gate=gate))
    return GDCNet(spec, embedding_size, input_size, "airface")
