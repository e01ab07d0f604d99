"""Training-step throughput: a plain PyTorch loop against the engine's settings, in one run.

    python -m bench.train_throughput [--steps 8] [--steps-112 4] [--warmup 2] [--skip-ddp] [--compile]

One step = forward, margin head (li_arcface over 1,000 classes), backward, SGD step (momentum 0.9, weight decay),
on a fixed batch of 64 random images (no data loading, no augmentation: the step alone). Settings compared:
  plain        contiguous memory format, fp32, torch.optim.SGD(foreach=False) (the for-loop implementation)
  engine       channels_last, the engine's optimiser (optim.make_optimizer: foreach SGD on CPU), fp32
  engine_bf16  the engine's settings under bf16 autocast (train.amp = bf16)
  engine_act, engine_bf16_act  the two above with the PReLU activations compiled (train.compile = activations)
  engine_bf16_compile  engine_bf16 with the whole backbone compiled (train.compile = backbone; --compile only)
for MobileFaceNet (128-d) and the AirFace network (512-d) at 112x112 and at 48x48 (the cpu profile's crop). The
settings run interleaved step by step, so drift in machine load hits them alike; figures are medians of per-step
wall time after warm-up. Also measured: the engine setting at 1 vs 2 intra-op threads, a torch.profiler table of the
engine setting at 48 (top ops by self CPU time), and a 2-process gloo step (replicated vs sharded head).

Writes reports/bench/train_throughput.json and reports/bench/train_throughput.md with the machine described.
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU-only profiler otherwise logs a GPU-probe "ERROR"

import argparse
import fcntl
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.profiler import ProfilerActivity, profile


from bench.peak import peaks
from pipeline import heads, models
from pipeline.models.complexity import count_macs
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.train import distributed
from pipeline.train.compilation import compile_for_training
from pipeline.train.optim import make_optimizer, parameter_groups
from pipeline.core.config import PROJECT_ROOT

BATCH = 64
CLASSES = 1000
EMBEDDING = {"mobilefacenet": 128, "airface": 512}  # params.yaml: backbone 128-d; the AirFace network at its 512-d
VARIANTS = ("plain", "engine", "engine_bf16", "engine_act", "engine_bf16_act")
COMPILED = "engine_bf16_compile"
LR, MOMENTUM, WEIGHT_DECAY, EMBEDDING_WD_MULT = 0.1, 0.9, 5e-4, 10.0
HEAVY_LOCK = "/tmp/facerepro-heavy.lock"  # the project's rule: heavy jobs hold it, so one holder has the cores


@dataclass
class Setting:
    """One training configuration: its model, head, optimiser, and how it runs a step."""

    backbone: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    memory_format: torch.memory_format
    bf16: bool


@dataclass
class Row:
    model: str
    size: int
    variant: str
    threads: int
    steps: int
    median_step_s: float
    images_per_s: float
    spread_s: tuple[float, float]  # min, max step time


def lock_held() -> bool:
    """Whether some process holds the heavy-job lock (for this run: its `flock` wrapper)."""
    try:
        with open(HEAVY_LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True


def machine() -> dict:
    cpu_model = "unknown"
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_flags_of_interest": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "fma"}),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def build(model: str, size: int, variant: str, device: torch.device) -> Setting:
    """The same initial weights for every variant (seeded); only the execution settings differ."""
    backbone = models.build(model, EMBEDDING[model], size, seed=0, device=device)
    torch.manual_seed(0)
    head = heads.build("li_arcface", EMBEDDING[model], CLASSES, device=device)
    if variant == "plain":
        params = list(backbone.parameters()) + list(head.parameters())
        optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=False)
        return Setting(backbone, head, optimizer, torch.contiguous_format, bf16=False)
    backbone = backbone.to(memory_format=torch.channels_last)
    groups = parameter_groups(
        backbone, backbone.embedding_layers(), list(head.parameters()), WEIGHT_DECAY, EMBEDDING_WD_MULT
    )
    optimizer = make_optimizer(groups, LR, MOMENTUM, device)
    mode = "backbone" if variant == COMPILED else "activations" if variant.endswith("_act") else "none"
    backbone = compile_for_training(backbone, mode)  # as the engine does (parameters shared)
    return Setting(backbone, head, optimizer, torch.channels_last, bf16=variant.startswith("engine_bf16"))


def step(setting: Setting, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One training step as the engine takes it (margin head in fp32 whatever the autocast)."""
    images = images.contiguous(memory_format=setting.memory_format)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=setting.bf16):
        embeddings = setting.backbone(images)
        loss = setting.head(embeddings, labels)
    setting.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setting.optimizer.step()


