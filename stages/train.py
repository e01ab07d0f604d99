"""Stage train: one table row (head, margins, init) for every seed of the profile."""
from __future__ import annotations

import argparse

from pipeline.core import stage
from pipeline.core.config import PRETRAIN, Config
from pipeline.core.paths import Paths
from pipeline.experiment.runs import seed_dir, train_recipe
from pipeline.train import distributed


def run(cfg: Config, paths: Paths, row: str) -> None:
    init = cfg.row(row).init  # a clear error for an unknown row
    starts = [seed_dir(paths, PRETRAIN, seed) / "model.pt" for seed in cfg.seeds] if init == "pretrain" else []
    stage.require(paths, paths.train_records(paths.aligned), paths.manifest, *starts)
    try:
        for seed in cfg.seeds:
            train_recipe(cfg, paths, row, seed)
    finally:  # under torchrun (docs/scale-out.md) the process group that train_recipe joined
        distributed.shutdown(distributed.context_from_env())


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--row", required=True, help="a key of `rows` in params.yaml")


def main() -> None:
    stage.main("train", run, _arguments)


if __name__ == "__main__":
    main()
