"""Named random streams: every draw derives from (seed, purpose, split, identity[, image]) so adding identities or
images never reshuffles the others."""
from __future__ import annotations

import numpy as np

# purposes (first spawn-key element)
IDENTITY = 0
IDENTITY_MARKS = 1
NUISANCE = 2
AGE = 3
LABEL = 4
PAIRS = 5

# splits (second spawn-key element); protocols use their registry code
TRAIN = 0


def stream(seed: int, *key: int) -> np.random.Generator:
    """A generator for one purpose; `key` picks the stream (numpy SeedSequence spawn keys)."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(int(k) for k in key)))
