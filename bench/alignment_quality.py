"""Alignment quality of MTCNN landmarks: on synthetic faces against the generator's ground truth (by yaw), and on
LFW as the share of photos with a detected face, with a contact sheet of aligned crops.

    python -m bench.alignment_quality [--identities 150] [--lfw-sample 500] [--seed 0] [--lfw-root DIR]

Writes reports/alignment_quality.json and .md, and reports/lfw_contact_sheet.png (when LFW is found), with the
machine described. Error = mean distance of the 5 points / inter-ocular distance (distance of the eye centres).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


from pipeline.core import config
from pipeline.data.align import apply_transform, similarity_transform, template
from pipeline.data.align_records import align_photo, central_crop
from pipeline.data.images import decode_image
from pipeline.data.lfw import lfw_root_from_env, read_labels
from pipeline.data.synthetic import YawMode, make_identity, neutral, render
from pipeline.data.synthetic.nuisance import sample
from pipeline.data.synthetic.spec import NuisanceSpec
from pipeline.data.detect import DetectorSpec, MtcnnDetector, select_face
from pipeline.core.atomic_io import write_bytes_atomic, write_json_atomic, write_text_atomic
from pipeline.core.config import PROJECT_ROOT

YAW_BINS = [(0.0, 10.0), (10.0, 25.0), (25.0, 45.0), (45.0, 90.0)]
POINTS = ["left eye", "right eye", "nose", "left mouth", "right mouth"]
CANVAS = 128
HARD_CASES = 16  # worst-fitting LFW photos listed and shown (reports/lfw_worst_fit.png)


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "load_average_at_start": load}


def errors_iod(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """e_i = ||p_i - g_i|| / ||g_re - g_le||: the inter-ocular normalised error (300-W, Sagonas et al. 2016, Eq. 1),
    per point; the eye "centres" are the eye landmarks themselves."""
    return np.linalg.norm(found - truth, axis=1) / np.linalg.norm(truth[1] - truth[0])


def summarise(rows: list[dict]) -> dict:
    found = [r for r in rows if r["error"] is not None]
    errors = np.array([r["error"] for r in found])
    points = np.array([r["point_errors"] for r in found]).reshape(-1, 5)
    offsets = np.array([r["offset"] for r in found]).reshape(-1, 2)
    return {
        "images": len(rows), "detected": len(found), "detection_rate": len(found) / len(rows) if rows else None,
        "mean_error": float(errors.mean()) if len(found) else None,
        "median_error": float(np.median(errors)) if len(found) else None,
        "p90_error": float(np.quantile(errors, 0.9)) if len(found) else None,
        "share_error_over_0.25": float((errors > 0.25).mean()) if len(found) else None,
        "point_mean_error": dict(zip(POINTS, points.mean(axis=0).round(4).tolist())) if len(found) else None,
        "mean_offset_px": offsets.mean(axis=0).round(3).tolist() if len(found) else None,
    }


def synthetic_quality(detector: MtcnnDetector, identities: int, seed: int) -> dict:
    """Each identity once clean and frontal, and with sampled nuisance in three yaw regimes (seeded)."""
    spec = NuisanceSpec()
    rows: list[dict] = []
    for index in range(identities):
        identity = make_identity(seed, 0, index, 0, 0, 0.0, 0.3, 1.0)
        rng = np.random.default_rng([seed, index])
        nuisances = [("clean frontal", neutral(CANVAS))] + [
            (f"nuisance {mode.value}", sample(rng, spec, CANVAS, mode, 40.0))
            for mode in (YawMode.FRONTAL, YawMode.GENERAL, YawMode.PROFILE)
        ]
        for group, nuisance in nuisances:
            pixels, truth = render(identity.traits, nuisance, CANVAS)
            found = detector.detect(pixels)
            point_errors = None if found is None else errors_iod(found.landmarks, truth)
            rows.append({
                "group": group, "yaw": nuisance.yaw_deg,
                "error": None if found is None else float(point_errors.mean()),
                "point_errors": None if found is None else point_errors.tolist(),
                "offset": None if found is None else (found.landmarks - truth).mean(axis=0).tolist(),
            })
    by_group = {g: summarise([r for r in rows if r["group"] == g]) for g in dict.fromkeys(r["group"] for r in rows)}
    sampled = [r for r in rows if r["group"] != "clean frontal"]
    by_yaw = {f"|yaw| {lo:.0f}-{hi:.0f}": summarise([r for r in sampled if lo <= abs(r["yaw"]) < hi]) for lo, hi in YAW_BINS}
    return {"identities": identities, "canvas": CANVAS, "seed": seed, "by_group": by_group, "by_yaw": by_yaw}


def lfw_quality(root: Path, count: int, seed: int, settings: dict[str, DetectorSpec], sheet: Path, fallback: float) -> dict:
    """Detection rate on a seeded sample of LFW photos for each detector setting; a contact sheet for the first."""
    labels = read_labels(root)
    chosen = labels.sample(min(count, len(labels)), random_state=seed)["image"].tolist()
    photos = [decode_image((root / image).read_bytes(), image) for image in chosen]
    result: dict = {"root": str(root), "sample": len(chosen), "seed": seed, "settings": {}}
    crops = []
    for k, (name, spec) in enumerate(settings.items()):
        detector = MtcnnDetector(spec, "cpu")
        detector.detect(photos[0])  # warm up
        found, several, disagree, wall, cpu = [], 0, [], time.perf_counter(), time.process_time()
        for image, photo in zip(chosen, photos):
            faces = detector.detect_all(photo)
            several += len(faces) > 1
            if len(faces) > 1:
                boxes = np.stack([f.box for f in faces])
                if select_face(boxes, *photo.shape[:2], "largest") != select_face(boxes, *photo.shape[:2], "central"):
                    disagree.append(image)
            found.append(faces[select_face(np.stack([f.box for f in faces]), *photo.shape[:2], spec.selection)] if faces else None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        missed = [image for image, f in zip(chosen, found) if f is None]
        result["settings"][name] = {
            "spec": {"min_face_size": spec.min_face_size, "thresholds": list(spec.thresholds), "selection": spec.selection,
                     "max_side": spec.max_side},
            "detected": len(chosen) - len(missed), "detection_rate": 1 - len(missed) / len(chosen),
            "photos_with_several_faces": several, "largest_is_not_central": len(disagree),
            "largest_is_not_central_photos": disagree, "missed": missed,
            "mean_score": float(np.mean([f.score for f in found if f is not None])) if len(missed) < len(chosen) else None,
            "ms_per_photo_wall": 1000 * wall / len(photos), "ms_per_photo_cpu": 1000 * cpu / len(photos),
        }
        if k == 0:
            result["worst_fit"] = worst_fit(chosen, photos, found, HARD_CASES)
            hard = [photos[chosen.index(case["image"])] for case in result["worst_fit"]]
            hard_found = [found[chosen.index(case["image"])] for case in result["worst_fit"]]
            write_bytes_atomic(sheet.with_name("lfw_worst_fit.png"), contact_sheet(
                [(align_photo(p, f.landmarks, 112)[0], True) for p, f in zip(hard, hard_found)]))
            crops = [(align_photo(p, f.landmarks, 112)[0], True) if f is not None else (central_crop(p, 112, fallback), False)
                     for p, f in zip(photos[:64], found[:64])]
    write_bytes_atomic(sheet, contact_sheet(crops))
    result["contact_sheet"] = {"path": str(sheet.relative_to(PROJECT_ROOT) if sheet.is_relative_to(PROJECT_ROOT) else sheet), "crops": len(crops),
                               "note": f"aligned 112x112 crops of the first {len(crops)} sampled photos; a red frame marks "
                                       f"a photo without a detected face (central {fallback:.0%} crop instead)"}
    return result


def fit_residual(landmarks: np.ndarray) -> float:
    """Mean distance (px at 112) of the aligned landmarks to the ArcFace template: what the least-squares
    similarity (Umeyama 1991, Eq. 42) cannot explain — large for profile views, odd expressions, wrong points."""
    return float(np.linalg.norm(apply_transform(similarity_transform(landmarks, template(112)), landmarks)
                                - template(112), axis=1).mean())


def worst_fit(images: list[str], photos: list[np.ndarray], found: list, count: int) -> list[dict]:
    """The `count` detected photos whose landmarks fit the template worst, with score and face width."""
    rows = [{"image": image, "residual_px": fit_residual(f.landmarks), "score": f.score,
             "face_width_px": float(f.box[2] - f.box[0])} for image, f in zip(images, found) if f is not None]
    return sorted(rows, key=lambda row: -row["residual_px"])[:count]


def contact_sheet(crops: list[tuple[np.ndarray, bool]], columns: int = 8) -> bytes:
    rows = -(-len(crops) // columns)
    sheet = Image.new("RGB", (columns * 114, rows * 114), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (crop, detected) in enumerate(crops):
        x, y = (i % columns) * 114 + 1, (i // columns) * 114 + 1
        sheet.paste(Image.fromarray(crop), (x, y))
        if not detected:
            draw.rectangle((x, y, x + 111, y + 111), outline=(230, 0, 0), width=3)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    synth = result["synthetic"]
    lines = [
        "# Alignment quality (MTCNN, facenet-pytorch 2.5.3)",
        "",
        f"Written by `{result['command']}`. Error: mean distance of the five "
        "landmarks to the truth, in inter-ocular distances (IOD). Machine: "
        f"{result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, torch {result['machine']['torch']}, "
        f"{result['machine']['torch_threads']} thread(s); load average at start {result['machine']['load_average_at_start']}"
        + f", at end {result['machine']['load_average_at_end']} (a load above the CPU count means other work shared the "
        f"CPUs: the ms/photo figures are then inflated; the rates and errors are not)." + f" {result['seconds']:.0f} s in all.",
        "",
        f"## Synthetic faces against the generator's ground truth ({synth['identities']} identities, canvas {synth['canvas']})",
        "",
        "| images | n | detected | mean err | median err | p90 err | err > 0.25 | mean offset (px, x/y) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, table in (("group", synth["by_group"]), ("yaw", synth["by_yaw"])):
        for name, s in table.items():
            offset = "n/a" if s["mean_offset_px"] is None else "{:+.2f} / {:+.2f}".format(*s["mean_offset_px"])
            lines.append(f"| {name} | {s['images']} | {fmt(s['detection_rate'], 2)} | {fmt(s['mean_error'])} | "
                         f"{fmt(s['median_error'])} | {fmt(s['p90_error'])} | {fmt(s['share_error_over_0.25'], 2)} | {offset} |")
    lines += ["", "Per point (detected synthetic images, frontal with nuisance):", ""]
    frontal = synth["by_group"]["nuisance frontal"]["point_mean_error"] or {}
    lines += ["| point | mean err, frontal nuisance |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in frontal.items()]
    lfw = result.get("lfw")
    if lfw:
        lines += ["", f"## LFW: share of photos with a detected face ({lfw['sample']} photos drawn with seed {lfw['seed']})", "",
                  "| setting | min face | detected | photos with 2+ faces | of which largest ≠ central | mean score | ms/photo (cpu) |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in lfw["settings"].items():
            lines.append(f"| {name} | {s['spec']['min_face_size']} | {s['detected']}/{lfw['sample']} ({s['detection_rate']:.1%}) | "
                         f"{s['photos_with_several_faces']} | {s['largest_is_not_central']} | {fmt(s['mean_score'])} | {s['ms_per_photo_cpu']:.0f} |")
        for name, s in lfw["settings"].items():
            lines.append(f"\nNo face found ({name}): " + (", ".join(f"`{Path(m).name}`" for m in s["missed"]) or "none") + ".")
        first = next(iter(lfw["settings"]))
        lines.append(f"\nLargest face is not the central one ({first}): "
                     + (", ".join(f"`{Path(m).name}`" for m in lfw["settings"][first]["largest_is_not_central_photos"]) or "none") + ".")
        lines += ["", f"## Worst template fit ({first}): {len(lfw['worst_fit'])} photos, `reports/lfw_worst_fit.png`", "",
                  "Mean distance of the aligned landmarks to the ArcFace template at 112 px (the least-squares residual).", "",
                  "| photo | residual (px at 112) | score | face width (px) |", "|---|---|---|---|"]
        lines += [f"| `{Path(c['image']).name}` | {c['residual_px']:.2f} | {c['score']:.3f} | {c['face_width_px']:.0f} |"
                  for c in lfw["worst_fit"]]
        lines += ["", f"Contact sheet: `{lfw['contact_sheet']['path']}` — {lfw['contact_sheet']['note']}."]
    else:
        lines += ["", "LFW was not found: no LFW figures."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=150)
    parser.add_argument("--lfw-sample", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lfw-root", type=Path, default=lfw_root_from_env())
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "alignment_quality")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": "python -m bench.alignment_quality " + " ".join(sys.argv[1:]), "machine": machine()}
    started = time.perf_counter()
    result["synthetic"] = synthetic_quality(MtcnnDetector(DetectorSpec(), "cpu"), args.identities, args.seed)
    if (args.lfw_root / "labels.csv").is_file():
        profile = config.load(profile="lfw").align  # the settings the lfw profile's align stage uses
        settings = {
            "lfw profile": DetectorSpec(selection=profile.face_selection, max_side=profile.detect_max_side,
                                        min_face_size=profile.min_face_size),
            "facenet-pytorch defaults": DetectorSpec(),
        }
        result["lfw"] = lfw_quality(args.lfw_root, args.lfw_sample, args.seed, settings,
                                    args.out.parent / "lfw_contact_sheet.png", fallback=profile.fallback_crop)
    result["seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
