"""The training engine: bitwise-exact resume, the divergence guard, weight-decay groups, the schedule."""
import json
import logging
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline import heads, models

from pipeline.core import config
from pipeline.core.config import TrainConfig
from pipeline.data.images import encode_png
from pipeline.data.loader import FaceDataset, Preloaded
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_records
from pipeline.train import checkpoint, engine
from pipeline.train.engine import ModelBlewUp, TrainJob, distillation_loss, train
from pipeline.train.optim import parameter_groups, step_lr_factor
from pipeline.train.order import StepBatchSampler

SIZE = 32


def tiny_dataset(n=48, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator) * 0.3 + labels[:, None, None, None] * 0.2
    return TensorDataset(images, labels)


def train_config(**fields) -> TrainConfig:
    """params.yaml's cpu train section (the one source of defaults), curves off, eager (compiling has its own
    tests), with the test's fields."""
    return TrainConfig(**{**config.load(profile="cpu").train.model_dump(), "curve_every": 0, "compile": "none", **fields})


def make_job(iterations=8, seed=3, head="li_arcface", lr=0.05, **train_overrides):
    torch.manual_seed(seed)
    backbone = models.build("mobilefacenet", embedding_size=16, input_size=SIZE)
    margin_head = heads.build(head, 16, 4, s=16.0)
    cfg = train_config(
        batch_size=8, iterations=iterations, lr=lr, checkpoint_every=2, log_every=1, device="cpu", **train_overrides
    )
    return TrainJob("tiny", backbone, margin_head, cfg, seed=seed, weight_decay=5e-4, embedding_wd_mult=10.0,
                    description={"test": "tiny", "iterations": iterations})


def weights(path):
    return checkpoint.load_weights(path)


def test_killed_run_resumes_bitwise(tmp_path):
    data = tiny_dataset()
    whole = train(make_job(), data, tmp_path / "whole")
    # the "killed" run stops after step 5; its last checkpoint is step 4; a fresh process resumes from there
    train(make_job(), data, tmp_path / "killed", stop_after=5)
    assert (tmp_path / "killed" / "checkpoint.pt").is_file()
    assert checkpoint.load(tmp_path / "killed" / "checkpoint.pt")["step"] == 4
    resumed = train(make_job(), data, tmp_path / "killed")
    a, b = weights(tmp_path / "whole" / "model.pt"), weights(tmp_path / "killed" / "model.pt")
    for part in ("backbone", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    assert resumed.final_loss == whole.final_loss
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()  # finished runs leave no checkpoint behind
    record = json.loads((tmp_path / "killed" / "train.json").read_text())
    assert record["resumed_from_steps"] == [4]
    assert json.loads((tmp_path / "whole" / "train.json").read_text())["resumed_from_steps"] == []


def face_records(path, n=48, classes=4):
    """`tiny_dataset`'s kind of data as a records directory (PNG crops), what the pipeline trains on."""
    generator = np.random.default_rng(0)
    write_records(path, [
        FaceRecord(image=encode_png(generator.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)), label=i % classes,
                   landmarks=NO_LANDMARKS.copy(), source=f"img{i}.png")
        for i in range(n)
    ], shard_size=16)
    return FaceDataset(path)


