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
from pipeline.orchestration.flows import _retry_if_transient, check_request, deployments, select_rows
from pipeline.orchestration.graph import Stage, model_stages, plan, read_pipeline
from pipeline.orchestration.scheduler import StageFailed, is_transient, schedule, stage_env, stage_error, stage_threads
from pipeline.core.paths import Paths
from tests.test_resume_pipeline import copy_project, keep_rows

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
    with pytest.raises(ValueError, match=r"no table 'table9' under tables \(known: table3, table2, distill, facex_heads"):
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


def test_model_stages_come_from_dvc_yaml(tmp_path):
    for name in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    (tmp_path / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    pipeline = read_pipeline(tmp_path)
    paths = Paths(tmp_path)
    assert model_stages(pipeline, paths, "cosface") == ("train@cosface", "evaluate@cosface")
    assert model_stages(pipeline, paths, "pretrain") == ("pretrain", "evaluate_models@pretrain")
    assert model_stages(pipeline, paths, "student") == ("distill", "evaluate_models@student")
    assert {"align", "clean", "pretrain"} <= pipeline["train@cosface"].needs
    assert "train@cosface" in pipeline["evaluate@cosface"].needs
    with pytest.raises(KeyError, match="no stage writes data/models/nope"):
        model_stages(pipeline, paths, "nope")


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
    # after each run the flow runs every table's stage: the other tables would add stages that orchestrate nothing new
    params["tables"] = {name: params["tables"][name] for name in ("table3", "distill")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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

    # DVC ran every stage, so a plain `dvc status` finds nothing left to do
    status = sh([sys.executable, "-m", "dvc", "status"], project.root, project.env)
    assert "up to date" in status.stdout, status.stdout

    with sqlite3.connect(project.root / "mlflow.db") as db:
        runs = {row: (run_id, exp) for row, run_id, exp in db.execute(  # each model's seed-0 child run
            "select t.value, r.run_uuid, r.experiment_id from tags t join runs r on r.run_uuid = t.run_uuid "
            "join tags s on s.run_uuid = r.run_uuid and s.key = 'seed' and s.value = '0' where t.key = 'row'"
        )}
    assert set(table3_rows) | {"pretrain"} <= set(runs)

    tasks = project.task_runs(run)
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
def test_a_failing_stage_fails_the_run_with_its_message_and_a_rerun_trains_nothing(project):
    trained = project.model_times()
    assert len(trained) > 10
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
    # the failed evaluation is redone, or restored from DVC's run cache (its outputs are not `persist`)
    assert "Running stage 'evaluate@cosface'" in logs or "Stage 'evaluate@cosface' is cached" in logs, logs
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
