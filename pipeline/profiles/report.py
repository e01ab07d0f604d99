"""Collect one profile's run (a clone made by scripts/reproduce-profile) into reports/<profile>/ with a summary.

`table.md` states how the run was made (command, commit, wall time, load), which tables this call built, which an
earlier call in the clone built and which none has yet (and the command that builds them), what was trained on and
which pair protocols it was scored on and why (data.json), the face-detection rate per part (align.json), every
model's 10-fold accuracy (reports/metrics/eval/*.json) and the pretrained reference models' (stage reference:
reports/metrics/reference/*.json, beside their published figures). The run's own tables and seed-noise reports
(reports/ for the default run, reports/extra/ for the other tables) are copied beside it, the evaluations into eval/
and reference/. A call that built stages alone (`stage@NAME`, e.g. stage@reference) adds its reference section to an
earlier collection, whose tables stay as their call made them; with none, it writes a new one, which says when the
clone has no alignment or evaluation yet.
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
from pipeline.reference.evaluation import ReferenceEvaluation

# the run's outputs copied as they are (those that exist), besides each table of its params (TABLE_FILES)
COPIED = ("data.json", "align.json", "cleaning.json", "seed_noise.md", "figures/curves.png",
          "extra/seed_noise.md", "extra/figures/curves.png")
TABLE_FILES = (".md", ".csv", "_tests.csv")  # a table's files: reports/<table><suffix>
STAGE = "stage@"  # a call's stage@NAME target: that stage and what it needs, no table
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


def accuracy_rows(eval_dir: Path, required: bool = True) -> list[dict[str, Any]]:
    """Per model and benchmark: 10-fold accuracy with the flip test (mean, std over folds), without, TAR@FAR=1%
    (`required`: none is an error)."""
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
    if not rows and required:
        raise FileNotFoundError(f"{eval_dir} holds no evaluation reports (*.json)")
    return rows


def reference_evaluations(folder: Path) -> list[ReferenceEvaluation]:
    """Stage reference's records (reports/metrics/reference/*.json), by model name; none where it has not run."""
    return [ReferenceEvaluation.load(path) for path in sorted(folder.glob("*.json"))]


def _range(values: tuple[float, ...]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3f}" if low == high else f"{low:.3f}-{high:.3f}"


