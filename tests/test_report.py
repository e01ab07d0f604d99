"""The report stage on made-up evaluations: cells are means over seeds with intervals, comparisons are seed-paired
with verdicts, per-seed values reach the CSV, and the seed-noise report names what each unresolved comparison needs."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.paths import Paths
from pipeline.evaluate.record import IdentificationFigures, ModelEvaluation, PairFigures, SeedEvaluation
from pipeline.experiment.recipes import trained_models
from pipeline.experiment.runs import seed_dir
from stages import report as report_stage
from stages import table as table_stage

BENCHMARKS = ("synth-lfw", "synth-cfp-fp")
PAIRS = 400
IDENTIFICATION = "synth-megaface"  # a held-out protocol scored as rank-1 per probe
GROUP_PENALTY = {"synth-rfw-d": -1.5}  # one group much harder than the others


def _smoke(extra_tables: dict | None = None) -> config.Config:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["tables"].update(extra_tables or {})
    cfg = config.resolve(raw, "smoke")
    return cfg.model_copy(update={"seeds": [0, 1, 2], "tracking": cfg.tracking.model_copy(update={"enabled": False})})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    cfg = _smoke()
    paths = Paths(tmp_path_factory.mktemp("report"))
    _write_evaluations(cfg, paths)
    _report(cfg, paths)
    return cfg, paths


def _report(cfg: config.Config, paths: Paths) -> None:
    """What `dvc repro` and `dvc repro extra/dvc.yaml` run after the evaluations: stage table for each table of
    params, then stage report of each scope."""
    for table in cfg.tables:
        table_stage.run(cfg, paths, table)
    for scope in report_stage.SCOPES:
        report_stage.run(cfg, paths, scope)


def _write_evaluations(cfg: config.Config, paths: Paths, models: list[str] | None = None, curves: bool = False) -> None:
    """Made-up evaluations of `models` (default: every trained model); with `curves`, seed 0's training curve of
    each, which the report draws."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, size=PAIRS)  # the same pairs for every model and seed
    level = {"li_arcface_m040": 2.5, "pretrain": 0.6}  # one clearly better row; the rest alike
    for name in trained_models(cfg) if models is None else models:
        seeds, frames = {}, []
        for seed in cfg.seeds:
            scored = {}
            for bench in [*BENCHMARKS, *cfg.protocols_for(name)]:
                logit = level.get(name, 0.8) + GROUP_PENALTY.get(bench, 0.0) + difficulty + rng.normal(0, 0.15)
                correct = rng.random(PAIRS) < 1 / (1 + np.exp(-logit))
                accuracy = float(correct.mean())
                if bench == IDENTIFICATION:
                    scored[bench] = IdentificationFigures(rank1=accuracy, rank1_at={}, tar_at_far={})
                else:
                    scored[bench] = PairFigures(accuracy=accuracy, accuracy_std=0.02, accuracy_flip=accuracy,
                                               accuracy_flip_std=0.02, insightface_accuracy=accuracy,
                                               insightface_accuracy_std=0.02, tar_at_far={})
                frames.append(pd.DataFrame({"seed": seed, "benchmark": bench, "pair": range(PAIRS), "correct": correct}))
            seeds[seed] = SeedEvaluation(diverged_at_step=None, train={}, benchmarks=scored, timing=None)
            drawn = curves and seed == 0
            curve = [{"step": step, "curve_synth-lfw": 0.5 + step / 100} for step in (3, 6)] if drawn else []
            (seed_dir(paths, name, seed)).mkdir(parents=True)
            (seed_dir(paths, name, seed) / "train.json").write_text(json.dumps({"curve": curve}))
        ModelEvaluation(model=name, label=name, flip=True, seeds=seeds).save(paths.metrics("eval", name))
        paths.eval_dir(name).mkdir(parents=True)
        pd.concat(frames).to_parquet(paths.eval_dir(name) / "pairs.parquet")
    (paths.reports / "cleaning.json").write_text(json.dumps(
        {"method": "class_spread", "threshold": 2.5, "kept": 90, "images": 100, "dropped": 10, "precision": 0.5,
         "recall": 0.5, "noisy": 10}))


def test_cells_are_means_over_seeds_with_their_interval(project):
    cfg, paths = project
    frame = pd.read_csv(paths.reports / "table3.csv")
    row = frame[frame["model"] == "li_arcface_m040"].iloc[0]
    seeds = [float(v) for v in row["synth-lfw seed values"].split(";")]
    assert len(seeds) == 3 and row["synth-lfw"] == pytest.approx(np.mean(seeds), abs=0.01)
    assert row["synth-lfw ci_low"] < row["synth-lfw"] < row["synth-lfw ci_high"]
    assert row["synth-lfw fold sd"] == pytest.approx(2.0)
    text = (paths.reports / "table3.md").read_text()
    assert f"| {row['label']} | {row['synth-lfw']:.2f} [{row['synth-lfw ci_low']:.2f}, {row['synth-lfw ci_high']:.2f}]" in text


