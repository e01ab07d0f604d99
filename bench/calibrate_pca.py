"""Calibrate the synthetic benchmark's difficulty with a raw-pixel baseline (eigenfaces).

Every image is aligned with its ground-truth landmarks onto the ArcFace template; PCA is fitted on aligned crops
of the TRAINING split only; a pair's score is the cosine of the two PCA projections; accuracy is the 10-fold
verification accuracy. Also checks that look-alike different pairs score between random different pairs and
same pairs. Writes reports/calibration_pca.json and .md.

    python -m bench.calibrate_pca                      # default spec, generated into a temporary directory
    python -m bench.calibrate_pca --data /tmp/synth    # generated there (and kept) unless it already exists
    python -m bench.calibrate_pca --spec '{"nuisance": {"yaw_std_deg": 25}}'   # try a knob
"""
from __future__ import annotations

import argparse
import os
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA


from pipeline.data.align import align
from pipeline.data.images import decode_image
from pipeline.data.records import FaceRecord, iter_records, read_benchmark
from pipeline.data.synthetic import SyntheticSpec, generate
from pipeline.evaluate.verification import verification_accuracy
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.core.config import PROJECT_ROOT

VARIANTS = {"grey56": (56, True), "rgb56": (56, False), "grey112": (112, True)}


def crops(records: list[FaceRecord], size: int, grey: bool) -> np.ndarray:
    """Aligned crops as rows of float32 pixels in [0, 1]."""
    out = []
    for r in records:
        crop, _ = align(decode_image(r.image, r.source), r.landmarks, size)
        crop = crop.astype(np.float32) / 255.0
        out.append((crop @ np.array([0.299, 0.587, 0.114], np.float32) if grey else crop).ravel())
    return np.stack(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__, "numpy": np.__version__}


def evaluate(data: Path, components: int, fit_images: int, seed: int) -> dict:
    train = list(iter_records(data / "train"))
    rng = np.random.default_rng(seed)
    fit = [train[i] for i in sorted(rng.choice(len(train), size=min(fit_images, len(train)), replace=False))]
    benches = {p.name: read_benchmark(p) for p in sorted((data / "benchmarks").iterdir())}
    results: dict = {}
    for variant, (size, grey) in VARIANTS.items():
        pca = PCA(n_components=min(components, len(fit) - 1), svd_solver="randomized", random_state=seed)
        pca.fit(crops(fit, size, grey))
        results[variant] = {"explained_variance": float(pca.explained_variance_ratio_.sum())}
        for name, (images, pairs) in benches.items():
            z = pca.transform(crops(images, size, grey))
            a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
            same = pairs["same"].to_numpy(bool)
            scores = cosine(z[a], z[b])
            mean, std = verification_accuracy(scores, same, folds=int(pairs["fold"].nunique()))
            roots = np.array([r.extras["lookalike_root"] for r in images])
            lookalike = ~same & (roots[a] == roots[b])
            results[variant][name] = {
                "accuracy": mean, "accuracy_std": std, "pairs": int(len(pairs)),
                "same_cosine": float(scores[same].mean()),
                "different_cosine": float(scores[~same & ~lookalike].mean()),
                "lookalike_cosine": float(scores[lookalike].mean()) if lookalike.any() else None,
                "lookalike_pairs": int(lookalike.sum()),
            }
    return results


def markdown(report: dict) -> str:
    lines = ["# Calibration: raw-pixel PCA baseline on the synthetic benchmark", "",
             f"PCA ({report['settings']['components']} components) fitted on {report['settings']['fit_images']} aligned "
             "TRAINING crops; cosine of projections; 10-fold verification accuracy (mean +- std over folds). "
             "Aim: 60-80 % on synth-lfw, lower on synth-cfp-fp and synth-agedb.", ""]
    protocols = [k for k in next(iter(report["results"].values())) if k != "explained_variance"]
    lines.append("| crop | " + " | ".join(protocols) + " | explained var. |")
    lines.append("| --- |" + " --- |" * (len(protocols) + 1))
    for variant, res in report["results"].items():
        cells = [f"{100 * res[p]['accuracy']:.1f} +- {100 * res[p]['accuracy_std']:.1f}" for p in protocols]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {res['explained_variance']:.2f} |")
    lines += ["", "Look-alike check (grey56): mean cosine of same pairs > look-alike different pairs > random different "
              "pairs.", "",
              "| protocol | same | look-alike different (n) | random different | ordered |", "| --- | --- | --- | --- | --- |"]
    for p in protocols:
        r = report["results"]["grey56"][p]
        look = r["lookalike_cosine"]
        ok = look is not None and r["same_cosine"] > look > r["different_cosine"]
        look_txt = "n/a" if look is None else f"{look:.3f}"
        lines.append(f"| {p} | {r['same_cosine']:.3f} | {look_txt} ({r['lookalike_pairs']}) | "
                     f"{r['different_cosine']:.3f} | {'yes' if ok else 'NO'} |")
    lines += ["", "## Difficulty knobs (SyntheticSpec defaults used here)", "", "```json",
              json.dumps(report["knobs"], indent=2), "```", "",
              f"{report['settings']['generated_images']} images (generated in {report['settings']['generate_seconds']:.0f} s "
              f"where 0 means reused); machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a synthetic records tree (train/, benchmarks/); generated if absent")
    parser.add_argument("--spec", type=str, default="{}", help="JSON overrides of SyntheticSpec (when generating)")
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--fit-images", type=int, default=4000, help="training images the PCA is fitted on")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "calibration_pca")
    args = parser.parse_args()
    spec = SyntheticSpec.from_dict(json.loads(args.spec))
    with tempfile.TemporaryDirectory(prefix="calibrate_pca.") as tmp:
        data = args.data or Path(tmp) / "synthetic"
        seconds = 0.0
        if not (data / "summary.json").is_file():
            start = time.perf_counter()
            summary = generate(spec, data, workers=args.workers)
            seconds = time.perf_counter() - start
            write_json_atomic(data / "summary.json", summary)
        summary = json.loads((data / "summary.json").read_text())
        results = evaluate(data, args.components, args.fit_images, args.seed)
    report = {
        "machine": machine(),
        "settings": {"components": args.components, "fit_images": args.fit_images, "seed": args.seed,
                     "generated_images": summary["train"]["images"] + sum(p["images"] for p in summary["protocols"].values()),
                     "generate_seconds": seconds},
        "knobs": summary["spec"],
        "data": {k: v for k, v in summary.items() if k != "spec"},
        "results": results,
    }
    write_json_atomic(args.out.with_suffix(".json"), report)
    write_text_atomic(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
