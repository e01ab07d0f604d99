"""benchmarks/pipeline_time.py: stage wall times from DVC's timestamped output, and the training loops' share."""
import json

import pytest

from benchmarks.pipeline_time import loop_seconds, markdown, stage_kind, stage_times


def test_a_stage_runs_from_its_line_to_the_next():
    lines = [(0.0, "Running stage 'validate':"), (0.4, "> python -m stages.validate"),
             (1.5, "Running stage 'train@cosface':"), (2.0, "cosface: step 10"), (9.5, "Running stage 'report':")]
    found = stage_times(lines, end=10.0)
    assert [(s["stage"], s["seconds"]) for s in found] == [("validate", 1.5), ("train@cosface", 8.0), ("report", 0.5)]
    assert stage_times([], end=3.0) == []


def test_stages_fall_into_the_pipelines_parts():
    assert [stage_kind(s) for s in ("train@cosface", "pretrain", "evaluate_models@teacher", "table@table3", "align")] == [
        "training", "training", "evaluation", "report", "align"]


def test_the_training_loops_are_the_models_own_seconds(tmp_path):
    for folder, seconds in (("cosface/seed0", 80.0), ("cosface/seed1", 82.5), ("bootstrap", 10.0)):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "train.json").write_text(json.dumps({"seconds": seconds, "images_per_second": 200.0}))
    assert loop_seconds(tmp_path, "train@cosface") == pytest.approx(162.5)
    assert loop_seconds(tmp_path, "clean") == pytest.approx(10.0)  # the bootstrap has no seed folders
    assert loop_seconds(tmp_path, "distill") is None  # nothing trained there


def test_the_report_names_the_machine_the_load_and_the_peak():
    stage = {"stage": "train@cosface", "kind": "training", "seconds": 100.0, "training_loops": 90.0, "around_the_loops": 10.0}
    result = {
        "profile": "cpu", "targets": ["train@cosface"], "seconds": 100.0, "stages": [stage],
        "startup_seconds": {"stages.train": 2.0}, "load_before": (1.0, 1.0, 1.0), "load_after": (2.0, 2.0, 2.0),
        "machine": {"cpu": "a CPU", "cpu_count": 2, "torch": "2.x", "torch_threads": 2},
        "matmul_gflops": {"fp32": 200.0, "bf16": 800.0},
        "training": {"row": "train@cosface", "images_per_second": 250.0, "forward_macs_per_image": 40e6, "gflops": 60.0},
        "sizes": {"crop": 48, "iterations": 300, "batch": 64, "seeds": [0, 1, 2]},
    }
    text = markdown(result)
    assert "| train@cosface | training | 100.0 | 90.0 | 10.0 |" in text
    assert "a CPU, 2 CPUs" in text and "1.00 / 1.00 / 1.00 before" in text
    assert "about 60 GFLOP/s" in text and "200 GFLOP/s in fp32" in text and "(30% of the fp32 peak)" in text
