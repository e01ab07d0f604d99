"""The Prefect flows: the plan and the scheduler on their own (quick), then the deployment for real (slow): a local
Prefect server and the served deployment on a temporary copy of the repository, triggered through the CLI."""
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pandas as pd
import pytest
import yaml

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.evaluate.record import ModelEvaluation, PairFigures, SeedEvaluation
from pipeline.orchestration.artifacts import artifact_key, mlflow_links, mlflow_run_url, row_markdown
from pipeline.orchestration.flows import (
    _retry_if_transient, changed_stages, check_request, deployments, extra_report_reads, select_rows,
)
from pipeline.orchestration.graph import Stage, model_stages, plan, read_pipeline, table_plan
from pipeline.orchestration.scheduler import StageFailed, is_transient, schedule, stage_env, stage_error, stage_threads
from pipeline.core.paths import Paths
from tests.test_resume_pipeline import copy_project, keep_rows, write_params

# --- the plan ---------------------------------------------------------------------------------------------------


def toy_pipeline() -> dict[str, Stage]:
    edges = {
        "data": set(),
        "pre": {"data"},
        "train@a": {"data", "pre"},
        "train@b": {"data", "pre"},
        "eval@a": {"train@a"},
        "eval@b": {"train@b"},
        "other": {"data"},
        "report": {"eval@a", "eval@b", "other"},
    }
    return {name: Stage(name, frozenset(needs), (f"out/{name}",)) for name, needs in edges.items()}


def closure(pipeline, targets):
    found, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(pipeline[name].needs)
    return found


@pytest.mark.parametrize("targets", [["report"], ["train@b", "eval@b"], ["eval@a", "train@b"], ["other", "pre"]])
def test_plan_is_the_closure_upstream_first(targets):
    pipeline = toy_pipeline()
    order = plan(pipeline, targets)
    assert set(order) == closure(pipeline, targets) and len(order) == len(set(order))
    for i, name in enumerate(order):
        assert pipeline[name].needs <= set(order[:i]), name


def test_plan_goes_row_by_row():
    order = plan(toy_pipeline(), ["train@a", "eval@a", "train@b", "eval@b"])
    assert order == ["data", "pre", "train@a", "eval@a", "train@b", "eval@b"]


def test_plan_names_a_cycle_and_an_unknown_stage():
    pipeline = toy_pipeline()
    pipeline["data"] = Stage("data", frozenset({"report"}), ())
    with pytest.raises(ValueError, match="cycle"):
        plan(pipeline, ["report"])
    with pytest.raises(KeyError, match="nope"):
        plan(toy_pipeline(), ["nope"])


# --- the scheduler ----------------------------------------------------------------------------------------------


def run_schedule(pipeline, order, workers, failing=(), rendezvous=None):
    """schedule() over a real thread pool; records what ran, when, and how many at once."""
    events, lock, live = [], threading.Lock(), [0, 0]

    def stage(name):
        with lock:
            events.append(("start", name))
            live[0] += 1
            live[1] = max(live[1], live[0])
        try:
            if rendezvous is not None and name.startswith("train@"):
                rendezvous.wait(timeout=10)  # both trainings must be in flight together to pass
            if name in failing:
                raise RuntimeError(f"{name} broke")
        finally:
            with lock:
                live[0] -= 1
                events.append(("end", name))

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcome = schedule(
            order,
            {name: pipeline[name].needs for name in order},
            lambda name: pool.submit(stage, name),
            lambda running: next(iter(wait(running, return_when=FIRST_COMPLETED).done)),
            lambda future: future.exception() is None,
            workers,
        )
    return outcome, events, live[1]


def test_schedule_respects_needs_and_runs_rows_together():
    pipeline = toy_pipeline()
    order = plan(pipeline, ["report"])
    barrier = threading.Barrier(2)
    outcome, events, most = run_schedule(pipeline, order, workers=2, rendezvous=barrier)
    assert not barrier.broken, "the two trainings never ran at the same time"
    assert sorted(outcome.done) == sorted(order) and not outcome.failed and not outcome.skipped
    assert most == 2
    for name in order:
        started = events.index(("start", name))
        for need in pipeline[name].needs:
            assert events.index(("end", need)) < started, f"{name} started before {need} ended"


