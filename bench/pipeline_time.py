"""Where a profile's `dvc repro` spends its wall time: per stage, split into start-up, data, training steps, curve
points, checkpoints, tracking, evaluation and report, beside the machine's measured matmul peak.

    nice -n 0 python -m bench.pipeline_time [--profile cpu] [--targets train@cosface evaluate@cosface]
    nice -n 0 python -m bench.pipeline_time --fresh-clone [--copy-reports]   # the README's first command, timed

`--fresh-clone` times what a new user runs: a `git clone` of this project's HEAD in a temporary folder, then `bash
scripts/reproduce` there (its install, a new .venv, included; the default run with params.yaml's profile), then a
second `bash scripts/reproduce` (nothing to do); `--copy-reports` copies that run's reports/ (but bench/) and
dvc.lock into this project, so the committed default-run results are the timed run's.

Copies the project (tracked and untracked-not-ignored files, no data) to a temporary folder, sets `profile:`,
runs `dvc repro [targets]` (the targets and everything upstream) and timestamps DVC's `Running stage` lines: a
stage runs from its line to the next one (or the end). A training stage's (pretrain, train@, distill, and the
cleaning bootstrap inside clean) loop parts are the `timing` the engine records in each seed's train.json (data,
steps, curve, checkpoints, tracking); an evaluation stage's is the `timing` of each seed in its metrics file (every
protocol's images embedded and scored); the rest of a stage ("start-up and around") is the interpreter, imports,
loading, saving and writing. The cost of starting a stage alone is measured apart: a fresh
`python -c "import stages.<stage>"`, best of 3; and a no-op `dvc repro` of the same targets after the run. The
achieved FLOP/s count 3 x 2 x the backbone's forward MACs per trained image (forward, and a backward about twice the
forward) over the steps' time, and 2 x MACs per evaluation forward pass over the evaluation time, against 2048 x 2048
`torch.matmul` in fp32 and bf16 on the same threads (best of 3).
Writes reports/bench/pipeline_time.json and .md; hold the heavy-job lock while it runs, nothing else heavy beside.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml


from bench.peak import peaks
from pipeline.core import config
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.evaluate.record import ModelEvaluation
from pipeline.models.complexity import count_macs
from pipeline.models import build
from tests.test_resume_pipeline import copy_project
from pipeline.core.config import PROJECT_ROOT

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TRAINING = re.compile(r"^(pretrain|train@.+|distill|clean)$")  # stages whose models write train.json


def stage_times(lines: Iterable[tuple[float, str]], end: float) -> list[dict]:
    """(time, line) pairs of DVC's output -> [{stage, start, seconds}] in the order DVC ran them."""
    starts = [(t, m.group(1)) for t, line in lines if (m := STAGE_LINE.search(line))]
    ends = [t for t, _ in starts[1:]] + [end]
    return [{"stage": name, "start": t, "seconds": stop - t} for (t, name), stop in zip(starts, ends)]


def _bare(stage: str) -> str:
    """A stage's name without its dvc file (`extra/dvc.yaml:train@wd5e4` -> `train@wd5e4`)."""
    return stage.rsplit(":", 1)[-1]


def stage_kind(stage: str) -> str:
    """The part of the pipeline a stage belongs to, for the summary."""
    name = _bare(stage).split("@")[0]
    return {"pretrain": "training", "train": "training", "distill": "training", "clean": "cleaning (with its bootstrap)",
            "evaluate": "evaluation", "evaluate_models": "evaluation", "table": "report", "report": "report"}.get(name, name)


LOOP_PARTS = ("data", "steps", "curve", "checkpoints", "tracking")  # pipeline.train.engine.LoopClock's


def _training_records(models: Path, stage: str) -> list[dict]:
    stage = _bare(stage)
    folders = {"pretrain": ["pretrain"], "distill": ["teacher", "student"], "clean": ["bootstrap"]}.get(
        stage, [stage.removeprefix("train@")] if stage.startswith("train@") else [])
    return [json.loads(p.read_text()) for f in folders for p in sorted((models / f).rglob("train.json"))]


