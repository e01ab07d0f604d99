"""Prefect flows `reproduce-table3`, `reproduce-table2`, `reproduce-facex-heads` (the published tables) and
`reproduce-table` (any table of params `tables` or `extra_tables`): every DVC stage is a task that runs `dvc repro
--single-item <stage>`, so DVC's lock file and cache decide what reruns and the stage code is the one `dvc repro`
runs; independent stages (the table rows) run concurrently, up to `workers` at a time.

What a deployment builds is its table and nothing of another table (graph.table_plan, as `bash scripts/reproduce
table@NAME`): the table's rows (training and evaluation, with what they need: validate, synthesize, align, clean,
pretrain, protocols), then its table stage; for the default run's Table 3 (dvc.yaml) also the default report, which
reads exactly its models. A table of extra/dvc.yaml never runs a stage of another extra table. The extra report
(`extra/dvc.yaml:report`, reports/extra/) reads the models of every extra table, so an extra table's run ends with it
only when `dvc status` then finds every one of those models trained and evaluated up to date; otherwise it is left
out, with a warning that names the stale stages. Why: a researcher who asks for Table 2 wants Table 2, not hours of
the other extra tables' training; a report that spans every extra table must not mix fresh figures with missing or
stale ones (an older profile's, say); and when the others are current, refreshing it costs seconds and keeps
reports/extra/seed_noise.md in step with the table just rebuilt. So triggering every table's deployment (served one
run at a time) builds every table and ends with the extra report. There is no every-table deployment: `bash
scripts/reproduce --all` (`dvc repro`, then `dvc repro extra/dvc.yaml`) is that, in DVC's own order.

Concurrency: DVC holds its repository lock only while it checks and records a stage, and releases it while the
stage's command runs (DVC's documented "parallel stage execution"); `dvc --wait-for-lock` makes a second
process wait for that lock instead of failing, so several `dvc repro --single-item train@<row>` in one
workspace train at the same time and record their results one after the other.

    python -m pipeline.orchestration.flows serve   # reproduce-table3/cpu, reproduce-table2/cpu, reproduce-facex-heads/cpu and
                                     # reproduce-table/<table> for each table of params.yaml
    python -m pipeline.orchestration.flows deploy --pool gpu  # the same flows deployed to a work pool, from this directory
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, serve, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT, Config
from pipeline.core.paths import Paths
from pipeline.orchestration.artifacts import RowArtifact, artifact_key, publish_row
from pipeline.orchestration.graph import Stage, model_stages, plan, producer, read_pipeline, table_plan
from pipeline.orchestration.scheduler import StageFailed, schedule, stage_env, stage_threads

DEPLOYMENT = "cpu"  # `prefect deployment run 'reproduce-table3/cpu'`: Prefect only accepts FLOW/DEPLOYMENT
MAX_WORKERS = 32
MLFLOW_UI = "http://127.0.0.1:5000"
EXTRA_REPORT = "reports/extra/seed_noise.md"  # written by extra/dvc.yaml's report (stages/report.py, scope extra)


def check_request(cfg: Config, params_file: Path, profile: str | None, seeds: Sequence[int] | None) -> None:
    """Refuse a profile or seeds other than params.yaml's: DVC records params.yaml as the parameters of every
    stage, so the flow never edits it behind the user's back; the message says how to switch."""
    if profile is not None and profile != cfg.profile:
        raise ValueError(
            f"profile {profile!r} was requested but {params_file} selects profile {cfg.profile!r}; the flow does "
            f"not edit params.yaml: set `profile: {profile}` there (and commit it), then run the deployment again"
        )
    if seeds is not None and list(seeds) != list(cfg.seeds):
        raise ValueError(
            f"seeds {list(seeds)} were requested but profile {cfg.profile!r} of {params_file} has seeds "
            f"{list(cfg.seeds)}; the flow does not edit params.yaml: set `seeds` there (profiles.{cfg.profile}.seeds "
            "overrides the top-level one), then run the deployment again"
        )