def test_batches_from_memory_train_what_loader_workers_train(tmp_path):
    """num_workers 0 cuts batches from the decoded set (engine.Preloaded), num_workers 1 decodes in a worker: the same
    weights, and a killed in-memory run resumes to them."""
    dataset = face_records(tmp_path / "records")
    assert isinstance(engine._batches(dataset, [[0, 1]], 0, torch.device("cpu")), Preloaded)
    train(make_job(num_workers=1), dataset, tmp_path / "workers")
    train(make_job(num_workers=0), dataset, tmp_path / "memory", stop_after=3)
    train(make_job(num_workers=0), dataset, tmp_path / "memory")
    a, b = weights(tmp_path / "workers" / "model.pt"), weights(tmp_path / "memory" / "model.pt")
    for part in ("backbone", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key


def test_checkpoint_of_another_job_is_not_resumed(tmp_path):
    data = tiny_dataset()
    train(make_job(iterations=8), data, tmp_path / "run", stop_after=4)
    other = make_job(iterations=6)
    other.description = {"test": "other"}
    result = train(other, data, tmp_path / "run")
    assert result.steps == 6


def test_a_checkpoint_that_cannot_be_read_is_trained_over_and_the_log_names_it(tmp_path, caplog):
    """Issue 25: a truncated checkpoint.pt stopped the stage ("cannot be read") with nothing to do about it. It holds
    nothing to continue, so the run starts over, as for another job's checkpoint; a fresh start is bitwise the
    uninterrupted run, and the new run's first checkpoint replaces the damaged file."""
    data = tiny_dataset()
    train(make_job(), data, tmp_path / "whole")
    train(make_job(), data, tmp_path / "cut", stop_after=5)
    damaged = tmp_path / "cut" / "checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with caplog.at_level(logging.INFO, logger="facerepro.train"):
        result = train(make_job(), data, tmp_path / "cut")
    assert result.steps == 8
    assert json.loads((tmp_path / "cut" / "train.json").read_text())["resumed_from_steps"] == []
    a, b = weights(tmp_path / "whole" / "model.pt"), weights(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(a[part][key], b[part][key]) for part in ("backbone", "head") for key in a[part])
    [line] = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert line.startswith(f"checkpoint {damaged} cannot be read: ") and line.endswith(": training starts over"), line


def test_the_resume_log_names_each_changed_key_with_its_values():
    saved = {"iterations": 8, "train": {"lr": 0.1, "momentum": 0.9, "amp": "none"}, "code": "abc", "data": "d1"}
    wanted = {"iterations": 8, "train": {"lr": 0.05, "momentum": 0.9, "amp": "bf16"}, "code": "abd", "init": "x"}
    assert engine.identity_changes(saved, wanted) == [
        "code: 'abc' -> 'abd'", "data: 'd1' -> absent", "init: absent -> 'x'", "train.amp: 'none' -> 'bf16'",
        "train.lr: 0.1 -> 0.05",
    ]
    assert engine.identity_changes(saved, saved) == []


def test_divergence_is_recorded_not_raised(tmp_path):
    job = make_job(iterations=6, lr=1e30)  # an absurd learning rate blows the weights up within a step or two
    result = train(job, tiny_dataset(), tmp_path / "run")
    assert result.diverged_at_step is not None and result.diverged_at_step < 6
    assert math.isfinite(result.last_finite.get("loss", 0.0))
    meta = weights(tmp_path / "run" / "model.pt")["meta"]
    assert meta["diverged_at_step"] == result.diverged_at_step


def test_weight_decay_multiplier_reaches_the_embedding_layers():
    backbone = models.build("mobilefacenet", embedding_size=16, input_size=SIZE)
    groups = parameter_groups(backbone, backbone.embedding_layers(), [], 5e-4, 10.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["embedding"]["weight_decay"] == pytest.approx(5e-3)
    counted = sum(p.numel() for g in groups for p in g["params"])
    assert counted == sum(p.numel() for p in backbone.parameters())


def test_paper_schedule():
    milestones = [0.6, 26 / 30, 29 / 30]
    assert step_lr_factor(17999, 30000, milestones, 0.1) == 1.0
    assert step_lr_factor(18000, 30000, milestones, 0.1) == pytest.approx(0.1)
    assert step_lr_factor(26000, 30000, milestones, 0.1) == pytest.approx(0.01)
    assert step_lr_factor(29999, 30000, milestones, 0.1) == pytest.approx(0.001)
    assert step_lr_factor(0, 100, milestones, 0.1, warmup=10) == pytest.approx(0.1)


def test_sampler_resumes_mid_epoch():
    full = list(StepBatchSampler(20, 4, seed=1, start_step=0, total_steps=12))
    tail = list(StepBatchSampler(20, 4, seed=1, start_step=7, total_steps=12))
    assert full[7:] == tail
    assert sorted(i for batch in full[:5] for i in batch) == list(range(20))  # one epoch covers every item once


def test_distillation_loss_matches_its_formula():
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    expected = ((s / s.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert distillation_loss(s, t) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(s, 3 * s)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_run_trains_with_a_frozen_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = models.build("mobilefacenet", embedding_size=24, input_size=SIZE).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    job = make_job(iterations=4)
    job.teacher, job.distill_weight = teacher, 1.0
    result = train(job, tiny_dataset(), tmp_path / "run")
    assert math.isfinite(result.final_loss)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.slow  # inductor compiles the forward and backward graphs: 15 s (activations) to a minute (backbone)
@pytest.mark.parametrize("mode", ["activations", "backbone"])
def test_compiled_training_takes_the_eager_step(tmp_path, mode):
    # one step: the fused kernels sum in another order, and over several steps at batch 8 BatchNorm amplifies such
    # differences beyond any fixed tolerance (3 steps differed by more than 1e-3); one step isolates the compile path
    data = tiny_dataset()
    start = make_job().backbone.state_dict()
    eager = train(make_job(iterations=1), data, tmp_path / "eager")
    compiled = train(make_job(iterations=1, compile=mode), data, tmp_path / "compiled")
    a, b = weights(tmp_path / "eager" / "model.pt"), weights(tmp_path / "compiled" / "model.pt")
    assert a["backbone"].keys() == b["backbone"].keys()  # the state dict of the module, not of the wrapper
    assert compiled.final_loss == pytest.approx(eager.final_loss, rel=1e-4)  # the first forward, same weights
    keys = [k for k, v in start.items() if v.is_floating_point()]
    step_eager = torch.cat([(a["backbone"][k] - start[k]).reshape(-1) for k in keys])
    step_compiled = torch.cat([(b["backbone"][k] - start[k]).reshape(-1) for k in keys])
    assert step_eager.norm() > 0
    assert (step_compiled - step_eager).norm() / step_eager.norm() < 1e-2  # the same update, up to summation order


def test_a_step_that_leaves_the_weights_non_finite_is_a_divergence(tmp_path, monkeypatch):
    # finite gradients can still overflow a weight (Circle loss's gamma=256 on the smoke profile did): the curve
    # point after that step must not see it, and the run ends as diverged at that step
    optimizer_step = torch.optim.SGD.step
    calls = []

    def step_then_overflow(self, *args, **kwargs):
        out = optimizer_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            self.param_groups[0]["params"][0].data.fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_overflow)
    seen = []

    def curve(backbone):
        seen.append(all(bool(torch.isfinite(p).all()) for p in backbone.parameters()))
        return {"curve_x": 0.5}

    result = train(make_job(iterations=8, curve_every=1), tiny_dataset(), tmp_path / "run", curve_fn=curve)
    assert result.diverged_at_step == 2 and seen == [True, True]  # steps 0 and 1 were scored, step 2 overflowed
    assert weights(tmp_path / "run" / "model.pt")["meta"]["diverged_at_step"] == 2


def test_a_model_whose_embeddings_overflow_at_a_curve_point_has_diverged(tmp_path):
    # finite weights whose eval-mode embeddings pass float32 (Circle loss on the smoke profile: norms of 1e19+)
    def curve(backbone):
        raise ModelBlewUp("synth-lfw: images [0] give a zero or non-finite embedding")

    result = train(make_job(iterations=8, curve_every=3), tiny_dataset(), tmp_path / "run", curve_fn=curve)
    assert result.diverged_at_step == 2 and result.steps == 3
    assert weights(tmp_path / "run" / "model.pt")["meta"]["diverged_at_step"] == 2
