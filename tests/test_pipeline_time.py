"""bench/pipeline_time.py: stage wall times from DVC's timestamped output, split into the engine's and the
evaluation's recorded parts."""
import json

import pytest

from bench.pipeline_time import evaluation_timing, loop_parts, markdown, split_stage, stage_kind, stage_times
from pipeline.evaluate.record import EvaluationTiming, ModelEvaluation, SeedEvaluation


def test_a_stage_runs_from_its_line_to_the_next():
    lines = [(0.0, "Running stage 'validate':"), (0.4, "> python -m stages.validate"),
             (1.5, "Running stage 'train@cosface':"), (2.0, "cosface: step 10"), (9.5, "Running stage 'report':")]
    found = stage_times(lines, end=10.0)
    assert [(s["stage"], s["seconds"]) for s in found] == [("validate", 1.5), ("train@cosface", 8.0), ("report", 0.5)]
    assert stage_times([], end=3.0) == []


def test_stages_fall_into_the_pipelines_parts():
    assert [stage_kind(s) for s in ("train@cosface", "pretrain", "evaluate_models@teacher", "table@table3", "align")] == [
        "training", "training", "evaluation", "report", "align"]


def write_run(root, folder, timing, images=19200):
    (root / folder).mkdir(parents=True)
    (root / folder / "train.json").write_text(json.dumps({"seconds": sum(timing.values()), "images": images,
                                                          "timing": timing}))


def test_a_training_stage_splits_into_the_engines_parts_and_the_rest(tmp_path):
    models = tmp_path / "data" / "models"
    write_run(models, "cosface/seed0", {"data": 1.0, "steps": 60.0, "curve": 5.0, "checkpoints": 0.5, "tracking": 0.5})
    write_run(models, "cosface/seed1", {"data": 1.0, "steps": 62.0, "curve": 5.0, "checkpoints": 0.5, "tracking": 0.5})
    write_run(models, "bootstrap", {"steps": 10.0})
    assert loop_parts(models, "train@cosface") == pytest.approx(
        {"data": 2.0, "steps": 122.0, "curve": 10.0, "checkpoints": 1.0, "tracking": 1.0})
    assert loop_parts(models, "clean")["steps"] == pytest.approx(10.0)  # the bootstrap has no seed folders
    assert loop_parts(models, "distill") is None  # nothing trained there
    entry = {"stage": "train@cosface", "kind": "training", "seconds": 150.0}
    parts = split_stage(entry, loop_parts(models, "train@cosface"), None)
    assert parts["training steps"] == pytest.approx(122.0) and parts["start-up and around"] == pytest.approx(14.0)
    assert split_stage({"stage": "align", "kind": "align", "seconds": 9.0}, None, None) == {"align": 9.0}


def test_an_evaluation_stage_splits_into_its_seeds_embedding_and_scoring_and_the_rest(tmp_path):
    metrics = tmp_path / "reports" / "metrics" / "eval"
    timing = EvaluationTiming(seconds=20.0, images=1000, forward_passes=2000)
    seeds = {s: SeedEvaluation(diverged_at_step=None, train={}, benchmarks={}, timing=timing) for s in (0, 1)}
    seeds[2] = SeedEvaluation(diverged_at_step=40, train={}, benchmarks={}, timing=None)  # nothing scored
    ModelEvaluation("cosface", "CosFace", True, seeds).save(metrics / "cosface.json")
    assert evaluation_timing(metrics, "evaluate@cosface") == {"seconds": 40.0, "forward_passes": 4000}
    assert evaluation_timing(metrics, "evaluate@other") is None
    entry = {"stage": "evaluate@cosface", "kind": "evaluation", "seconds": 45.0}
    parts = split_stage(entry, None, evaluation_timing(metrics, "evaluate@cosface"))
    assert parts == pytest.approx({"evaluation": 40.0, "start-up and around": 5.0})


def test_the_report_names_the_machine_the_load_the_parts_and_the_peak():
    stages = [
        {"stage": "train@cosface", "kind": "training", "seconds": 100.0,
         "parts": {"data": 1.0, "training steps": 80.0, "curve": 9.0, "start-up and around": 10.0}},
        {"stage": "evaluate@cosface", "kind": "evaluation", "seconds": 30.0,
         "parts": {"evaluation": 25.0, "start-up and around": 5.0}},
    ]
    result = {
        "profile": "cpu", "targets": ["evaluate@cosface"], "seconds": 130.0, "no_op_repro_seconds": 2.5,
        "stages": stages, "startup_seconds": {"stages.train": 2.0}, "load_before": (1.0, 1.0, 1.0),
        "load_after": (2.0, 2.0, 2.0), "machine": {"cpu": "a CPU", "cpu_count": 2, "torch": "2.x", "torch_threads": 2},
        "matmul_gflops": {"fp32": 200.0, "bf16": 800.0}, "forward_macs_per_image": 40e6,
        "training": {"images": 19200, "steps_seconds": 80.0, "images_per_second": 240.0, "gflops": 57.6},
        "evaluation": {"forward_passes": 50000, "seconds": 25.0, "forward_passes_per_second": 2000.0, "gflops": 160.0},
        "sizes": {"crop": 48, "iterations": 300, "batch": 64, "seeds": [0, 1, 2], "evaluate_batch": 32},
    }
    text = markdown(result)
    assert "| train@cosface | 100.0 | 1.0 | 80.0 | 9.0 | 10.0 |  |" in text
    assert "| evaluate@cosface | 30.0 |  |  |  | 5.0 | 25.0 |" in text
    assert "| start-up and around | 15 | 12% |" in text
    assert "a CPU, 2 CPUs" in text and "1.00 / 1.00 / 1.00 before" in text and "no-op `dvc repro` after it 2.5 s" in text
    assert "about 58 GFLOP/s" in text and "29% of the fp32 peak" in text and "80% of the fp32 peak" in text