def select_rows(cfg: Config, table: str, rows: Sequence[str] | None) -> list[str]:
    """The models of `table` to run: all of them (table order) or the requested subset, checked."""
    if table not in cfg.tables:
        raise ValueError(f"params: no table {table!r} under tables or extra_tables (known: {', '.join(cfg.tables)})")
    members = list(cfg.tables[table].rows)
    if rows is None:
        return members
    if not rows:
        raise ValueError("rows is empty: leave it out to run every row of the table")
    for name in rows:
        if name not in members:
            shown_in = cfg.tables_showing(name)
            where = f"it is in {', '.join(shown_in)}" if shown_in else "no table shows it"
            raise ValueError(f"row {name!r} is not a row of {table} ({where}); rows of {table}: {', '.join(members)}")
    return list(dict.fromkeys(rows))


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.transient


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,  # DVC decides what reruns, never Prefect's cache
    retry_delay_seconds=10,
    retry_condition_fn=_retry_if_transient,
)
def run_stage(stage: str, root: str, threads: int, row: RowArtifact | None = None) -> str:
    """`dvc --wait-for-lock repro --single-item <stage>`, its output in the task's log; what DVC did with it."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=400)  # enough for the stage's own error and DVC's verdict
    status = "up to date"
    said = {f"Running stage '{stage}'": "ran", f"Stage '{stage}' is cached": "restored from DVC's run cache"}
    with subprocess.Popen(
        command, cwd=root, env=stage_env(os.environ, threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            logger.info(line.rstrip())
            status = next((v for k, v in said.items() if line.startswith(k)), status)
            tail.append(line)
    if process.returncode != 0:
        raise StageFailed(stage, process.returncode, "".join(tail))
    if row is not None:
        publish_row(Path(root), row)
    return status


class PipelineFailed(RuntimeError):
    pass


def _completed(future: Any) -> bool:
    future.wait()  # records the final state; before that `state` asks the API, which may lag behind
    return future.state.is_completed()


def extra_report_reads(cfg: Config, pipeline: dict[str, Stage], paths: Paths) -> list[str]:
    """The evaluation stages of what the extra report reads: every model of every table of params `extra_tables`."""
    extra = [table for table in cfg.tables if table not in cfg.default_tables]
    models = dict.fromkeys(model for table in extra for model in cfg.tables[table].rows)
    return [model_stages(pipeline, paths, model)[1] for model in models]


def changed_stages(root: Path, pipeline: dict[str, Stage], stages: Sequence[str]) -> list[str]:
    """Of `stages` and every stage they need, those `dvc status` finds changed or never run, in dvc file order."""
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "status", "--json", "--with-deps", *stages]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineFailed(f"dvc status --with-deps failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    changed = json.loads(result.stdout or "{}")
    return [name for name in pipeline if name in changed]


def run_stages(
    order: Sequence[str], pipeline: dict[str, Stage], root: Path, workers: int, retries: int,
    artifacts: dict[str, RowArtifact],
) -> dict[str, str]:
    """The stages of `order` as Prefect tasks, `workers` at a time; what DVC did with each, or PipelineFailed with
    every failed stage's own error."""
    stage_task = run_stage.with_options(retries=retries)
    threads = stage_threads(workers, os.cpu_count())
    futures: dict[str, Any] = {}

    def start(name: str) -> Any:
        futures[name] = stage_task.submit(name, str(root), threads, artifacts.get(name))
        return futures[name]

    outcome = schedule(
        order,
        {name: pipeline[name].needs for name in order},
        start,
        lambda running: next(as_completed(running)),
        _completed,
        workers,
    )
    if outcome.failed:
        errors = [str(futures[name].result(raise_on_failure=False)) for name in outcome.failed]
        skipped = f"\nnot run (they need a failed stage): {', '.join(outcome.skipped)}" if outcome.skipped else ""
        raise PipelineFailed("\n\n".join(errors) + skipped)
    return {name: futures[name].result() for name in order}


