"""The reference model's evaluation (pipeline.reference.evaluation, stage reference): its scoring against independent
computations (a brute-force threshold search, scipy's t interval, sklearn's accuracy), its record's round trip and
errors, which protocols it scores, and dlib on a few real LFW View 2 pairs (skipped when LFW is absent)."""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.paths import Paths
from pipeline.data import lfw
from pipeline.data.records import FaceRecord, NO_LANDMARKS, write_benchmark
from pipeline.reference import descriptors
from pipeline.reference.descriptors import DescriberSettings
from pipeline.reference.evaluation import ProtocolFigures, ReferenceEvaluation, score_protocol
from pipeline.reference.protocols import NO_LFW_ROOT, SYNTHETIC, distinct_photos, real_photo_protocols
from stages import reference

FARS = (0.1, 0.01)


# --- the scoring, against a brute-force search -----------------------------------------------------------------


def brute_force(distances: np.ndarray, same: np.ndarray, folds: int) -> tuple[np.ndarray, list[float]]:
    """Per-fold held-out accuracy (%) and thresholds: every cut of the other folds' distances tried (below all, between
    each two distinct ones, above all), "same" when distance < cut; of equally good cuts the largest (the project's
    rule: the lowest score threshold)."""
    size = len(distances) // folds
    accuracies, thresholds = [], []
    for k in range(folds):
        held = np.zeros(len(distances), dtype=bool)
        held[k * size:(k + 1) * size] = True
        train_d, train_y = distances[~held], same[~held]
        values = np.unique(train_d)
        cuts = [-math.inf, *((values[1:] + values[:-1]) / 2), math.inf]
        best, chosen = -1, None
        for cut in cuts:
            right = int(np.sum((train_d < cut) == train_y))
            if right >= best:  # >=: a later (larger) cut wins a tie
                best, chosen = right, cut
        thresholds.append(chosen)
        accuracies.append(100.0 * np.mean((distances[held] < chosen) == same[held]))
    return np.array(accuracies), thresholds


def brute_force_tar(distances: np.ndarray, same: np.ndarray, far: float) -> float:
    """The best TAR over every acceptance cut `distance <= t` whose false accept rate is at most `far`."""
    different = ~same
    if different.sum() < math.ceil(1 / far - 1e-9):
        return math.nan
    best = 0.0
    for cut in np.unique(distances):
        accepted = distances <= cut
        if np.sum(accepted & different) / different.sum() <= far:
            best = max(best, np.sum(accepted & same) / same.sum())
    return best


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    same = np.tile(np.r_[np.ones(6, bool), np.zeros(6, bool)], 10)
    overlapping = np.where(same, rng.normal(0.45, 0.12, same.size), rng.normal(0.7, 0.12, same.size)).clip(0)
    return {
        "overlapping": (overlapping, same),
        "ties": (np.round(overlapping, 1), same),  # many equal distances on both sides of the best cut
        "separated": (np.where(same, rng.uniform(0.1, 0.4, same.size), rng.uniform(0.8, 1.2, same.size)), same),
        "all same": (rng.uniform(0.2, 0.9, 40), np.ones(40, bool)),
        "all different": (rng.uniform(0.2, 0.9, 40), np.zeros(40, bool)),
        "one distance": (np.full(40, 0.5), np.tile([True, False], 20)),
    }


def logit_interval(per_fold: np.ndarray, pairs: int) -> tuple[float, float]:
    """The interval computed here from its definition: scipy's t half width over the folds (at least z x the binomial
    SD of `pairs` judgements at Cox's empirical-logit rate), carried onto the logit scale by the delta method around
    Cox's empirical logit, mapped back and widened to hold the mean."""
    from scipy import special, stats

    rate = per_fold.mean() / 100
    t_half = (stats.t.interval(0.95, df=9, loc=0, scale=stats.sem(per_fold / 100))[1]
              if per_fold.std() > 0 else 0.0)
    floor_rate = (rate * pairs + 0.5) / (pairs + 1)
    half = max(t_half, stats.norm.ppf(0.975) * np.sqrt(floor_rate * (1 - floor_rate) / pairs))
    centre = np.log((rate * pairs + 0.5) / (pairs - rate * pairs + 0.5))
    p = special.expit(centre)
    low, high = special.expit(centre - half / (p * (1 - p))), special.expit(centre + half / (p * (1 - p)))
    return 100 * min(low, rate), 100 * max(high, rate)