def measure(
    settings: dict[str, Setting], images: torch.Tensor, labels: torch.Tensor, warmup: int, steps: int
) -> dict[str, list[float]]:
    """Per-step wall times of every setting, taken round-robin (one step of each in turn); under "<name>:warmup" the
    warm-up steps' times (a compiled setting's first step includes its compilation)."""
    times: dict[str, list[float]] = {}
    for name, setting in settings.items():
        setting.backbone.train()
        times[f"{name}:warmup"] = []
        for _ in range(warmup):
            started = time.perf_counter()
            step(setting, images, labels)
            times[f"{name}:warmup"].append(time.perf_counter() - started)
    times.update({name: [] for name in settings})
    for _ in range(steps):
        for name, setting in settings.items():
            started = time.perf_counter()
            step(setting, images, labels)
            times[name].append(time.perf_counter() - started)
    return times


def row(model: str, size: int, variant: str, threads: int, times: list[float]) -> Row:
    median = statistics.median(times)
    return Row(model, size, variant, threads, len(times), median, BATCH / median, (min(times), max(times)))


def batch(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    images = torch.randn(BATCH, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(device)
    return images, labels


def profile_table(model: str, size: int, variant: str, device: torch.device, steps: int) -> str:
    setting = build(model, size, variant, device)
    images, labels = batch(size, device)
    step(setting, images, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(setting, images, labels)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=44)


# --- a row's seeds together ------------------------------------------------------------------------------------------


def _ensemble_step(backbone: nn.Module, params: dict, buffers: dict, heads_: list[nn.Module], optimizer, images, labels):
    """One step of the stacked seeds: the backbones as one vmapped call over their stacked weights, each seed's head
    on its own embeddings, the summed loss's backward and one SGD step over the stacked tensors."""
    embeddings = vmap(lambda p, b, x: functional_call(backbone, (p, b), (x,)))(params, buffers, images)
    loss = sum(head(e, y) for head, e, y in zip(heads_, embeddings, labels))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def seeds_together(size: int, seeds: int, warmup: int, steps: int, device: torch.device) -> dict:
    """A row's seeds one after another (the engine setting, eager) against the same seeds as one batched ensemble
    (`torch.func.stack_module_state` + `vmap`), and one model at `seeds` times the batch: the most an ensemble's
    larger operations could buy. Images/s over all seeds."""
    model = "mobilefacenet"
    singles = [build(model, size, "engine", device) for _ in range(seeds)]
    images, labels = batch(size, device)
    images = images.contiguous(memory_format=torch.channels_last)

    def one_after_another() -> None:
        for setting in singles:
            step(setting, images, labels)

    backbones = [models.build(model, EMBEDDING[model], size, seed=s, device=device) for s in range(seeds)]
    params, buffers = stack_module_state(backbones)
    template = models.build(model, EMBEDDING[model], size, seed=0, device="meta")
    heads_ = [heads.build("li_arcface", EMBEDDING[model], CLASSES, device=device) for _ in range(seeds)]
    optimizer = torch.optim.SGD([*params.values(), *(p for h in heads_ for p in h.parameters())], lr=LR,
                                momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    stacked_images = images.expand(seeds, *images.shape)
    stacked_labels = [labels] * seeds

    def ensemble() -> None:
        _ensemble_step(template, params, buffers, heads_, optimizer, stacked_images, stacked_labels)

    wide = build(model, size, "engine", device)
    wide_images, wide_labels = images.repeat(seeds, 1, 1, 1), labels.repeat(seeds)
    calls = {"one_after_another": one_after_another, "vmapped_ensemble": ensemble,
             f"one_model_batch_{seeds * BATCH}": lambda: step(wide, wide_images, wide_labels)}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(warmup + steps):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if index >= warmup:
                times[name].append(time.perf_counter() - started)
    result = {name: seeds * BATCH / statistics.median(t) for name, t in times.items()}
    print(f"{model}@{size} {seeds} seeds together:", {k: round(v, 1) for k, v in result.items()}, flush=True)
    return {"model": model, "size": size, "seeds": seeds, "images_per_s": result}


# --- 2 processes on gloo ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, size: int, warmup: int, steps: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # one core per process
    device = torch.device("cpu")
    ctx, device = distributed.setup(device)
    result: dict[str, list[float]] = {}
    try:
        images, labels = batch(size, device)
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        for mode in ("replicated", "sharded"):
            model = "mobilefacenet"
            backbone = models.build(model, EMBEDDING[model], size, seed=0, device=device)
            backbone = backbone.to(memory_format=torch.channels_last)
            if mode == "sharded":
                head: nn.Module = ShardedMarginHead(
                    "li_arcface", EMBEDDING[model], CLASSES, rank=rank, world_size=world, seed=0, device=device
                )
            else:
                head = heads.build("li_arcface", EMBEDDING[model], CLASSES, device=device)
                distributed.broadcast_(head.parameters(), ctx)
            wrapped = distributed.wrap_backbone(backbone, ctx, device, sum_gradients=mode == "sharded")
            groups = parameter_groups(
                backbone, backbone.embedding_layers(), list(head.parameters()), WEIGHT_DECAY, EMBEDDING_WD_MULT
            )
            optimizer = make_optimizer(groups, LR, MOMENTUM, device)
            x, y = images[part].contiguous(memory_format=torch.channels_last), labels[part]
            times = []
            for index in range(warmup + steps):
                distributed.barrier(ctx)
                started = time.perf_counter()
                embeddings = wrapped(x)
                loss = head(embeddings, y, index).loss if mode == "sharded" else head(embeddings, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if mode == "replicated":
                    distributed.average_gradients_(head.parameters(), ctx)
                optimizer.step()
                times.append(time.perf_counter() - started)
            result[mode] = times[warmup:]
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown(ctx)


def ddp_steps(size: int, warmup: int, steps: int, out_dir: Path) -> dict[str, float]:
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), size, warmup, steps, str(out_dir)), nprocs=world, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]
    # a step ends when the slower rank ends it
    return {mode: statistics.median([max(r[mode][i] for r in ranks) for i in range(steps)]) for mode in ranks[0]}


# --- report -------------------------------------------------------------------------------------------------------


def fmt_load(load: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training-step throughput: plain loop vs the engine's settings",
        "",
        f"Machine: {m['cpu_model']} ({m['cpu_count']} cores; flags {', '.join(m['cpu_flags_of_interest'])}), "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']}. {result['conditions']}",
        "",
        f"Step = forward + li_arcface head ({CLASSES} classes) + backward + SGD step, batch {BATCH}, random images, no "
        "data loading. Medians of per-step wall time after warm-up; settings interleaved step by step. "
        f"`plain`: contiguous, fp32, `SGD(foreach=False)`. `engine`: channels_last + foreach SGD (the engine's "
        "optimiser and weight-decay groups), fp32. `engine_bf16`: the same under bf16 autocast (the margin head in "
        "fp32). `engine_act`, `engine_bf16_act`: those two with the PReLU activations compiled (train.compile = "
        f"activations). `{COMPILED}`: `engine_bf16` with the whole backbone compiled, if measured. Reproduce: "
        f"`{result['command']}`. Load average (1, 5, 15 min) at start {fmt_load(result['load_average_start'])}, "
        f"at end {fmt_load(result['load_average_end'])}.",
        "",
        f"## Images/s at {result['threads']} threads",
        "",
    ]
    variants = result["variants"]
    others = [v for v in variants if v != "plain"]
    lines += [
        "| model | input | " + " | ".join(variants) + " | " + " | ".join(f"{v} / plain" for v in others) + " |",
        "| --- | --- |" + " ---: |" * (len(variants) + len(others)),
    ]
    for key, entry in result["speedups"].items():
        model, size = key.split("@")
        ips, ratio = entry["images_per_s"], entry["vs_plain"]
        lines.append(
            f"| {model} | {size}x{size} | " + " | ".join(f"{ips[v]:.1f}" for v in variants) + " | "
            + " | ".join(f"{ratio[v]:.2f}x" for v in others) + " |"
        )
    target = result["target"]
    lines += [
        "",
        f"Target (issue 5): the best engine setting >= {target['factor']}x the plain loop for every model and input. "
        f"Met: **{'yes' if target['met'] else 'no'}** (best / plain from {target['worst']:.2f}x to "
        f"{target['best']:.2f}x).",
    ]
    peak, default = result["matmul_gflops"], "engine_act"  # train.compile auto: activations where a compiler works
    lines += [
        "",
        f"## Achieved FLOP/s of the default setting (`{default}`: train.compile auto, fp32)",
        "",
        f"3 x 2 x forward multiply-adds per image (forward, and a backward about twice it) at the measured images/s, "
        f"against a 2048^2 `torch.matmul` on the same {result['threads']} threads: {peak['fp32']:.0f} GFLOP/s in fp32, "
        f"{peak['bf16']:.0f} in bf16.",
        "",
        "| model | input | forward MMAC/image | images/s | GFLOP/s | share of the fp32 peak |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, entry in result["speedups"].items():
        model, size = key.split("@")
        macs, ips = result["forward_macs_per_image"][key], entry["images_per_s"][default]
        gflops = 6 * macs * ips / 1e9
        lines.append(f"| {model} | {size}x{size} | {macs / 1e6:.1f} | {ips:.1f} | {gflops:.0f} | "
                     f"{100 * gflops / peak['fp32']:.0f}% |")
    compiled = {k: v for k, v in result["warmup_step_s"].items() if k.endswith((COMPILED, "_act"))}
    if compiled:
        lines += ["", "First (compiling) step of the compiled settings (the compiled PReLU is one function, shared "
                  "by the `_act` settings of a process: later ones reuse its graphs): " + ", ".join(
                      f"{k} {v[0]:.1f} s" for k, v in compiled.items()) + "."]
    lines += [
        "",
        "## Threads (engine setting, fp32)",
        "",
        "| model | input | 1 thread img/s | 2 threads img/s | 2 / 1 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for entry in result["threads_effect"]:
        lines.append(
            f"| {entry['model']} | {entry['size']}x{entry['size']} | {entry['one']:.1f} | {entry['two']:.1f} | "
            f"{entry['two'] / entry['one']:.2f}x |"
        )
    together = result["seeds_together"]
    ips = together["images_per_s"]
    wide = next(k for k in ips if k.startswith("one_model"))
    lines += [
        "",
        f"## A row's {together['seeds']} seeds together: {together['model']} {together['size']}x{together['size']}, "
        "eager fp32, images/s over all seeds",
        "",
        "| one after another (the engine) | one vmapped ensemble | one model, the seeds' batches as one |",
        "| ---: | ---: | ---: |",
        f"| {ips['one_after_another']:.1f} | {ips['vmapped_ensemble']:.1f} | {ips[wide]:.1f} |",
        "",
        "The ensemble stacks the seeds' backbones (`torch.func.stack_module_state`) and runs them as one `vmap` call, "
        "each seed's head on its own embeddings; the last column is what one model gets from a batch that large, an "
        "upper bound on what larger operations could buy an ensemble on these cores.",
    ]
    if result.get("ddp"):
        d = result["ddp"]
        lines += [
            "",
            f"## 2 processes, gloo, CPU (1 thread each): MobileFaceNet {d['size']}x{d['size']}, global batch {BATCH}",
            "",
            "| head | median step s | images/s |",
            "| --- | ---: | ---: |",
        ]
        for mode, seconds in d["median_step_s"].items():
            lines.append(f"| {mode} | {seconds:.3f} | {BATCH / seconds:.1f} |")
        lines += ["", d["note"]]
    lines += [
        "",
    ]
    prof = result["profile"]
    for variant, table in prof["tables"].items():
        lines += [
            f"## Where the time goes: `{variant}`, {prof['model']} {prof['size']}x{prof['size']}, {prof['steps']} steps "
            "(torch.profiler, top ops by self CPU time)",
            "",
            "```",
            table.rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def compare_settings(
    models_: list[str],
    sizes: list[int],
    variants: tuple[str, ...],
    threads: int,
    warmup: int,
    steps: int,
    steps_large: int,
    device: torch.device,
) -> tuple[list[Row], dict[str, list[float]]]:
    """The variants, interleaved, for every model and input size; and the warm-up step times (compilation)."""
    torch.set_num_threads(threads)
    rows: list[Row] = []
    warmups: dict[str, list[float]] = {}
    for model in models_:
        for size in sizes:
            settings = {variant: build(model, size, variant, device) for variant in variants}
            times = measure(settings, *batch(size, device), warmup, steps if size <= 64 else steps_large)
            for variant in variants:
                rows.append(row(model, size, variant, threads, times[variant]))
                warmups[f"{model}@{size}:{variant}"] = times[f"{variant}:warmup"]
                print(f"{model}@{size} {variant}: {rows[-1].images_per_s:.1f} img/s", flush=True)
    return rows, warmups


def compare_threads(models_: list[str], size: int, warmup: int, steps: int, device: torch.device) -> list[dict]:
    """The engine setting at 1 and at 2 intra-op threads."""
    effect = []
    for model in models_:
        ips = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times = measure({"engine": build(model, size, "engine", device)}, *batch(size, device), warmup, steps)
            ips[threads] = row(model, size, "engine", threads, times["engine"]).images_per_s
        effect.append({"model": model, "size": size, "one": ips[1], "two": ips[2]})
        print(f"{model}@{size} engine threads 1 -> 2: {ips[1]:.1f} -> {ips[2]:.1f} img/s", flush=True)
    return effect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per setting at inputs up to 64x64")
    parser.add_argument("--steps-112", type=int, default=4, help="measured steps per setting at 112x112")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the main comparison")
    parser.add_argument("--models", nargs="+", default=list(EMBEDDING), choices=list(EMBEDDING))
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 48])
    parser.add_argument("--skip-ddp", action="store_true", help="leave out the 2-process gloo measurement")
    parser.add_argument("--compile", action="store_true", help=f"add the {COMPILED} variant (minutes of compiling)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench" / "train_throughput.json")
    args = parser.parse_args()
    device = torch.device("cpu")
    load_start, started = os.getloadavg(), time.perf_counter()
    small = min(args.sizes)  # threads, profile and 2-process figures: at the cpu profile's crop by default

    variants = VARIANTS + ((COMPILED,) if args.compile else ())
    rows, warmups = compare_settings(
        args.models, args.sizes, variants, args.threads, args.warmup, args.steps, args.steps_112, device
    )
    threads_effect = compare_threads(args.models, small, args.warmup, args.steps, device)
    torch.set_num_threads(args.threads)
    at_small = max(
        (r for r in rows if r.model == args.models[0] and r.size == small and r.variant not in ("plain", COMPILED)),
        key=lambda r: r.images_per_s,
    ).variant
    tables = {v: profile_table(args.models[0], small, v, device, steps=3) for v in ("plain", at_small)}
    ddp = None
    if not args.skip_ddp:
        with tempfile.TemporaryDirectory() as tmp:
            median = ddp_steps(small, args.warmup, args.steps, Path(tmp))
        ddp = {
            "size": small, "median_step_s": median, "world_size": 2, "backend": "gloo", "threads_per_process": 1,
            "note": "Two processes on this 2-core CPU with gloo over loopback: a check that the multi-process path "
            "works and what it costs here, not a GPU scaling figure.",
        }
        print("2 processes, gloo:", median, flush=True)
    together = seeds_together(small, 3, args.warmup, args.steps, device)
    torch.set_num_threads(args.threads)
    peak = peaks()
    macs = {f"{m}@{size}": count_macs(models.build(m, EMBEDDING[m], size, seed=0), size)
            for m in args.models for size in args.sizes}

    speedups = {}
    for model in args.models:
        for size in args.sizes:
            ips = {r.variant: r.images_per_s for r in rows if r.model == model and r.size == size}
            best = max((v for v in ips if v != "plain"), key=ips.__getitem__)
            speedups[f"{model}@{size}"] = {
                "images_per_s": ips,
                "vs_plain": {v: ips[v] / ips["plain"] for v in ips if v != "plain"},
                "best": best,
                "best_vs_plain": ips[best] / ips["plain"],
            }
    ratios = [entry["best_vs_plain"] for entry in speedups.values()]
    load_end = os.getloadavg()
    busy = max(load_start[0], load_end[0]) > (os.cpu_count() or 1) + 0.5
    conditions = (
        (
            f"`{HEAVY_LOCK}` was held during the run (run as `flock {HEAVY_LOCK} python ...`: no other heavy job of "
            "the project at the same time). "
            if lock_held()
            else f"`{HEAVY_LOCK}` was NOT held: other heavy jobs may have run at the same time. "
        )
        + (
            "The 1-minute load average exceeded the core count at the start or the end: other work shared the "
            "cores for part of the run, so read the interleaved ratios rather than absolute figures."
            if busy
            else "The 1-minute load average stayed within the core count."
        )
    )
    result = {
        "machine": machine(),
        "threads": args.threads,
        "batch": BATCH,
        "classes": CLASSES,
        "head": "li_arcface",
        "embedding": EMBEDDING,
        "models": args.models,
        "sizes": args.sizes,
        "variants": list(variants),
        "rows": [asdict(r) for r in rows],
        "warmup_step_s": warmups,
        "speedups": speedups,
        "target": {"factor": 1.5, "met": min(ratios) >= 1.5, "best": max(ratios), "worst": min(ratios)},
        "threads_effect": threads_effect,
        "seeds_together": together,
        "matmul_gflops": peak,
        "forward_macs_per_image": macs,
        "ddp": ddp,
        "profile": {"model": args.models[0], "size": small, "steps": 3, "tables": tables},
        "conditions": conditions,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
