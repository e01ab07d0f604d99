"""MLflow tracking: one experiment per table, one run per trained model and seed. DVC metrics stay the record of truth."""
from __future__ import annotations

import os
import time
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import PROJECT_ROOT, TrackingConfig


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


class MlflowTracker:
    """A live MLflow run; `run_id` lets a later stage (evaluate) add its metrics to the same run."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        config: TrackingConfig,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        root: Path = PROJECT_ROOT,
    ) -> MlflowTracker:
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(config, root)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = (root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
            experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
        else:
            experiment_id = found.experiment_id
        run = client.create_run(experiment_id, run_name=run_name, tags={"git_commit": git_commit(root), **tags})
        tracker = cls(uri, run.info.run_id)
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
        return tracker

    @classmethod
    def resume(cls, config: TrackingConfig, run_id: str, root: Path = PROJECT_ROOT) -> MlflowTracker:
        return cls(tracking_uri(config, root), run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step or 0) for k, v in metrics.items() if v == v]  # NaN skipped
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


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