@pytest.mark.parametrize("case", list(cases()))
def test_figures_match_a_brute_force_search_scipy_and_sklearn(case):
    from scipy import stats
    from sklearn.metrics import accuracy_score

    distances, same = cases()[case]
    figures = score_protocol(distances, same, folds=10, photos=50, photos_detected=48, fars=FARS)
    per_fold, thresholds = brute_force(distances, same, 10)
    assert figures.accuracy == pytest.approx(per_fold.mean())
    assert figures.accuracy_std == pytest.approx(per_fold.std(ddof=0))
    assert figures.fold_thresholds == pytest.approx(thresholds)
    assert (figures.ci_low, figures.ci_high) == pytest.approx(logit_interval(per_fold, distances.size))
    assert 0.0 <= figures.ci_low <= figures.accuracy <= figures.ci_high <= 100.0
    assert figures.accuracy_at_published_threshold == pytest.approx(100 * accuracy_score(same, distances < 0.6))
    for far in FARS:
        wanted = brute_force_tar(distances, same, far) if same.any() else math.nan
        assert figures.tar_at_far[f"{far:g}"] == pytest.approx(wanted, nan_ok=True), far
    assert (figures.pairs, figures.photos, figures.photos_detected, figures.folds) == (distances.size, 50, 48, 10)


def test_the_edges_say_what_they_should():
    _, same = cases()["separated"]
    separated = score_protocol(cases()["separated"][0], same, 10, 2, 2, FARS)
    assert separated.accuracy == 100.0 and separated.accuracy_std == 0.0 and separated.ci_high == 100.0
    assert separated.ci_low < 100.0  # 100% of a few pairs is not certainty: the binomial floor keeps a width
    assert all(0.4 <= t <= 0.8 for t in separated.fold_thresholds)  # between the two groups
    everyone = score_protocol(cases()["all same"][0], cases()["all same"][1], 10, 2, 2, FARS)
    assert everyone.accuracy == 100.0 and everyone.fold_thresholds == (math.inf,) * 10
    nobody = score_protocol(cases()["all different"][0], cases()["all different"][1], 10, 2, 2, FARS)
    assert nobody.accuracy == 100.0 and nobody.fold_thresholds == (-math.inf,) * 10
    assert all(math.isnan(v) for v in nobody.tar_at_far.values())  # no "same" pair: no TAR
    tied = score_protocol(*cases()["one distance"], 10, 2, 2, FARS)
    assert tied.accuracy == 50.0  # equal distances are never split


@pytest.mark.parametrize("bad, message", [
    (dict(distances=[0.1, -0.2]), "non-negative"), (dict(same=[1, 2]), "booleans"),
    (dict(photos_detected=3), "photos_detected"), (dict(distances=[0.1, 0.2, 0.3]), "one length"),
])
def test_bad_inputs_are_named(bad, message):
    given = dict(distances=[0.1, 0.2], same=[True, False], folds=2, photos=2, photos_detected=2, fars=FARS) | bad
    with pytest.raises(ValueError, match=message):
        score_protocol(**given)


# --- the record ------------------------------------------------------------------------------------------------


