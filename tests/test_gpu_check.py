"""scripts/gpu-check on CPU (`--device cpu --tiny`): the CUDA check's code path runs end to end and cannot rot."""
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 1-2 minutes on 2 shared cores (a dozen tiny training runs and a torchrun)
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
    # tiny: descent is required of every model on the one batch it trains on (the probe set is the GPU's check)
    descents = {check["name"]: check for check in result["checks"] if "loss decreases on the batch" in check["name"]}
    assert len(descents) == len(result["sizes"]["models"]), names
    assert all(check["loss_after"] <= 0.5 * check["loss_before"] for check in descents.values()), descents
    assert result["resume"]["bitwise"] and result["resume"]["resumed_from_steps"] == [result["resume"]["stopped_at"]]
    assert {run["amp"] for run in result["training"]} == {"bf16", "fp16", "fp32"}
    assert any(run["launch"] == "torchrun 1 proc" for run in result["training"])
    assert result["machine"]["torch"] and result["machine"]["cpu_count"]
    assert result["max_classes"]["classes"] is None  # CPU: skipped with a note
    assert "PASSED" in markdown and "| check | result | numbers |" in markdown


@pytest.mark.parametrize("lr", [0.0, None])
def test_fixed_batch_descent_check_fails_when_the_step_does_not_descend(tmp_path, lr):
    """The tiny descent check can fail: with lr 0 the weights never move and the batch's loss stays where it was;
    with the paper profile's lr it passes (MobileFaceNet, bf16 on this CPU's kernels)."""
    from bench import gpu_check

    sizes = dataclasses.replace(gpu_check.TINY, models=("mobilefacenet",))
    args = gpu_check.parse(["--device", "cpu", "--tiny", "--work", str(tmp_path)])
    checker = gpu_check.Checker(args, sizes, torch.device("cpu"), tmp_path)
    if lr is not None:
        checker.base_cfg = checker.base_cfg.model_copy(update={"lr": lr})
    checker.data = gpu_check.make_data(sizes)
    gpu_check.section_fixed_batch(checker)
    [check] = checker.checks
    assert "loss decreases on the batch it trains on" in check["name"]
    if lr == 0.0:
        assert not check["passed"] and check["loss_after"] == pytest.approx(check["loss_before"]), check
    else:
        assert check["passed"] and check["loss_after"] <= gpu_check.FIXED_BATCH_RATIO * check["loss_before"], check


def test_halved_needs_finite_losses_and_a_halving():
    from bench.gpu_check import halved

    assert halved(20.0, 10.0) and halved(20.0, 0.01)
    assert not halved(20.0, 10.5) and not halved(20.0, 20.0) and not halved(20.0, 30.0)
    assert not halved(20.0, float("nan")) and not halved(float("inf"), 1.0) and not halved(None, 1.0)


@pytest.mark.slow
def test_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    completed = subprocess.run(
        ["bash", "scripts/gpu-check", "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2 and "CUDA is not available" in completed.stderr
    assert not (tmp_path / "gpu_check.json").exists()