def loop_parts(models: Path, stage: str) -> dict[str, float] | None:
    """A training stage's loop time by part, summed over the models and seeds it trained (None: it trained none)."""
    records = _training_records(models, stage)
    if not records:
        return None
    return {part: sum(r.get("timing", {}).get(part, 0.0) for r in records) for part in LOOP_PARTS}


def trained_images(models: Path, stage: str) -> int:
    """Images the stage's steps trained on: the iterations times the batch, over its models' seeds."""
    return sum(r["images"] for r in _training_records(models, stage))


def evaluation_timing(metrics: Path, stage: str) -> dict[str, float] | None:
    """An evaluation stage's embedding-and-scoring seconds and forward passes, over its model's seeds."""
    model = _bare(stage).split("@", 1)[1]
    path = metrics / f"{model}.json"
    if not path.is_file():
        return None
    timings = [seed.timing for seed in ModelEvaluation.load(path).seeds.values() if seed.timing is not None]
    if not timings:
        return None
    return {"seconds": sum(t.seconds for t in timings), "forward_passes": sum(t.forward_passes for t in timings)}


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


def run_profile(root: Path, profile: str, targets: list[str]) -> tuple[list[dict], float, float]:
    """`dvc repro` of the copy: its stages' times, the total, and a second, no-op `dvc repro`'s seconds."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = profile
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    lines, total = timed_lines([sys.executable, "-m", "dvc", "repro", *targets], root, env)
    no_op = _timed(lambda: subprocess.run([sys.executable, "-m", "dvc", "repro", *targets], cwd=root, env=env,
                                          check=True, capture_output=True))
    return stage_times(lines, total), total, no_op


def split_stage(entry: dict, loop: dict[str, float] | None, evaluation: dict[str, float] | None) -> dict[str, float]:
    """A stage's wall time by part: a training stage's loop parts (`loop_parts`), an evaluation stage's embedding and
    scoring (`evaluation_timing`), the rest "start-up and around"; a stage of another kind is its kind."""
    if TRAINING.match(_bare(entry["stage"])):
        parts = {f"training {part}" if part == "steps" else part: value for part, value in (loop or {}).items()}
    elif entry["kind"] == "evaluation":
        parts = {"evaluation": evaluation["seconds"]} if evaluation else {}
    else:
        return {entry["kind"]: entry["seconds"]}
    return {**parts, "start-up and around": entry["seconds"] - sum(parts.values())}


def breakdown(root: Path, stages: list[dict]) -> tuple[float, int, float, int]:
    """Each stage of a finished run at `root` split into parts (in place); the MobileFaceNet rows' training-step
    seconds and images, and the evaluation seconds and forward passes."""
    models, metrics = root / "data" / "models", root / "reports" / "metrics" / "eval"
    steps_seconds, images, eval_seconds, forward_passes = 0.0, 0, 0.0, 0
    for entry in stages:
        stage = _bare(entry["stage"])
        entry["kind"] = stage_kind(stage)
        loop = loop_parts(models, stage) if TRAINING.match(stage) else None
        evaluation = evaluation_timing(metrics, stage) if entry["kind"] == "evaluation" else None
        entry["parts"] = split_stage(entry, loop, evaluation)
        if loop and (stage == "pretrain" or stage.startswith("train@")):  # MobileFaceNet rows
            steps_seconds += loop["steps"]
            images += trained_images(models, stage)
        if evaluation:
            eval_seconds += evaluation["seconds"]
            forward_passes += evaluation["forward_passes"]
    return steps_seconds, images, eval_seconds, forward_passes


def timed_lines(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[list[tuple[float, str]], float]:
    """Run `command`, echoing its output; each line with its seconds since the start, and the total."""
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    with subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                          ) as process:
        for line in process.stdout:
            lines.append((time.monotonic() - start, line.rstrip()))
            print(line, end="", flush=True)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n"
                           + "\n".join(l for _, l in lines[-30:]))
    return lines, time.monotonic() - start


def measure(profile: str, targets: list[str]) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="facerepro-pipeline-time-") as folder:
        root = Path(folder)
        copy_project(root)
        stages, total, no_op = run_profile(root, profile, targets)
        steps_seconds, images, eval_seconds, forward_passes = breakdown(root, stages)
        cfg = config.load(root / "params.yaml")  # the copy's: the profile's sizes
        startup = {m: startup_seconds(root, m) for m in ("stages.train", "stages.evaluate", "stages.table")}
    return _result(profile, targets, total, no_op, stages, startup, load_before, cfg, steps_seconds, images,
                   eval_seconds, forward_passes)


def measure_fresh_clone(copy_reports: bool) -> dict:
    """`bash scripts/reproduce` in a fresh clone of HEAD, install included, then once more (a no-op)."""
    load_before = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV",
                                                                          "MLFLOW_TRACKING_URI")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(PROJECT_ROOT)))
    with tempfile.TemporaryDirectory(prefix="facerepro-fresh-clone-") as folder:
        root = Path(folder) / "facerepro"
        subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(root)], check=True)
        lines, total = timed_lines(["bash", "scripts/reproduce"], root, env)
        stages = stage_times(lines, total)
        install = stages[0]["start"] if stages else total
        _, no_op = timed_lines(["bash", "scripts/reproduce"], root, env)
        steps_seconds, images, eval_seconds, forward_passes = breakdown(root, stages)
        cfg = config.load(root / "params.yaml")
        python = str(root / ".venv" / "bin" / "python")
        startup = {m: min(_timed(lambda m=m: subprocess.run([python, "-c", f"import {m}"], cwd=root, check=True))
                          for _ in range(3)) for m in ("stages.train", "stages.evaluate", "stages.table")}
        if copy_reports:
            _copy_reports(root)
    result = _result(cfg.profile, [], total, no_op, stages, startup, load_before, cfg, steps_seconds, images,
                     eval_seconds, forward_passes)
    return {**result, "fresh_clone": {"commit": commit, "install_seconds": install,
                                      "command": "bash scripts/reproduce"}}


def _copy_reports(clone: Path) -> None:
    """The run's reports (all but reports/bench) and dvc.lock into this project, replacing those files."""
    for source in sorted((clone / "reports").rglob("*")):
        relative = source.relative_to(clone)
        if source.is_file() and relative.parts[1] != "bench":
            (PROJECT_ROOT / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, PROJECT_ROOT / relative)
    shutil.copy2(clone / "dvc.lock", PROJECT_ROOT / "dvc.lock")


