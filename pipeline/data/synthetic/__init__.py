"""The embedded synthetic face benchmark: procedural identities x nuisance -> unaligned images with 5 landmarks,
label-noise ground truth, and LFW / CFP-FP / AgeDB-like pair protocols on held-out identities."""
from pipeline.data.synthetic.generate import generate, render_record, render_records
from pipeline.data.synthetic.nuisance import Nuisance, YawMode, neutral
from pipeline.data.synthetic.protocols import PROTOCOLS, ImageJob, ProtocolPlan, plan_training
from pipeline.data.synthetic.face import landmarks
from pipeline.data.synthetic.render import render
from pipeline.data.synthetic.spec import NuisanceSpec, ProtocolSpec, SyntheticSpec
from pipeline.data.synthetic.traits import Identity, Traits, make_identity

__all__ = [
    "PROTOCOLS", "Identity", "ImageJob", "Nuisance", "NuisanceSpec", "ProtocolPlan", "ProtocolSpec", "SyntheticSpec",
    "Traits", "YawMode", "generate", "landmarks", "make_identity", "neutral", "plan_training", "render",
    "render_record", "render_records",
]
