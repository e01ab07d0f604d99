"""1:N identification with distractors (rank-1 / CMC as the distractors grow) and TAR@FAR on the same set.

Protocol: MegaFace (Kemelmacher-Shlizerman, Seitz, Miller, Brossard, "The MegaFace Benchmark: 1 Million Faces for
Recognition at Scale", CVPR 2016) measures rank-1 identification as the gallery grows from 10 to 1M distractors, and
verification on the same data; FaceX-Zoo reports MegaFace rank-1 for each head (`../shared/papers/facex-zoo.md`,
Sec. 2.1 "Test protocol" and the supervisory-head table).

Conventions:
- A score is the cosine similarity of two embeddings; every row is L2-normalised here (chunk by chunk), so callers
  may pass raw embeddings. Rows with a zero or non-finite norm are rejected.
- The gallery holds one image per identity (the mates); every probe's identity has exactly one mate there, and the
  other mates stay in the gallery as competitors. MegaFace instead puts one identity's image at a time among the
  distractors; with several identities in the gallery the search is at least as hard.
- Distractors are identities outside the gallery. The curve point with k distractors uses the first k of
  `np.random.default_rng(seed).permutation(n_distractors)`, so the points are nested and the curve never rises.
- A probe's rank is 1 + the number of competitors (other mates, the point's distractors) scoring >= its mate: a
  competitor that ties the mate ranks ahead of it, so a tie is a miss at rank 1 (the conservative choice). Ties are
  exact equality of the computed scores.
- Verification: genuine pairs are probe vs its mate; impostor pairs are probe vs every other mate and every
  distractor (all of them, whatever the curve points). A pair is accepted when its score > threshold.
- Memory: the search is one matrix product per chunk of at most `chunk_size` gallery rows; the extra memory is
  O(probes x chunk_size + chunk_size x dim) plus the floor(far x impostor pairs) + 1 largest impostor scores
  (for the largest far asked), never the probes x (mates + distractors) matrix.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

MEGAFACE_DISTRACTOR_COUNTS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)  # MegaFace (CVPR 2016), Fig. 1's x axis


@dataclass(frozen=True)
class CurvePoint:
    """Identification rates with the first `distractors` distractors in the gallery (MegaFace, CVPR 2016, Fig. 1)."""

    distractors: int
    candidates: int  # mates + distractors searched
    rates: dict[int, float]  # CMC: rank r -> fraction of probes whose mate ranks r or better
    probe_ranks: NDArray[np.int64] = field(repr=False, compare=False)  # each probe's rank of its mate (1: a hit)

    @property
    def rank1(self) -> float:
        """Rank-1 identification rate (MegaFace, CVPR 2016, Sec. 4)."""
        return self.rates[1]


@dataclass(frozen=True)
class TarAtFar:
    """TAR at the largest FAR <= `far` reachable on the ROC of these pairs (no interpolation, as `tar_at_far`)."""

    far: float
    measurable: bool  # False when far < 1 / impostor pairs: no FAR step that fine exists
    tar: float  # NaN when not measurable
    threshold: float  # accept when score > threshold; NaN when not measurable
    false_accepts: int  # impostor pairs above the threshold, <= far x impostor pairs; -1 when not measurable


@dataclass(frozen=True)
class IdentificationResult:
    """The distractor curve and verification on one probe / gallery / distractor set (MegaFace, CVPR 2016)."""

    probes: int
    mates: int
    distractors: int
    seed: int  # of the distractor permutation
    curve: tuple[CurvePoint, ...]  # by increasing distractor count
    genuine_pairs: int
    impostor_pairs: int
    verification: tuple[TarAtFar, ...]  # in the order of `fars`

    def rank1(self) -> dict[int, float]:
        """Rank-1 rate per distractor count (MegaFace, CVPR 2016, Fig. 1)."""
        return {point.distractors: point.rank1 for point in self.curve}


def _as_matrix(values: ArrayLike | torch.Tensor, name: str) -> torch.Tensor:
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (images x dims), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must hold floating-point embeddings, got dtype {tensor.dtype}")
    return tensor


def _as_labels(values: ArrayLike | torch.Tensor, n: int, name: str) -> NDArray:
    array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its embeddings, got {array.shape}")
    return array


def _mate_index(probe_labels: NDArray, mate_labels: NDArray) -> NDArray[np.int64]:
    """Gallery row of each probe's mate; every probe needs exactly one."""
    unique, counts = np.unique(mate_labels, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"the gallery must hold one image per identity; repeated: {unique[counts > 1][:5].tolist()}")
    order = np.argsort(mate_labels, kind="stable")
    position = np.minimum(np.searchsorted(mate_labels[order], probe_labels), mate_labels.size - 1)
    missing = mate_labels[order][position] != probe_labels
    if missing.any():
        raise ValueError(f"probe identities without a mate in the gallery: {np.unique(probe_labels[missing])[:5].tolist()}")
    return order[position].astype(np.int64)


