"""Which per-run setting buys the most Table 3 verdicts per CPU-hour: a pilot of candidate settings of the cpu profile.

    python -m bench.cost_pilot [--settings crop32_it300 crop40_it200 crop48_it150] [--seeds 0 1 2]

Per setting, a fresh copy of the project trains and evaluates four of Table 3's rows (N-Softmax, Li-ArcFace m=0.4
from scratch, Li-ArcFace and ArcFace m=0.4 after N-Softmax) over the seeds, then judges a pilot table of four
planned comparisons (each row against N-Softmax, Li-ArcFace against ArcFace at the same margin and start) on the
three pair benchmarks with the tables' own test (stage table). Recorded per setting: the wall seconds of a training
run and of its evaluation (stage time / seeds, process start included), each planned difference with its
run-to-run SD and pair-sampling term, and the expected verdicts of a 5-seed Table 3: per difference and benchmark
the power of a two-sided t test on S - 1 df at Table 3's strictest Holm level alpha/42 (42 = 14 comparisons x 3
benchmarks), the pilot's delta and variances taken as the truth (a 3-seed estimate: an optimistic truth for the
largest deltas), summed and divided by the CPU-hours of training and evaluating the four rows x 5 seeds.
Writes reports/bench/cost_pilot.json and .md; hold the heavy-job lock while it runs, nothing else heavy beside.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from scipy import stats

from bench.pipeline_time import machine, run_profile
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.core.config import PROJECT_ROOT
from tests.test_resume_pipeline import copy_project, keep_rows, write_params

# name -> overrides of profiles.cpu (sections merged key by key)
SETTINGS: dict[str, dict] = {  # two curve points a run in each
    "crop48_it300": {"train": {"curve_every": 150}},
    "crop32_it300": {"align": {"crop_size": 32}, "train": {"curve_every": 150}},
    "crop40_it200": {"align": {"crop_size": 40}, "train": {"iterations": 200, "curve_every": 100}},
    "crop48_it150": {"train": {"iterations": 150, "curve_every": 75}},
}
ROWS = ("li_arcface_m040", "li_arcface_m040_ns", "arcface_m040_ns")
PILOT_TABLE = {
    "title": "Pilot — four of Table 3's rows",
    "rows": {"pretrain": {}, **{row: {} for row in ROWS}},
    "baseline": "pretrain",
    "compare": [["li_arcface_m040_ns", "arcface_m040_ns"]],
}
TABLE3_TESTS = 42  # Table 3's family: (11 rows against N-Softmax + 3 pairs) x 3 benchmarks
PLANNED_SEEDS = 5


def power(delta: float, run_variance: float, pair_variance: float, seeds: int, level: float) -> float:
    """Power of a two-sided level-`level` t test on seeds - 1 df of a true difference `delta` whose estimate has
    se^2 = run_variance / seeds + pair_variance (noncentral t)."""
    se = math.sqrt(run_variance / seeds + pair_variance)
    if se == 0:
        return 1.0 if delta else 0.0
    df, ncp = seeds - 1, abs(delta) / se
    crit = stats.t.ppf(1 - level / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def prepare(root: Path, overrides: dict, seeds: list[int]) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    profile = params["profiles"]["cpu"]
    for section, values in overrides.items():
        profile[section] = {**profile.get(section, {}), **values}
    profile["seeds"] = seeds
    keep_rows(params, set(ROWS))
    params["tables"], params["extra_tables"] = {"pilot": PILOT_TABLE}, {}
    write_params(root, params)


def run_setting(name: str, seeds: list[int]) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"facerepro-pilot-{name}-") as folder:
        root = Path(folder)
        copy_project(root)
        prepare(root, SETTINGS[name], seeds)
        targets = ["evaluate_models@pretrain", *(f"evaluate@{row}" for row in ROWS)]
        stages, total, _ = run_profile(root, "cpu", targets)
        env = {**os.environ, "PYTHONPATH": str(root)}
        subprocess.run([sys.executable, "-m", "stages.table", "--table", "pilot"], cwd=root, env=env, check=True)
        tests = pd.read_csv(root / "reports" / "pilot_tests.csv")
    by_kind: dict[str, list[float]] = {"training": [], "evaluation": []}
    for entry in stages:
        stage = entry["stage"]
        if stage == "pretrain" or stage.startswith("train@"):
            by_kind["training"].append(entry["seconds"] / len(seeds))
        elif stage.startswith("evaluate"):
            by_kind["evaluation"].append(entry["seconds"] / len(seeds))
    train_run, eval_run = (sum(v) / len(v) for v in (by_kind["training"], by_kind["evaluation"]))
    level = 0.05 / TABLE3_TESTS
    differences = []
    for test in tests.itertuples():
        run_variance, pair_variance = test.run_sd ** 2, test.pair_sd ** 2
        differences.append({
            "a": test.a, "b": test.b, "benchmark": test.benchmark, "delta": test.delta, "run_sd": test.run_sd,
            "pair_sd": test.pair_sd, "verdict": test.verdict,
            "power_5_seeds": power(test.delta, run_variance, pair_variance, PLANNED_SEEDS, level),
        })
    expected = sum(d["power_5_seeds"] for d in differences)
    cpu_hours = (len(ROWS) + 1) * PLANNED_SEEDS * (train_run + eval_run) / 3600
    return {
        "setting": name, "overrides": SETTINGS[name], "seeds": seeds, "wall_seconds": total,
        "seconds_per_training_run": train_run, "seconds_per_evaluation_run": eval_run,
        "differences": differences, "expected_verdicts_5_seeds": expected,
        "verdicts_per_cpu_hour": expected / cpu_hours,
        "load_before": load_before, "load_after": os.getloadavg(),
    }


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# Cost pilot: per-run settings for the default Table 3", "",
        f"`{command}`. Machine: {results[0]['machine']['cpu']}, {results[0]['machine']['cpu_count']} CPUs, torch "
        f"{results[0]['machine']['torch']}. Rows: N-Softmax, {', '.join(ROWS)}; seeds {results[0]['seeds']}. "
        f"Expected verdicts: the power of each planned difference at {PLANNED_SEEDS} seeds and level 0.05/"
        f"{TABLE3_TESTS} (t on {PLANNED_SEEDS - 1} df, the pilot's estimates as the truth), summed over the "
        f"{len(results[0]['differences'])} tests; per CPU-hour of training and evaluating these four rows x "
        f"{PLANNED_SEEDS} seeds.", "",
        "| setting | s / training run | s / evaluation | expected verdicts (of "
        f"{len(results[0]['differences'])}) | verdicts per CPU-hour | load before / after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['setting']} | {r['seconds_per_training_run']:.1f} | {r['seconds_per_evaluation_run']:.1f} | "
            f"{r['expected_verdicts_5_seeds']:.2f} | {r['verdicts_per_cpu_hour']:.2f} | "
            f"{' / '.join(f'{x:.2f}' for x in r['load_before'][:1] + r['load_after'][:1])} |")
    lines += ["", "Planned differences (points; run SD: SD of the per-seed differences; pair SD: the pair-sampling "
              "term of the mean's se):", "",
              "| setting | comparison | benchmark | delta | run SD | pair SD | power at 5 seeds |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        for d in r["differences"]:
            lines.append(f"| {r['setting']} | {d['a']} vs {d['b']} | {d['benchmark']} | {d['delta']:+.2f} | "
                         f"{d['run_sd']:.2f} | {d['pair_sd']:.2f} | {d['power_5_seeds']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench" / "cost_pilot")
    args = parser.parse_args()
    command = "python -m bench.cost_pilot " + " ".join(sys.argv[1:])
    results = []
    for name in args.settings:
        results.append({**run_setting(name, args.seeds), "machine": machine()})
        write_json_atomic(args.out.with_suffix(".json"), {"command": command, "results": results})
        write_text_atomic(args.out.with_suffix(".md"), markdown(results, command.strip()))


if __name__ == "__main__":
    main()
