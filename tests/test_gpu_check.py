"""scripts/gpu-check on CPU (`--device cpu --tiny`): the CUDA check's code path runs end to end and cannot rot."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # about 1-2 minutes on 2 shared cores (a dozen tiny training runs and a torchrun)


def test_gpu_check_tiny_on_cpu_passes_and_writes_its_report(tmp_path):
    completed = subprocess.run(
        ["bash", "scripts/gpu-check", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert result["passed"] and result["profile"] == "tiny"
    assert result["checks"] and all(check["passed"] for check in result["checks"]), result["summary"]
    assert not result["skipped"], f"the time guard skipped sections on CPU-tiny: {result['skipped']}"
    names = " | ".join(check["name"] for check in result["checks"])
    for expected in ("loss decreases", "no NaN", "checkpoint + stop + resume", "evaluation", "torchrun", "compile"):
        assert expected in names, f"no check named {expected!r}: {names}"
    assert result["resume"]["bitwise"] and result["resume"]["resumed_from_steps"] == [result["resume"]["stopped_at"]]
    assert {run["amp"] for run in result["training"]} == {"bf16", "fp16", "fp32"}
    assert any(run["launch"] == "torchrun 1 proc" for run in result["training"])
    assert result["machine"]["torch"] and result["machine"]["cpu_count"]
    assert result["max_classes"]["classes"] is None  # CPU: skipped with a note
    assert "PASSED" in markdown and "| check | result | numbers |" in markdown


def test_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    completed = subprocess.run(
        ["bash", "scripts/gpu-check", "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2 and "CUDA is not available" in completed.stderr
    assert not (tmp_path / "gpu_check.json").exists()
