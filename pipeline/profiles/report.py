"""Collect one profile's run (a clone made by scripts/reproduce-profile) into reports/<profile>/ with a summary.

`table.md` states how the run was made (command, commit, wall time, load), which tables this call built, which an
earlier call in the clone built and which none has yet (and the command that builds them), what was trained on and
which pair protocols it was scored on and why (data.json), the face-detection rate per part (align.json), and every
model's 10-fold accuracy (reports/metrics/eval/*.json). The run's own tables and seed-noise reports (reports/ for the
default run, reports/extra/ for the other tables) are copied beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core import config
from pipeline.core.atomic_io import atomic_path, write_json_atomic
from pipeline.core.config import Config
from pipeline.evaluate.record import ModelEvaluation, PairFigures

# the run's outputs copied as they are (those that exist), besides each table of its params (TABLE_FILES)
COPIED = ("data.json", "align.json", "cleaning.json", "seed_noise.md", "figures/curves.png",
          "extra/seed_noise.md", "extra/figures/curves.png")
TABLE_FILES = (".md", ".csv", "_tests.csv")  # a table's files: reports/<table><suffix>
NO_FACE_LISTED = 20  # no-face photo names shown per part in table.md (align.json lists up to 1,000)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: did `dvc repro` of the profile finish?")
    return json.loads(path.read_text())


def detection_rows(align: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per part (train, then each benchmark): photos looked at, faces found, rate, the no-face names."""
    parts = [("train", align["train_landmarks"])]
    parts += [(name, bench["landmarks"]) for name, bench in sorted(align["benchmarks"].items())]
    rows = []
    for name, tally in parts:
        looked = tally["detected"] + tally["no_face"]
        if looked:
            rows.append({"part": name, "photos": looked, "detected": tally["detected"], "no_face": tally["no_face"],
                         "rate": tally["detection_rate"], "no_face_sources": tally["no_face_sources"]})
    return rows


def accuracy_rows(eval_dir: Path) -> list[dict[str, Any]]:
    """Per model and benchmark: 10-fold accuracy with the flip test (mean, std over folds), without, TAR@FAR=1%."""
    rows = []
    for path in sorted(eval_dir.glob("*.json")):
        evaluation = ModelEvaluation.load(path)
        for seed, entry in evaluation.seeds.items():  # the file's order: seeds sorted as text
            for bench, m in sorted(entry.benchmarks.items()):
                if not isinstance(m, PairFigures):
                    continue  # identification: rank-1, in the profile's tables
                rows.append({"model": evaluation.model, "label": evaluation.label, "seed": seed, "benchmark": bench,
                             "accuracy_flip": m.accuracy_flip, "accuracy_flip_std": m.accuracy_flip_std,
                             "accuracy": m.accuracy, "tar_at_far_0.01": m.tar_at_far.get(0.01)})
    if not rows:
        raise FileNotFoundError(f"{eval_dir} holds no evaluation reports (*.json)")
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.2f}"  # NaN: no threshold reaches that FAR


