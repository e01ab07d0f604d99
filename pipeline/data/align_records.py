"""Align a records tree (train + benchmarks) to square crops; already-aligned sets (no landmarks) are resized."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.align import align
from pipeline.data.images import decode_image, encode_png
from pipeline.data.records import FaceRecord, iter_records, read_benchmark, write_benchmark, write_records
from pipeline.io import atomic_path


def align_record(record: FaceRecord, crop_size: int, where: str) -> FaceRecord:
    image = decode_image(record.image, where)
    if np.isfinite(record.landmarks).all():
        crop, landmarks = align(image, record.landmarks, crop_size)
    else:  # InsightFace sets are stored aligned at 112x112: scale to the crop
        scale = np.array([crop_size / image.shape[1], crop_size / image.shape[0]], dtype=np.float32)
        crop = np.asarray(Image.fromarray(image).resize((crop_size, crop_size), Image.Resampling.BILINEAR))
        landmarks = record.landmarks * scale
    return FaceRecord(
        image=encode_png(crop),
        label=record.label,
        identity=record.identity,
        landmarks=np.asarray(landmarks, dtype=np.float32),
        source=record.source,
        noisy=record.noisy,
        extras=record.extras,
    )


def _aligned(records: Iterable[FaceRecord], crop_size: int, where: str, skipped: list[str], skip: bool) -> Iterator[FaceRecord]:
    for index, record in enumerate(records):
        try:
            yield align_record(record, crop_size, f"{where} record {index} ({record.source})")
        except ValueError as error:
            if not skip:
                raise
            skipped.append(str(error))


def align_dataset(raw_dir: Path, out_dir: Path, crop_size: int, skip_corrupt: bool = False) -> dict:
    train_dir = raw_dir / "train"
    skipped: list[str] = []
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        count = write_records(staged / "train", _aligned(iter_records(train_dir), crop_size, str(train_dir), skipped, skip_corrupt))
        benchmarks = {}
        for bench_dir in sorted((raw_dir / "benchmarks").glob("*")):
            images, pairs = read_benchmark(bench_dir)
            # a benchmark image is never skipped: its pairs would change
            aligned = list(_aligned(images, crop_size, str(bench_dir), [], False))
            write_benchmark(staged / "benchmarks" / bench_dir.name, aligned, pairs)
            benchmarks[bench_dir.name] = {"images": len(aligned), "pairs": len(pairs)}
    return {"crop_size": crop_size, "train_images": count, "skipped": len(skipped), "skipped_detail": skipped[:100], "benchmarks": benchmarks}
