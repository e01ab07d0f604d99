"""Speed of the synthetic face generator on one core: images/s of render + PNG encode at the default canvas.

    python -m bench.synthetic_speed [--images 1500] [--canvas 128]

Writes reports/bench/synthetic_speed.json with the machine described. Wall-clock and process CPU time are both
reported: on a shared machine CPU time is the steadier figure for "one core".
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"  # one core, before numpy / torch load their thread pools

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from pipeline.data.synthetic import SyntheticSpec, generate, plan_training, render
from pipeline.data.synthetic.generate import encode_png, render_record
from pipeline.data.synthetic.protocols import PROTOCOLS
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.config import PROJECT_ROOT


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def machine() -> dict:
    return {"platform": platform.platform(), "processor": cpu_model(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__}


def timed(fn, items) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        fn(item)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--canvas", type=int, default=SyntheticSpec().canvas)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench" / "synthetic_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = SyntheticSpec(canvas=args.canvas, train_identities=max(2, args.images // 24), train_images_per_identity=24)
    jobs = plan_training(spec)[: args.images]
    profile = PROTOCOLS.get("synth-cfp-fp")(spec, spec.protocols["synth-cfp-fp"], "synth-cfp-fp").jobs[: args.images // 3]
    render_record(spec.canvas, jobs[0])  # warm caches and lazy imports

    wall, cpu = timed(lambda job: render_record(spec.canvas, job), jobs)
    pixels = [render(j.identity.traits, j.nuisance, spec.canvas)[0] for j in jobs[:300]]
    render_wall, render_cpu = timed(lambda job: render(job.identity.traits, job.nuisance, spec.canvas), jobs[:300])
    encode_wall, encode_cpu = timed(encode_png, pixels)
    cfp_wall, cfp_cpu = timed(lambda job: render_record(spec.canvas, job), profile)
    whole = dataclasses.replace(spec, protocols={})  # end to end: planning, rendering, Parquet shards
    with tempfile.TemporaryDirectory(prefix="synthetic_speed.") as tmp:
        generate_wall, generate_cpu = timed(lambda out: generate(whole, out), [Path(tmp) / "data"])
    result = {
        "machine": machine(),
        "canvas": spec.canvas,
        "images": len(jobs),
        "images_per_second_wall": len(jobs) / wall,
        "images_per_second_cpu": len(jobs) / cpu,
        "ms_per_image_render": 1000 * render_cpu / 300,
        "ms_per_image_png": 1000 * encode_cpu / 300,
        "mean_png_bytes": float(np.mean([len(encode_png(p)) for p in pixels[:100]])),
        "cfp_fp_images_per_second_cpu": len(profile) / cfp_cpu,
        "generate_images": whole.train_identities * whole.train_images_per_identity,
        "generate_images_per_second_wall": whole.train_identities * whole.train_images_per_identity / generate_wall,
        "generate_images_per_second_cpu": whole.train_identities * whole.train_images_per_identity / generate_cpu,
        "target_images_per_second": 300,
        "note": "images_per_second: render + light/blur/noise + PNG encode of planned training images; "
                "generate_*: the whole generate() (planning, rendering, Parquet) for the training split; one thread",
    }
    write_json_atomic(args.out, result)
    print({k: v for k, v in result.items() if k != "machine"})


if __name__ == "__main__":
    main()
