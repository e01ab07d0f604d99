"""MLflow as a mirror: one parent run per trained model (recipe) with one child run per seed, grouped in an
experiment per table. The pipeline's files never point into the tracking store: runs are found by their tags
(row, seed, the training identity's hash), and a tracking failure is a logged warning that never loses work."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pipeline.core.config import PROJECT_ROOT, TrackingConfig

log = logging.getLogger("facerepro.tracking")
T = TypeVar("T")

KIND, ROW, SEED, IDENTITY, RECIPE = "facerepro.kind", "row", "seed", "identity", "recipe_identity"
SEED_SPECIFIC = ("seed", "init_weights", "teacher_weights")  # identity fields that differ between a recipe's seeds


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def tracking_uri(config: TrackingConfig, root: Path = PROJECT_ROOT) -> str:
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def git_commit(root: Path = PROJECT_ROOT) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def identity_hash(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_identity_hash(identity: Mapping[str, Any]) -> str:
    """The hash that every seed of one recipe shares: the identity without its seed-specific fields."""
    return identity_hash({k: v for k, v in identity.items() if k not in SEED_SPECIFIC})


def guarded(what: str, call: Callable[[], T], default: T) -> T:
    """`call()`, or `default` with a warning when the tracking store fails: MLflow mirrors, it never decides."""
    try:
        return call()
    except Exception as error:  # any store failure (locked, moved, unreachable, schema) is only a lost mirror
        log.warning("MLflow %s failed, the pipeline goes on without it: %s", what, str(error).splitlines()[0][:300])
        return default


class Store:
    """The tracking store of a config: experiments and runs found by name and tags."""

    def __init__(self, config: TrackingConfig, root: Path = PROJECT_ROOT) -> None:
        from mlflow.tracking import MlflowClient  # here: mlflow's import costs seconds at every stage start

        self.uri = tracking_uri(config, root)
        self.root = root
        self.client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if not create:
            return None
        artifacts = (self.root / "mlruns").as_uri() if self.uri.startswith("sqlite:") else None
        return self.client.create_experiment(name, artifact_location=artifacts)

    def find(self, experiment_id: str, tags: Mapping[str, str], statuses: tuple[str, ...] = ()) -> list:
        """Runs of `experiment_id` carrying every tag in `tags` (newest first), optionally of these statuses."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        runs = self.client.search_runs([experiment_id], filter_string=" and ".join(clauses), order_by=["start_time DESC"])
        return [r for r in runs if not statuses or r.info.status in statuses]

    def create(self, experiment_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(experiment_id, run_name=name, tags={"git_commit": git_commit(self.root), **tags})
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, str(value)[:6000])
        return run.info.run_id

    def last_step(self, run_id: str, metric: str) -> int:
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=-1)


class MlflowTracker:
    """A live run. Every call is guarded; after the first failure the tracker falls silent for the rest of the job.
    Metrics at steps up to `logged_through` were logged before a resume and are not logged twice."""

    def __init__(self, store: Store, run_id: str, logged_through: int = -1) -> None:
        self.store, self.run_id, self.logged_through = store, run_id, logged_through
        self.broken = False

    def _call(self, what: str, call: Callable[[], None]) -> None:
        if self.broken:
            return

        def attempt() -> bool:
            call()
            return False

        self.broken = guarded(what, attempt, True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        if step is not None and step <= self.logged_through:
            return
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step or 0) for k, v in metrics.items() if v == v]  # NaN skipped
        if batch:
            self._call("log_metrics", lambda: self.store.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: Path) -> None:
        self._call("log_artifact", lambda: self.store.client.log_artifact(self.run_id, str(path)))

    def end(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", lambda: self.store.client.set_terminated(self.run_id, status=status))


def recipe_run(store: Store, experiment: str, row: str, identity: Mapping[str, Any], label: str,
               params: Mapping[str, Any]) -> str:
    """The parent run of a recipe (found by its tags, else created): the recipe's params, and later the mean over
    seeds with its interval (the report stage). Its children are the seed runs."""
    experiment_id = store.experiment_id(experiment)
    tags = {KIND: "recipe", ROW: row, RECIPE: recipe_identity_hash(identity)}
    found = store.find(experiment_id, tags)
    if found:
        return found[0].info.run_id
    run_id = store.create(experiment_id, label, params, {**tags, "label": label, "mlflow.runName": label})
    store.client.set_terminated(run_id, "FINISHED")  # a container: its seeds run as children
    return run_id


def seed_tracker(
    config: TrackingConfig,
    root: Path,
    experiment: str,
    row: str,
    label: str,
    seed: int,
    identity: Mapping[str, Any],
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    resuming: bool,
) -> Tracker:
    """The seed's child run under its recipe's parent. A resumed training continues its unfinished run (no step
    logged twice); runs of the same identity left RUNNING by a killed process end as KILLED."""
    if not config.enabled:
        return NullTracker()

    def open_run() -> Tracker:
        store = Store(config, root)
        experiment_id = store.experiment_id(experiment)
        parent = recipe_run(store, experiment, row, identity, label, params)
        keys = {KIND: "seed", ROW: row, SEED: str(seed), IDENTITY: identity_hash(identity)}
        unfinished = store.find(experiment_id, keys, statuses=("RUNNING",))
        if resuming and unfinished:
            run_id = unfinished.pop(0).info.run_id
            tracker = MlflowTracker(store, run_id, logged_through=store.last_step(run_id, "loss"))
        else:
            name = f"{label} [seed {seed}]"
            run_id = store.create(
                experiment_id, name, params, {**keys, **tags, "mlflow.parentRunId": parent, "mlflow.runName": name}
            )
            tracker = MlflowTracker(store, run_id)
        for stale in unfinished:
            store.client.set_terminated(stale.info.run_id, "KILLED")
        return tracker

    return guarded("start run", open_run, NullTracker())


def finished_seed_run(store: Store, experiment: str, row: str, seed: int, identity: Mapping[str, Any]) -> str | None:
    """The newest finished seed run of this very training identity, if the store has one."""
    experiment_id = store.experiment_id(experiment, create=False)
    if experiment_id is None:
        return None
    keys = {KIND: "seed", ROW: row, SEED: str(seed), IDENTITY: identity_hash(identity)}
    found = store.find(experiment_id, keys, statuses=("FINISHED",))
    return found[0].info.run_id if found else None


def flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}: nested params as MLflow's flat keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(name, value))
        else:
            flat[name] = value
    return flat


def mirror_recipe_metrics(
    config: TrackingConfig, root: Path, experiment: str, row: str, label: str, identity: Mapping[str, Any],
    metrics: Mapping[str, float],
) -> None:
    """Log a recipe's figures over seeds (mean, interval bounds, number of seeds) on its parent run."""
    if not config.enabled:
        return

    def mirror() -> None:
        store = Store(config, root)
        run_id = recipe_run(store, experiment, row, identity, label, {})
        MlflowTracker(store, run_id).log_metrics(metrics)

    guarded("recipe metrics", mirror, None)


def experiment_addresses(config: TrackingConfig, root: Path, experiments: list[str], ui: str) -> dict[str, str]:
    """Each experiment's runs page in the MLflow UI, found by name (ids differ from store to store)."""
    if not config.enabled:
        return {}

    def find() -> dict[str, str]:
        store = Store(config, root)
        ids = {name: store.experiment_id(name, create=False) for name in experiments}
        return {name: f"{ui.rstrip('/')}/#/experiments/{i}/runs" for name, i in ids.items() if i is not None}

    return guarded("experiment lookup", find, {})
