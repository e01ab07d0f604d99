"""LFW View 2 (10 folds x 600 pairs) for models that saw no LFW person: the project's trained cpu-profile models
(synthetic faces only), their final weights, the evaluate stage's 10-fold protocol.

    python -m bench.view2_unseen [--profile cpu] [--lfw-root DIR] [--out reports/view2_unseen]

View 2's photos are detected and aligned with the lfw profile's MTCNN settings at the profile's crop size (no face:
the lfw profile's central crop). Models trained on LFW DevTrain persons (the lfw profile's) are never scored here:
most of View 2's persons are DevTrain persons (counted in the report).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


from pipeline.core import config
from pipeline.data import lfw
from pipeline.data.align_records import DetectionTally, align_record, detector_from_config
from pipeline.data.loader import load_benchmark_arrays
from pipeline.data.records import read_benchmark, write_benchmark
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import recipes
from pipeline.experiment.runs import load_backbone, seed_dir
from pipeline.core.config import PROJECT_ROOT


def aligned_view2(root: Path, crop_size: int, work: Path) -> tuple[Path, dict]:
    """View 2 written as a benchmark, then detected and aligned as the lfw profile's align stage would."""
    raw = work / "raw"
    lfw.write_protocol(root, lfw.VIEW2, raw)
    settings = config.load(profile="lfw").align.model_copy(update={"crop_size": crop_size, "device": "cpu"})
    images, pairs = read_benchmark(raw)
    tally = DetectionTally()
    detector = detector_from_config(settings)
    aligned = [align_record(record, crop_size, f"{raw} record {i} ({record.source})", detector, tally,
                            settings.fallback_crop) for i, record in enumerate(images)]
    write_benchmark(work / "aligned", aligned, pairs)
    return work / "aligned", tally.summary()


def shared_persons(root: Path) -> tuple[int, int]:
    """(View 2 persons, of whom DevTrain persons): why a DevTrain-trained model is never scored on View 2."""
    pairs = lfw.read_pairs(root, lfw.VIEW2)
    persons = {lfw.person_of(image) for image in pairs[["img_a", "img_b"]].to_numpy().ravel()}
    labels = lfw.read_labels(root)
    return len(persons), len(persons & set(labels.loc[labels["view1_split"] == "devtrain", "identity"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="the profile whose trained models (data/models) are scored")
    parser.add_argument("--lfw-root", type=Path, default=lfw.lfw_root_from_env())
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "view2_unseen")
    args = parser.parse_args()
    cfg = config.load(profile=args.profile)
    if cfg.data.source == "lfw":
        raise SystemExit(f"profile {args.profile!r} trains on LFW DevTrain persons: it may not be scored on View 2")
    paths = Paths(PROJECT_ROOT)
    models = [m for m in recipes(cfg) if all((seed_dir(paths, m, s) / "model.pt").is_file() for s in cfg.seeds)]
    if not models:
        raise SystemExit(f"no trained models of profile {args.profile!r} under {paths.root / 'data' / 'models'}")
    started, load_start = time.perf_counter(), os.getloadavg()
    persons, devtrain = shared_persons(args.lfw_root)
    with tempfile.TemporaryDirectory() as work:
        bench, detection = aligned_view2(args.lfw_root, cfg.align.crop_size, Path(work))
        images, pairs = load_benchmark_arrays(bench)
    results = {}
    for model in models:
        for seed in cfg.seeds:
            backbone, _ = load_backbone(cfg, paths, model, seed)
            metrics = evaluate_pairs(backbone, images, pairs, device=torch.device("cpu"), batch_size=cfg.evaluate.batch_size,
                                     fars=cfg.evaluate.fars, channels_last=cfg.train.channels_last).to_metrics()
            results[f"{model}/seed {seed}"] = {"label": recipes(cfg)[model].label, **metrics}
    command = "python -m bench.view2_unseen " + " ".join(sys.argv[1:])
    summary = {"command": command, "profile": args.profile, "crop_size": cfg.align.crop_size, "pairs": len(pairs),
               "images": len(images), "view2_persons": persons, "of_which_devtrain": devtrain, "detection": detection, "results": results,
               "seconds": time.perf_counter() - started, "load_average": [load_start, os.getloadavg()]}
    write_json_atomic(args.out.with_suffix(".json"), summary)
    lines = [
        f"# LFW View 2 for models that saw no LFW person (the `{args.profile}` profile's, synthetic faces only)", "",
        f"`{command}`: {len(pairs):,} pairs in 10 folds, {len(images):,} photos aligned to {cfg.align.crop_size} px "
        f"with the lfw profile's MTCNN settings ({detection['detected']:,} faces found, {detection['no_face']} central "
        f"crops: detection rate {100 * detection['detection_rate']:.2f}%); final weights, 10-fold accuracy (%). "
        f"{summary['seconds']:.0f} s, load average {load_start[0]:.2f} at start. The lfw profile's models trained on "
        f"DevTrain persons, who are {devtrain:,} of View 2's {persons:,} persons, so they are not in this table.", "",
        "| model | accuracy (flip) | ± folds | accuracy | TAR@FAR 1% |", "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {r['label']} (`{name}`) | {100 * r['accuracy_flip']:.2f} | {100 * r['accuracy_flip_std']:.2f} | "
                     f"{100 * r['accuracy']:.2f} | {100 * r['tar_at_far_0.01']:.2f} |")
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