def markdown(profile: str, run: dict[str, Any], tables: TableStates, data: dict[str, Any],
             detection: list[dict[str, Any]], accuracy: list[dict[str, Any]]) -> str:
    what = f"built {', '.join(tables.built)}"
    if "stages_run" in run:  # a later call in the same clone reruns only what changed: say so, or its time misleads
        ran = run["stages_run"]
        what += (": ran no stage (every stage was up to date)" if not ran else
                 f": ran {len(ran)} stage(s)" + (f" ({', '.join(ran)})" if len(ran) <= 10 else ""))
    arguments = run.get("arguments", "")
    lines = [
        f"# The `{profile}` profile", "",
        f"`bash scripts/reproduce-profile {' '.join([profile, arguments]).strip()}` at commit `{run['commit']}` {what}, "
        f"in a clone, {run['seconds']:,} s ({run['seconds'] / 60:.1f} min) wall time on {run['cpus']} CPU(s); load "
        f"average (1/5/15 min) {run['load_before']} before, {run['load_after']} after.", "",
        tables_line(profile, arguments, tables), "",
        "## Trained on, scored on", "",
    ]
    if "train" in data and "persons" in data.get("train", {}):
        lines.append(f"- trained on {data['train']['persons']} persons, {data['train']['images']} photos "
                     f"(source `{data['source']}`)")
    if data.get("source") == "folders":  # pipeline.data.folders: labels are the trained persons
        lines.append(f"- trained on {len(data['labels'])} persons, {data['images']} photos (source `folders`, "
                     f"`{data['root']}`)")
        heldout = data.get("folders-heldout")
        if heldout:
            lines.append(f"- scored on: folders-heldout: {len(heldout['persons'])} persons held out of training "
                         f"(seed {heldout['seed']}), {heldout['images']} photos, {heldout['pairs']} pairs in "
                         f"{heldout['folds']} folds")
    for key in ("evaluated_on", "not_evaluated"):
        if key in data:
            lines.append(f"- {'scored on' if key == 'evaluated_on' else 'not scored on'}: {data[key]}")
    lines += ["", "## Face detection (MTCNN)", "",
              "| part | photos | face found | no face | detection rate |", "|---|---|---|---|---|"]
    for row in detection:
        lines.append(f"| {row['part']} | {row['photos']} | {row['detected']} | {row['no_face']} | {_pct(row['rate'])}% |")
    lines += ["", "Training photos without a face are left out of training; benchmark photos without one are scored on "
              "a central crop (`align.fallback_crop`), so every pair stays. No-face photos (all in align.json):", ""]
    for row in detection:
        shown = row["no_face_sources"][:NO_FACE_LISTED]
        more = f" and {row['no_face'] - len(shown)} more" if row["no_face"] > len(shown) else ""
        lines.append(f"- {row['part']}: " + (", ".join(f"`{Path(s).name}`" for s in shown) + more if shown else "none"))
    benches = sorted({r["benchmark"] for r in accuracy})
    lines += ["", "## Accuracy (final checkpoint, 10-fold, %)", "",
              "With the flip test (± std over folds); without it; TAR at FAR 1%.", "",
              "| model | " + " | ".join(f"{b} (flip) | {b} | {b} TAR@1%" for b in benches) + " |",
              "|---|" + "---|---|---|" * len(benches)]
    for model in sorted({(r["model"], r["label"], r["seed"]) for r in accuracy}):
        by_bench = {r["benchmark"]: r for r in accuracy if (r["model"], r["label"], r["seed"]) == model}
        cells = []
        for bench in benches:
            r = by_bench.get(bench)
            cells += (["", "", ""] if r is None else [
                f"{_pct(r['accuracy_flip'])} (±{_pct(r['accuracy_flip_std'])})", _pct(r["accuracy"]),
                _pct(r["tar_at_far_0.01"])])
        lines.append(f"| {model[1]} (`{model[0]}`, seed {model[2]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TableStates:
    """The profile's tables (params tables and extra_tables, in params order) by where they stand in the clone."""

    built: list[str]  # brought up to date by this call
    earlier: list[str]  # written by an earlier call in the clone, not checked by this one
    missing: list[str]  # built by no call yet


def built_tables(cfg: Config, targets: list[str]) -> list[str]:
    """The tables a call with these targets builds (pipeline.orchestration.reproduce): none given, the default run's;
    `--all`, every table; else those of its `table@NAME`."""
    if not targets:
        return list(cfg.default_tables)
    if "--all" in targets:
        return list(cfg.tables)
    return [target.removeprefix("table@") for target in targets]


def table_states(work: Path, cfg: Config, targets: list[str]) -> TableStates:
    built = built_tables(cfg, targets)
    present = [t for t in cfg.tables if any((work / "reports" / f"{t}{suffix}").is_file() for suffix in TABLE_FILES)]
    return TableStates(built=[t for t in cfg.tables if t in built],
                       earlier=[t for t in present if t not in built],
                       missing=[t for t in cfg.tables if t not in built and t not in present])


def tables_line(profile: str, arguments: str, tables: TableStates) -> str:
    """Which tables are beside table.md and how fresh, and the command that builds those no call has built."""
    def names(tables: list[str]) -> str:
        return ", ".join(f"`{t}`" for t in tables)

    line = f"Beside this file, each with its paired tests: {names(tables.built)} (this call)"
    if tables.earlier:
        line += f"; {names(tables.earlier)} (from an earlier call in the clone, not checked by this one)"
    line += "."
    if tables.missing:
        overrides = " ".join(a for a in arguments.split() if a != "--all" and not a.startswith("table@"))
        again = " ".join(filter(None, ["bash scripts/reproduce-profile", profile, "table@NAME", overrides]))
        line += f" Not built in this clone: {names(tables.missing)}: `{again}` builds one, `--all` every table."
    return line


def collect(work: Path, out: Path, profile: str, run: dict[str, Any]) -> dict[str, Any]:
    """Write `out` whole or not at all: the copied outputs, table.md and summary.json."""
    reports = work / "reports"
    data, align = _read_json(reports / "data.json"), _read_json(reports / "align.json")
    detection, accuracy = detection_rows(align), accuracy_rows(reports / "metrics" / "eval")
    tables = table_states(work, config.load(work / "params.yaml", profile), run.get("targets", []))
    summary = {"profile": profile, "run": run, "tables": asdict(tables), "detection": detection, "accuracy": accuracy,
               "evaluated_on": data.get("evaluated_on"), "not_evaluated": data.get("not_evaluated")}
    copied = [f"{table}{suffix}" for table in [*tables.built, *tables.earlier] for suffix in TABLE_FILES]
    with atomic_path(out) as staged:
        staged.mkdir(parents=True)
        for name in [*COPIED, *copied]:
            if (reports / name).is_file():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(reports / name, staged / name)
        shutil.copytree(reports / "metrics" / "eval", staged / "eval")
        write_json_atomic(staged / "summary.json", summary)
        (staged / "table.md").write_text(markdown(profile, run, tables, data, detection, accuracy))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.profiles.report", description=collect.__doc__)
    parser.add_argument("--work", type=Path, required=True, help="the profile's clone (data/profiles/<profile>)")
    parser.add_argument("--out", type=Path, required=True, help="e.g. reports/lfw")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--seconds", type=int, required=True, help="wall time of the build")
    parser.add_argument("--load-before", required=True)
    parser.add_argument("--load-after", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--arguments", default="", help="the call's arguments after the profile, as given")
    parser.add_argument("--targets", default="", help="what the call built: --all, or table@NAME ..., or nothing "
                                                      "(the default run); space-separated")
    parser.add_argument("--stages-run", default=None, help="the stages the build ran, space-separated")
    args = parser.parse_args()
    run = {"commit": args.commit, "arguments": args.arguments, "targets": args.targets.split(), "seconds": args.seconds,
           "cpus": os.cpu_count(), "load_before": args.load_before, "load_after": args.load_after}
    if args.stages_run is not None:
        run["stages_run"] = args.stages_run.split()
    collect(args.work, args.out, args.profile, run)
    print(f"wrote {args.out}/table.md")


if __name__ == "__main__":
    main()