def test_comparisons_are_seed_paired_with_verdicts(project):
    cfg, paths = project
    tests = pd.read_csv(paths.reports / "table3_tests.csv")
    better = tests[(tests["a"] == "li_arcface_m040") & (tests["b"] == "pretrain")]
    assert (better["prob_a_beats_b"] == 1.0).all() and (better["delta"] > 15).all()
    assert (better["verdict"] == "A better").any()
    alike = tests[(tests["a"] == "cosface") & (tests["b"] == "pretrain")]
    assert alike["verdict"].str.startswith("not resolved with 3 seeds: the smallest difference").all()
    unresolved = tests[tests["verdict"].str.startswith("not resolved")]
    assert (unresolved["delta"].abs() < unresolved["mde"]).all()  # the text's "smallest resolvable" is honest
    assert (tests["p_holm"] >= tests["p"]).all() and (tests["seeds"] == 3).all()
    assert "| Li-ArcFace (m=0.4) | N-Softmax | synth-lfw |" in (paths.reports / "table3.md").read_text()


def test_each_scope_s_seed_noise_report_covers_its_own_tables(project):
    cfg, paths = project
    default = (paths.reports / "seed_noise.md").read_text()
    extra = (paths.reports / "extra" / "seed_noise.md").read_text()
    titles = {table: f"## {cfg.tables[table].title}" for table in cfg.tables}
    assert [t for t in cfg.tables if titles[t] in default] == cfg.default_tables == ["table3"]
    assert [t for t in cfg.tables if titles[t] in extra] == [t for t in cfg.tables if t not in cfg.default_tables]
    for title in ("Table 2", "Distillation", "Cleaning"):
        assert f"## {title}" in extra and f"## {title}" not in default
    for noise in (default, extra):
        assert "Pairing by seed" in noise and "seeds needed" in noise
        assert "A seed sets everything random" in noise


def test_the_default_report_reads_table3s_models_alone_and_writes_reports(tmp_path):
    """Scope default (dvc.yaml's report) needs the evaluations of Table 3's models and no other (dvc.yaml lists those
    alone as its inputs), and writes reports/ only; scope extra needs the other tables' models."""
    cfg = _smoke()
    paths = Paths(tmp_path)
    shown = list(cfg.tables["table3"].rows)
    assert set(trained_models(cfg)) - set(shown)  # the other tables' models, absent here
    _write_evaluations(cfg, paths, shown, curves=True)
    before = {p for p in paths.root.rglob("*") if p.is_file()}
    table_stage.run(cfg, paths, "table3")
    report_stage.run(cfg, paths, "default")
    written = {p.relative_to(paths.root).as_posix() for p in paths.root.rglob("*") if p.is_file()} - {
        p.relative_to(paths.root).as_posix() for p in before}
    assert written == {*table_stage.outputs("table3"), *report_stage.outputs("default"), "reports/curves/synth-lfw.csv"}
    assert list(pd.read_csv(paths.reports / "curves" / "synth-lfw.csv").columns) == ["step", *shown]
    noise = (paths.reports / "seed_noise.md").read_text()
    assert "## Table 3" in noise and "## Table 2" not in noise
    first_extra = next(m for t in cfg.tables if t not in cfg.default_tables for m in cfg.tables[t].rows
                       if m not in shown)  # the first evaluation scope extra reads
    with pytest.raises(FileNotFoundError, match=rf"reports/metrics/eval/{first_extra}\.json is missing"):
        report_stage.run(cfg, paths, "extra")
    assert not (paths.reports / "extra").exists()


