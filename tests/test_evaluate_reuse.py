"""A seed added to `seeds` is the only one trained and evaluated (issue 24, item 4): stage train leaves a finished seed
of the same identity alone, and stage evaluate reuses a seed's previous entry and rows exactly when everything that
determines them is unchanged (pipeline/evaluate/reuse.py). On a tiny project: 16 training images of 32 px, 2 steps of 4, a
20-pair benchmark and a held-out protocol of 20 pairs."""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.paths import Paths
from pipeline.data.images import encode_png
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_benchmark, write_records
from pipeline.evaluate import reuse
from pipeline.evaluate.record import EvaluationKey, ModelEvaluation, SeedEvaluation
from pipeline.experiment.recipes import recipes
from pipeline.train import checkpoint, engine
from stages import evaluate, train

MODEL = "cosface"
BENCHMARK = "synth-lfw"


@dataclass(frozen=True)
class Project:
    """A project folder with its params, trained and evaluated for the seeds its params name."""

    root: Path

    @property
    def paths(self) -> Paths:
        return Paths(self.root)

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    def raw(self) -> dict:
        return yaml.safe_load(self.params.read_text())

    def edit(self, change) -> None:
        raw = self.raw()
        change(raw)
        self.params.write_text(yaml.safe_dump(raw))

    def set_seeds(self, seeds: list[int]) -> None:
        self.edit(lambda raw: raw["profiles"]["smoke"].update(seeds=seeds))

    def cfg(self) -> config.Config:
        return config.load(self.params)

    def train(self) -> None:
        train.run(self.cfg(), self.paths, MODEL)

    def evaluate(self) -> ModelEvaluation:
        return evaluate.run(self.cfg(), self.paths, MODEL)

    def model(self, seed: int) -> Path:
        return self.paths.model_dir(MODEL) / f"seed{seed}" / "model.pt"

    @property
    def record(self) -> Path:
        return self.paths.metrics("eval", MODEL)

    @property
    def pairs(self) -> Path:
        return self.paths.eval_dir(MODEL) / "pairs.parquet"

    def entries(self) -> dict[str, dict]:
        return json.loads(self.record.read_text())["seeds"]

    def copy(self, dest: Path) -> Project:
        shutil.copytree(self.root, dest)
        return Project(dest)


