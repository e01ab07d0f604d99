"""The internal dataset: Parquet shards of encoded face images with labels and 5-point landmarks.

A records directory holds `part-00000.parquet`, `part-00001.parquet`, ... with the schema below.
A benchmark directory holds `images.parquet` (same schema) and `pairs.parquet` (a, b, same, fold),
where `a` and `b` are row numbers into `images.parquet` and folds are consecutive blocks in pair order.
Images are RGB throughout.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic_io import atomic_path

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),  # encoded PNG/JPEG bytes, RGB
        ("label", pa.int64()),  # training label (may carry label noise)
        ("identity", pa.int64()),  # ground-truth identity, -1 where unknown
        ("landmarks", pa.list_(pa.float32(), 10)),  # x,y of l-eye, r-eye, nose, l-mouth, r-mouth (pixels)
        ("source", pa.string()),  # stable id of the image (file path, record number, synthetic id)
        ("noisy", pa.bool_()),  # label noise ground truth: label != identity on purpose
    ]
)
PAIRS_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("same", pa.bool_()), ("fold", pa.int64())])
NO_LANDMARKS = np.full((5, 2), np.nan, dtype=np.float32)


@dataclass
class FaceRecord:
    image: bytes
    label: int
    landmarks: np.ndarray  # (5, 2) float32, image coordinates; NaN where unknown
    source: str
    identity: int = -1
    noisy: bool = False
    extras: dict[str, float] = field(default_factory=dict)  # per-image metadata (yaw, age, ...)


def _to_batch(records: list[FaceRecord], extra_names: list[str]) -> pa.RecordBatch:
    columns = {
        "image": [r.image for r in records],
        "label": [int(r.label) for r in records],
        "identity": [int(r.identity) for r in records],
        "landmarks": [np.asarray(r.landmarks, dtype=np.float32).reshape(10).tolist() for r in records],
        "source": [r.source for r in records],
        "noisy": [bool(r.noisy) for r in records],
    }
    schema = SCHEMA
    for name in extra_names:
        columns[name] = [float(r.extras.get(name, np.nan)) for r in records]
        schema = schema.append(pa.field(name, pa.float32()))
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def write_records(out_dir: str | Path, records: Iterable[FaceRecord], shard_size: int = 4096) -> int:
    """Write records as Parquet shards into `out_dir`, atomically (the directory appears whole or not at all)."""
    count = 0
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        buffer: list[FaceRecord] = []
        shard = 0

        def flush() -> None:
            nonlocal shard
            extra_names = sorted({k for r in buffer for k in r.extras})
            table = pa.Table.from_batches([_to_batch(buffer, extra_names)])
            pq.write_table(table, staged / f"part-{shard:05d}.parquet")
            shard += 1
            buffer.clear()

        for record in records:
            buffer.append(record)
            count += 1
            if len(buffer) >= shard_size:
                flush()
        if buffer or shard == 0:
            flush()
    return count


def shard_paths(records_dir: str | Path) -> list[Path]:
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        raise FileNotFoundError(f"records directory {records_dir} does not exist")
    paths = sorted(records_dir.glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"records directory {records_dir} holds no part-*.parquet shards")
    return paths


def _records_from_rows(rows: dict[str, list], count: int) -> Iterator[FaceRecord]:
    extra_names = [n for n in rows if n not in SCHEMA.names]
    for i in range(count):
        yield FaceRecord(
            image=rows["image"][i],
            label=rows["label"][i],
            identity=rows["identity"][i],
            landmarks=np.asarray(rows["landmarks"][i], dtype=np.float32).reshape(5, 2),
            source=rows["source"][i],
            noisy=rows["noisy"][i],
            extras={n: rows[n][i] for n in extra_names},
        )


def iter_records(records_dir: str | Path, batch_size: int = 1024) -> Iterator[FaceRecord]:
    """Stream records shard by shard, batch by batch (never the whole set in memory)."""
    for path in shard_paths(records_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from _records_from_rows(batch.to_pydict(), batch.num_rows)


def read_metadata(records_dir: str | Path) -> pd.DataFrame:
    """Every column but the image bytes, as one DataFrame (row order = stream order)."""
    frames = []
    for path in shard_paths(records_dir):
        names = [n for n in pq.read_schema(path).names if n != "image"]
        frames.append(pq.read_table(path, columns=names).to_pandas())
    return pd.concat(frames, ignore_index=True)


def write_benchmark(out_dir: str | Path, images: Iterable[FaceRecord], pairs: pd.DataFrame) -> None:
    """Write a pair protocol: `images.parquet` and `pairs.parquet` (a, b, same, fold), atomically."""
    missing = {"a", "b", "same", "fold"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs for {out_dir} lack columns {sorted(missing)}")
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        image_list = list(images)
        extra_names = sorted({k for r in image_list for k in r.extras})
        pq.write_table(pa.Table.from_batches([_to_batch(image_list, extra_names)]), staged / "images.parquet")
        if len(pairs) and (pairs[["a", "b"]].to_numpy().max() >= len(image_list) or pairs[["a", "b"]].to_numpy().min() < 0):
            raise ValueError(f"pairs for {out_dir} index images outside 0..{len(image_list) - 1}")
        table = pa.Table.from_pandas(pairs[["a", "b", "same", "fold"]], schema=PAIRS_SCHEMA, preserve_index=False)
        pq.write_table(table, staged / "pairs.parquet")


def read_benchmark(bench_dir: str | Path) -> tuple[list[FaceRecord], pd.DataFrame]:
    bench_dir = Path(bench_dir)
    for name in ("images.parquet", "pairs.parquet"):
        if not (bench_dir / name).is_file():
            raise FileNotFoundError(f"benchmark {bench_dir} lacks {name}")
    table = pq.read_table(bench_dir / "images.parquet")
    images = list(_records_from_rows(table.to_pydict(), table.num_rows))
    pairs = pq.read_table(bench_dir / "pairs.parquet").to_pandas()
    return images, pairs