@pytest.mark.parametrize("workers", [1, 3])
def test_schedule_never_exceeds_workers(workers):
    pipeline = {f"s{i}": Stage(f"s{i}", frozenset(), ()) for i in range(7)}
    outcome, _, most = run_schedule(pipeline, list(pipeline), workers)
    assert most <= workers and sorted(outcome.done) == sorted(pipeline)


def test_a_failure_skips_what_needs_it_and_nothing_else():
    pipeline = toy_pipeline()
    outcome, events, _ = run_schedule(pipeline, plan(pipeline, ["report"]), workers=2, failing={"train@a"})
    assert outcome.failed == ["train@a"]
    assert set(outcome.skipped) == {"eval@a", "report"}
    assert set(outcome.done) == {"data", "pre", "train@b", "eval@b", "other"}
    assert ("start", "eval@a") not in events and ("start", "report") not in events


# --- failures ---------------------------------------------------------------------------------------------------

CONFIG_ERROR = """Running stage 'evaluate@cosface':
> python -m stages.evaluate --model cosface
stage evaluate failed: /p/params.yaml: invalid parameters for profile 'smoke':
1 validation error for Config
evaluate.folds
  Input should be greater than or equal to 2
ERROR: failed to reproduce 'evaluate@cosface': failed to run: python -m stages.evaluate --model cosface, exited with 1
"""


def test_stage_error_keeps_the_stage_message_and_dvc_verdict():
    message = stage_error("evaluate@cosface", 255, CONFIG_ERROR)
    lines = message.splitlines()
    assert lines[0] == "dvc repro evaluate@cosface failed (exit 255):"
    assert lines[1].startswith("stage evaluate failed: /p/params.yaml")
    assert "evaluate.folds" in message and "greater than or equal to 2" in message
    assert lines[-1].startswith("ERROR: failed to reproduce 'evaluate@cosface'")
    assert "Running stage" not in message  # what came before the stage's own error is noise


def test_stage_error_without_a_stage_message_keeps_the_tail():
    output = "\n".join(f"line {i}" for i in range(100)) + "\nTraceback: boom\nERROR: failed to reproduce 'x'\n"
    message = stage_error("x", 255, output)
    assert "Traceback: boom" in message and "line 99" in message and "line 50" not in message
    assert message.endswith("ERROR: failed to reproduce 'x'")


