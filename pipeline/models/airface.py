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
def airface(
    embedding_size: int = 512,
    input_size: int = 112,
    reduction: int = 16,
    gate: Gate = "one_plus_tanh",
    zero_init_residual: bool = True,
) -> GDCNet:
    # gate="sigmoid" gives plain CBAM, for an ablation of the paper's change.
    # zero_init_residual: with the default init, the 34 attention-gated bottlenecks gave a first-step gradient norm of
    # 391 (MobileFaceNet: 48) and the embedding collapsed to a constant within 12 steps even at lr 0.012 (cpu profile);
    # with it, the norm was 27 at step 15 and training went on (docs/findings.md, "Distillation").
    spec = GDCNetSpec(stem_channels=64, stages=AIRFACE_STAGES, last_channels=1024,
                      attention=CBAMSpec(reduction=reduction, gate=gate), zero_init_residual=zero_init_residual)
    return GDCNet(spec, embedding_size, input_size, "airface")