def _result(profile: str, targets: list[str], total: float, no_op: float, stages: list[dict],
            startup: dict[str, float], load_before: tuple[float, ...], cfg: config.Config, steps_seconds: float,
            images: int, eval_seconds: float, forward_passes: int) -> dict:
    macs = count_macs(build(cfg.backbone.name, cfg.backbone.embedding_size, cfg.align.crop_size, seed=0),
                      cfg.align.crop_size)
    return {
        "profile": profile, "targets": targets, "seconds": total, "no_op_repro_seconds": no_op, "stages": stages,
        "startup_seconds": startup, "machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
        "matmul_gflops": peaks(),
        "forward_macs_per_image": macs,
        "training": {"images": images, "steps_seconds": steps_seconds,
                     "images_per_second": images / steps_seconds if steps_seconds else None,
                     "gflops": 3 * 2 * macs * images / steps_seconds / 1e9 if steps_seconds else None},
        "evaluation": {"forward_passes": forward_passes, "seconds": eval_seconds,
                       "forward_passes_per_second": forward_passes / eval_seconds if eval_seconds else None,
                       "gflops": 2 * macs * forward_passes / eval_seconds / 1e9 if eval_seconds else None},
        "sizes": {"crop": cfg.align.crop_size, "iterations": cfg.train.iterations, "batch": cfg.train.batch_size,
                  "seeds": list(cfg.seeds), "evaluate_batch": cfg.evaluate.batch_size},
    }


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    parts = list(dict.fromkeys(part for s in result["stages"] for part in s["parts"]))
    totals = {part: sum(s["parts"].get(part, 0.0) for s in result["stages"]) for part in parts}
    m, size, peak = result["machine"], result["sizes"], result["matmul_gflops"]
    fresh = result.get("fresh_clone")
    if fresh:
        how = (f"`python -m bench.pipeline_time --fresh-clone`: `{fresh['command']}` in a fresh clone of "
               f"{fresh['commit'][:7]}, {result['seconds']:.0f} s in all ({result['seconds'] / 60:.1f} min), of which "
               f"the install (a new .venv) {fresh['install_seconds']:.0f} s; a second `{fresh['command']}` after it "
               f"{result['no_op_repro_seconds']:.1f} s")
    else:
        how = (f"`python -m bench.pipeline_time --profile {result['profile']}"
               + (f" --targets {' '.join(result['targets'])}`" if result["targets"] else "`")
               + f": `dvc repro` of a fresh copy, {result['seconds']:.0f} s in all; a no-op `dvc repro` after it "
               f"{result['no_op_repro_seconds']:.1f} s")
    kinds: dict[str, float] = {"install": fresh["install_seconds"]} if fresh else {}
    for s in result["stages"]:
        kinds[s["kind"]] = kinds.get(s["kind"], 0.0) + s["seconds"]
    lines = [
        "# Pipeline time", "",
        how + f". Profile `{result['profile']}`: crop {size['crop']}, "
        f"{size['iterations']} iterations of batch {size['batch']}, seeds {size['seeds']}, evaluation passes of "
        f"{size['evaluate_batch']} images. Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} on "
        f"{m['torch_threads']} threads; load average {' / '.join(f'{v:.2f}' for v in result['load_before'])} before, "
        f"{' / '.join(f'{v:.2f}' for v in result['load_after'])} after.", "",
        "| stage kind | wall (s) | share |", "|---|---:|---:|",
        *(f"| {kind} | {sec:.0f} | {100 * sec / result['seconds']:.0f}% |" for kind, sec in kinds.items()), "",
        "| stage | wall (s) | " + " | ".join(parts) + " |", "|---|---:|" + "---:|" * len(parts),
    ]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['seconds']:.1f} | " + " | ".join(_seconds(s["parts"].get(p)) for p in parts) + " |")
    lines += ["", "| part | wall (s) | share |", "|---|---:|---:|"]
    lines += [f"| {part} | {sec:.0f} | {100 * sec / result['seconds']:.0f}% |" for part, sec in totals.items()]
    lines += [
        "",
        "Starting a stage (a fresh interpreter importing its module, best of 3): "
        + ", ".join(f"`{k}` {v:.2f} s" for k, v in result["startup_seconds"].items()) + ".",
        "",
        f"Peak on the same threads: a 2048^2 matmul at {peak['fp32']:.0f} GFLOP/s in fp32 and {peak['bf16']:.0f} in "
        f"bf16; the backbone: {result['forward_macs_per_image'] / 1e6:.1f} M forward multiply-adds per image.",
    ]
    t, e = result["training"], result["evaluation"]
    if t["gflops"]:
        lines.append(
            f"Training steps (MobileFaceNet rows): {t['images_per_second']:.0f} images/s, about {t['gflops']:.0f} "
            f"GFLOP/s (3 x 2 x MACs per image), {100 * t['gflops'] / peak['fp32']:.0f}% of the fp32 peak.")
    if e["gflops"]:
        lines.append(
            f"Evaluation: {e['forward_passes_per_second']:.0f} forward passes/s with the scoring, about "
            f"{e['gflops']:.0f} GFLOP/s (2 x MACs per pass), {100 * e['gflops'] / peak['fp32']:.0f}% of the fp32 peak.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--targets", nargs="*", default=[], help="dvc repro targets (default: the whole pipeline)")
    parser.add_argument("--fresh-clone", action="store_true",
                        help="time `bash scripts/reproduce` in a fresh clone of HEAD, install included")
    parser.add_argument("--copy-reports", action="store_true",
                        help="with --fresh-clone: copy its reports/ and dvc.lock into this project")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench" / "pipeline_time")
    args = parser.parse_args()
    if args.copy_reports and not args.fresh_clone:
        parser.error("--copy-reports needs --fresh-clone")
    result = measure_fresh_clone(args.copy_reports) if args.fresh_clone else measure(args.profile, args.targets)
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
