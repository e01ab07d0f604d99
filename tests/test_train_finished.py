"""pipeline.train.engine.finished: a seed whose final model of the same training identity is there is not trained
again (runs.train_recipe returns before loading any data); any other model is retrained, with a line saying why."""
import logging

import pytest
import torch

from pipeline.train import checkpoint
from pipeline.train.engine import finished

IDENTITY = {"recipe": "cosface", "seed": 1, "train": {"lr": 0.1}, "code": "abc"}


@pytest.fixture()
def seed_dir(tmp_path):
    """A finished seed as the engine leaves it: model.pt (weights and metadata) and train.json."""
    checkpoint.save(tmp_path / "model.pt", {"backbone": {"w": torch.zeros(2)}, "head": {},
                                           "meta": {"name": "cosface", "diverged_at_step": None, **IDENTITY}})
    (tmp_path / "train.json").write_text("{}")
    return tmp_path


def test_a_finished_seed_of_the_same_identity_is_finished(seed_dir):
    assert finished(seed_dir, dict(IDENTITY))


def test_another_identity_is_retrained_and_the_log_names_what_changed(seed_dir, caplog):
    with caplog.at_level(logging.INFO, logger="facerepro.train"):
        assert not finished(seed_dir, {**IDENTITY, "train": {"lr": 0.05}})
    assert "train.lr: 0.1 -> 0.05" in caplog.text and "training starts over" in caplog.text


def test_a_seed_without_its_record_or_with_a_damaged_model_is_retrained(seed_dir, caplog):
    (seed_dir / "train.json").unlink()
    assert not finished(seed_dir, dict(IDENTITY))
    (seed_dir / "train.json").write_text("{}")
    (seed_dir / "model.pt").write_bytes(b"\0" * 64)
    assert not finished(seed_dir, dict(IDENTITY))
    assert "model.pt" in caplog.text and "training starts over" in caplog.text
