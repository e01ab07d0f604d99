"""Where a profile's `dvc repro` spends its wall time: per stage, and within the training stages the training loops
against everything around them, beside the machine's measured matmul peak.

    nice -n 0 python benchmarks/pipeline_time.py [--profile cpu] [--targets train@cosface evaluate@cosface]

Copies the project (tracked and untracked-not-ignored files, no data) to a temporary folder, sets `profile:`,
runs `dvc repro [targets]` (the targets and everything upstream) and timestamps DVC's `Running stage` lines: a
stage runs from its line to the next one (or the end). For a training stage (pretrain, train@, distill, and the
cleaning bootstrap inside clean) the training loops' own time is the sum of `seconds` in the seeds' train.json
(steps with their curve points and checkpoints, as the engine times them); the rest of the stage is start-up,
imports, data loading, saving and tracking. The cost of starting a stage alone is measured apart: a fresh
`python -c "import stages.<stage>"`, best of 3. The achieved training FLOP/s count 3 x 2 x the backbone's forward
MACs per image (forward, and a backward about twice the forward) at the images/s the engine reports, against
2048 x 2048 `torch.matmul` in fp32 and bf16 on the same threads (best of 3).
Writes reports/bench/pipeline_time.json and .md; hold the heavy-job lock while it runs, nothing else heavy beside.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config  # noqa: E402
from pipeline.atomic_io import write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.models.complexity import count_macs  # noqa: E402
from pipeline.models import build  # noqa: E402
from tests.test_resume_pipeline import copy_project  # noqa: E402

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TRAINING = re.compile(r"^(pretrain|train@.+|distill|clean)$")  # stages whose models write train.json


def stage_times(lines: Iterable[tuple[float, str]], end: float) -> list[dict]:
    """(time, line) pairs of DVC's output -> [{stage, start, seconds}] in the order DVC ran them."""
    starts = [(t, m.group(1)) for t, line in lines if (m := STAGE_LINE.search(line))]
    ends = [t for t, _ in starts[1:]] + [end]
    return [{"stage": name, "start": t, "seconds": stop - t} for (t, name), stop in zip(starts, ends)]


def stage_kind(stage: str) -> str:
    """The part of the pipeline a stage belongs to, for the summary."""
    name = stage.split("@")[0]
    return {"pretrain": "training", "train": "training", "distill": "training", "clean": "cleaning (with its bootstrap)",
            "evaluate": "evaluation", "evaluate_models": "evaluation", "table": "report", "report": "report"}.get(name, name)


def loop_seconds(models: Path, stage: str) -> float | None:
    """The training loops' own time in a training stage: the train.json `seconds` of the models it trained."""
    folders = {"pretrain": ["pretrain"], "distill": ["teacher", "student"], "clean": ["bootstrap"]}.get(
        stage, [stage.removeprefix("train@")] if stage.startswith("train@") else [])
    records = [json.loads(p.read_text()) for f in folders for p in sorted((models / f).rglob("train.json"))]
    return sum(r["seconds"] for r in records) if records else None


def images_per_second(models: Path, stage: str) -> float | None:
    """The engine's images/s over the seeds of a training stage's model (pretrain or a row)."""
    folder = stage.removeprefix("train@")
    rates = [json.loads(p.read_text())["images_per_second"] for p in sorted((models / folder).glob("seed*/train.json"))]
    return sum(rates) / len(rates) if rates else None


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def startup_seconds(root: Path, module: str, repeats: int = 3) -> float:
    """A fresh interpreter importing one stage module: what every stage pays before its work."""
    return min(_timed(lambda: subprocess.run([sys.executable, "-c", f"import {module}"], cwd=root, check=True))
               for _ in range(repeats))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def run_profile(root: Path, profile: str, targets: list[str]) -> tuple[list[dict], float]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = profile
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        for line in process.stdout:
            lines.append((time.monotonic() - start, line.rstrip()))
            print(line, end="", flush=True)
    if process.returncode != 0:
        raise RuntimeError(f"dvc repro failed ({process.returncode}):\n" + "\n".join(l for _, l in lines[-30:]))
    return stage_times(lines, time.monotonic() - start), time.monotonic() - start