def test_the_extra_report_writes_reports_extra(tmp_path):
    """Scope extra (extra/dvc.yaml's report) draws the other tables' models into reports/extra/ and leaves the
    default run's report as it was."""
    cfg = _smoke()
    paths = Paths(tmp_path)
    _write_evaluations(cfg, paths, curves=True)
    report_stage.run(cfg, paths, "default")
    default = {p: p.read_bytes() for p in paths.reports.rglob("*") if p.is_file()}
    report_stage.run(cfg, paths, "extra")
    assert {p: p.read_bytes() for p in default} == default
    out = paths.reports / "extra"
    written = {p.relative_to(paths.root).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {*report_stage.outputs("extra"), "reports/extra/curves/synth-lfw.csv"}
    assert report_stage.output_dir(paths, "extra") == out and report_stage.output_dir(paths, "default") == paths.reports
    extra_models = list(dict.fromkeys(m for t in cfg.tables if t not in cfg.default_tables for m in cfg.tables[t].rows))
    assert list(pd.read_csv(out / "curves" / "synth-lfw.csv").columns) == ["step", *extra_models]
    assert "## Table 2" in (out / "seed_noise.md").read_text()


def test_a_table_added_in_params_alone_is_reported(tmp_path):
    margins = {
        "title": "Margins — Li-ArcFace against CosFace",
        "paper_source": "made-up figures for this test",
        "paper_columns": {"lfw": "LFW"},
        "rows": {"cosface": {"label": "AM-Softmax", "paper": {"lfw": 99.0}}, "li_arcface_m040": {}},
        "compare": [["li_arcface_m040", "cosface"]],
    }
    cfg = _smoke({"margins": margins})
    paths = Paths(tmp_path)
    _write_evaluations(cfg, paths)
    _report(cfg, paths)
    text = (paths.reports / "margins.md").read_text()
    assert text.startswith("# Margins — Li-ArcFace against CosFace") and "made-up figures for this test" in text
    assert "| Row | synth-lfw | synth-cfp-fp | paper LFW |" in text
    assert "| AM-Softmax |" in text and text.count("| Li-ArcFace (m=0.4) |") == 3  # its row, its test on each benchmark
    assert "| 99.000 |" in text
    tests = pd.read_csv(paths.reports / "margins_tests.csv")
    assert list(zip(tests["a"], tests["b"])) == [("li_arcface_m040", "cosface")] * 2
    assert (tests["verdict"] == "A better").all()  # the fixture's clearly better row
    assert list(pd.read_csv(paths.reports / "margins.csv")["model"]) == ["cosface", "li_arcface_m040"]
    assert "## Margins — Li-ArcFace against CosFace" in (paths.reports / "seed_noise.md").read_text()
    written = {str(p.relative_to(paths.root)) for p in paths.reports.rglob("*") if p.is_file()}
    declared = {out for table in cfg.tables for out in table_stage.outputs(table)} | {
        out for scope in report_stage.SCOPES for out in report_stage.outputs(scope)}
    inputs = {"reports/cleaning.json"} | {f"reports/metrics/eval/{n}.json" for n in trained_models(cfg)}
    assert written - declared == inputs  # the fixture's inputs; no curves to draw, so no PNG


def test_held_out_protocols_stand_only_in_the_tables_that_list_them(project):
    cfg, paths = project
    assert not [c for c in pd.read_csv(paths.reports / "table3.csv").columns if "rfw" in c or "megaface" in c]
    facex = pd.read_csv(paths.reports / "facex_heads.csv")
    listed = [b for b in cfg.tables["facex_heads"].benchmarks if b in {*BENCHMARKS, *cfg.protocols}]
    assert [c for c in facex.columns if c in listed] == listed  # the table's own order
    row = facex[facex["model"] == "cosface"].iloc[0]
    assert np.isnan(row[f"{IDENTIFICATION} fold sd"]) and 0 < row[IDENTIFICATION] < 100
    text = (paths.reports / "facex_heads.md").read_text()
    assert "rank-1 identification rate" in text and "rank-1" not in (paths.reports / "table3.md").read_text()


def test_the_group_gap_is_best_minus_worst_group_per_seed(project):
    cfg, paths = project
    spec = cfg.tables["facex_heads"]
    pairs = pd.read_parquet(paths.eval_dir("cosface") / "pairs.parquet")
    per_seed = pairs[pairs["benchmark"].isin(spec.group_gap)].groupby(["seed", "benchmark"])["correct"].mean().unstack()
    gaps = 100 * (per_seed.max(axis=1) - per_seed.min(axis=1))
    text = (paths.reports / "facex_heads.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("| AM-Softmax |") and "synth-rfw" in line)
    assert f"| {gaps.mean():.2f} |" in line and " / ".join(f"{g:.2f}" for g in gaps) in line
    assert line.rstrip(" |").endswith("synth-rfw-d")  # the made-up hard group is the worst


def test_expected_range_matches_the_range_chart_constants():
    from pipeline.reporting.tables import expected_range

    assert expected_range(2) == pytest.approx(2 / np.sqrt(np.pi), abs=0.01)  # E|Z1 - Z2| = 2 / sqrt(pi)
    assert expected_range(4) == pytest.approx(2.059, abs=0.01)
