"""Stage align: warp every raw image to the profile's crop with the 5-point similarity transform.

Landmarks are the record's own (synthetic ground truth) or, with `align.detector: mtcnn`, detected (real photos).
"""
from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.data.align_records import align_dataset, detector_from_config
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.paths import Paths


def run(cfg: Config, paths: Paths) -> dict:
    stage.require(paths, paths.train_records(paths.raw))
    detector = detector_from_config(cfg.align)
    summary = align_dataset(
        paths.raw, paths.aligned, cfg.align.crop_size, skip_corrupt=cfg.data.skip_corrupt,
        detector=detector, fallback_crop=cfg.align.fallback_crop,
    )
    write_json_atomic(paths.reports / "align.json", summary)
    return summary


def main() -> None:
    stage.main("align", run)


if __name__ == "__main__":
    main()
