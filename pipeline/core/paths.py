"""Where every stage reads and writes, relative to the project root (one place, so DVC and Prefect agree)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import PROJECT_ROOT


@dataclass(frozen=True)
class Paths:
    root: Path = PROJECT_ROOT

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def aligned(self) -> Path:
        return self.root / "data" / "aligned"

    @property
    def protocols(self) -> Path:
        return self.root / "data" / "protocols"

    @property
    def clean(self) -> Path:
        return self.root / "data" / "clean"

    @property
    def manifest(self) -> Path:
        return self.clean / "manifest.parquet"

    def train_records(self, stage_dir: Path) -> Path:
        return stage_dir / "train"

    def benchmarks(self, stage_dir: Path) -> Path:
        return stage_dir / "benchmarks"

    def model_dir(self, name: str) -> Path:
        return self.root / "data" / "models" / name

    def reference_dir(self, name: str) -> Path:
        """A reference model's descriptors and pair scores (pipeline.reference)."""
        return self.root / "data" / "reference" / name

    @property
    def reference_targets(self) -> Path:
        """Stage distill's descriptors of the training photos by a reference teacher, <model>.parquet (one per model
        used), and summary.json (which one the last run used, or none)."""
        return self.root / "data" / "reference_targets"

    def eval_dir(self, name: str) -> Path:
        return self.root / "data" / "eval" / name

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def evaluation_plan_dir(self) -> Path:
        return self.reports / "evaluation_plan"

    def evaluation_plan(self, model: str) -> Path:
        """Which held-out protocols `model` is evaluated on (written by stage validate from the tables)."""
        return self.evaluation_plan_dir / f"{model}.json"

    def metrics(self, kind: str, name: str) -> Path:
        return self.reports / "metrics" / kind / f"{name}.json"

    def curves(self, name: str) -> Path:
        return self.reports / "curves" / f"{name}.csv"
