"""MLflow is a mirror (issue 14, finding 3; issue 12, item 6): runs are found by tags, one parent per recipe with a
child per seed; a resumed run logs no step twice; runs a killed process left RUNNING end KILLED; a failing store is
a warning, never an error."""
import logging

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.config import TrackingConfig
from pipeline.core.tracking import (
    MlflowTracker,
    NullTracker,
    Store,
    experiment_addresses,
    finished_seed_run,
    mirror_recipe_metrics,
    seed_tracker,
)

IDENTITY = {"recipe": "cosface", "seed": 0, "train": {"lr": 0.1}, "code": "c0de"}


@pytest.fixture
def tracking(tmp_path):
    return TrackingConfig(enabled=True, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def start(tracking, tmp_path, seed=0, resuming=False, identity=IDENTITY):
    return seed_tracker(tracking, tmp_path, "table3", "cosface", "CosFace", seed, {**identity, "seed": seed},
                        {"lr": 0.1}, {"profile": "cpu"}, resuming)


def test_seed_runs_are_children_of_one_recipe_run(tracking, tmp_path):
    first, second = start(tracking, tmp_path, 0), start(tracking, tmp_path, 1)
    client = MlflowClient(tracking.uri)
    parents = {client.get_run(t.run_id).data.tags["mlflow.parentRunId"] for t in (first, second)}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags["facerepro.kind"] == "recipe" and parent.data.tags["row"] == "cosface"
    assert client.get_run(first.run_id).data.tags["seed"] == "0"


def test_a_resumed_run_continues_its_run_without_logging_a_step_twice(tracking, tmp_path):
    first = start(tracking, tmp_path)
    for step in (10, 20, 30):
        first.log_metrics({"loss": 5.0 - step / 10}, step=step)
    # the process is killed after step 30; its checkpoint was at step 20, so steps 30.. are trained again
    again = start(tracking, tmp_path, resuming=True)
    assert again.run_id == first.run_id
    for step in (30, 40):
        again.log_metrics({"loss": 1.0}, step=step)
    steps = [m.step for m in MlflowClient(tracking.uri).get_metric_history(first.run_id, "loss")]
    assert sorted(steps) == [10, 20, 30, 40]


def test_a_run_left_running_by_a_killed_process_ends_killed(tracking, tmp_path):
    stale = start(tracking, tmp_path)
    fresh = start(tracking, tmp_path, resuming=False)  # no checkpoint to resume: training starts over
    client = MlflowClient(tracking.uri)
    assert fresh.run_id != stale.run_id
    assert client.get_run(stale.run_id).info.status == "KILLED"
    fresh.end("FINISHED")
    store = Store(tracking, tmp_path)
    assert finished_seed_run(store, "table3", "cosface", 0, IDENTITY) == fresh.run_id
    assert finished_seed_run(store, "table3", "cosface", 0, {**IDENTITY, "code": "other"}) is None


def test_recipe_metrics_land_on_the_parent_and_addresses_are_found_by_name(tracking, tmp_path):
    start(tracking, tmp_path).end("FINISHED")
    mirror_recipe_metrics(tracking, tmp_path, "table3", "cosface", "CosFace", IDENTITY, {"synth-lfw.mean": 0.8})
    client = MlflowClient(tracking.uri)
    experiment = client.get_experiment_by_name("table3").experiment_id
    parents = client.search_runs([experiment], "tags.`facerepro.kind` = 'recipe'")
    assert len(parents) == 1 and parents[0].data.metrics["synth-lfw.mean"] == 0.8
    addresses = experiment_addresses(tracking, tmp_path, ["table3", "missing"], "http://127.0.0.1:5000")
    assert addresses == {"table3": f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"}


def test_a_failing_store_is_a_warning_and_the_work_goes_on(tmp_path, caplog):
    (tmp_path / "blocked").write_text("a file where the store's folder should be")
    broken = TrackingConfig(enabled=True, uri=f"sqlite:///{tmp_path / 'blocked' / 'mlflow.db'}")
    with caplog.at_level(logging.WARNING, logger="facerepro.tracking"):
        tracker = start(broken, tmp_path)
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.end("FINISHED")
        mirror_recipe_metrics(broken, tmp_path, "table3", "cosface", "CosFace", IDENTITY, {"m": 1.0})
    assert isinstance(tracker, NullTracker)
    assert "MLflow start run failed" in caplog.text and "MLflow recipe metrics failed" in caplog.text


def test_a_tracker_whose_store_breaks_mid_run_falls_silent(tracking, tmp_path, caplog):
    tracker = start(tracking, tmp_path)
    assert isinstance(tracker, MlflowTracker)

    def refuse(*args, **kwargs):
        raise RuntimeError("database is locked")

    tracker.store.client.log_batch = refuse
    with caplog.at_level(logging.WARNING, logger="facerepro.tracking"):
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_metrics({"loss": 0.5}, step=2)
    assert tracker.broken and caplog.text.count("database is locked") == 1
