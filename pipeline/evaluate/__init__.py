"""Verification protocol (LFW 10-fold, insightface variant, TAR@FAR), embeddings, paired statistics."""
from pipeline.evaluate.embeddings import PairEvaluation, evaluate_pairs, extract_embeddings, pair_scores
from pipeline.evaluate.significance import (
    BootstrapResult,
    McNemarResult,
    SeedSummary,
    holm_bonferroni,
    mcnemar_test,
    mean_std_over_seeds,
    paired_bootstrap,
)
from pipeline.evaluate.verification import (
    best_threshold,
    cosine_scores,
    fold_bounds,
    fold_mean_std,
    fold_predictions,
    insightface_accuracy,
    tar_at_far,
    verification_accuracy,
)

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "PairEvaluation",
    "SeedSummary",
    "best_threshold",
    "cosine_scores",
    "evaluate_pairs",
    "extract_embeddings",
    "fold_bounds",
    "fold_mean_std",
    "fold_predictions",
    "holm_bonferroni",
    "insightface_accuracy",
    "mcnemar_test",
    "mean_std_over_seeds",
    "pair_scores",
    "paired_bootstrap",
    "tar_at_far",
    "verification_accuracy",
]
