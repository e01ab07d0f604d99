"""The torch data path (pipeline/data/loader.py), on small records written here."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.images import CorruptImageError
from pipeline.data.loader import (
    FaceDataset,
    Preloaded,
    eval_transform,
    load_benchmark_arrays,
    make_loader,
    train_transform,
)
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_benchmark, write_records

H, W = 6, 10

torch.set_num_threads(1)


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_tensor(array: np.ndarray) -> np.ndarray:
    """The normalisation re-derived in numpy: CxHxW, (x/255 - 0.5)/0.5."""
    return ((array.astype(np.float64) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def write_set(path, count: int = 10, corrupt: tuple[int, ...] = (), shard_size: int = 4) -> list[np.ndarray]:
    arrays = [pixels(i) for i in range(count)]
    records = [
        FaceRecord(
            image=png(a)[:30] if i in corrupt else png(a),
            label=i % 3,
            landmarks=NO_LANDMARKS.copy(),
            source=f"img{i}.png",
        )
        for i, a in enumerate(arrays)
    ]
    write_records(path, records, shard_size=shard_size)
    return arrays


def test_items_are_normalised_chw_float_and_labels(tmp_path):
    arrays = write_set(tmp_path / "set")
    dataset = FaceDataset(tmp_path / "set")
    assert len(dataset) == 10
    assert dataset.labels.tolist() == [i % 3 for i in range(10)]
    for i in (0, 5, 9):
        image, label = dataset[i]
        assert image.dtype == torch.float32 and image.shape == (3, H, W)
        np.testing.assert_allclose(image.numpy(), expected_tensor(arrays[i]), atol=1e-6)
        assert label == i % 3 and isinstance(label, int)


def test_normalisation_edges():
    edges = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(3, 1, 1).expand(3, 2, 2)
    out = eval_transform()(edges)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [-1.0, 1.0, 128 / 255 * 2 - 1], atol=1e-6)


def test_indices_select_rows_across_shards(tmp_path):
    arrays = write_set(tmp_path / "set", shard_size=4)
    dataset = FaceDataset(tmp_path / "set", indices=[9, 2, 5, 2])
    assert len(dataset) == 4
    assert dataset.labels.tolist() == [0, 2, 2, 2]
    assert dataset.rows.tolist() == [9, 2, 5, 2]
    for i, row in enumerate([9, 2, 5, 2]):
        np.testing.assert_allclose(dataset[i][0].numpy(), expected_tensor(arrays[row]), atol=1e-6)
    assert dataset.describe(0).endswith("part-00002.parquet row 1 (source img9.png)")
    assert dataset.describe(2).endswith("part-00001.parquet row 1 (source img5.png)")


def test_labels_are_read_only(tmp_path):
    write_set(tmp_path / "set", count=3)
    with pytest.raises(ValueError):
        FaceDataset(tmp_path / "set").labels[0] = 7


def test_bad_indices_are_named(tmp_path):
    write_set(tmp_path / "set")
    with pytest.raises(IndexError, match="row 10 is outside 0..9"):
        FaceDataset(tmp_path / "set", indices=[0, 10])
    with pytest.raises(IndexError, match="row -1"):
        FaceDataset(tmp_path / "set", indices=[-1])
    with pytest.raises(ValueError, match="row numbers"):
        FaceDataset(tmp_path / "set", indices=np.ones(10, dtype=bool))


def test_empty_selection_is_allowed(tmp_path):
    write_set(tmp_path / "set")
    assert len(FaceDataset(tmp_path / "set", indices=[])) == 0


def test_corrupt_image_names_shard_and_row(tmp_path):
    write_set(tmp_path / "set", corrupt=(6,))
    dataset = FaceDataset(tmp_path / "set")
    dataset[5]  # neighbours are fine
    with pytest.raises(CorruptImageError, match=r"part-00001\.parquet row 2 \(source img6\.png\): cannot decode"):
        dataset[6]


def test_corrupt_image_in_a_worker_surfaces_as_the_same_error(tmp_path):
    write_set(tmp_path / "set", corrupt=(6,))
    loader = make_loader(FaceDataset(tmp_path / "set"), batch_size=4, shuffle=False, seed=0, num_workers=1)
    batches = iter(loader)
    next(batches)  # rows 0..3 decode
    with pytest.raises(CorruptImageError, match=r"part-00001\.parquet row 2 \(source img6\.png\)"):
        next(batches)
    del batches, loader


def test_skip_corrupt_finds_and_drops_bad_rows_up_front(tmp_path):
    arrays = write_set(tmp_path / "set", corrupt=(1, 6))
    dataset = FaceDataset(tmp_path / "set", indices=[0, 1, 2, 6, 7], skip_corrupt=True)
    assert len(dataset) == 3 and dataset.rows.tolist() == [0, 2, 7]
    assert dataset.labels.tolist() == [0, 2, 1]
    assert len(dataset.skipped) == 2 and "img1.png" in dataset.skipped[0] and "img6.png" in dataset.skipped[1]
    np.testing.assert_allclose(dataset[2][0].numpy(), expected_tensor(arrays[7]), atol=1e-6)
    assert [labels.tolist() for _, labels in make_loader(dataset, 3, False, 0)] == [[0, 2, 1]]


def test_train_transform_flips_some_and_eval_never(tmp_path):
    arrays = write_set(tmp_path / "set", count=1)
    plain = expected_tensor(arrays[0])
    torch.manual_seed(0)
    dataset = FaceDataset(tmp_path / "set", transform=train_transform(flip=True))
    outcomes = set()
    for _ in range(40):
        image = dataset[0][0].numpy()
        if np.allclose(image, plain, atol=1e-6):
            outcomes.add("plain")
        elif np.allclose(image, plain[:, :, ::-1], atol=1e-6):
            outcomes.add("mirrored")
        else:
            outcomes.add("other")
    assert outcomes == {"plain", "mirrored"}
    for transform in (eval_transform(), train_transform(flip=False)):
        dataset = FaceDataset(tmp_path / "set", transform=transform)
        assert all(np.allclose(dataset[0][0].numpy(), plain, atol=1e-6) for _ in range(10))


def batches(loader) -> list[tuple[np.ndarray, list[int]]]:
    return [(images.numpy().copy(), labels.tolist()) for images, labels in loader]


def test_same_seed_same_batches_with_a_worker(tmp_path):
    write_set(tmp_path / "set", count=12)
    dataset = FaceDataset(tmp_path / "set", transform=train_transform())
    runs = [batches(make_loader(dataset, 4, shuffle=True, seed=seed, num_workers=1)) for seed in (3, 3, 4)]
    assert len(runs[0]) == 3
    for (a, la), (b, lb) in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)  # order and flips repeat
        assert la == lb
    assert any(not np.array_equal(a, c) for (a, _), (c, _) in zip(runs[0], runs[2]))


def test_same_seed_same_order_in_process(tmp_path):
    write_set(tmp_path / "set", count=12)
    dataset = FaceDataset(tmp_path / "set")
    orders = []
    for seed in (5, 5, 6):
        loader = make_loader(dataset, 4, shuffle=True, seed=seed, num_workers=0)
        orders.append([labels for _, labels in batches(loader)] + [labels for _, labels in batches(loader)])
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert orders[0][:3] != orders[0][3:]  # the second epoch is reshuffled


def test_training_loader_drops_the_last_partial_batch(tmp_path):
    write_set(tmp_path / "set", count=10)
    dataset = FaceDataset(tmp_path / "set")
    assert [len(labels) for _, labels in batches(make_loader(dataset, 4, shuffle=True, seed=0))] == [4, 4]
    assert [len(labels) for _, labels in batches(make_loader(dataset, 4, shuffle=False, seed=0))] == [4, 4, 2]


def test_loader_settings_follow_device_and_workers(tmp_path):
    write_set(tmp_path / "set", count=4)
    dataset = FaceDataset(tmp_path / "set")
    cpu = make_loader(dataset, 2, shuffle=False, seed=0, num_workers=0, device_type="cpu")
    assert not cpu.pin_memory and not cpu.persistent_workers and not cpu.drop_last
    cuda = make_loader(dataset, 2, shuffle=True, seed=0, num_workers=2, device_type="cuda")
    assert cuda.pin_memory and cuda.persistent_workers and cuda.drop_last
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(dataset, 0, shuffle=False, seed=0)


class NumpyDraws(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(np.random.random())


def test_numpy_in_workers_is_seeded_from_the_loader_seed():
    def draws(seed: int) -> list[float]:
        return [float(x) for batch in make_loader(NumpyDraws(), 1, shuffle=False, seed=seed, num_workers=2) for x in batch]

    first, again, other = draws(11), draws(11), draws(12)
    assert first == again and first != other
    assert first[0] != first[1]  # the two workers (items 0 and 1) draw from different seeds


def test_load_benchmark_arrays(tmp_path):
    arrays = [pixels(i) for i in range(4)]
    records = [FaceRecord(image=png(a), label=-1, landmarks=NO_LANDMARKS.copy(), source=f"b{i}") for i, a in enumerate(arrays)]
    pairs = pd.DataFrame({"a": [0, 2], "b": [1, 3], "same": [True, False], "fold": [0, 1]})
    write_benchmark(tmp_path / "bench", records, pairs)
    images, back = load_benchmark_arrays(tmp_path / "bench")
    np.testing.assert_array_equal(images, np.stack(arrays))
    assert back["same"].tolist() == [True, False]


def test_load_benchmark_arrays_names_the_odd_image(tmp_path):
    arrays = [pixels(0), pixels(1), np.zeros((H + 1, W, 3), np.uint8)]
    records = [FaceRecord(image=png(a), label=-1, landmarks=NO_LANDMARKS.copy(), source=f"b{i}") for i, a in enumerate(arrays)]
    write_benchmark(tmp_path / "bench", records, pd.DataFrame({"a": [0], "b": [1], "same": [True], "fold": [0]}))
    with pytest.raises(ValueError, match=r"images\.parquet row 2 \(source b2\): size \(7, 10\)"):
        load_benchmark_arrays(tmp_path / "bench")


def test_preloaded_batches_are_the_data_loaders_bit_for_bit(tmp_path):
    write_set(tmp_path / "set", count=10)
    dataset = FaceDataset(tmp_path / "set", indices=[9, 2, 5, 2, 7, 0, 1])
    order = [[3, 0, 6], [5, 5, 1], [2, 4, 3]]  # any batch sampler: repeats and reorderings included
    loaded = batches(torch.utils.data.DataLoader(dataset, batch_sampler=order))
    preloaded = batches(Preloaded(dataset, order))
    assert len(preloaded) == 3
    for (a, la), (b, lb) in zip(loaded, preloaded):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
        assert la == lb
    assert dataset.decoded_bytes() == 7 * H * W * 3
    assert Preloaded(dataset, order).images.dtype == torch.uint8


def test_preloading_refuses_a_random_transform_and_names_a_corrupt_record(tmp_path):
    write_set(tmp_path / "set", corrupt=(6,))
    with pytest.raises(ValueError, match="default transform"):
        Preloaded(FaceDataset(tmp_path / "set", transform=train_transform()), [[0]])
    with pytest.raises(CorruptImageError, match=r"part-00001\.parquet row 2 \(source img6\.png\)"):
        Preloaded(FaceDataset(tmp_path / "set"), [[0]])
