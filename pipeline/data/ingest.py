"""Bring the configured data source into data/raw: train records and pair protocols in the internal format."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data import folders, insightface
from pipeline.data.synthetic import SyntheticSpec, generate
from pipeline.io import atomic_path


def prepare_raw(data: DataConfig, raw_dir: Path) -> dict:
    """Write `raw_dir/train` and `raw_dir/benchmarks/<name>`; the whole directory appears at once or not at all."""
    with atomic_path(raw_dir) as staged:
        staged.mkdir()
        summary = _write_source(data, staged)
        for name, path in sorted(data.benchmarks_bin.items()):
            summary.setdefault("benchmarks_bin", {})[name] = insightface.bin_to_benchmark(
                path, staged / "benchmarks" / name
            )
    return {"source": data.source, **summary}


def _write_source(data: DataConfig, out: Path) -> dict:
    if data.source == "synthetic":
        return generate(SyntheticSpec.from_dict(data.synthetic), out)
    if data.source == "insightface":
        if not data.insightface_prefix:
            raise ValueError("data.insightface_prefix must name the RecordIO prefix (path without .rec/.idx)")
        return insightface.rec_to_records(data.insightface_prefix, out / "train", skip_corrupt=data.skip_corrupt)
    if not data.folders_root:
        raise ValueError("data.folders_root must name a folder with one sub-folder per person")
    return folders.folders_to_records(data.folders_root, out / "train", skip_corrupt=data.skip_corrupt)
