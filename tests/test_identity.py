"""Issue 14, finding 2: a resume checks everything that changes the result. The training identity covers every
training parameter, the data, the cleaning manifest, the starting weights and the code; a checkpoint of another
identity is not continued, and the log says why."""
import logging

import pytest
import torch

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import recipes
from pipeline.experiment.runs import NOT_IN_IDENTITY, training_identity
from pipeline.train import checkpoint
from pipeline.train.engine import resumable


@pytest.fixture
def setup(tmp_path):
    cfg = config.load(PROJECT_ROOT / "params.yaml", "cpu")
    paths = Paths(tmp_path)
    (paths.train_records(paths.aligned)).mkdir(parents=True)
    (paths.train_records(paths.aligned) / "part-0.parquet").write_bytes(b"images")
    paths.manifest.parent.mkdir(parents=True)
    paths.manifest.write_bytes(b"kept rows")
    pretrain = paths.model_dir("pretrain") / "seed0" / "model.pt"
    pretrain.parent.mkdir(parents=True)
    pretrain.write_bytes(b"weights")
    return cfg, paths


def identity(cfg, paths, row="cosface", **train):
    train_cfg = cfg.train.model_copy(update=train)
    return training_identity(cfg, paths, recipes(cfg)[row], 0, train_cfg, torch.device("cpu"))


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.05), ("lr_milestones", [0.5, 0.9]), ("lr_gamma", 0.5), ("momentum", 0.8), ("flip_augment", False),
     ("amp", "bf16"), ("grad_clip", 5.0), ("weight_decay", 1e-4), ("batch_size", 32), ("iterations", 10),
     ("warmup_iterations", 5), ("channels_last", False)],
)
def test_every_training_parameter_changes_the_identity(setup, field, value):
    cfg, paths = setup
    assert identity(cfg, paths, **{field: value}) != identity(cfg, paths)


@pytest.mark.parametrize("field, value", [("log_every", 3), ("checkpoint_every", 7), ("curve_every", 0), ("num_workers", 2)])
def test_bookkeeping_parameters_do_not(setup, field, value):
    cfg, paths = setup
    assert field in NOT_IN_IDENTITY
    assert identity(cfg, paths, **{field: value}) == identity(cfg, paths)


def test_the_data_manifest_and_starting_weights_are_part_of_it(setup):
    cfg, paths = setup
    before_plain, before_ns = identity(cfg, paths), identity(cfg, paths, row="arcface_m050_ns")
    paths.manifest.write_bytes(b"other kept rows")
    assert identity(cfg, paths) != before_plain
    (paths.train_records(paths.aligned) / "part-0.parquet").write_bytes(b"other images")
    changed = identity(cfg, paths)
    (paths.model_dir("pretrain") / "seed0" / "model.pt").write_bytes(b"other weights")
    assert identity(cfg, paths) == changed  # a scratch row does not read the pretrained weights
    assert identity(cfg, paths, row="arcface_m050_ns") != before_ns
    assert identity(cfg, paths)["code"] and identity(cfg, paths)["train"]["compile"] in ("none", "activations")


def test_a_checkpoint_of_another_identity_is_not_resumed_and_the_log_says_why(setup, tmp_path, caplog):
    cfg, paths = setup
    saved = identity(cfg, paths)
    checkpoint.save(tmp_path / "run" / "checkpoint.pt", {"description": saved})
    assert resumable(tmp_path / "run", saved)
    with caplog.at_level(logging.INFO, logger="facerepro.train"):
        assert not resumable(tmp_path / "run", identity(cfg, paths, lr=0.05))
    assert "train differ" in caplog.text and "starts over" in caplog.text