def measure(profile: str, targets: list[str]) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="facerepro-pipeline-time-") as folder:
        root = Path(folder)
        copy_project(root)
        stages, total = run_profile(root, profile, targets)
        models = root / "data" / "models"
        for entry in stages:
            entry["kind"] = stage_kind(entry["stage"])
            loops = loop_seconds(models, entry["stage"]) if TRAINING.match(entry["stage"]) else None
            entry["training_loops"] = loops
            entry["around_the_loops"] = None if loops is None else entry["seconds"] - loops
        cfg = config.load(root / "params.yaml")  # the copy's: the profile's sizes
        startup = {m: startup_seconds(root, m) for m in ("stages.train", "stages.evaluate", "stages.table")}
        row = next((s["stage"] for s in stages if s["stage"].startswith("train@")), "pretrain")
        rate = images_per_second(models, row)
    macs = count_macs(build(cfg.backbone.name, cfg.backbone.embedding_size, cfg.align.crop_size, seed=0),
                      cfg.align.crop_size)
    return {
        "profile": profile, "targets": targets, "seconds": total, "stages": stages, "startup_seconds": startup,
        "machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
        "matmul_gflops": {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)},
        "training": {"row": row, "images_per_second": rate, "forward_macs_per_image": macs,
                     "gflops": None if rate is None else 3 * 2 * macs * rate / 1e9},
        "sizes": {"crop": cfg.align.crop_size, "iterations": cfg.train.iterations, "batch": cfg.train.batch_size,
                  "seeds": list(cfg.seeds)},
    }


def markdown(result: dict) -> str:
    by_kind: dict[str, float] = {}
    for s in result["stages"]:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0.0) + s["seconds"]
    m, t, size = result["machine"], result["training"], result["sizes"]
    lines = [
        "# Pipeline time", "",
        f"`python benchmarks/pipeline_time.py --profile {result['profile']}"
        + (f" --targets {' '.join(result['targets'])}`" if result["targets"] else "`")
        + f": `dvc repro` of a fresh copy, {result['seconds']:.0f} s in all. Profile `{result['profile']}`: crop "
        f"{size['crop']}, {size['iterations']} iterations of batch {size['batch']}, seeds {size['seeds']}. Machine: "
        f"{m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} on {m['torch_threads']} threads; load average "
        f"{' / '.join(f'{v:.2f}' for v in result['load_before'])} before, "
        f"{' / '.join(f'{v:.2f}' for v in result['load_after'])} after.", "",
        "| stage | part | wall (s) | training loops (s) | around them (s) |", "|---|---|---:|---:|---:|",
    ]
    for s in result["stages"]:
        loops = "" if s["training_loops"] is None else f"{s['training_loops']:.1f}"
        around = "" if s["around_the_loops"] is None else f"{s['around_the_loops']:.1f}"
        lines.append(f"| {s['stage']} | {s['kind']} | {s['seconds']:.1f} | {loops} | {around} |")
    lines += ["", "| part | wall (s) | share |", "|---|---:|---:|"]
    lines += [f"| {kind} | {sec:.0f} | {100 * sec / result['seconds']:.0f}% |" for kind, sec in by_kind.items()]
    peak = result["matmul_gflops"]
    lines += [
        "",
        "Starting a stage (a fresh interpreter importing its module, best of 3): "
        + ", ".join(f"`{k}` {v:.2f} s" for k, v in result["startup_seconds"].items()) + ".",
        "",
        f"Training ({t['row']}): {t['images_per_second']:.0f} images/s; {t['forward_macs_per_image'] / 1e6:.1f} M "
        f"forward multiply-adds per image, so about {t['gflops']:.0f} GFLOP/s (3 x 2 x MACs per image) against a "
        f"2048^2 matmul's {peak['fp32']:.0f} GFLOP/s in fp32 and {peak['bf16']:.0f} in bf16 on the same threads "
        f"({100 * t['gflops'] / peak['fp32']:.0f}% of the fp32 peak)." if t["gflops"] else "No training stage ran.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--targets", nargs="*", default=[], help="dvc repro targets (default: the whole pipeline)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "pipeline_time")
    args = parser.parse_args()
    result = measure(args.profile, args.targets)
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
