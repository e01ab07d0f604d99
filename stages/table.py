"""Stage table: one table of params `tables` (reports/<table>.md, <table>.csv, <table>_tests.csv) from the
evaluations: dvc.yaml runs it once per table, so a table added to params.yaml is a stage of its own."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.reporting import tables

from pipeline.core import stage
from pipeline.core.atomic_io import write_text_atomic
from pipeline.core.config import Config
from pipeline.core.paths import Paths


def outputs(table: str) -> list[str]:
    """The files this stage writes for `table`, project-relative (dvc.yaml declares them: tests/test_dependencies.py)."""
    return [f"reports/{table}.md", f"reports/{table}.csv", f"reports/{table}_tests.csv"]


def run(cfg: Config, paths: Paths, table: str) -> None:
    if table not in cfg.tables:
        raise KeyError(f"table {table!r} is not in params tables; known: {', '.join(cfg.tables)}")
    spec = cfg.tables[table]
    models = list(spec.rows)
    evaluations = stage.read_inputs(paths, evaluation_files(paths, models),
                                    lambda: tables.load_evaluations(cfg, paths, models))
    result = tables.build_table(spec, evaluations, cfg.evaluate.alpha)
    uncleaned = any(not evaluations.cleaned[name] for name in spec.rows)
    cleaning = None
    if uncleaned:
        source = paths.reports / "cleaning.json"
        cleaning = stage.read_inputs(paths, [source], lambda: json.loads(source.read_text()))
    write_text_atomic(paths.reports / f"{table}.md", tables.document(cfg, spec, result, evaluations, cleaning))
    tables.write_csvs(result, paths.reports, table)


def evaluation_files(paths: Paths, models: list[str]) -> list[Path]:
    """What tables.load_evaluations reads of `models`: their metrics and per-pair results (stage evaluate)."""
    return [path for name in models for path in (paths.metrics("eval", name), paths.eval_dir(name) / "pairs.parquet")]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="a key of `tables` in params.yaml")


def main() -> None:
    stage.main("table", run, _arguments)


if __name__ == "__main__":
    main()
