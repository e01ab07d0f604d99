"""The pipeline under failure, on copies of the session's smoke repro (tests/conftest.py):

- a row forced to diverge (weight decay 1e30), added to Table 3, ends with `diverged_at_step` in its metrics, MLflow
  and the report, and `dvc repro` completes every stage of the default run after it;
- `dvc repro` of a row SIGKILLed after a checkpoint was written resumes from that checkpoint and ends with weights
  bitwise equal to the uninterrupted run's;
- `torchrun --nproc_per_node=2 -m stages.train` trains a row (of extra/dvc.yaml: Table 2's wd5e4) with the class
  centres sharded over 2 gloo processes.

Its helpers (copy_project, keep_rows, write_params, ...) make the copies that the other end-to-end files and
bench/cost_pilot.py work on.
"""
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.dependencies import generated_dvc_files
from pipeline.train import checkpoint

pytestmark = pytest.mark.slow

DIVERGING = "li_arcface_m050"  # a row of params.yaml that the smoke repro leaves out
KILLED = "cosface"
SHARDED = "wd5e4"  # an extra row: extra/dvc.yaml:train@wd5e4 where a dvc command names it
ITERATIONS = 40  # of the killed row: long enough that a kill after the first checkpoint lands before the end
CHECKPOINT_EVERY = 5


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def project_env(root: Path) -> dict[str, str]:
    """The environment the stages of a copy at `root` run in: this interpreter's tools first, the copy importable,
    MLflow's default store (the copy's own mlflow.db)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def git_repository(root: Path) -> None:
    """`root` as a git repository with everything in it committed (DVC needs one)."""
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run(cmd, root, project_env(root))


def copy_project(root: Path) -> None:
    """Tracked and untracked-but-not-ignored files, without data and reports, as a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    )
    for name in filter(None, listed.stdout.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file() and not name.startswith(("reports/", "data/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)


def keep_rows(params: dict, names: set[str]) -> None:
    """Train only the rows `names` (of `rows` or `extra_rows`), besides N-Softmax and the distillation (its student
    row stays: the distill stage reads its parameters); the tables keep the models that remain, and a table left
    without rows goes. A test of one mechanism need not train every row. Write the result with `write_params`."""
    kept = names | {params["distill"]["student_row"]}
    for section in ("rows", "extra_rows"):
        params[section] = {name: row for name, row in params[section].items() if name in kept}
    models = {"pretrain", *params["rows"], *params["extra_rows"], "teacher", "student"}
    for section in ("tables", "extra_tables"):
        tables = {}
        for name, table in params[section].items():
            rows = {model: entry for model, entry in table["rows"].items() if model in models}
            if rows:
                tables[name] = {**table, "rows": rows,
                                "compare": [p for p in table.get("compare", []) if set(p) <= set(rows)]}
                if tables[name].get("baseline") not in rows:
                    tables[name].pop("baseline", None)
        params[section] = tables


def write_params(root: Path, params: dict) -> None:
    """`params` as the copy's params.yaml, and its dvc files regenerated for them (dvc.yaml lists the default run's
    evaluations model by model: `python -m pipeline.core.dependencies --write`)."""
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, (current, wanted) in generated_dvc_files(root).items():
        if wanted != current:
            (root / name).write_text(wanted)


@pytest.fixture(scope="module")
def project(smoke_repro, tmp_path_factory):
    """A copy of the smoke repro with DIVERGING added to Table 3 (as params.yaml has it, its weight decay 1e30: the
    first SGD step blows the weights up), and the `dvc repro` that trains it (the default run: dvc.yaml)."""
    reproduced = smoke_repro.copy(tmp_path_factory.mktemp("facerepro-failures"))
    root, env, params = reproduced.root, reproduced.env, reproduced.params()
    committed = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["rows"][DIVERGING] = {**committed["rows"][DIVERGING], "weight_decay": 1.0e30}
    params["tables"]["table3"]["rows"][DIVERGING] = committed["tables"]["table3"]["rows"][DIVERGING]
    write_params(root, params)  # dvc.yaml's table and report stages now list its evaluation
    output = run([sys.executable, "-m", "dvc", "repro"], root, env)
    return root, env, params, output


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def train_record(root: Path, row: str, seed: int = 0) -> dict:
    return json.loads((root / "data" / "models" / row / f"seed{seed}" / "train.json").read_text())


def tensors(path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load_weights(path)
    return {f"{part}.{key}": value for part in ("backbone", "head") for key, value in state[part].items()}


def test_divergence_is_recorded_and_the_other_rows_complete(project):
    root, env, params, output = project
    iterations = params["profiles"]["smoke"]["train"]["iterations"]
    assert {f"train@{DIVERGING}", f"evaluate@{DIVERGING}", "table@table3", "report"} <= stages_run(output), output
    record = train_record(root, DIVERGING)
    step = record["diverged_at_step"]
    assert isinstance(step, int) and step < iterations
    assert math.isfinite(record["last_finite"]["loss"]) and record["last_finite"]["step"] == step
    seeds = params["profiles"]["smoke"]["seeds"]
    records = [train_record(root, DIVERGING, seed) for seed in seeds]
    evaluation = json.loads((root / "reports" / "metrics" / "eval" / f"{DIVERGING}.json").read_text())
    assert [evaluation["seeds"][str(seed)]["diverged_at_step"] for seed in seeds] == [r["diverged_at_step"] for r in records]
    assert f"diverged at step {step}" in (root / "reports" / "table3.md").read_text()
    with sqlite3.connect(root / "mlflow.db") as db:
        def logged(key: str) -> list[tuple[float]]:
            return db.execute(
                "select m.value from metrics m join tags t on t.run_uuid = m.run_uuid "
                "where m.key = ? and t.key = 'row' and t.value = ?", (key, DIVERGING)
            ).fetchall()

        # one child run per seed carries its divergence step and last finite loss
        assert sorted(logged("diverged_at_step")) == sorted((float(r["diverged_at_step"]),) for r in records)
        losses = sorted(value for (value,) in logged("final_loss"))
        assert losses == pytest.approx(sorted(r["last_finite"]["loss"] for r in records))
    for row in [*params["rows"], *params["extra_rows"]]:  # the session's repro trained the extra rows
        if row != DIVERGING:
            other = train_record(root, row)
            assert other["diverged_at_step"] is None and other["steps"] == iterations, row
            assert (root / "reports" / "metrics" / "eval" / f"{row}.json").is_file(), row
    status = run([sys.executable, "-m", "dvc", "status", "dvc.yaml"], root, env)
    assert "changed" not in status, status  # dvc repro completed every stage of dvc.yaml, the diverged row's included


def test_repro_after_sigkill_resumes_bitwise(smoke_repro, tmp_path):
    """On a copy of its own whose smoke profile trains ITERATIONS steps of seed 0 alone (the seed the test reads), so
    `--single-item`: the changed profile would rerun every stage upstream of the row too."""
    reproduced = smoke_repro.copy(tmp_path / "project")
    root, env, params = reproduced.root, reproduced.env, reproduced.params()
    params["profiles"]["smoke"]["seeds"] = [0]
    params["profiles"]["smoke"]["train"].update(
        iterations=ITERATIONS, checkpoint_every=CHECKPOINT_EVERY, curve_every=ITERATIONS // 2
    )
    write_params(root, params)
    train = [sys.executable, "-m", "dvc", "repro", "--single-item", f"train@{KILLED}"]
    run(train, root, env)  # the uninterrupted run
    run_dir = root / "data" / "models" / KILLED / "seed0"
    uninterrupted = tensors(run_dir / "model.pt")
    ckpt = run_dir / "checkpoint.pt"
    # train the row again (forced, its final weights gone: a finished seed of the same identity is not trained again)
    # and SIGKILL dvc and the stage as soon as its first checkpoint is on disk
    (run_dir / "model.pt").unlink()
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-f", "--single-item", f"train@{KILLED}"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not ckpt.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert ckpt.is_file(), "the run ended (or timed out) before its first checkpoint"
    killed_at = checkpoint.load(ckpt)["step"]
    assert 0 < killed_at < ITERATIONS and killed_at % CHECKPOINT_EVERY == 0

    again = run(train, root, env)
    assert f"Running stage 'train@{KILLED}'" in again, again
    assert f"{KILLED}: resumed from step {killed_at} of {ITERATIONS}" in again, again
    record = train_record(root, KILLED)
    assert record["resumed_from_steps"] == [killed_at] and record["steps"] == ITERATIONS
    resumed = tensors(run_dir / "model.pt")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    assert not ckpt.exists()


def test_torchrun_trains_a_row_with_a_sharded_head(project):
    root, env, params, output = project
    sharded = yaml.safe_load((root / "params.yaml").read_text())
    sharded["profiles"]["smoke"]["train"].update(shard_head=True, head_sample_fraction=0.5)
    (root / "params-sharded.yaml").write_text(yaml.safe_dump(sharded, sort_keys=False))
    single = tensors(root / "data" / "models" / SHARDED / "seed0" / "model.pt")
    shutil.rmtree(root / "data" / "models" / SHARDED)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "stages.train", "--row", SHARDED, "--params", "params-sharded.yaml"], root, env)
    record = train_record(root, SHARDED)
    assert record["steps"] == params["profiles"]["smoke"]["train"]["iterations"] and record["diverged_at_step"] is None
    assert math.isfinite(record["final_loss"])
    model = root / "data" / "models" / SHARDED / "seed0" / "model.pt"
    assert checkpoint.load_weights(model)["meta"]["train"]["head_sample_fraction"] == 0.5  # in the run's identity
    trained = tensors(model)
    assert {key: v.shape for key, v in trained.items()} == {key: v.shape for key, v in single.items()}  # whole W
