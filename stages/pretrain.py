"""Stage pretrain: N-Softmax on the cleaned data — Table 3's N-Softmax row and the start of the "NS" rows."""
from __future__ import annotations

from pipeline import stage
from pipeline.config import Config
from pipeline.paths import Paths
from pipeline.recipes import PRETRAIN
from pipeline.runs import train_recipe


def run(cfg: Config, paths: Paths) -> None:
    for seed in cfg.seeds:
        train_recipe(cfg, paths, PRETRAIN, seed)


def main() -> None:
    stage.main("pretrain", run)


if __name__ == "__main__":
    main()
