"""Stage align: warp every raw image to the profile's crop with the 5-point similarity transform."""
from __future__ import annotations

from pipeline import stage
from pipeline.data.align_records import align_dataset
from pipeline.config import Config
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


def run(cfg: Config, paths: Paths) -> dict:
    summary = align_dataset(paths.raw, paths.aligned, cfg.align.crop_size, skip_corrupt=cfg.data.skip_corrupt)
    write_json_atomic(paths.reports / "align.json", summary)
    return summary


def main() -> None:
    stage.main("align", run)


if __name__ == "__main__":
    main()
