"""The internal records format (pipeline/data/records.py): round trips, shards, extras, atomic writes, pairs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.data.records import (
    NO_LANDMARKS,
    FaceRecord,
    iter_records,
    read_benchmark,
    read_metadata,
    shard_paths,
    write_benchmark,
    write_records,
)


def make_records(count: int, extras: bool = False) -> list[FaceRecord]:
    rng = np.random.default_rng(7)
    return [
        FaceRecord(
            image=rng.bytes(int(rng.integers(1, 40))),
            label=i % 4,
            identity=(i % 4) if i % 5 else -1,
            landmarks=(rng.random((5, 2)) * 112).astype(np.float32) if i % 3 else NO_LANDMARKS.copy(),
            source=f"img/{i:03d}.png",
            noisy=bool(i % 5 == 0),
            extras={"yaw": float(i) * 1.5, "age": float(20 + i)} if extras else {},
        )
        for i in range(count)
    ]


def assert_same(got: FaceRecord, want: FaceRecord) -> None:
    assert got.image == want.image
    assert (got.label, got.identity, got.source, got.noisy) == (want.label, want.identity, want.source, want.noisy)
    np.testing.assert_array_equal(got.landmarks, want.landmarks)  # NaN compares equal here
    assert got.landmarks.shape == (5, 2)


def test_round_trip_single_shard(tmp_path):
    records = make_records(7)
    assert write_records(tmp_path / "set", records) == 7
    back = list(iter_records(tmp_path / "set"))
    assert len(back) == 7
    for got, want in zip(back, records):
        assert_same(got, want)
        assert got.extras == {}


def test_streaming_across_shards_keeps_order(tmp_path):
    records = make_records(10)
    write_records(tmp_path / "set", records, shard_size=3)
    shards = shard_paths(tmp_path / "set")
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.read_metadata(p).num_rows for p in shards] == [3, 3, 3, 1]
    back = list(iter_records(tmp_path / "set", batch_size=2))  # batches smaller than shards
    assert [r.source for r in back] == [r.source for r in records]
    for got, want in zip(back, records):
        assert_same(got, want)


def test_iter_records_is_lazy(tmp_path):
    write_records(tmp_path / "set", make_records(10), shard_size=3)
    stream = iter_records(tmp_path / "set", batch_size=2)
    first = next(stream)
    assert first.source == "img/000.png"


def test_extras_columns_round_trip_and_missing_is_nan(tmp_path):
    records = make_records(5, extras=True)
    records[2].extras = {"yaw": 3.0}  # no age for this one
    write_records(tmp_path / "set", records, shard_size=2)
    back = list(iter_records(tmp_path / "set"))
    assert back[0].extras == pytest.approx({"yaw": 0.0, "age": 20.0})
    assert back[4].extras == pytest.approx({"yaw": 6.0, "age": 24.0})
    assert back[2].extras["yaw"] == 3.0 and np.isnan(back[2].extras["age"])
    meta = read_metadata(tmp_path / "set")
    assert "image" not in meta.columns
    assert list(meta["source"]) == [r.source for r in records]
    np.testing.assert_allclose(meta["yaw"].to_numpy(), [0.0, 1.5, 3.0, 4.5, 6.0])
    assert meta["age"].isna().tolist() == [False, False, True, False, False]


def test_extras_only_in_some_shards(tmp_path):
    records = make_records(4)
    records[3].extras = {"yaw": 9.0}  # only the second shard has the column
    write_records(tmp_path / "set", records, shard_size=2)
    meta = read_metadata(tmp_path / "set")
    assert len(meta) == 4
    assert meta["yaw"].isna().tolist() == [True, True, True, False]
    assert meta["yaw"].iloc[3] == 9.0


def test_empty_record_stream_writes_an_empty_shard(tmp_path):
    assert write_records(tmp_path / "set", []) == 0
    assert list(iter_records(tmp_path / "set")) == []
    assert len(read_metadata(tmp_path / "set")) == 0


def test_failure_mid_write_leaves_no_directory(tmp_path):
    def failing():
        yield from make_records(5)
        raise RuntimeError("decoder exploded")

    with pytest.raises(RuntimeError, match="decoder exploded"):
        write_records(tmp_path / "set", failing(), shard_size=2)  # two shards were already written
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers either


def test_failure_mid_write_keeps_the_previous_directory(tmp_path):
    write_records(tmp_path / "set", make_records(3))

    def failing():
        yield from make_records(4)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records(tmp_path / "set", failing(), shard_size=2)
    assert len(list(iter_records(tmp_path / "set"))) == 3


def test_missing_records_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_records(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no part-"):
        read_metadata(tmp_path / "empty")


def pairs_frame(a, b, same, fold) -> pd.DataFrame:
    return pd.DataFrame({"a": a, "b": b, "same": same, "fold": fold})


def test_benchmark_round_trip(tmp_path):
    images = make_records(6, extras=True)
    pairs = pairs_frame([0, 2, 4], [1, 3, 5], [True, False, True], [0, 1, 2])
    write_benchmark(tmp_path / "bench", images, pairs)
    back, back_pairs = read_benchmark(tmp_path / "bench")
    for got, want in zip(back, images):
        assert_same(got, want)
    assert back[1].extras == pytest.approx({"yaw": 1.5, "age": 21.0})
    pd.testing.assert_frame_equal(back_pairs, pairs, check_dtype=False)
    assert back_pairs["same"].dtype == bool


@pytest.mark.parametrize("a, b", [([0, 6], [1, 2]), ([0, 1], [-1, 2])])
def test_benchmark_rejects_pairs_outside_the_images(tmp_path, a, b):
    with pytest.raises(ValueError, match="outside 0..5"):
        write_benchmark(tmp_path / "bench", make_records(6), pairs_frame(a, b, [True, False], [0, 1]))
    assert not (tmp_path / "bench").exists()
    assert list(tmp_path.iterdir()) == []


def test_benchmark_rejects_missing_pair_columns(tmp_path):
    with pytest.raises(ValueError, match="fold"):
        write_benchmark(tmp_path / "bench", make_records(2), pd.DataFrame({"a": [0], "b": [1], "same": [True]}))
    assert not (tmp_path / "bench").exists()


def test_read_benchmark_names_the_missing_file(tmp_path):
    write_benchmark(tmp_path / "bench", make_records(2), pairs_frame([0], [1], [True], [0]))
    (tmp_path / "bench" / "pairs.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="pairs.parquet"):
        read_benchmark(tmp_path / "bench")
