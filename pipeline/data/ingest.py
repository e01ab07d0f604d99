"""Bring the configured data source into data/raw: train records and pair protocols in the internal format."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.data import folders, insightface, lfw
from pipeline.data.synthetic import SyntheticSpec, generate
from pipeline.core.atomic_io import atomic_path


def prepare_raw(data: DataConfig, raw_dir: Path) -> dict:
    """Write `raw_dir/train` and `raw_dir/benchmarks/<name>`; the whole directory appears at once or not at all."""
    with atomic_path(raw_dir) as staged:
        staged.mkdir()
        summary = _write_source(data, staged)
        for name, path in sorted(data.benchmarks_bin.items()):
            summary.setdefault("benchmarks_bin", {})[name] = insightface.bin_to_benchmark(
                path, staged / "benchmarks" / name
            )
        if data.lfw_root and data.source != "lfw":  # a model that saw no LFW person may be scored on View 2
            summary[lfw.VIEW2] = lfw.write_protocol(data.lfw_root, lfw.VIEW2, staged / "benchmarks" / lfw.VIEW2)
    return {"source": data.source, **summary}


def _write_source(data: DataConfig, out: Path) -> dict:
    if data.source == "synthetic":
        return generate(SyntheticSpec.from_dict(data.synthetic), out)
    if data.source == "insightface":
        if not data.insightface_prefix:
            raise ValueError("data.insightface_prefix must name the RecordIO prefix (path without .rec/.idx)")
        return insightface.rec_to_records(data.insightface_prefix, out / "train", skip_corrupt=data.skip_corrupt)
    if data.source == "lfw":
        if not data.lfw_root:
            raise ValueError("data.lfw_root must name the LFW root (labels.csv, pairs_devtest.csv, the photos)")
        return lfw.lfw_to_raw(data.lfw_root, out, data.lfw_min_images, skip_corrupt=data.skip_corrupt)
    if not data.folders_root:
        raise ValueError("data.folders_root must name a folder with one sub-folder per person")
    return folders.folders_to_raw(
        data.folders_root, out, heldout=data.folders_heldout, pairs_per_fold=data.folders_pairs_per_fold,
        folds=data.folders_folds, seed=data.split_seed, skip_corrupt=data.skip_corrupt,
    )
