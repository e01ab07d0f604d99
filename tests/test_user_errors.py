"""Issue 25, item 3: what a new user met. A stage that fails for a reason the user can fix (memory, a full disk,
Ctrl-C) ends with one line that says what to do, not a traceback."""
from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import stage
from pipeline.config import PROJECT_ROOT
from pipeline.data import records
from stages import synthesize, train


@pytest.fixture()
def smoke(tmp_path):
    """The smoke profile's params.yaml in an empty project folder: (its path, the raw parameters)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


@pytest.fixture()
def entry_point(monkeypatch, capsys):
    """Run `stage.main(name, run, ...)` in this process as `python -m stages.<name> ARGS` would: (exit code, stderr)."""
    previous = signal.getsignal(signal.SIGTERM)  # stage.main turns SIGTERM into SystemExit; give pytest its own back

    def call(name, run, args, add_arguments=None):
        monkeypatch.setattr(sys, "argv", [f"stages.{name}", *map(str, args)])
        try:
            with pytest.raises(SystemExit) as exited:
                stage.main(name, run, add_arguments)
        except KeyboardInterrupt:  # escaping, it would end the test session as a Ctrl-C does
            pytest.fail("KeyboardInterrupt escaped stage.main")
        return exited.value.code, capsys.readouterr().err

    yield call
    signal.signal(signal.SIGTERM, previous)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n") and "Traceback" not in stderr, stderr
    return stderr.rstrip("\n")


# --- run-time failures end with one line -----------------------------------------------------------------------


def allocate_with_pil(cfg, paths):
    raise MemoryError()  # what PIL's Image.new raised at align.crop_size 100000: no message at all


def allocate_with_numpy(cfg, paths):
    np.empty(1 << 60, np.uint8)  # an exabyte: more than any address space, so it fails on every machine


def allocate_with_torch(cfg, paths):
    torch.empty(1 << 60, dtype=torch.uint8)  # torch reports it as a RuntimeError (backbone.embedding_size 10^9)


@pytest.mark.parametrize("run, size", [
    (allocate_with_pil, None), (allocate_with_numpy, "1.00 EiB"), (allocate_with_torch, "1.2 EB"),
])
def test_running_out_of_memory_is_one_line_naming_the_sizes_to_check(smoke, entry_point, run, size):
    path, _ = smoke
    code, stderr = entry_point("align", run, ["--params", path])
    line = one_line(stderr)
    assert code == 1 and line.startswith("stage align failed: out of memory"), line
    assert "align.crop_size" in line and "backbone.embedding_size" in line
    assert size is None or f"it tried to allocate {size}" in line, line


def test_a_full_disk_during_synthesize_is_one_line_and_leaves_nothing(smoke, entry_point, monkeypatch):
    path, _ = smoke
    write_table = records.pq.write_table

    def disk_fills(table, where, **kwargs):  # the second shard finds the disk full, half written, as pyarrow does
        if disk_fills.calls:
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        disk_fills.calls += 1
        write_table(table, where, **kwargs)

    disk_fills.calls = 0
    monkeypatch.setattr(records.pq, "write_table", disk_fills)
    code, stderr = entry_point("synthesize", synthesize.run, ["--params", path])
    line = one_line(stderr)
    assert code == 1 and line.startswith(f"stage synthesize failed: disk full writing under {path.parent} ("), line
    assert disk_fills.calls == 1
    assert not (path.parent / "data").exists() or not any((path.parent / "data").iterdir())  # nothing partial


def test_a_full_disk_names_the_file_when_the_error_does(smoke, entry_point):
    path, _ = smoke
    target = path.parent / "reports" / "data.json"

    def run(cfg, paths):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    code, stderr = entry_point("synthesize", run, ["--params", path])
    assert code == 1 and one_line(stderr).startswith(f"stage synthesize failed: disk full writing {target} (")


def test_ctrl_c_is_one_line_and_exit_code_130(smoke, entry_point):
    path, _ = smoke

    def run(cfg, paths, row):
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; Python raises KeyboardInterrupt where it lands
        time.sleep(30)

    code, stderr = entry_point("train", run, ["--params", path, "--row", "cosface"], train._arguments)
    assert code == 130
    assert one_line(stderr) == "interrupted: stage train stopped; `dvc repro` resumes it"


def test_a_fault_in_the_code_keeps_its_traceback(smoke, entry_point):
    path, _ = smoke

    def run(cfg, paths):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        entry_point("align", run, ["--params", path])