def pair_protocol(directory: Path, rng: np.random.Generator, size: int) -> None:
    """A pair protocol of 20 random images in 20 pairs, a same and a different pair in each of 10 folds."""
    images = rng.integers(0, 256, (20, size, size, 3), dtype=np.uint8)
    records = [FaceRecord(encode_png(image), i // 2, NO_LANDMARKS.copy(), f"{i}.png") for i, image in enumerate(images)]
    a = np.arange(20)
    b = np.where(a % 2 == 0, a + 1, (a + 4) % 20)
    pairs = pd.DataFrame({"a": a, "b": b, "same": a % 2 == 0, "fold": a // 2})
    write_benchmark(directory, records, pairs)


def held_out_protocol(cfg: config.Config) -> str:
    found = cfg.protocols_for(MODEL)
    assert found, f"params.yaml shows {MODEL} on no held-out protocol: this test needs one"
    return found[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Project:
    """Seeds 0 and 1 trained and evaluated: copy it (`.copy`) before changing anything."""
    root = tmp_path_factory.mktemp("reuse") / "project"
    root.mkdir()
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["seeds"] = [0, 1]
    raw["profiles"]["smoke"]["train"].update(
        iterations=2, checkpoint_every=2, curve_every=0, compile="none", num_workers=0, batch_size=4
    )
    raw["tracking"]["enabled"] = False
    project = Project(root)
    project.params.write_text(yaml.safe_dump(raw))
    paths, cfg = project.paths, project.cfg()
    rng = np.random.default_rng(0)
    size = cfg.align.crop_size
    images = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    write_records(paths.train_records(paths.aligned), [
        FaceRecord(encode_png(image), i % 4, NO_LANDMARKS.copy(), f"{i}.png") for i, image in enumerate(images)
    ])
    paths.manifest.parent.mkdir(parents=True)
    pd.DataFrame({"kept": [True] * 16}).to_parquet(paths.manifest, index=False)
    pair_protocol(paths.benchmarks(paths.aligned) / BENCHMARK, rng, size)
    paths.protocols.mkdir(parents=True)
    pair_protocol(paths.protocols / held_out_protocol(cfg), rng, size)
    project.train()
    project.evaluate()
    return project


@pytest.fixture()
def spies(monkeypatch) -> dict[str, list[int]]:
    """The seeds that took a training step (one entry a step) and the seeds stage evaluate evaluated."""
    seen: dict[str, list[int]] = {"steps": [], "evaluated": []}
    step, evaluate_seed = engine._step, evaluate._evaluate_seed

    def counted_step(run, *args):
        seen["steps"].append(run.job.seed)
        return step(run, *args)

    def counted_evaluation(cfg, paths, model, seed, *args):
        seen["evaluated"].append(seed)
        return evaluate_seed(cfg, paths, model, seed, *args)

    monkeypatch.setattr(engine, "_step", counted_step)
    monkeypatch.setattr(evaluate, "_evaluate_seed", counted_evaluation)
    return seen


def without_seconds(entries: dict[str, dict]) -> dict[str, dict]:
    """The entries without the seconds an evaluation took (which differ from one evaluation to the next)."""
    return {seed: {**entry, "timing": {**entry["timing"], "seconds": None}} for seed, entry in entries.items()}


# --- a seed added -----------------------------------------------------------------------------------------------------


def test_a_seed_added_is_trained_and_evaluated_alone_and_equals_a_fresh_evaluation(trained, tmp_path, spies):
    project = trained.copy(tmp_path / "grown")
    models = {seed: (project.model(seed).read_bytes(), project.model(seed).stat().st_mtime_ns) for seed in (0, 1)}
    before = project.entries()
    project.set_seeds([0, 1, 2])
    project.train()
    assert set(spies["steps"]) == {2}  # seeds 0 and 1 took no training step
    assert {seed: (project.model(seed).read_bytes(), project.model(seed).stat().st_mtime_ns) for seed in (0, 1)} == models
    project.evaluate()
    assert spies["evaluated"] == [2]
    after = project.entries()
    assert {seed: after[seed] for seed in ("0", "1")} == before
    assert after["2"]["key"]["weights"] != after["0"]["key"]["weights"]

    fresh = project.copy(tmp_path / "fresh")
    fresh.record.unlink()
    fresh.pairs.unlink()
    fresh.evaluate()
    assert spies["evaluated"] == [2, 0, 1, 2]
    assert without_seconds(fresh.entries()) == without_seconds(after)
    assert fresh.pairs.read_bytes() == project.pairs.read_bytes()


def test_nothing_changed_evaluates_nothing_and_rewrites_the_same_bytes(trained, tmp_path, spies):
    project = trained.copy(tmp_path / "same")
    record, pairs = project.record.read_bytes(), project.pairs.read_bytes()
    project.train()
    project.evaluate()
    assert spies == {"steps": [], "evaluated": []}
    assert project.record.read_bytes() == record and project.pairs.read_bytes() == pairs


def test_a_reused_entry_copies_the_seeds_train_json_as_it_is_now(trained, tmp_path, spies):
    """Only the figures are reused: the entry's copy of train.json is read again (it is not part of the key)."""
    project = trained.copy(tmp_path / "record")
    record = project.model(0).parent / "train.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "note": "rewritten"}))
    project.evaluate()
    assert spies["evaluated"] == []
    assert project.entries()["0"]["train"]["note"] == "rewritten"


def test_a_seed_dropped_from_seeds_is_dropped_from_the_outputs(trained, tmp_path, spies):
    project = trained.copy(tmp_path / "shrunk")
    before = project.entries()
    project.set_seeds([1])
    project.evaluate()
    assert spies["evaluated"] == []
    assert project.entries() == {"1": before["1"]}
    assert set(pd.read_parquet(project.pairs)["seed"]) == {1}


# --- what makes an evaluation stale ----------------------------------------------------------------------------------


def changed_weights(project: Project) -> None:
    """Seed 1's model.pt with one weight nudged (its metadata kept): as if trained again differently."""
    state = checkpoint.load_weights(project.model(1))
    name = next(key for key, value in state["backbone"].items() if value.is_floating_point())
    state["backbone"][name] = state["backbone"][name] + 1e-3
    checkpoint.save(project.model(1), state)


def changed_fars(project: Project) -> None:
    project.edit(lambda raw: raw["evaluate"].update(fars=[0.01, 0.001]))


def changed_batch_size(project: Project) -> None:
    project.edit(lambda raw: raw["evaluate"].update(batch_size=7))


def changed_protocol_file(project: Project) -> None:
    """One pair of the held-out protocol now points at another image."""
    pairs_file = project.paths.protocols / held_out_protocol(project.cfg()) / "pairs.parquet"
    pairs = pd.read_parquet(pairs_file)
    pairs.loc[0, "b"] = 19
    pairs.to_parquet(pairs_file, index=False)


def changed_rows(project: Project) -> None:
    """Seed 0's rows of pairs.parquet differ from those written with its entry (as after a write cut short)."""
    frame = pd.read_parquet(project.pairs)
    first = frame.index[frame["seed"] == 0][0]
    frame.loc[first, "correct"] = not frame.loc[first, "correct"]
    frame.to_parquet(project.pairs, index=False)


def record_without_keys(project: Project) -> None:
    """The record as written before keys were recorded (the committed reports/metrics/eval files)."""
    raw = json.loads(project.record.read_text())
    for entry in raw["seeds"].values():
        entry.pop("key"), entry.pop("pairs_digest")
    project.record.write_text(json.dumps(raw))


@pytest.mark.parametrize("change, evaluated", [
    (changed_weights, [1]),
    (changed_fars, [0, 1]),
    (changed_batch_size, [0, 1]),
    (changed_protocol_file, [0, 1]),
    (changed_rows, [0]),
    (record_without_keys, [0, 1]),
])
def test_a_change_to_what_determines_an_evaluation_evaluates_the_seeds_it_touches(
    trained, tmp_path, spies, change, evaluated
):
    project = trained.copy(tmp_path / "changed")
    before = project.entries()
    change(project)
    project.evaluate()
    assert spies["evaluated"] == evaluated
    after = project.entries()
    for seed in {"0", "1"} - {str(seed) for seed in evaluated}:
        assert after[seed] == before[seed]
    if len(evaluated) < 2:  # one seed's figures and rows taken as they were: the outputs are a fresh evaluation's
        fresh = project.copy(tmp_path / "fresh")
        fresh.record.unlink()
        fresh.evaluate()
        assert without_seconds(fresh.entries()) == without_seconds(after)
        assert fresh.pairs.read_bytes() == project.pairs.read_bytes()


def test_changed_evaluate_code_evaluates_every_seed(trained, tmp_path, spies, monkeypatch):
    project = trained.copy(tmp_path / "code")
    monkeypatch.setattr(reuse, "code_digest", lambda entry: "another version")
    project.evaluate()
    assert spies["evaluated"] == [0, 1]


def test_the_significance_level_alone_evaluates_nothing(trained, tmp_path, spies):
    project = trained.copy(tmp_path / "alpha")
    project.edit(lambda raw: raw["evaluate"].update(alpha=0.01))
    project.evaluate()
    assert spies["evaluated"] == []


def test_an_unreadable_previous_record_is_evaluated_again_not_a_failure(trained, tmp_path, spies, caplog):
    project = trained.copy(tmp_path / "damaged")
    project.record.write_text("{not json")
    project.evaluate()
    assert spies["evaluated"] == [0, 1]
    assert "nothing of the previous evaluation is reused" in caplog.text


# --- MLflow: a reused seed's run keeps its figures, logged once --------------------------------------------------------


def metric_rows(store: Path) -> dict[str, int]:
    """Logged metric values per seed of MODEL (every logging adds rows)."""
    with sqlite3.connect(store) as db:
        found = db.execute(
            "select s.value, count(*) from metrics m join tags s on s.run_uuid = m.run_uuid and s.key = 'seed' "
            "join tags r on r.run_uuid = m.run_uuid and r.key = 'row' and r.value = ? group by s.value", (MODEL,)
        ).fetchall()
    return dict(found)


def test_a_reused_seed_is_logged_once_and_a_new_store_gets_its_figures(trained, tmp_path, spies):
    """The fixture trained and evaluated without tracking: the store has no run of either seed yet."""
    project = trained.copy(tmp_path / "tracked")
    store = tmp_path / "tracked" / "mlflow.db"
    project.edit(lambda raw: raw["tracking"].update(enabled=True, uri=f"sqlite:///{store}"))
    project.evaluate()  # both reused, their runs re-created with their figures
    logged = metric_rows(store)
    figures = sum(1 for entry in project.entries().values() for metrics in entry["benchmarks"].values()
                  for value in metrics.values() if value is not None)
    assert sum(logged.values()) == figures and set(logged) == {"0", "1"}
    project.evaluate()  # their runs have their figures: nothing logged
    assert metric_rows(store) == logged
    moved = tmp_path / "tracked" / "elsewhere.db"  # a new store: emptied, moved, another machine
    project.edit(lambda raw: raw["tracking"].update(uri=f"sqlite:///{moved}"))
    project.evaluate()
    assert metric_rows(moved) == logged
    assert spies["evaluated"] == []


# --- the pure parts -----------------------------------------------------------------------------------------------------


KEY = EvaluationKey(weights="w", settings="s", protocols={"a": "1", "b": "2"}, code="c")


def entry(key: EvaluationKey | None, rows: pd.DataFrame) -> SeedEvaluation:
    return SeedEvaluation(None, {}, {}, None, key, reuse.rows_digest(rows) if key is not None else None)


ROWS = pd.DataFrame({"seed": 0, "benchmark": ["a", "a", "b"], "pair": [0, 1, 0], "correct": [True, False, True]})


def test_an_entry_stands_only_for_its_own_key_and_rows():
    assert reuse.refusal(entry(KEY, ROWS), KEY, ROWS) is None
    assert reuse.refusal(None, KEY, ROWS) == "not evaluated before"
    assert reuse.refusal(entry(None, ROWS), KEY, ROWS) == "its entry records no key"
    flipped = ROWS.assign(correct=[True, True, True])
    assert "rows of pairs.parquet" in reuse.refusal(entry(KEY, ROWS), KEY, flipped)
    now = EvaluationKey(weights="w2", settings="s", protocols={"b": "3", "c": "4"}, code="c2")
    assert reuse.refusal(entry(KEY, ROWS), now, ROWS) == (
        "changed: its weights, its code, protocol c added, protocol a dropped, protocol b's files"
    )


def test_the_protocols_order_alone_changes_no_key_and_reused_rows_follow_the_new_order():
    reordered = EvaluationKey(weights="w", settings="s", protocols={"b": "2", "a": "1"}, code="c")
    assert reuse.refusal(entry(KEY, ROWS), reordered, ROWS) is None
    assert list(reuse.in_protocol_order(ROWS, ["b", "a"])["benchmark"]) == ["b", "a", "a"]
    assert list(reuse.in_protocol_order(ROWS, ["b", "a"])["pair"]) == [0, 0, 1]


def test_every_evaluate_parameter_but_the_significance_level_is_in_the_settings(trained):
    cfg = trained.cfg()
    recipe = recipes(cfg)[MODEL]
    base = reuse.settings_digest(cfg, recipe, "cpu")
    changed = {"flip": not cfg.evaluate.flip, "batch_size": 5, "folds": 5, "fars": [0.5]}
    assert set(changed) | reuse.NOT_IN_SETTINGS == set(type(cfg.evaluate).model_fields)
    for field, value in changed.items():
        other = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={field: value})})
        assert reuse.settings_digest(other, recipe, "cpu") != base, field
    alpha = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"alpha": 0.2})})
    assert reuse.settings_digest(alpha, recipe, "cpu") == base
    assert reuse.settings_digest(cfg, recipe, "cuda") != base
    channels = cfg.model_copy(update={"train": cfg.train.model_copy(update={"channels_last": not cfg.train.channels_last})})
    assert reuse.settings_digest(channels, recipe, "cpu") != base


def test_a_protocol_digest_covers_every_file_by_name_and_content(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "images.parquet").write_bytes(b"images")
    (tmp_path / "p" / "pairs.parquet").write_bytes(b"pairs")
    first = reuse.files_digest(tmp_path / "p")
    (tmp_path / "p" / "pairs.parquet").write_bytes(b"pairz")
    assert reuse.files_digest(tmp_path / "p") != first
    (tmp_path / "p" / "pairs.parquet").write_bytes(b"pairs")
    assert reuse.files_digest(tmp_path / "p") == first
    (tmp_path / "p" / "pairs.parquet").rename(tmp_path / "p" / "other.parquet")
    assert reuse.files_digest(tmp_path / "p") != first


def test_a_weights_digest_is_of_the_file_bytes(tmp_path):
    model = tmp_path / "model.pt"
    checkpoint.save(model, {"backbone": {"w": torch.zeros(2)}, "head": {}, "meta": {}})
    keys = reuse.evaluation_keys({0: model}, "s", {})
    checkpoint.save(model, {"backbone": {"w": torch.ones(2)}, "head": {}, "meta": {}})
    assert reuse.evaluation_keys({0: model}, "s", {})[0].weights != keys[0].weights