def record() -> ReferenceEvaluation:
    distances, same = cases()["overlapping"]
    figures = score_protocol(distances, same, 10, 200, 197, (0.01, 0.001))  # TAR@0.1% unreachable: NaN
    edge = score_protocol(*cases()["all same"], 10, 40, 40, FARS)  # infinite thresholds
    settings = DescriberSettings(kind="dlib_resnet", face_selection="central", upsample=1, fallback_crop=0.6)
    return ReferenceEvaluation(
        model="dlib_resnet", label="dlib ResNet", kind="dlib_resnet", settings=asdict(settings),
        published={"lfw-view2": 99.38}, published_source="dlib.net", protocols={"lfw-view2": figures, "edge": edge},
        not_scored={"synth-lfw": SYNTHETIC})


def test_the_record_survives_its_file(tmp_path):
    original = record()
    path = tmp_path / "reports" / "dlib_resnet.json"
    original.save(path)
    loaded = ReferenceEvaluation.load(path)
    assert loaded.to_json() == original.to_json() and loaded.describer_settings().kind == "dlib_resnet"
    assert loaded.protocols["edge"].fold_thresholds == (math.inf,) * 10
    assert math.isnan(loaded.protocols["lfw-view2"].tar_at_far["0.001"])
    raw = json.loads(path.read_text())  # strict JSON: infinities and NaN spelled out
    assert raw["protocols"]["edge"]["fold_thresholds"][0] == "inf"
    assert raw["protocols"]["lfw-view2"]["tar_at_far"]["0.001"] is None


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw.pop("kind"), r"field kind is missing"),
    (lambda raw: raw.update(extra=1), r"field extra is not a field"),
    (lambda raw: raw["protocols"]["lfw-view2"].update(pairs="many"), r"field protocols.lfw-view2.pairs is \"many\""),
    (lambda raw: raw["protocols"]["edge"]["fold_thresholds"].__setitem__(3, None), r"fold_thresholds.3 is null"),
    (lambda raw: raw["settings"].pop("upsample"), r"field settings.upsample is missing"),
    (lambda raw: raw.update(protocols=[]), r"field protocols is \[\], not an object"),
])
def test_a_bad_record_names_its_file_and_field(tmp_path, damage, message):
    path = tmp_path / "r.json"
    record().save(path)
    raw = json.loads(path.read_text())
    damage(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as error:
        ReferenceEvaluation.load(path)
    assert str(path) in str(error.value)


def test_a_missing_or_garbled_record_names_its_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.json'} does not exist.*dvc repro reference"):
        ReferenceEvaluation.load(tmp_path / "none.json")
    (tmp_path / "cut.json").write_text('{"model": "dl')
    with pytest.raises(ValueError, match=f"{tmp_path / 'cut.json'} is not JSON"):
        ReferenceEvaluation.load(tmp_path / "cut.json")


# --- which protocols, and the stage ----------------------------------------------------------------------------


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_benchmark(folder, name: str, rendered: bool) -> None:
    landmarks = np.arange(10, dtype=np.float32).reshape(5, 2) if rendered else NO_LANDMARKS
    records = [FaceRecord(png(i), i, landmarks.copy(), f"{name}/{i}.png", i) for i in range(4)]
    pairs = pd.DataFrame({"a": [0, 1, 2, 3], "b": [1, 0, 3, 2], "same": [True, False, True, False],
                          "fold": [0, 0, 1, 1]})
    write_benchmark(folder / name, records, pairs)


def test_renderings_are_skipped_with_the_reason_and_real_photos_kept(tmp_path):
    fake_benchmark(tmp_path, "synth-lfw", rendered=True)
    fake_benchmark(tmp_path, "folders-heldout", rendered=False)
    fake_benchmark(tmp_path, "copy", rendered=False)  # the same photos under other sources: described once
    protocols, not_scored = real_photo_protocols(tmp_path, None)
    assert [p.name for p in protocols] == ["copy", "folders-heldout"] and protocols[0].folds == 2
    assert not_scored == {"synth-lfw": SYNTHETIC, lfw.VIEW2: NO_LFW_ROOT}
    photos, rows = distinct_photos(protocols)
    assert len(photos) == 4 and rows["copy"] == rows["folders-heldout"] == [0, 1, 2, 3]


def smoke_config(**changes) -> config.Config:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return config.resolve(raw, "smoke")


def test_on_synthetic_data_the_stage_writes_a_record_of_what_it_left_out(tmp_path, monkeypatch):
    paths = Paths(tmp_path)
    fake_benchmark(paths.benchmarks(paths.raw), "synth-lfw", rendered=True)
    stale = paths.reference_dir("gone") / "pairs"
    stale.mkdir(parents=True)
    monkeypatch.setattr(descriptors, "ProcessPoolExecutor", None)  # nothing to describe: no worker may start
    evaluations = reference.run(smoke_config(), paths)
    saved = ReferenceEvaluation.load(paths.metrics("reference", "dlib_resnet"))
    assert saved == evaluations["dlib_resnet"] and saved.protocols == {}
    assert saved.not_scored == {"synth-lfw": SYNTHETIC, lfw.VIEW2: NO_LFW_ROOT}
    assert saved.published == {"lfw-view2": 99.38} and saved.published_source
    assert not paths.reference_dir("gone").exists()  # a model no longer in params


def test_a_missing_raw_folder_names_the_stage_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="data/raw/benchmarks is missing; stage synthesize writes it"):
        reference.run(smoke_config(), Paths(tmp_path))


