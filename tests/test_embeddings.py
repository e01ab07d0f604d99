"""Embedding extraction (normalisation, flip test, modes, AMP) and pair evaluation, against numpy re-derivations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.evaluate.embeddings import PairEvaluation, evaluate_pairs, extract_embeddings, pair_scores
from pipeline.evaluate.verification import insightface_accuracy, tar_at_far, verification_accuracy

H, W, D = 6, 5, 4


FORWARDS: list[dict[str, bool]] = []  # what every Linear's forward saw (embedding runs an inference copy of the model)


class Linear(torch.nn.Module):
    """f(x) = A vec(x) + c: left-right asymmetric weights make f(x) != f(mirror(x))."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.fc = torch.nn.Linear(3 * H * W, D)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(D, 3 * H * W, generator=generator))
            self.fc.bias.copy_(torch.randn(D, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARDS.append(
            {
                "training": self.training,
                "inference": torch.is_inference_mode_enabled(),
                "channels_last": x.is_contiguous(memory_format=torch.channels_last),
            }
        )
        return self.fc(x.reshape(len(x), -1))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)


def _numpy_features(model: Linear, images: np.ndarray) -> np.ndarray:
    x = (images.astype(np.float64) / 255.0 - 0.5) / 0.5
    x = x.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NCHW, flattened as the model does
    return x @ model.fc.weight.detach().double().numpy().T + model.fc.bias.detach().double().numpy()


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_embeddings_are_normalised_features() -> None:
    model, images = Linear(), _images(7)
    emb = extract_embeddings(model, images, batch_size=3)
    assert emb.dtype == np.float32 and emb.shape == (7, D)
    np.testing.assert_allclose(emb, _unit(_numpy_features(model, images)), atol=1e-5)


def test_flip_test_adds_the_mirror_before_normalising() -> None:
    model, images = Linear(1), _images(5, seed=1)
    mirrored = images[:, :, ::-1, :]  # left-right: the width axis of N x H x W x 3
    expected = _unit(_numpy_features(model, images) + _numpy_features(model, mirrored))
    flipped = extract_embeddings(model, images, batch_size=2, flip=True)
    np.testing.assert_allclose(flipped, expected, atol=1e-5)
    plain = extract_embeddings(model, images, batch_size=2, flip=False)
    assert np.abs(flipped - plain).max() > 1e-2  # the model really is mirror-sensitive


def test_symmetric_image_is_unchanged_by_flip() -> None:
    half = _images(2, seed=2)[:, :, :3, :]
    symmetric = np.concatenate([half, half[:, :, 1::-1, :]], axis=2)  # columns c0 c1 c2 c1 c0
    assert symmetric.shape[2] == W and (symmetric == symmetric[:, :, ::-1, :]).all()
    model = Linear(2)
    np.testing.assert_allclose(
        extract_embeddings(model, symmetric, flip=True), extract_embeddings(model, symmetric, flip=False), atol=1e-6
    )


def test_eval_and_inference_mode_and_the_model_left_as_it_was() -> None:
    model = torch.nn.Sequential(Linear(3), torch.nn.BatchNorm1d(D))
    model.train()
    model[1].eval()  # a mixed state, which must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FORWARDS.clear()
    extract_embeddings(model, _images(4))
    assert model.training and model[0].training and not model[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert FORWARDS and all(s["training"] is False and s["inference"] for s in FORWARDS)


def test_channels_last_on_request() -> None:
    model = Linear()
    FORWARDS.clear()
    extract_embeddings(model, _images(2), channels_last=True)
    extract_embeddings(model, _images(2), channels_last=False)
    assert [s["channels_last"] for s in FORWARDS] == [True, False]


def test_bfloat16_autocast_close_to_float32() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * H * W, D))
    images = _images(6, seed=4)
    full = extract_embeddings(model, images, flip=True)
    half = extract_embeddings(model, images, flip=True, amp_dtype=torch.bfloat16)
    assert half.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(half, full, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model, images = Linear(5), _images(9, seed=5)
    cpu = extract_embeddings(model, images, flip=True)
    gpu = extract_embeddings(model.to("cuda"), images, flip=True, device="cuda", channels_last=True)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)  # TF32 may be on
    amp = extract_embeddings(model, images, flip=True, device="cuda", amp_dtype=torch.bfloat16)
    np.testing.assert_allclose(amp, cpu, atol=5e-2)


def test_bad_inputs_are_named() -> None:
    model = Linear()
    with pytest.raises(ValueError, match="uint8"):
        extract_embeddings(model, _images(2).astype(np.float32))
    with pytest.raises(ValueError, match="N x H x W x 3"):
        extract_embeddings(model, _images(2)[..., :1])
    with pytest.raises(ValueError, match="batch_size"):
        extract_embeddings(model, _images(2), batch_size=0)
    with pytest.raises(ValueError, match="model tensors are on meta"):
        extract_embeddings(Linear().to("meta"), _images(2))
    with pytest.raises(ValueError, match="\\(batch, dim\\)"):
        extract_embeddings(torch.nn.Flatten(0), _images(2))