@pytest.mark.parametrize(
    ("returncode", "output", "expected"),
    [
        (255, CONFIG_ERROR, False),
        (255, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
        (255, "ERROR: 'data/models/a' is busy, it is being blocked by:\n  (PID 12): dvc repro", True),
        (255, "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked", True),
        (255, "ERROR: failed to reproduce 'train@a': failed to run: python -m stages.train, exited with -9", True),
        (255, "ERROR: failed to reproduce 'train@a': failed to run: python -m stages.train, exited with 1", False),
        (-9, "", True),
    ],
)
def test_only_transient_failures_are_retried(returncode, output, expected):
    assert is_transient(returncode, output) is expected
    error = StageFailed("train@a", returncode, output)

    class State:
        def result(self, raise_on_failure=True):
            assert raise_on_failure is False
            return error

    assert _retry_if_transient(None, None, State()) is expected


def test_a_plain_exception_is_not_retried():
    class State:
        def result(self, raise_on_failure=True):
            return OSError("disk")

    assert _retry_if_transient(None, None, State()) is False


# --- the request ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke():
    return config.load(PROJECT_ROOT / "params.yaml", "smoke")


def test_other_profile_or_seeds_are_refused_with_the_way_out(smoke):
    check_request(smoke, Path("params.yaml"), None, None)
    check_request(smoke, Path("params.yaml"), "smoke", list(smoke.seeds))
    with pytest.raises(ValueError, match=r"profile 'cpu' was requested but params.yaml selects profile 'smoke'.*`profile: cpu`"):
        check_request(smoke, Path("params.yaml"), "cpu", None)
    with pytest.raises(ValueError, match=r"seeds \[0\].*profiles.smoke.seeds"):
        check_request(smoke, Path("params.yaml"), None, [0])


def test_rows_are_the_tables_rows(smoke):
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert select_rows(smoke, "table3", None) == list(raw["tables"]["table3"]["rows"])  # in the table's order
    assert select_rows(smoke, "table3", None)[0] == "pretrain"  # N-Softmax is Table 3's first row
    assert select_rows(smoke, "table2", None) == ["arcface_m050_ns", "wd5e4", "wd4e5_wdml10"]
    assert select_rows(smoke, "table3", ["cosface", "pretrain", "cosface"]) == ["cosface", "pretrain"]
    with pytest.raises(ValueError, match=r"row 'wd5e4' is not a row of table3 \(it is in table2\)"):
        select_rows(smoke, "table3", ["wd5e4"])
    with pytest.raises(ValueError, match=r"'nope' is not a row of table3 \(no table shows it\)"):
        select_rows(smoke, "table3", ["nope"])
    with pytest.raises(ValueError, match="rows is empty"):
        select_rows(smoke, "table3", [])
    with pytest.raises(ValueError, match=r"no table 'table9' under tables or extra_tables \(known: table3, table2, distill"):
        select_rows(smoke, "table9", None)


def test_every_table_of_params_is_a_deployment(smoke):
    planned = {(chosen.name, name): params for chosen, name, params in deployments(smoke)}
    for name in ("reproduce-table3", "reproduce-table2", "reproduce-facex-heads"):
        assert planned[(name, "cpu")] == {}
    for table in ("table3", "table2", "distill", "facex_heads", "cleaning"):
        assert planned[("reproduce-table", table)] == {"table": table}
    assert len(planned) == 3 + len(smoke.tables)


def test_stage_environment(monkeypatch):
    env = stage_env({"PATH": "/usr/bin", "OMP_NUM_THREADS": "3"}, threads=1)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PATH"].split(os.pathsep)[1] == "/usr/bin"
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "1"
    assert [stage_threads(w, 16) for w in (1, 2, 3, 32)] == [16, 8, 5, 1]
    assert stage_threads(2, None) == 1


# --- DVC's graph and the artifacts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_here(tmp_path_factory):
    """DVC's graph of this repository's dvc files and params, read in a copy (no lock taken here), and its Paths."""
    root = tmp_path_factory.mktemp("graph")
    for name in ("dvc.yaml", "extra/dvc.yaml", "params.yaml", ".dvc/config"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    return read_pipeline(root), Paths(root)


def test_model_stages_come_from_dvc_yaml(pipeline_here):
    pipeline, paths = pipeline_here
    assert model_stages(pipeline, paths, "cosface") == ("train@cosface", "evaluate@cosface")
    assert model_stages(pipeline, paths, "pretrain") == ("pretrain", "evaluate_models@pretrain")
    assert model_stages(pipeline, paths, "wd5e4") == ("extra/dvc.yaml:train@wd5e4", "extra/dvc.yaml:evaluate@wd5e4")
    assert model_stages(pipeline, paths, "student") == ("extra/dvc.yaml:distill", "extra/dvc.yaml:evaluate_models@student")
    assert {"align", "clean", "pretrain"} <= pipeline["train@cosface"].needs
    assert "train@cosface" in pipeline["evaluate@cosface"].needs
    with pytest.raises(KeyError, match="no stage writes data/models/nope"):
        model_stages(pipeline, paths, "nope")


def extra_stages(order):
    return [name for name in order if name.startswith("extra/dvc.yaml:")]


@pytest.mark.parametrize("table", ["table3", "table2", "distill", "facex_heads", "cleaning"])
def test_a_tables_plan_is_upstream_first_and_builds_no_other_table(pipeline_here, smoke, table):
    pipeline, paths = pipeline_here
    order = table_plan(pipeline, paths, smoke, table)
    assert len(order) == len(set(order))
    for i, name in enumerate(order):  # upstream first, as far as the plan goes
        assert pipeline[name].needs & set(order) <= set(order[:i]), name
    own = {stage for model in smoke.tables[table].rows for stage in model_stages(pipeline, paths, model)}
    trained = {name for name in order if name.split(":")[-1].startswith(("train@", "evaluate@", "evaluate_models@"))}
    assert trained <= own  # no other table's row
    readers = [name for name in order if name.split(":")[-1].startswith(("table@", "report"))]
    if table == "table3":  # the default run: dvc.yaml alone, its table and its report
        assert not extra_stages(order) and readers == ["table@table3", "report"] == order[-2:]
        # everything the report reads, and the reference models, which `dvc repro` runs too: nothing more
        assert set(order) == set(plan(pipeline, [*readers, "reference"]))
    else:  # its models, then its table stage alone: DVC's upstream of it is every evaluation of both dvc files
        assert readers == [f"extra/dvc.yaml:table@{table}"] == order[-1:]
        assert set(extra_stages(order[:-1])) <= own


def test_a_subset_of_rows_plans_those_rows_then_the_readers(pipeline_here, smoke):
    pipeline, paths = pipeline_here
    order = table_plan(pipeline, paths, smoke, "table3", ["cosface"])
    assert order == plan(pipeline, ["train@cosface", "evaluate@cosface"]) + ["table@table3", "report"]
    assert "evaluate_models@pretrain" not in order  # the other rows' results are read as they are
    order = table_plan(pipeline, paths, smoke, "table2", ["wd5e4"])
    assert order == plan(pipeline, [*model_stages(pipeline, paths, "wd5e4")]) + ["extra/dvc.yaml:table@table2"]
    assert "train@arcface_m050_ns" not in order


def test_the_extra_report_reads_every_extra_tables_models(pipeline_here, smoke):
    pipeline, paths = pipeline_here
    reads = extra_report_reads(smoke, pipeline, paths)
    assert {"evaluate@cosface", "evaluate@arcface_m050_ns", "extra/dvc.yaml:evaluate@wd5e4",
            "extra/dvc.yaml:evaluate_models@teacher", "extra/dvc.yaml:evaluate@facex_npcface"} <= set(reads)
    assert "evaluate@li_arcface_m035" not in reads  # Table 3's alone
    assert len(reads) == len(set(reads))


def test_changed_stages_are_what_dvc_status_finds_stale(tmp_path):
    stages = {name: {"cmd": f"cp {src} {name}.txt", "deps": [src], "outs": [f"{name}.txt"]}
              for name, src in (("a", "in.txt"), ("b", "a.txt"), ("c", "in.txt"))}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "in.txt").write_text("1")
    for command in (["init", "--no-scm", "-q"], ["repro", "-q", "b"]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=tmp_path, check=True, capture_output=True)
    pipeline = read_pipeline(tmp_path)
    assert changed_stages(tmp_path, pipeline, ["b"]) == []  # it and what it needs are up to date
    (tmp_path / "in.txt").write_text("2")
    assert changed_stages(tmp_path, pipeline, ["b", "c"]) == ["a", "c"]  # what b needs went stale; c never ran


def test_artifact_keys_and_mlflow_links():
    assert artifact_key("table3", "li_arcface_m040_ns") == "table3-li-arcface-m040-ns"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("Table 2", "wd4e5_wdml10"))
    with pytest.raises(ValueError):
        artifact_key("__")
    url = mlflow_run_url("http://127.0.0.1:5000/", "7", "abc123")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"