# --- dlib on real photos ---------------------------------------------------------------------------------------

needs_lfw = pytest.mark.skipif(not (lfw.lfw_root_from_env() / lfw.PAIR_FILES[lfw.VIEW2]).is_file(),
                               reason=f"LFW not found at {lfw.lfw_root_from_env()} (set $FACEREPRO_LFW)")


@needs_lfw
def test_dlib_puts_same_persons_closer_on_real_view2_pairs_and_reruns_from_its_cache(tmp_path, monkeypatch):
    """Two folds of View 2's first 3 same and 3 different pairs, the photos read from the real root (a linked folder
    beside a cut pairs file, nothing copied)."""
    source = lfw.lfw_root_from_env()
    pairs = lfw.read_pairs(source, lfw.VIEW2)
    chosen = pd.concat([pairs[(pairs["fold"] == fold) & (pairs["same"] == same)].head(3)
                        for fold in (0, 1) for same in (True, False)])
    root = tmp_path / "lfw"
    root.mkdir()
    for folder in {image.split("/")[0] for image in chosen["img_a"]}:
        (root / folder).symlink_to(source / folder)
    chosen.astype({"same": int}).to_csv(root / lfw.PAIR_FILES[lfw.VIEW2], index=False)
    paths = Paths(tmp_path / "project")
    fake_benchmark(paths.benchmarks(paths.raw), "synth-lfw", rendered=True)
    cfg = smoke_config(data__lfw_root=str(root), reference__workers=1)

    figures = reference.run(cfg, paths)["dlib_resnet"].protocols[lfw.VIEW2]
    assert (figures.pairs, figures.folds) == (12, 2) and figures.photos_detected <= figures.photos <= 24
    scored = pd.read_parquet(paths.reference_dir("dlib_resnet") / "pairs" / f"{lfw.VIEW2}.parquet")
    assert list(scored.columns[:5]) == ["a", "b", "same", "fold", "distance"]
    same, different = scored.loc[scored["same"], "distance"], scored.loc[~scored["same"], "distance"]
    assert same.max() < different.min()  # dlib separates these easy pairs outright
    assert figures.accuracy_at_published_threshold > 80

    monkeypatch.setattr(descriptors, "ProcessPoolExecutor", None)  # every photo is in the kept table now
    again = ReferenceEvaluation.load(paths.metrics("reference", "dlib_resnet"))
    rerun = reference.run(cfg, paths)["dlib_resnet"]
    assert json.dumps(rerun.to_json(), sort_keys=True) == json.dumps(again.to_json(), sort_keys=True)


