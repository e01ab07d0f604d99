"""pipeline/evaluate/record.py: one model's evaluation, read and written in the layout of
reports/metrics/eval/<model>.json byte for byte, with a one-line error naming the file and the field."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.config import PROJECT_ROOT
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.evaluate.identification import evaluate_identification
from pipeline.evaluate.identify import SetIdentification
from pipeline.evaluate.record import IdentificationFigures, ModelEvaluation, PairFigures, benchmark_figures

COMMITTED = sorted((PROJECT_ROOT / "reports" / "metrics" / "eval").glob("*.json"))


def scored_figures() -> dict[str, dict[str, float]]:
    """Both kinds of protocol scored by the evaluate stage's own code: a pair protocol too small to reach FAR 1e-4
    (its TAR is NaN) and an identification set."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16)).eval()
    images = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    pairs = pd.DataFrame({"a": np.arange(0, 40, 2), "b": np.arange(1, 40, 2), "same": np.arange(20) % 2 == 0,
                          "fold": np.repeat(np.arange(10), 2)})
    pair = evaluate_pairs(model, images, pairs, fars=(1e-2, 1e-3, 1e-4))
    embedding = rng.normal(size=(30, 16))
    labels = np.arange(30)
    found = evaluate_identification(embedding[:5] + 0.1, labels[:5], embedding[:5], labels[:5], embedding[5:],
                                    labels[5:], [10, 25], fars=(1e-2,))
    identification = SetIdentification(result=found, hits=found.curve[-1].probe_ranks == 1)
    return {"synth-lfw": pair.to_metrics(), "synth-megaface": identification.to_metrics()}


def stage_output() -> dict:
    """What stage evaluate writes for a model: two scored seeds with their timing and one diverged seed."""
    figures = scored_figures()
    scored = {"diverged_at_step": None, "train": {"steps": 40, "curve": [{"step": 20, "curve_synth-lfw": 0.6}]},
              "benchmarks": figures, "timing": {"seconds": 1.25, "images": 70, "forward_passes": 140}}
    diverged = {"diverged_at_step": 17, "train": {"steps": 17, "curve": []}, "benchmarks": {}}
    return {"model": "cosface", "label": "CosFace", "flip": True, "seeds": {"0": scored, "1": diverged, "10": scored}}


@pytest.fixture()
def written(tmp_path) -> Path:
    path = tmp_path / "cosface.json"
    write_json_atomic(path, stage_output())  # as stage evaluate wrote it before the record existed
    return path


def test_a_stage_written_evaluation_saves_back_byte_for_byte(written, tmp_path):
    evaluation = ModelEvaluation.load(written)
    evaluation.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == written.read_bytes()
    assert list(evaluation.seeds) == [0, 1, 10]  # the file's order, seeds sorted as text
    pair, identification = evaluation.seeds[0].benchmarks["synth-lfw"], evaluation.seeds[0].benchmarks["synth-megaface"]
    assert isinstance(pair, PairFigures) and isinstance(identification, IdentificationFigures)
    assert math.isnan(pair.tar_at_far[1e-4]) and sorted(identification.rank1_at) == [10, 25]
    assert evaluation.diverged_steps() == (17,) and evaluation.seeds[1].timing is None
    assert evaluation.seeds[10].timing.forward_passes == 140 and evaluation.scored_benchmarks() == {"synth-lfw", "synth-megaface"}


def test_the_figures_keep_their_scorers_keys_and_values():
    for metrics in scored_figures().values():
        again = benchmark_figures(metrics, "scored").to_metrics()
        assert list(again) == list(metrics)  # the order MLflow receives them in, too
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(again.values(), metrics.values()))