def reference_lines(profile: str, evaluations: list[ReferenceEvaluation]) -> list[str]:
    """table.md's reference-model section: per model and protocol the 10-fold accuracy and its interval, the accuracy
    at the model's published distance threshold, the photos without a detection, the published figure and source."""
    lines = ["", "## Reference model (pretrained, not trained here)", "",
             "Each photo described by the model with its own detector, landmarks and crop of the original photo; "
             "pairs scored by the same 10-fold procedure as the trained models (each fold's threshold chosen on the "
             "other folds), on descriptor distances. The interval is the 95% interval of that mean (t over the folds, at "
             "least the pairs' binomial floor, on the logit scale so that it stays within 0-100). A photo "
             "without a detection is described from its central square (the fallback box). Not trained by this project "
             "(so never on the profile's LFW DevTrain photos), it is scored on LFW View 2 too, unlike the trained "
             "rows.", ""]
    if not evaluations:
        return lines[:3] + [f"Stage reference has not run in this clone: `bash scripts/reproduce-profile {profile} "
                            "stage@reference` runs it (the default run does too)."]
    for evaluation in evaluations:
        settings = evaluation.settings
        lines += [f"{evaluation.label} (`{evaluation.model}`, kind `{evaluation.kind}`: dlib {settings.get('dlib')}, "
                  f"upsample {settings.get('upsample')}, {settings.get('face_selection')} face, fallback box "
                  f"{settings.get('fallback_crop')} of the shorter side):", "",
                  "| protocol | pairs | accuracy (± std over folds) | 95% interval | fold thresholds (distance) | "
                  "at distance 0.6 | TAR@FAR 1% | photos without a detection | published |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, f in sorted(evaluation.protocols.items()):
            published = evaluation.published.get(name)
            tar = f.tar_at_far.get("0.01")
            lines.append(
                f"| {name} | {f.pairs} | {f.accuracy:.2f} (±{f.accuracy_std:.2f}) | {f.ci_low:.2f}-{f.ci_high:.2f} | "
                f"{_range(f.fold_thresholds)} | {f.accuracy_at_published_threshold:.2f} | {_pct(tar)} | "
                f"{f.photos - f.photos_detected} of {f.photos} | {'' if published is None else f'{published:.2f}'} |")
        if not evaluation.protocols:
            lines.append("| (none: no real-photo pair protocol in this run) | | | | | | | | |")
        if evaluation.published:
            lines += ["", f"Published: {evaluation.published_source}."]
        lines += [f"- not scored: {name}: {why}" for name, why in sorted(evaluation.not_scored.items())]
        lines.append("")
    return lines[:-1]


def _pct(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.2f}"  # NaN: no threshold reaches that FAR


def markdown(profile: str, run: dict[str, Any], tables: TableStates, data: dict[str, Any],
             detection: list[dict[str, Any]] | None, accuracy: list[dict[str, Any]],
             references: list[ReferenceEvaluation] = ()) -> str:
    stages = [target.removeprefix(STAGE) for target in run.get("targets", []) if target.startswith(STAGE)]
    what = "built " + "; ".join(filter(None, [", ".join(tables.built), ", ".join(f"stage {s}" for s in stages)]))
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
    if detection is None:  # a call that built stages alone, in a clone where nothing was aligned yet
        lines += ["", "No stage of this clone has aligned photos or evaluated a trained model yet: `bash "
                  f"scripts/reproduce-profile {profile}` builds Table 3."]
        return "\n".join(lines + reference_lines(profile, list(references))) + "\n"
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
    if not accuracy:
        lines += ["", "No trained model has been evaluated in this clone yet."]
        return "\n".join(lines + reference_lines(profile, list(references))) + "\n"
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
    return "\n".join(lines + reference_lines(profile, list(references))) + "\n"


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
    return [target.removeprefix("table@") for target in targets if target.startswith("table@")]


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

    shown = ([f"{names(tables.built)} (this call)"] if tables.built else []) + (
        [f"{names(tables.earlier)} (from an earlier call in the clone, not checked by this one)"] if tables.earlier else [])
    line = (f"Beside this file, each with its paired tests: {'; '.join(shown)}." if shown else
            "No table has been built in this clone.")
    if tables.missing:
        overrides = " ".join(a for a in arguments.split() if a != "--all" and not a.startswith(("table@", STAGE)))
        again = " ".join(filter(None, ["bash scripts/reproduce-profile", profile, "table@NAME", overrides]))
        line += f" Not built in this clone: {names(tables.missing)}: `{again}` builds one, `--all` every table."
    return line


REFERENCE_HEADING = "\n## Reference model"  # the last section of table.md


def collect(work: Path, out: Path, profile: str, run: dict[str, Any]) -> dict[str, Any]:
    """Write `out` whole or not at all: the copied outputs, table.md and summary.json. A call that built stages alone
    (no table) into an earlier collection updates its reference section only (`add_references`)."""
    reports = work / "reports"
    tables = table_states(work, config.load(work / "params.yaml", profile), run.get("targets", []))
    if not tables.built and (out / "table.md").is_file():
        return add_references(reports, out, profile, run)
    # a call that built a table has aligned and evaluated; one that built stages alone may find neither in a new clone
    built = bool(tables.built)
    data = _read_json(reports / "data.json")
    aligned = built or (reports / "align.json").is_file()
    detection = detection_rows(_read_json(reports / "align.json")) if aligned else None
    accuracy = accuracy_rows(reports / "metrics" / "eval", required=built)
    references = reference_evaluations(reports / "metrics" / "reference")
    summary = {"profile": profile, "run": run, "tables": asdict(tables), "detection": detection, "accuracy": accuracy,
               "evaluated_on": data.get("evaluated_on"), "not_evaluated": data.get("not_evaluated"),
               "reference": {evaluation.model: evaluation.to_json() for evaluation in references}}
    copied = [f"{table}{suffix}" for table in [*tables.built, *tables.earlier] for suffix in TABLE_FILES]
    with atomic_path(out) as staged:
        staged.mkdir(parents=True)
        for name in [*COPIED, *copied]:
            if (reports / name).is_file():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(reports / name, staged / name)
        for kind in ("eval", "reference"):
            if (reports / "metrics" / kind).is_dir():
                shutil.copytree(reports / "metrics" / kind, staged / kind)
        write_json_atomic(staged / "summary.json", summary)
        (staged / "table.md").write_text(markdown(profile, run, tables, data, detection, accuracy, references))
    return summary


def add_references(reports: Path, out: Path, profile: str, run: dict[str, Any]) -> dict[str, Any]:
    """`out` (an earlier collection) with its reference section, records and summary entry replaced by the clone's,
    the section saying which call made it: the earlier tables stay as their own call made them, at their commit."""
    references = reference_evaluations(reports / "metrics" / "reference")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    summary.update(reference={evaluation.model: evaluation.to_json() for evaluation in references}, reference_run=run)
    earlier = (out / "table.md").read_text()
    kept = earlier.split(REFERENCE_HEADING)[0].rstrip("\n")
    made = (f"This section: `bash scripts/reproduce-profile {' '.join([profile, run.get('arguments', '')]).strip()}` "
            f"at commit `{run['commit']}`, {run['seconds']:,} s ({run['seconds'] / 60:.1f} min) wall time on "
            f"{run['cpus']} CPU(s); load average (1/5/15 min) {run['load_before']} before, {run['load_after']} after. "
            "The sections above are the earlier collection's, as its call made them.")
    lines = reference_lines(profile, references)
    text = "\n".join([kept, *lines[:2], "", made, *lines[2:]]) + "\n"
    with atomic_path(out) as staged:
        shutil.copytree(out, staged)
        shutil.rmtree(staged / "reference", ignore_errors=True)
        if (reports / "metrics" / "reference").is_dir():
            shutil.copytree(reports / "metrics" / "reference", staged / "reference")
        write_json_atomic(staged / "summary.json", summary)
        (staged / "table.md").write_text(text)
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
    parser.add_argument("--targets", default="", help="what the call built: --all, or table@NAME / stage@NAME ..., "
                                                      "or nothing (the default run); space-separated")
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
