"""Stage pretrain: N-Softmax on the cleaned data — Table 3's N-Softmax row and the start of the "NS" rows."""
from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import PRETRAIN
from pipeline.experiment.runs import train_recipe
from pipeline.train import distributed


def run(cfg: Config, paths: Paths) -> None:
    stage.require(paths, paths.train_records(paths.aligned), paths.manifest)
    try:
        for seed in cfg.seeds:
            train_recipe(cfg, paths, PRETRAIN, seed)
    finally:  # under torchrun (docs/scale-out.md) the process group that train_recipe joined
        distributed.shutdown(distributed.context_from_env())


def main() -> None:
    stage.main("pretrain", run)


if __name__ == "__main__":
    main()