def reproduce(
    table: str,
    profile: str | None,
    rows: Sequence[str] | None,
    seeds: Sequence[int] | None,
    workers: int,
    retries: int,
    write_report: bool,
    mlflow_ui: str,
    root: Path = PROJECT_ROOT,
) -> dict[str, str]:
    """What every flow does: check the request, plan the table's stages from DVC's graph, run them, publish the
    results; for a table of extra/dvc.yaml, the extra report when all it reads is up to date (module docstring)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be in 1..{MAX_WORKERS}, got {workers}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    logger = get_run_logger()
    params_file = root / "params.yaml"
    cfg = config.load(params_file)
    check_request(cfg, params_file, profile, seeds)
    models = select_rows(cfg, table, rows)
    pipeline = read_pipeline(root)
    paths = Paths(root)
    if write_report:  # the whole table: everything its readers read; a subset: the other rows stay as they are
        order = table_plan(pipeline, paths, cfg, table, None if rows is None else models)
    else:
        order = plan(pipeline, [stage for model in models for stage in model_stages(pipeline, paths, model)])
    artifacts = {model_stages(pipeline, paths, m)[1]: RowArtifact(table, m, mlflow_ui) for m in models}
    logger.info("profile %s, %d stage(s), %d at a time: %s", cfg.profile, len(order), workers, ", ".join(order))
    done = run_stages(order, pipeline, root, workers, retries, artifacts)
    if not write_report:
        return done
    create_markdown_artifact(
        markdown=(paths.reports / f"{table}.md").read_text(encoding="utf-8"),
        key=artifact_key(table),
        description=f"{table} as its table stage wrote it (reports/{table}.md)",
    )
    if table in cfg.default_tables:
        return done
    report = producer(pipeline, EXTRA_REPORT)
    stale = changed_stages(root, pipeline, extra_report_reads(cfg, pipeline, paths))
    if stale:
        extra = ", ".join(t for t in cfg.tables if t not in cfg.default_tables)
        logger.warning(
            "%s not run: it reads the models of every extra table (%s), and DVC finds these stages not up to date: "
            "%s. Build them (their tables' deployments, or `dvc repro extra/dvc.yaml`), then run this one again.",
            report, extra, ", ".join(stale),
        )
        return done
    return done | run_stages([report], pipeline, root, workers, retries, {})


@flow(name="reproduce-table3", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def reproduce_table3(
    profile: str | None = None,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    workers: int = 2,
    retries: int = 2,
    report: bool = True,
    mlflow_ui: str = MLFLOW_UI,
) -> dict[str, str]:
    """Table 3 of the AirFace paper (the loss functions) through the DVC pipeline of this repository.

    profile / seeds: must match params.yaml (None: whatever it says); rows: a subset of the table's rows
    (None: every row, and everything the report reads); workers: stages run at once; retries: per stage, on
    transient failures only; report: run the table stage and the report at the end; mlflow_ui: base URL of the row
    links.
    """
    return reproduce("table3", profile, rows, seeds, workers, retries, report, mlflow_ui)


@flow(name="reproduce-table2", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def reproduce_table2(
    profile: str | None = None,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    workers: int = 2,
    retries: int = 2,
    report: bool = True,
    mlflow_ui: str = MLFLOW_UI,
) -> dict[str, str]:
    """Table 2 of the AirFace paper (weight decay) through the DVC pipeline; parameters as reproduce-table3."""
    return reproduce("table2", profile, rows, seeds, workers, retries, report, mlflow_ui)


@flow(name="reproduce-facex-heads", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def reproduce_facex_heads(
    profile: str | None = None,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    workers: int = 2,
    retries: int = 2,
    report: bool = True,
    mlflow_ui: str = MLFLOW_UI,
) -> dict[str, str]:
    """FaceX-Zoo's table of supervisory heads on MobileFaceNet through the DVC pipeline; parameters as
    reproduce-table3."""
    return reproduce("facex_heads", profile, rows, seeds, workers, retries, report, mlflow_ui)


@flow(name="reproduce-table", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def reproduce_table(
    table: str,
    profile: str | None = None,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    workers: int = 2,
    retries: int = 2,
    report: bool = True,
    mlflow_ui: str = MLFLOW_UI,
) -> dict[str, str]:
    """Any table of params.yaml's `tables` or `extra_tables` (distill, cleaning, one added there) through the DVC
    pipeline; parameters as reproduce-table3."""
    return reproduce(table, profile, rows, seeds, workers, retries, report, mlflow_ui)


FLOWS = {"table3": reproduce_table3, "table2": reproduce_table2, "facex_heads": reproduce_facex_heads}


def deployments(cfg: Config) -> list[tuple[Any, str, dict[str, str]]]:
    """(flow, deployment name, parameters): the three published tables by their own flows, every table of params
    `tables` and `extra_tables` as a deployment of reproduce-table named after it (`reproduce-table/cleaning`)."""
    named = [(chosen, DEPLOYMENT, {}) for chosen in FLOWS.values()]
    return named + [(reproduce_table, table, {"table": table}) for table in cfg.tables]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.orchestration.flows", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help=f"serve reproduce-table3/{DEPLOYMENT}, reproduce-table2/{DEPLOYMENT}, "
                        f"reproduce-facex-heads/{DEPLOYMENT} and reproduce-table/<table> for each table of params here")
    deploy = commands.add_parser("deploy", help="deploy the same flows from this directory to a work pool")
    deploy.add_argument("--pool", required=True, help="the work pool (e.g. one made by `prefect work-pool create`)")
    deploy.add_argument("--name", default="pool", help="deployment name (default: pool)")
    args = parser.parse_args(argv)
    planned = deployments(config.load(PROJECT_ROOT / "params.yaml"))
    if args.command == "serve":
        # one flow run at a time: two runs in one workspace would only wait for each other's DVC locks
        serve(*(f.to_deployment(name=name, parameters=params) for f, name, params in planned), limit=1)
    else:
        for chosen, name, params in planned:
            entrypoint = f"pipeline/orchestration/flows.py:{chosen.fn.__name__}"
            chosen.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint).deploy(
                name=args.name if name == DEPLOYMENT else f"{name}-{args.name}", work_pool_name=args.pool,
                parameters=params,
            )


if __name__ == "__main__":
    main()