# --- the profile report ----------------------------------------------------------------------------------------


def test_the_profile_report_shows_the_reference_beside_its_published_figure(tmp_path):
    """A call that built stage reference alone in a new clone (no alignment, no trained model): table.md says so and
    shows the reference section; the record is collected beside it."""
    from pipeline.core.atomic_io import write_json_atomic
    from pipeline.profiles.report import collect

    work = tmp_path / "work"
    write_json_atomic(work / "reports" / "data.json", {"source": "lfw", "train": {"persons": 3, "images": 12}})
    (work / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    record().save(work / "reports" / "metrics" / "reference" / "dlib_resnet.json")
    run = {"commit": "abc1234", "seconds": 600, "cpus": 2, "load_before": "1 1 1", "load_after": "2 2 2",
           "arguments": "stage@reference", "targets": ["stage@reference"]}
    summary = collect(work, tmp_path / "out", "lfw", run)
    table = (tmp_path / "out" / "table.md").read_text()
    view2 = record().protocols["lfw-view2"]
    assert "`bash scripts/reproduce-profile lfw stage@reference` at commit `abc1234` built stage reference" in table
    assert "No table has been built in this clone." in table and "has aligned photos" in table
    row = next(line for line in table.splitlines() if line.startswith("| lfw-view2 |"))
    assert row.startswith(f"| lfw-view2 | 120 | {view2.accuracy:.2f} (±{view2.accuracy_std:.2f}) | "
                          f"{view2.ci_low:.2f}-{view2.ci_high:.2f} | ")
    assert math.isnan(view2.tar_at_far["0.01"])  # 60 different pairs cannot reach a FAR of 1%: an empty cell
    assert row.endswith(f"| {view2.accuracy_at_published_threshold:.2f} |  | 3 of 200 | 99.38 |")
    assert "Published: dlib.net." in table and f"- not scored: synth-lfw: {SYNTHETIC}" in table
    assert ReferenceEvaluation.load(tmp_path / "out" / "reference" / "dlib_resnet.json").to_json() == record().to_json()
    assert summary["reference"]["dlib_resnet"]["published"] == {"lfw-view2": 99.38}


def test_a_stage_call_adds_its_section_to_an_earlier_collection_and_replaces_its_own(tmp_path):
    """The committed reports/<profile>/ of an earlier call keep their tables: a stage@reference call (re)writes the
    reference section, records and summary entry only."""
    from pipeline.profiles.report import collect

    out = tmp_path / "reports" / "lfw"
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "cosface.json").write_text("{}")
    (out / "table.md").write_text("# The `lfw` profile\n\n| CosFace | 70.00 |\n")
    (out / "summary.json").write_text(json.dumps({"profile": "lfw", "accuracy": [1]}))
    work = tmp_path / "work"
    (work / "params.yaml").parent.mkdir()
    (work / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    record().save(work / "reports" / "metrics" / "reference" / "dlib_resnet.json")
    run = {"commit": "def5678", "seconds": 540, "cpus": 2, "load_before": "1 1 1", "load_after": "2 2 2",
           "arguments": "stage@reference", "targets": ["stage@reference"]}
    for _ in range(2):  # a second call replaces the section, never adds another
        summary = collect(work, out, "lfw", run)
    table = (out / "table.md").read_text()
    assert table.startswith("# The `lfw` profile\n\n| CosFace | 70.00 |\n\n## Reference model")
    assert table.count("## Reference model") == 1 and table.count("| lfw-view2 |") == 1
    assert "This section: `bash scripts/reproduce-profile lfw stage@reference` at commit `def5678`, 540 s" in table
    assert (out / "eval" / "cosface.json").is_file() and (out / "reference" / "dlib_resnet.json").is_file()
    assert summary["accuracy"] == [1] and summary["reference_run"]["commit"] == "def5678"
    assert json.loads((out / "summary.json").read_text())["reference"]["dlib_resnet"]["model"] == "dlib_resnet"
