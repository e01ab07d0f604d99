"""Atomic output (issue 14, finding 6): a killed writer's staging folder does not outlive the next write."""
import os
import signal
import subprocess
import sys
import textwrap

from pipeline.core import config
from pipeline.core.atomic_io import atomic_path, sweep_staging, write_text_atomic


def staging(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def test_a_killed_writers_staging_folder_is_swept_by_the_next_write(tmp_path):
    target = tmp_path / "aligned"
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.core.atomic_io import atomic_path
        with atomic_path({str(target)!r}) as staged:
            staged.mkdir()
            (staged / "part").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=config.PROJECT_ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert len(staging(tmp_path, "aligned")) == 1  # what the killed stage left
    with atomic_path(target) as staged:
        staged.mkdir()
    assert target.is_dir() and staging(tmp_path, "aligned") == []


def test_sweep_removes_only_this_targets_stale_staging(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = [f".raw.{dead_pid}-abcd_123.tmp", ".raw.k3j9x0qz.tmp"]  # a dead writer's; one named before PIDs
    kept = [
        f".raw.{os.getpid()}-zzzzzzzz.tmp",  # a live writer's
        ".raw.notes.tmp",  # not the staging pattern
        ".raw.json.abcdefgh.tmp",  # another target's (raw.json)
        ".other.abcdefgh.tmp",
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
    (tmp_path / ".raw.abcdefgh.tmp.keep").write_text("a file")
    swept = sweep_staging(tmp_path / "raw")
    assert sorted(p.name for p in swept) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".raw.abcdefgh.tmp.keep"])


def test_atomic_write_leaves_nothing_beside_the_target(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "one\n")
    write_text_atomic(tmp_path / "a.txt", "two\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "two\n"