def test_zero_embedding_names_the_image() -> None:
    class ZeroInSecondBatch(torch.nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.ones(len(x), 2)
            self.calls += 1
            if self.calls == 2:
                out[1] = 0.0  # row 1 of the batch starting at image 3
            return out

    with pytest.raises(ValueError, match="images \\[4\\]"):
        extract_embeddings(ZeroInSecondBatch(), _images(6), batch_size=3)


def _pairs(n_images: int, n_pairs: int, folds: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.integers(0, n_images, n_pairs),
            "b": rng.integers(0, n_images, n_pairs),
            "same": rng.random(n_pairs) < 0.5,
            "fold": np.repeat(np.arange(folds), n_pairs // folds),
        }
    )


def test_pair_scores_are_cosines_of_indexed_rows() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(pair_scores(emb, np.array([0, 2]), np.array([1, 0])), [0.0, math.sqrt(0.5)])
    with pytest.raises(ValueError, match="pairs_b pair\\(s\\) \\[1\\]"):
        pair_scores(emb, np.array([0, 1]), np.array([0, 3]))


def test_evaluate_pairs_agrees_with_the_parts() -> None:
    model, images = Linear(6), _images(30, seed=6)
    pairs = _pairs(30, 40, folds=4, seed=6)
    result = evaluate_pairs(model, images, pairs, batch_size=8, fars=(0.1, 1e-3))
    a, b, same = pairs["a"].to_numpy(), pairs["b"].to_numpy(), pairs["same"].to_numpy()
    plain = extract_embeddings(model, images)
    flipped = extract_embeddings(model, images, flip=True)
    assert (result.accuracy, result.accuracy_std) == pytest.approx(
        verification_accuracy(pair_scores(plain, a, b), same, folds=4)
    )
    assert (result.accuracy_flip, result.accuracy_flip_std) == pytest.approx(
        verification_accuracy(pair_scores(flipped, a, b), same, folds=4)
    )
    assert result.tar_at_far == tar_at_far(pair_scores(flipped, a, b), same, fars=(0.1, 1e-3))
    assert (result.insightface_accuracy, result.insightface_accuracy_std) == pytest.approx(
        insightface_accuracy(flipped[a], flipped[b], same, folds=4)
    )
    # Equal folds: the mean of per-fold accuracies is the share of correct pairs.
    assert result.correct.mean() == pytest.approx(result.accuracy)
    assert result.correct_flip.mean() == pytest.approx(result.accuracy_flip)
    assert result.folds == 4 and len(result.thresholds) == 4
    metrics = result.to_metrics()
    assert set(metrics) == {
        "accuracy",
        "accuracy_std",
        "accuracy_flip",
        "accuracy_flip_std",
        "insightface_accuracy",
        "insightface_accuracy_std",
        "tar_at_far_0.1",
        "tar_at_far_0.001",
    }
    assert all(type(v) is float for v in metrics.values())
    assert math.isnan(metrics["tar_at_far_0.001"])  # about 20 different pairs cannot reach 1e-3
    assert isinstance(result, PairEvaluation)


def test_evaluate_pairs_separates_identities() -> None:
    # Images of 6 "identities" (a base image plus small noise): a linear model keeps them apart.
    rng = np.random.default_rng(7)
    bases = rng.integers(40, 216, size=(6, H, W, 3))
    identity = np.repeat(np.arange(6), 5)
    images = np.clip(bases[identity] + rng.integers(-10, 11, size=(30, H, W, 3)), 0, 255).astype(np.uint8)
    a = rng.integers(0, 30, 60)
    b = np.where(rng.random(60) < 0.5, a, rng.integers(0, 30, 60))
    b = np.where(b == a, (a // 5) * 5 + (a + 1) % 5, b)  # same-identity partner that is another image
    pairs = pd.DataFrame({"a": a, "b": b, "same": identity[a] == identity[b], "fold": np.repeat(np.arange(6), 10)})
    result = evaluate_pairs(torch.nn.Sequential(torch.nn.Flatten(), Linear(8).fc), images, pairs)
    assert result.accuracy_flip > 0.9


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p.drop(columns="fold"), "lacks column"),
        (lambda p: p.assign(fold=np.tile([0, 1], 20)), "row 1 has fold 1, expected 0"),
        (lambda p: p.iloc[:39], "39 pairs cannot be split into 4"),
        (lambda p: p.assign(a=p["a"] + 100), "pairs_a pair"),
    ],
)
def test_evaluate_pairs_rejects_bad_tables(change, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        evaluate_pairs(Linear(), _images(30), change(_pairs(30, 40, folds=4, seed=0)))