@pytest.mark.skipif(not COMMITTED, reason="no committed evaluations in this checkout")
@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_every_committed_evaluation_saves_back_byte_for_byte(path, tmp_path):
    ModelEvaluation.load(path).save(tmp_path / path.name)
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("damage, field", [
    (lambda raw: raw.pop("label"), "field label is missing"),
    (lambda raw: raw["seeds"]["0"].pop("diverged_at_step"), "field seeds.0.diverged_at_step is missing"),
    (lambda raw: raw["seeds"]["0"]["benchmarks"]["synth-lfw"].pop("accuracy_flip_std"),
     "field seeds.0.benchmarks.synth-lfw.accuracy_flip_std is missing"),
    (lambda raw: raw["seeds"]["10"]["timing"].pop("images"), "field seeds.10.timing.images is missing"),
    (lambda raw: raw["seeds"]["0"]["benchmarks"]["synth-lfw"].update(accuracy="high"),
     'field seeds.0.benchmarks.synth-lfw.accuracy is "high", not a number'),
    (lambda raw: raw.update(flip="yes"), 'field flip is "yes", not true or false'),
    (lambda raw: raw["seeds"].update(first=raw["seeds"]["0"]), "field seeds.first is not a seed number"),
    (lambda raw: raw["seeds"]["1"].update(diverged_at_step=1.5), "field seeds.1.diverged_at_step is 1.5, not an integer"),
])
def test_a_missing_or_bad_field_is_named_with_its_file(written, damage, field):
    raw = json.loads(written.read_text())
    damage(raw)
    written.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as error:
        ModelEvaluation.load(written)
    assert str(error.value) == f"{written}: {field}"


@pytest.mark.parametrize("extend, field", [
    (lambda raw: raw.update(tables=["table3"]), "field tables"),  # what an older evaluate stage wrote
    (lambda raw: raw["seeds"]["0"].update(notes="rerun"), "field seeds.0.notes"),
    (lambda raw: raw["seeds"]["0"]["benchmarks"]["synth-lfw"].update(rank5=0.9), "field seeds.0.benchmarks.synth-lfw.rank5"),
    (lambda raw: raw["seeds"]["0"]["benchmarks"]["synth-megaface"].update(rank1_at_x=0.9),
     "field seeds.0.benchmarks.synth-megaface.rank1_at_x"),
])
def test_a_field_the_layout_does_not_name_is_refused_rather_than_dropped(written, extend, field):
    raw = json.loads(written.read_text())
    extend(raw)
    written.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(written))}: {re.escape(field)} is not a field of this layout \(known: "):
        ModelEvaluation.load(written)


def test_the_copied_train_record_is_kept_whatever_it_holds(written, tmp_path):
    raw = json.loads(written.read_text())
    raw["seeds"]["0"]["train"]["a_field_added_by_the_engine"] = {"nested": [1, 2]}
    write_json_atomic(written, raw)
    ModelEvaluation.load(written).save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == written.read_bytes()


def test_a_file_that_is_not_json_is_named(written):
    written.write_text('{"model": ')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(written))} is not JSON \("):
        ModelEvaluation.load(written)


# --- the reuse key (pipeline/evaluate/reuse.py) -------------------------------------------------------------------------


def keyed(raw: dict) -> dict:
    """`raw` with a reuse key and rows digest on seed 0 (and 10: they share one entry), as stage evaluate now writes
    every entry."""
    raw["seeds"]["0"]["key"] = {"weights": "a1", "settings": "b2", "protocols": {"synth-lfw": "c3"}, "code": "d4"}
    raw["seeds"]["0"]["pairs_digest"] = "e5"
    return raw


def test_an_entry_with_its_reuse_key_saves_back_byte_for_byte(tmp_path):
    write_json_atomic(tmp_path / "keyed.json", keyed(stage_output()))
    evaluation = ModelEvaluation.load(tmp_path / "keyed.json")
    key = evaluation.seeds[0].key
    assert key is not None and key.protocols == {"synth-lfw": "c3"} and evaluation.seeds[0].pairs_digest == "e5"
    assert evaluation.seeds[1].key is None and evaluation.seeds[1].pairs_digest is None  # written before keys
    evaluation.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "keyed.json").read_bytes()


@pytest.mark.parametrize("damage, named", [
    (lambda raw: raw["seeds"]["0"]["key"].pop("code"), "field seeds.0.key.code is missing"),
    (lambda raw: raw["seeds"]["0"]["key"]["protocols"].update({"synth-lfw": 3}),
     "field seeds.0.key.protocols.synth-lfw is 3, not a string"),
    (lambda raw: raw["seeds"]["0"].update(pairs_digest=None), "field seeds.0.pairs_digest is null, not a string"),
])
def test_a_bad_reuse_key_is_named(tmp_path, damage, named):
    raw = keyed(stage_output())
    damage(raw)
    write_json_atomic(tmp_path / "bad.json", raw)
    with pytest.raises(ValueError, match=re.escape(named)):
        ModelEvaluation.load(tmp_path / "bad.json")
