"""The pipeline as DVC sees it: dvc.yaml's stages, what each needs and writes, and the order to run a target's
stages in."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import Config
from pipeline.core.paths import Paths

REFERENCE_RECORDS = "reports/metrics/reference"  # stage reference's output: part of the default run, read by no table


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's address: synthesize, train@cosface, evaluate_models@pretrain, ...
    needs: frozenset[str]  # the stages whose outputs it reads
    outs: tuple[str, ...]  # project-relative paths it writes


def read_pipeline(root: Path) -> dict[str, Stage]:
    """DVC's own stage graph of `root`/dvc.yaml, in dvc.yaml order (read only: no lock is taken)."""
    from dvc.repo import Repo

    def address(node: Any) -> str:  # as `dvc repro` takes it from the project root
        where = Path(node.dvcfile.path).resolve().relative_to(root.resolve()).as_posix()
        return node.name if where == "dvc.yaml" else f"{where}:{node.name}"

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        return {
            address(node): Stage(
                address(node),
                frozenset(address(dep) for dep in graph.successors(node)),
                tuple(out.def_path for out in node.outs),
            )
            for node in graph.nodes
        }


def _written(pipeline: Mapping[str, Stage], path: str) -> bool:
    return any(path in stage.outs for stage in pipeline.values())


def producer(pipeline: Mapping[str, Stage], path: str) -> str:
    """The stage that writes `path` (project-relative)."""
    for stage in pipeline.values():
        if path in stage.outs:
            return stage.name
    raise KeyError(f"dvc.yaml: no stage writes {path}")


def model_stages(pipeline: Mapping[str, Stage], paths: Paths, model: str) -> tuple[str, str]:
    """The stages that train and evaluate `model` (e.g. train@cosface and evaluate@cosface, or pretrain and
    evaluate_models@pretrain), found by the files they write so dvc.yaml stays the one place that says it."""
    weights = paths.model_dir(model).relative_to(paths.root).as_posix()
    metrics = paths.metrics("eval", model).relative_to(paths.root).as_posix()
    return producer(pipeline, weights), producer(pipeline, metrics)


def plan(pipeline: Mapping[str, Stage], targets: Sequence[str]) -> list[str]:
    """The targets and every stage they need, upstream first; targets keep their order, so giving them row by
    row makes each row's evaluation come right after its training."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise ValueError(f"dvc.yaml: stages depend on each other in a cycle: {' -> '.join(trail + (name,))}")
        if name in seen:
            return
        if name not in pipeline:
            raise KeyError(f"dvc.yaml has no stage {name!r}")
        for dep in (s for s in pipeline if s in pipeline[name].needs):  # dvc.yaml order, for a stable plan
            visit(dep, trail + (name,))
        seen.add(name)
        order.append(name)

    for target in targets:
        visit(target, ())
    return order


def table_plan(
    pipeline: Mapping[str, Stage], paths: Paths, cfg: Config, table: str, rows: Sequence[str] | None = None
) -> list[str]:
    """The stages that build `table`, upstream first: its models' training and evaluation (row by row; `rows`: only
    those rows, the others' results are read as they are), its table stage, and for a table of the default run the
    default report (and for the whole table stage reference, which `dvc repro` runs too). Those readers of dvc.yaml
    list their inputs file by file, so for a whole default table they come with DVC's own upstream: everything the
    report reads. A table of extra/dvc.yaml reads folders of evaluations, so
    DVC's own upstream of its stage is every evaluation of both dvc files: the plan takes the stage alone, after the
    ones it reads, as it does every reader of a subset of rows."""
    if table not in cfg.tables:
        raise KeyError(f"table {table!r} is not in params tables or extra_tables; known: {', '.join(cfg.tables)}")
    models = cfg.tables[table].rows if rows is None else rows
    targets = [stage for model in models for stage in model_stages(pipeline, paths, model)]
    readers = [producer(pipeline, f"reports/{table}.md")]
    if table in cfg.default_tables:
        readers.append(producer(pipeline, "reports/seed_noise.md"))
        if rows is None:  # the whole default run: the reference models beside the rows too, which no table reads
            beside = [producer(pipeline, REFERENCE_RECORDS)] if _written(pipeline, REFERENCE_RECORDS) else []
            return plan(pipeline, [*targets, *beside, *readers])
    order = plan(pipeline, targets)
    return order + [stage for stage in readers if stage not in order]
