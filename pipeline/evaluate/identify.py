"""A model on an identification set: every image embedded once, then the MegaFace-style search
(pipeline.evaluate.identification) with the set's mates, probes and distractors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from pipeline.data.identification_sets import IdentificationSet
from pipeline.evaluate.embeddings import extract_embeddings
from pipeline.evaluate.identification import IdentificationResult, evaluate_identification


@dataclass(frozen=True)
class SetIdentification:
    result: IdentificationResult
    hits: NDArray[np.bool_]  # per probe, in set order: its mate ranks first among all mates and distractors

    def to_metrics(self) -> dict[str, float]:
        """Flat floats: `rank1` with every distractor, `rank1_at_<k>` per curve point, `tar_at_far_<far>` (NaN where
        the set has too few impostor pairs for that FAR)."""
        metrics = {"rank1": self.result.curve[-1].rank1}
        metrics.update({f"rank1_at_{point.distractors}": point.rank1 for point in self.result.curve})
        metrics.update({f"tar_at_far_{v.far:g}": v.tar for v in self.result.verification})
        return {key: float(value) for key, value in metrics.items()}


def identify(
    model: torch.nn.Module, data: IdentificationSet, flip: bool, device: torch.device, batch_size: int,
    channels_last: bool, seed: int = 0,
) -> SetIdentification:
    """Rank-1 at the set's distractor counts and TAR at its FARs for `model` (flip: the flip-test embeddings);
    `seed` orders the distractors (the curve's points are nested)."""
    embeddings = extract_embeddings(model, data.images, batch_size=batch_size, device=device, flip=flip,
                                    channels_last=channels_last)
    labels = data.roles["identity"].to_numpy()
    mates, probes, distractors = (data.rows(role) for role in ("mate", "probe", "distractor"))
    result = evaluate_identification(
        embeddings[probes], labels[probes], embeddings[mates], labels[mates], embeddings[distractors],
        labels[distractors], data.distractor_counts, fars=data.fars, seed=seed,
    )
    return SetIdentification(result=result, hits=result.curve[-1].probe_ranks == 1)
