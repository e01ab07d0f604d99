"""Stage clean: embed the aligned training set with a bootstrap model, measure each image's distance to its class
centre and write the manifest of kept images that training reads. Nothing is deleted or repacked."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data import cleaning

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.data.images import decode_image
from pipeline.data.records import iter_records, read_metadata
from pipeline.core.devices import resolve_device
from pipeline.evaluate.embeddings import extract_embeddings
from pipeline.core.atomic_io import atomic_path, write_json_atomic
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import BOOTSTRAP
from pipeline.experiment.runs import file_digest, load_backbone, seed_dir, train_recipe


def run(cfg: Config, paths: Paths) -> dict:
    train_dir = paths.train_records(paths.aligned)
    stage.require(paths, train_dir)
    meta = read_metadata(train_dir)
    labels = meta["label"].to_numpy()
    noisy = meta["noisy"].to_numpy(bool)
    if not cfg.clean.enabled:
        distances = np.zeros(len(meta))
        limits = np.full(len(meta), np.inf)
        model_hash = "none"
    else:
        seed = cfg.seeds[0]
        if cfg.clean.bootstrap_checkpoint:
            model_path = paths.root / cfg.clean.bootstrap_checkpoint
            backbone, _ = load_backbone(cfg, paths, BOOTSTRAP, seed, model_path=model_path)
        else:
            train_recipe(cfg, paths, BOOTSTRAP, seed)
            model_path = seed_dir(paths, BOOTSTRAP, seed) / "model.pt"
            backbone, _ = load_backbone(cfg, paths, BOOTSTRAP, seed)
        model_hash = file_digest(model_path)
        images = np.stack([decode_image(r.image, f"{train_dir} {r.source}") for r in iter_records(train_dir)])
        device = resolve_device(cfg.train.device)
        embeddings = extract_embeddings(
            backbone, images, cfg.evaluate.batch_size, device, channels_last=cfg.train.channels_last
        )
        distances = 1.0 - cleaning.centre_cosines(embeddings, labels)
        limits = cleaning.distance_limits(distances, labels, cfg.clean.method, cfg.clean.threshold)
    kept = cleaning.keep_mask(distances, labels, limits, cfg.clean.min_images)
    manifest = pd.DataFrame(
        {
            "source": meta["source"],
            "label": labels,
            "cosine": 1.0 - distances,
            "distance": distances,
            "limit": limits,
            "kept": kept,
            "noisy": noisy,
        }
    )
    with atomic_path(paths.manifest) as staged:
        manifest.assign(model_hash=model_hash, method=cfg.clean.method, threshold=cfg.clean.threshold).to_parquet(
            staged, index=False
        )
    scores = cleaning.precision_recall(~kept, noisy)
    report = {
        "method": cfg.clean.method,
        "threshold": cfg.clean.threshold,
        "model_hash": model_hash,
        "images": int(len(kept)),
        "kept": int(kept.sum()),
        "label_noise_in_data": float(noisy.mean()) if len(noisy) else 0.0,
        **scores,
    }
    write_json_atomic(paths.reports / "cleaning.json", report)
    return report


def main() -> None:
    stage.main("clean", run)


if __name__ == "__main__":
    main()