def _check_integers(values: Sequence[int], name: str, low: int, high: float) -> list[int]:
    checked = list(values)
    if not checked:
        raise ValueError(f"{name} is empty")
    for value in checked:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise ValueError(f"each of {name} must be an integer in [{low}, {high}], got {value!r}")
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} has repeated values: {checked}")
    return sorted(int(value) for value in checked)


def _normalised(rows: torch.Tensor, device: torch.device, dtype: torch.dtype, index: NDArray, name: str) -> torch.Tensor:
    """x / |x|_2 per row (cosine similarity as a dot product); `index` names the rows in errors."""
    x = rows.to(device=device, dtype=dtype)
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    bad = (~torch.isfinite(norms[:, 0]) | (norms[:, 0] == 0)).nonzero().flatten().cpu().numpy()
    if bad.size:
        raise ValueError(f"{name} rows {index[bad[:5]].tolist()} have a zero or non-finite norm (non-finite values?)")
    return x / norms  # a new tensor: `rows` may be the caller's memory


def _scores(probes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cosine similarities probes x rows of normalised embeddings: one matrix product per chunk."""
    return probes @ rows.T


def _count_at_least(scores: torch.Tensor, genuine: torch.Tensor) -> torch.Tensor:
    """Per probe, the competitors in this block scoring >= its mate (ties rank ahead of the mate)."""
    at_least = scores >= genuine[:, None]
    if at_least.device.type == "cpu":
        # torch's sum of a bool block first copies it as int64 (8 bytes a score); numpy counts in small buffers.
        return torch.from_numpy(np.count_nonzero(at_least.numpy(), axis=1).astype(np.int64))
    return at_least.sum(dim=1)


def _largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of a 1-D tensor, which may be reordered in place (1 <= k <= its size)."""
    if values.device.type == "cpu":
        # numpy's in-place introselect needs no work space; torch.topk on CPU copies the input with int64 indices.
        array = values.numpy()
        array.partition(array.size - k)
        return values[array.size - k :].clone()
    return torch.topk(values, k, sorted=False).values


class _LargestImpostors:
    """The `keep` largest impostor scores seen so far: enough for every measurable FAR's threshold."""

    def __init__(self, keep: int, device: torch.device, dtype: torch.dtype) -> None:
        self.keep = keep
        self.values = torch.empty(0, device=device, dtype=dtype)

    def add(self, scores: torch.Tensor) -> None:
        """Merge a contiguous block of impostor scores, which it reorders (its caller is done with it)."""
        flat = scores.view(-1)
        if self.keep == 0 or flat.numel() == 0:
            return
        if self.values.numel() == self.keep:
            flat = flat[flat > self.values.min()]  # a value <= the kept minimum cannot change the kept values
            if flat.numel() == 0:
                return
        pooled = torch.cat([self.values, _largest(flat, min(self.keep, flat.numel()))])
        self.values = _largest(pooled, min(self.keep, pooled.numel()))


@torch.no_grad()
def evaluate_identification(
    probes: ArrayLike | torch.Tensor,
    probe_labels: ArrayLike | torch.Tensor,
    mates: ArrayLike | torch.Tensor,
    mate_labels: ArrayLike | torch.Tensor,
    distractors: ArrayLike | torch.Tensor,
    distractor_labels: ArrayLike | torch.Tensor,
    distractor_counts: Sequence[int],
    ranks: Sequence[int] = (1,),
    fars: Sequence[float] = (1e-6,),
    seed: int = 0,
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> IdentificationResult:
    """MegaFace-style rank-r identification vs distractor count and TAR@FAR (Kemelmacher-Shlizerman et al., CVPR 2016).

    Embeddings may be numpy arrays or tensors on any device; each chunk is moved to `device` and computed in
    `dtype`. Rank 1 is always reported; `ranks` adds CMC points. See the module docstring for the conventions.
    """
    probe_x, mate_x, distractor_x = (_as_matrix(v, n) for v, n in ((probes, "probes"), (mates, "mates"),
                                                                      (distractors, "distractors")))
    n_probes, n_mates, n_distractors = probe_x.shape[0], mate_x.shape[0], distractor_x.shape[0]
    if n_probes == 0 or n_mates == 0:
        raise ValueError(f"need at least one probe and one mate, got {n_probes} probes and {n_mates} mates")
    dims = {probe_x.shape[1], mate_x.shape[1], distractor_x.shape[1]}
    if len(dims) != 1:
        raise ValueError(f"probes, mates and distractors differ in dimension: {probe_x.shape[1]}, "
                         f"{mate_x.shape[1]}, {distractor_x.shape[1]}")
    probe_y = _as_labels(probe_labels, n_probes, "probe_labels")
    mate_y = _as_labels(mate_labels, n_mates, "mate_labels")
    distractor_y = _as_labels(distractor_labels, n_distractors, "distractor_labels")
    mate_of = _mate_index(probe_y, mate_y)
    overlap = np.intersect1d(distractor_y, mate_y)
    if overlap.size:
        in_probes = np.intersect1d(overlap, probe_y)
        raise ValueError(f"distractors must be identities outside the gallery; shared with the probes: "
                         f"{in_probes[:5].tolist()}, with other mates: {np.setdiff1d(overlap, in_probes)[:5].tolist()}")
    counts = _check_integers(distractor_counts, "distractor_counts", 0, n_distractors)
    rank_list = _check_integers(sorted(set(ranks) | {1}), "ranks", 1, math.inf)
    for far in fars:
        if not 0.0 < far < 1.0:
            raise ValueError(f"each far must lie in (0, 1), got {far!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    device = torch.device(device)

    probe_n = _normalised(probe_x, device, dtype, np.arange(n_probes), "probes")
    mate_t = torch.as_tensor(mate_of, device=device)

    def mate_blocks() -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        """Scores against each chunk of mates, with the (probe, column) positions of the genuine pairs in it."""
        for start in range(0, n_mates, chunk_size):
            stop = min(start + chunk_size, n_mates)
            scores = _scores(probe_n, _normalised(mate_x[start:stop], device, dtype, np.arange(start, stop), "mates"))
            here = ((mate_t >= start) & (mate_t < stop)).nonzero().flatten()
            yield scores, (here, mate_t[here] - start)

    # Pass 1: each probe's genuine score, taken from the same chunked products that rank the competitors.
    genuine = torch.empty(n_probes, device=device, dtype=dtype)
    for scores, genuine_at in mate_blocks():
        genuine[genuine_at[0]] = scores[genuine_at]

    impostor_pairs = n_probes * (n_mates - 1 + n_distractors)
    # floor(far x N) impostors may pass; the threshold is the next-largest impostor score. 1e-9 absorbs 1/far's rounding.
    allowed = {far: math.floor(far * impostor_pairs + 1e-9) for far in fars}
    largest = _LargestImpostors(max((m + 1 for m in allowed.values() if m >= 1), default=0), device, dtype)

    # Pass 2: competitors scoring >= the mate, over the other mates, then the distractors in permuted order.
    ahead = torch.zeros(n_probes, device=device, dtype=torch.int64)
    for scores, genuine_at in mate_blocks():
        scores[genuine_at] = -math.inf  # the mate is no competitor and no impostor
        ahead += _count_at_least(scores, genuine)
        largest.add(scores)
    ahead_at = {0: ahead.clone()} if counts[0] == 0 else {}
    order = np.random.default_rng(seed).permutation(n_distractors)
    cuts = sorted({*range(0, n_distractors, chunk_size), *counts, n_distractors})
    for start, stop in itertools.pairwise(cuts):
        index = torch.as_tensor(order[start:stop], device=distractor_x.device)
        rows = _normalised(distractor_x.index_select(0, index), device, dtype, order[start:stop], "distractors")
        scores = _scores(probe_n, rows)
        ahead += _count_at_least(scores, genuine)
        largest.add(scores)
        if stop in counts:
            ahead_at[stop] = ahead.clone()

    curve = tuple(
        CurvePoint(k, n_mates + k, {r: float((ahead_at[k] < r).double().mean()) for r in rank_list},
                   (ahead_at[k] + 1).cpu().numpy())
        for k in counts
    )
    top = torch.sort(largest.values, descending=True).values.cpu().double().numpy()
    genuine_np = genuine.cpu().double().numpy()
    verification = []
    for far in fars:
        if allowed[far] < 1:
            verification.append(TarAtFar(float(far), False, math.nan, math.nan, -1))
            continue
        threshold = top[allowed[far]]  # the (m+1)-th largest impostor: accepting above it lets at most m pass
        verification.append(TarAtFar(float(far), True, float((genuine_np > threshold).mean()), float(threshold),
                                     int((top > threshold).sum())))
    return IdentificationResult(n_probes, n_mates, n_distractors, seed, curve, n_probes, impostor_pairs,
                                tuple(verification))
