"""The gpu-check's report: the machine, published figures to compare with, and the Markdown rendering of the JSON."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

# insightface's published training speeds (its logs and PartialFC's README); V100 hardware, not this machine.
PUBLISHED_PER_V100 = {"mobilefacenet": 1300.0, "iresnet50": 700.0}  # images/s per V100 ("mbf" and "r50")
PARTIALFC_8_V100 = (4700.0, 5000.0)  # images/s on 8 V100 together, 125k identities
PARTIALFC_CLASSES = 125_000
PUBLISHED_NOTE = (
    "Published figures from other hardware (insightface's logs: about 1.3k images/s per V100 for mbf and about "
    "0.7k for r50; PartialFC: 4.7k-5k images/s on 8 V100 at 125k identities). Different GPU, precision, batch and "
    "data pipeline: the ratios place this run, they are not a like-for-like comparison."
)


def describe_machine(device: torch.device) -> dict[str, Any]:
    """Device name, torch/CUDA versions and CPU count: what the figures were measured on."""
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu_model = value.strip()
                break
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": cpu_model,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


def _num(value: Any, fmt: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value != value:
        return "nan"
    return f"{value:{fmt}}{unit}"


def _gib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# GPU check: the CUDA training path in one short run",
        "",
        f"**{'PASSED' if result['passed'] else 'FAILED'}**: {result['summary']}",
        "",
        f"Machine: {m['device_name']} ({m['device']}"
        + (f", {m.get('memory_gib', 0):.0f} GiB, capability {m.get('capability')}" if m["device"].startswith("cuda") else "")
        + f"), torch {m['torch']}, CUDA {m['cuda'] or 'n/a'}, cuDNN {m['cudnn'] or 'n/a'}, {m['cpu_count']} CPUs "
        f"({m['cpu_model']}), Python {m['python']}.",
        "",
        f"Profile `{result['profile']}`: {result['profile_note']} Command: `{result['command']}`. "
        f"{result['seconds']:.0f} s of a {result['budget_s']:.0f} s budget.",
        "",
    ]
    if result["skipped"]:
        lines += [f"Skipped by the time guard (budget spent): {', '.join(result['skipped'])}.", ""]
    lines += ["## Checks", "", "| check | result | numbers |", "| --- | --- | --- |"]
    for check in result["checks"]:
        lines.append(f"| {check['name']} | {check['status']} | {check['detail']} |")

    runs = result.get("training", [])
    if runs:
        lines += [
            "",
            "## Training through the engine",
            "",
            f"Synthetic set generated in the run: {result['data']['train_images']} images of "
            f"{result['data']['classes']} identities at {result['data']['crop']}x{result['data']['crop']}. "
            "images/s = batch / median step time after warm-up (the engine's steps, data loading included; "
            "CUDA-synchronised on CUDA). TFLOP/s = 3 x forward FLOPs (conv + matmul, `pipeline.models.complexity`, "
            "plus the head's matmul) x images/s; `vs matmul` divides by the bf16 matmul measured in this run "
            f"({_num(result.get('matmul', {}).get('tflops'), '.1f')} TFLOP/s).",
            "",
            "| run | model | amp | launch | head classes | steps | loss first -> last | median step | images/s "
            "| TFLOP/s | vs matmul | peak memory |",
            "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in runs:
            lines.append(
                f"| {run['name']} | {run['model']} | {run['amp']} | {run['launch']} | {run['classes']:,} "
                f"| {run['steps']} | {_num(run['loss_first'], '.2f')} -> {_num(run['loss_last'], '.2f')} "
                f"| {_num(run['median_step_s'] and run['median_step_s'] * 1e3, '.1f', ' ms')} "
                f"| {_num(run['images_per_s'], ',.0f')} | {_num(run['tflops'], '.2f')} "
                f"| {_num(run['vs_matmul'], '.1%')} | {_gib(run['peak_memory_bytes'])} |"
            )
    settings = result.get("settings", [])
    if settings:
        lines += [
            "",
            "## channels_last and compile (the step alone: a resident batch, bf16, no data loading)",
            "",
            "| model | memory format | compile | first (compiling) steps | median step | images/s | vs first row "
            "| first loss |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in settings:
            lines.append(
                f"| {row['model']} | {row['memory_format']} | {row['compile']} | {_num(row['warmup_s'], '.1f', ' s')} "
                f"| {_num(row['median_step_s'] * 1e3, '.1f', ' ms')} | {_num(row['images_per_s'], ',.0f')} "
                f"| {_num(row['speedup'], '.2f', 'x')} | {_num(row['first_loss'], '.3f')} |"
            )
        if result.get("settings_note"):
            lines += ["", result["settings_note"]]
    evaluation = result.get("evaluation", [])
    if evaluation:
        lines += [
            "",
            f"## Evaluation on a synthetic pair protocol ({result['data']['pairs']} pairs, "
            f"{result['data']['folds']} folds, held-out identities)",
            "",
            "| model | accuracy | accuracy (flip) | TAR@FAR=1e-2 |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in evaluation:
            lines.append(
                f"| {row['model']} | {_num(row['accuracy'], '.1%')} | {_num(row['accuracy_flip'], '.1%')} "
                f"| {_num(row.get('tar_at_far_0.01'), '.1%')} |"
            )
    resume = result.get("resume")
    if resume:
        lines += ["", "## Checkpoint, stop and resume", "", resume["note"]]
    capacity = result.get("max_classes")
    if capacity:
        lines += ["", "## Largest class count of the sharded head on one device (512-d)", "", capacity["note"]]
    published = result.get("published")
    if published:
        lines += [
            "",
            "## Against published figures (other hardware)",
            "",
            "| ours | images/s | published | ratio |",
            "| --- | ---: | --- | ---: |",
        ]
        for row in published["rows"]:
            lines.append(f"| {row['ours']} | {_num(row['images_per_s'], ',.0f')} | {row['published']} | {row['ratio']} |")
        lines += ["", published["note"]]
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"
