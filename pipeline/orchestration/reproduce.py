"""What `bash scripts/reproduce` runs: the default run (Table 3) by default, one table with `table@NAME`, one stage and
what it needs with `stage@NAME`, every table with `--all`; anything else is passed to `dvc repro` as it is.

    python -m pipeline.orchestration.reproduce                    # dvc repro: Table 3, its seed-noise report, MLflow
    python -m pipeline.orchestration.reproduce table@facex_heads  # that table's rows, evaluations and table
    python -m pipeline.orchestration.reproduce stage@reference    # dvc repro reference: the reference models alone
    python -m pipeline.orchestration.reproduce --all              # dvc repro, then dvc repro extra/dvc.yaml
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT, Config
from pipeline.core.paths import Paths
from pipeline.orchestration.graph import Stage, read_pipeline, table_plan


STAGE = "stage@"  # stage@NAME: that stage of dvc.yaml (or extra/dvc.yaml:NAME) and every stage it needs


def stage_target(pipeline: dict[str, Stage], target: str) -> str:
    """The DVC stage of `stage@NAME`; an unknown one is named with the stages there are (a foreach stage by its group
    name, e.g. train, or one item, train@cosface)."""
    name = target.removeprefix(STAGE)
    groups = {stage.split("@")[0] for stage in pipeline}
    if name not in pipeline and name not in groups:
        raise KeyError(f"{target}: no such stage in dvc.yaml or extra/dvc.yaml (known: {', '.join(sorted(groups))})")
    return name


def dvc_commands(cfg: Config, pipeline: dict[str, Stage], paths: Paths, targets: Sequence[str], every_table: bool
                 ) -> list[list[str]]:
    """The `dvc repro` calls (arguments after `dvc`) that build what was asked, in order."""
    if every_table:
        return [["repro"], ["repro", "extra/dvc.yaml"]]
    if not targets:
        return [["repro"]]
    commands = []
    for target in targets:
        if target.startswith(STAGE):  # a stage of either dvc file, as `dvc repro` names it, and its upstream
            commands.append(["repro", stage_target(pipeline, target)])
            continue
        table = target.removeprefix("table@")
        if target.startswith("table@") and table not in cfg.default_tables:
            *upstream, reader = table_plan(pipeline, paths, cfg, table)
            commands += [["repro", *upstream], ["repro", "--single-item", reader]]
        else:  # a default table's stage or any DVC target: DVC's own upstream is exact
            commands.append(["repro", target])
    return commands


def main(argv: Sequence[str] | None = None, root: Path = PROJECT_ROOT) -> int:
    parser = argparse.ArgumentParser(prog="bash scripts/reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every table: dvc.yaml's and extra/dvc.yaml's")
    parser.add_argument("targets", nargs="*", help="table@NAME (a key of params tables or extra_tables), stage@NAME "
                                                   "(a stage of a dvc file and what it needs) or DVC targets")
    args = parser.parse_args(argv)
    if args.all and args.targets:
        parser.error("--all builds every table: give it no targets")
    try:
        cfg = config.load(root / "params.yaml")
        pipeline = read_pipeline(root) if args.targets else {}
        commands = dvc_commands(cfg, pipeline, Paths(root), args.targets, args.all)
    except (KeyError, ValueError) as error:  # bad parameters, a table they lack: the one line, not a traceback
        parser.exit(2, f"{parser.prog}: {error.args[0]}\n")
    for command in commands:
        print("+ dvc " + " ".join(command), flush=True)
        result = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=root)
        if result.returncode:
            return result.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