def test_row_markdown_shows_the_rows_figures_and_links(smoke):
    figures = PairFigures(accuracy=0.5, accuracy_std=0.1, accuracy_flip=0.8125, accuracy_flip_std=0.025,
                         insightface_accuracy=0.5, insightface_accuracy_std=0.1, tar_at_far={})
    seed = SeedEvaluation(diverged_at_step=None, train={}, benchmarks={"synth-lfw": figures}, timing=None)
    evaluation = ModelEvaluation(model="cosface", label="CosFace/AM-Softmax", flip=True, seeds={0: seed})
    correct = [True] * 13 + [False] * 3  # 16 pairs, 81.25% right
    per_pair = pd.DataFrame({"seed": 0, "benchmark": "synth-lfw", "pair": range(16), "correct": correct})
    text = row_markdown(smoke, "table3", "cosface", evaluation, per_pair, ["[seed 0](http://x/#/experiments/1/runs/r)"])
    row = next(line for line in text.splitlines() if line.startswith("| CosFace/AM-Softmax |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("81.25 [") and cells[1].endswith("(1 seed: pairs only)")  # the flip test's pairs
    assert cells[2] == "99.200"  # the paper's LFW for this row in params.yaml
    assert "[seed 0](http://x/#/experiments/1/runs/r)" in text
    relabelled = ModelEvaluation(model="arcface_m050_ns", label="ArcFace (m=0.5, NS)", flip=True, seeds={0: seed})
    text = row_markdown(smoke, "table2", "arcface_m050_ns", relabelled, per_pair, [])
    assert text.startswith("# table2: 5e-4 wdml10\n") and "| 5e-4 wdml10 |" in text  # the table's label for it


def test_mlflow_links_point_at_each_seeds_run(smoke, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.experiment.runs import seed_dir
    from pipeline.core.tracking import seed_tracker
    from pipeline.train import checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # where tracking_uri() looks by default
    client.create_experiment("auxiliary")  # so the table's experiment id is not simply the first one
    identity = {"recipe": "cosface", "seed": 0, "code": "abc"}
    model = seed_dir(Paths(tmp_path), "cosface", 0) / "model.pt"
    model.parent.mkdir(parents=True)
    checkpoint.save(model, {"backbone": {}, "head": {}, "meta": {"name": "cosface", "diverged_at_step": None, **identity}})
    tracker = seed_tracker(smoke.tracking, tmp_path, "table3", "cosface", "CosFace", 0, identity, {}, {}, resuming=False)
    tracker.end("FINISHED")
    experiment = client.get_experiment_by_name("table3").experiment_id
    links = mlflow_links(smoke, Paths(tmp_path), "cosface", "http://ui:5000")
    assert links[0] == f"[seed 0: MLflow run {tracker.run_id}](http://ui:5000/#/experiments/{experiment}/runs/{tracker.run_id})"
    assert links[1] == "seed 1: no MLflow run of this model in experiment table3"  # no model.pt for seed 1
    assert mlflow_links(smoke, Paths(tmp_path), "pretrain", "http://ui:5000")[0] == (
        "seed 0: no MLflow run of this model in experiment table3"
    )


# --- the deployment, for real (slow) ----------------------------------------------------------------------------

WATCH_TIMEOUT = 3600  # the whole smoke table on a shared 2-core machine; a hang fails instead of blocking CI


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sh(cmd, root, env, timeout=600, check=True):
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


class Project:
    def __init__(self, root: Path, env: dict, api: str):
        self.root, self.env, self.api = root, env, api

    def prefect(self, *args, timeout=600, check=True):
        return sh([sys.executable, "-m", "prefect", *args], self.root, self.env, timeout, check)

    def trigger(self, deployment: str, **params):
        """`prefect deployment run DEPLOYMENT -p k=v --watch` as a user types it; returns (CLI result, flow run)."""
        options = [item for key, value in params.items() for item in ("-p", f"{key}={json.dumps(value)}")]
        result = self.prefect(
            "deployment", "run", deployment, *options, "--watch", "--watch-timeout", str(WATCH_TIMEOUT),
            timeout=WATCH_TIMEOUT + 120, check=False,
        )
        found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
        assert found, result.stdout[-3000:] + result.stderr[-3000:]
        return result, self.get(f"/flow_runs/{found.group(1)}")

    def get(self, path):
        return httpx.get(self.api + path, timeout=30).raise_for_status().json()

    def post(self, path, body):
        return httpx.post(self.api + path, json=body, timeout=30).raise_for_status().json()

    def task_runs(self, flow_run):
        return {t["name"]: t for t in self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})}

    def logs(self, flow_run) -> str:
        lines, offset = [], 0
        while True:
            page = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}, "limit": 200, "offset": offset})
            lines += [entry["message"] for entry in page]
            if len(page) < 200:
                return "\n".join(lines)
            offset += 200

    def artifacts(self, flow_run):
        return {a["key"]: a for a in self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})}

    def model_times(self):
        return {p.relative_to(self.root).as_posix(): p.stat().st_mtime_ns for p in (self.root / "data" / "models").glob("*/seed*/model.pt")}

    def processes(self):
        """Processes started from the copy: its cwd, or its path on the command line."""
        found = []
        for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
            cwd, cmdline = process.info["cwd"] or "", " ".join(process.info["cmdline"] or [])
            if process.pid != os.getpid() and (cwd.startswith(str(self.root)) or str(self.root) in cmdline):
                found.append(process)
        return found


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the repository (profile smoke, git-initialised) with its server and deployments started by the
    documented command on a free loopback port; stopped again at the end whatever happened."""
    root = tmp_path_factory.mktemp("facerepro-flows")
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    keep_rows(params, {"cosface", "li_arcface_m040", "arcface_m050_ns"})  # N-Softmax, NS init, distillation
    # the extra tables that show only Table 3's models, so the extra report can follow Table 2 with nothing more trained
    params["extra_tables"] = {name: params["extra_tables"][name] for name in ("table2", "cleaning")}
    write_params(root, params)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # the served deployments look for a triggered run every 10 s by default
        "FACEREPRO_PREFECT_PORT": str(port),
        "FACEREPRO_PYTHON": sys.executable,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        sh(cmd, root, env)
    try:
        sh(["bash", "scripts/prefect-server", "start"], root, env, timeout=400)
        yield Project(root, env, api)
    finally:
        sh(["bash", "scripts/prefect-server", "stop"], root, env, timeout=120, check=False)


@pytest.mark.slow
def test_another_profile_is_refused_and_params_stay(project):
    before = (project.root / "params.yaml").read_bytes()
    result, run = project.trigger("reproduce-table3/cpu", profile="cpu")
    assert result.returncode != 0 and run["state"]["type"] == "FAILED"
    assert "profile 'cpu' was requested but" in run["state"]["message"]
    assert "does not edit params.yaml" in run["state"]["message"]
    assert (project.root / "params.yaml").read_bytes() == before
    assert project.task_runs(run) == {}  # refused before any stage


@pytest.mark.slow
def test_the_deployment_reproduces_table3(project):
    result, run = project.trigger("reproduce-table3/cpu", profile="smoke", workers=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert run["state"]["type"] == "COMPLETED"
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    table = (project.root / "reports" / "table3.md").read_text()
    table3_rows = [name for name in params["tables"]["table3"]["rows"] if name != "pretrain"]
    for name in params["tables"]["table3"]["rows"]:
        label = params["pretrain"]["label"] if name == "pretrain" else params["rows"][name]["label"]
        assert f"| {label} |" in table, name

    # DVC ran every stage of the default run, so `dvc status dvc.yaml` finds nothing left to do; no stage of
    # extra/dvc.yaml ran: neither a task nor an output of it, and DVC finds its tables never built
    status = sh([sys.executable, "-m", "dvc", "status", "dvc.yaml"], project.root, project.env)
    assert "up to date" in status.stdout, status.stdout
    tasks = project.task_runs(run)
    assert "table@table3" in tasks and "report" in tasks and not extra_stages(tasks), sorted(tasks)
    assert not (project.root / "reports" / "table2.md").exists() and not (project.root / "reports" / "extra").exists()
    status = sh([sys.executable, "-m", "dvc", "status", "extra/dvc.yaml"], project.root, project.env)
    assert "extra/dvc.yaml:table@table2:" in status.stdout and "extra/dvc.yaml:report:" in status.stdout, status.stdout

    with sqlite3.connect(project.root / "mlflow.db") as db:
        runs = {row: (run_id, exp) for row, run_id, exp in db.execute(  # each model's seed-0 child run
            "select t.value, r.run_uuid, r.experiment_id from tags t join runs r on r.run_uuid = t.run_uuid "
            "join tags s on s.run_uuid = r.run_uuid and s.key = 'seed' and s.value = '0' where t.key = 'row'"
        )}
    assert set(table3_rows) | {"pretrain"} <= set(runs)

    trains = sorted(
        (datetime.fromisoformat(t["start_time"]), datetime.fromisoformat(t["end_time"]))
        for name, t in tasks.items() if name.startswith("train@")
    )
    assert len(trains) == len(params["rows"]) and all(t["state_type"] == "COMPLETED" for t in tasks.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(trains, trains[1:])), "no two rows trained at once"

    artifacts = project.artifacts(run)
    assert "| N-Softmax |" in artifacts["table3"]["data"]
    for name in [*table3_rows, "pretrain"]:
        run_id = runs[name][0]
        markdown = artifacts[f"table3-{name.replace('_', '-')}"]["data"]
        assert f"http://127.0.0.1:5000/#/experiments/{runs[name][1]}/runs/{run_id}" in markdown, name


@pytest.mark.slow
def test_an_extra_table_builds_its_table_then_the_extra_report_when_all_it_reads_is_current(project):
    trained = project.model_times()
    result, run = project.trigger("reproduce-table2/cpu")
    assert result.returncode == 0 and run["state"]["type"] == "COMPLETED", run["state"]["message"]
    tasks = project.task_runs(run)
    assert tasks["extra/dvc.yaml:table@table2"]["state_type"] == "COMPLETED"
    # the extra report reads Table 2's and the cleaning table's models, which Table 3's deployment trained
    assert tasks["extra/dvc.yaml:report"]["state_type"] == "COMPLETED"
    assert not {"table@table3", "report", "extra/dvc.yaml:table@cleaning"} & set(tasks), sorted(tasks)
    assert project.model_times() == trained
    assert "| 5e-4 wdml10 |" in (project.root / "reports" / "table2.md").read_text()
    assert (project.root / "reports" / "extra" / "seed_noise.md").is_file()
    artifacts = project.artifacts(run)
    assert "| 5e-4 wdml10 |" in artifacts["table2"]["data"]
    assert artifacts["table2-arcface-m050-ns"]["data"].startswith("# table2: 5e-4 wdml10")
    status = sh([sys.executable, "-m", "dvc", "status", "extra/dvc.yaml:table@table2", "extra/dvc.yaml:report"],
                project.root, project.env)
    assert "up to date" in status.stdout, status.stdout

    # a model the extra report reads but Table 2 does not show goes stale: Table 2 is built, the report left out
    params_file = project.root / "params.yaml"
    params = params_file.read_text()
    changed = yaml.safe_load(params)
    changed["rows"]["li_arcface_m040"]["margins"]["m"] = 0.41
    params_file.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        result, run = project.trigger("reproduce-table2/cpu")
    finally:
        params_file.write_text(params)
    assert result.returncode == 0 and run["state"]["type"] == "COMPLETED", run["state"]["message"]
    tasks = project.task_runs(run)
    assert "extra/dvc.yaml:table@table2" in tasks and "extra/dvc.yaml:report" not in tasks, sorted(tasks)
    logs = project.logs(run)
    assert "extra/dvc.yaml:report not run" in logs and "train@li_arcface_m040" in logs, logs[-3000:]
    assert project.model_times() == trained


@pytest.mark.slow
def test_a_failing_stage_fails_the_run_with_its_message_and_a_rerun_trains_nothing(project):
    trained = project.model_times()
    built = config.load(project.root / "params.yaml")
    assert {f"data/models/{m}/seed{s}/model.pt" for m in built.default_models() for s in built.seeds} <= set(trained)
    # A fault only the evaluation meets. Stage validate checks every parameter before any stage runs, so the trained
    # model file is damaged in place, keeping its size and times, which DVC's state trusts without hashing it again
    # (as it would a file that rotted on disk); a valid change to the evaluation's own parameters makes it run.
    model = project.root / "data" / "models" / "cosface" / "seed0" / "model.pt"
    good, times = model.read_bytes(), model.stat()
    model.write_bytes(b"\0" * len(good))
    os.utime(model, ns=(times.st_atime_ns, times.st_mtime_ns))
    params_file = project.root / "params.yaml"
    params = params_file.read_text()
    changed = yaml.safe_load(params)
    changed["evaluate"]["fars"] = changed["evaluate"]["fars"][:2]
    params_file.write_text(yaml.safe_dump(changed, sort_keys=False))

    result, run = project.trigger("reproduce-table3/cpu", rows=["cosface"])
    assert result.returncode != 0 and run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert "stage evaluate failed:" in message and "model.pt" in message, message
    tasks = project.task_runs(run)
    assert tasks["evaluate@cosface"]["state_type"] == "FAILED"
    assert tasks["evaluate@cosface"]["run_count"] == 1  # its own error: not retried
    assert tasks["train@cosface"]["state_type"] == "COMPLETED"
    assert "report" not in tasks and "table@table3" not in tasks

    model.write_bytes(good)
    os.utime(model, ns=(times.st_atime_ns, times.st_mtime_ns))
    params_file.write_text(params)
    result, run = project.trigger("reproduce-table3/cpu", rows=["cosface"])
    assert result.returncode == 0 and run["state"]["type"] == "COMPLETED", run["state"]["message"]
    logs = project.logs(run)
    # the failed evaluation left its previous outputs and lock entry, which the restored parameters match: DVC
    # keeps them (`persist` outputs), reruns the stage or restores it from its run cache
    outcomes = ("Stage 'evaluate@cosface' didn't change", "Running stage 'evaluate@cosface'",
                "Stage 'evaluate@cosface' is cached")
    assert any(outcome in logs for outcome in outcomes), logs
    assert (project.root / "reports" / "metrics" / "eval" / "cosface.json").is_file()
    assert "Stage 'train@cosface' didn't change, skipping" in logs
    assert project.model_times() == trained


@pytest.mark.slow
def test_a_process_work_pool_worker_runs_the_deployment(project):
    trained = project.model_times()
    project.prefect("work-pool", "create", "facerepro-test", "--type", "process")
    with open(project.root / ".prefect" / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "facerepro-test", "--limit", "1"],
            cwd=project.root, env=project.env, stdout=log, stderr=subprocess.STDOUT,
            # a worker turns SIGTERM into SIGINT to itself: that must not be ignored, as it is under `pytest &`
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        sh([sys.executable, "-m", "pipeline.orchestration.flows", "deploy", "--pool", "facerepro-test"], project.root, project.env)
        result, run = project.trigger("reproduce-table3/pool", rows=["cosface"])
        assert result.returncode == 0 and run["state"]["type"] == "COMPLETED", (
            run["state"]["message"], (project.root / ".prefect" / "worker.log").read_text()[-3000:]
        )
        assert run["work_pool_name"] == "facerepro-test"
        assert "Stage 'train@cosface' didn't change, skipping" in project.logs(run)
        assert project.model_times() == trained
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise


@pytest.mark.slow
def test_stopping_leaves_no_process_behind(project):
    assert project.processes(), "the server and the deployments should be running before the stop"
    sh(["bash", "scripts/prefect-server", "stop"], project.root, project.env, timeout=120)
    for _ in range(60):
        left = project.processes()
        if not left:
            break
        time.sleep(0.5)
    assert not left, [" ".join(p.cmdline()) for p in left]
    with pytest.raises(httpx.TransportError):
        httpx.get(project.api + "/health", timeout=5)
