"""The verification web demo: a FastAPI app on 127.0.0.1 (uvicorn) serving one page and a JSON API.

The page sends both photos as base64 in one JSON request (no multipart parser needed); the reply carries the
similarity, the threshold and where it comes from, the decision, each photo with its box and landmarks drawn, and
the aligned crops, all as data URLs.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import sys
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, ImageDraw
from pydantic import BaseModel

from pipeline import config
from pipeline.demo.verify import DemoError, Face, Verifier, build_verifier
from pipeline.paths import Paths

HOST = "127.0.0.1"  # the demo is for the person at this machine only
MAX_PHOTO_BYTES = 25 * 1024 * 1024
SHOWN_SIDE = 320  # longest side of the annotated photo sent back
LANDMARK_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231")  # eyes, nose, mouth corners


class Photo(BaseModel):
    name: str
    data: str  # base64 of the file's bytes


class VerifyRequest(BaseModel):
    photo_a: Photo
    photo_b: Photo


def photo_bytes(photo: Photo, slot: str) -> bytes:
    try:
        data = base64.b64decode(photo.data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise DemoError(f"photo {slot} ({photo.name}) did not arrive as base64: {error}") from error
    if len(data) > MAX_PHOTO_BYTES:
        raise DemoError(f"photo {slot} ({photo.name}) is {len(data) / 2**20:.1f} MiB; the limit is {MAX_PHOTO_BYTES // 2**20} MiB")
    return data


def data_url(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def marked_photo(face: Face) -> str:
    """The photo scaled to SHOWN_SIDE (small ones up, so the marks stay visible) with the box and landmarks drawn."""
    image = Image.fromarray(face.photo)
    scale = SHOWN_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)

    def shown(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5  # pixel centres at integers

    x0, y0, x1, y1 = shown(face.detection.box.reshape(2, 2)).reshape(4)
    draw.rectangle((x0, y0, x1, y1), outline="#00e0ff", width=2)
    radius = 0.015 * SHOWN_SIDE
    for (x, y), colour in zip(shown(face.detection.landmarks), LANDMARK_COLOURS):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="black")
    return data_url(image, "JPEG")


def model_info(verifier: Verifier) -> dict:
    meta, threshold = verifier.meta, verifier.threshold
    return {
        "model": meta["name"], "label": meta["label"], "seed": meta["seed"], "checkpoint": meta["checkpoint"],
        "backbone": meta["backbone"], "embedding_size": meta["embedding_size"], "crop_size": meta["crop_size"],
        "threshold": threshold.value, "fold_thresholds": list(threshold.fold_thresholds),
        "protocol": threshold.protocol, "pairs": threshold.pairs, "folds": len(threshold.fold_thresholds),
        "flip": threshold.flip, "accuracy": threshold.accuracy, "recorded_accuracy": threshold.recorded_accuracy,
        "metrics": str(threshold.metrics_path), "profile": meta["profile"], "trained_on": meta["trained_on"],
    }


def create_app(verifier: Verifier) -> FastAPI:
    app = FastAPI(title="facerepro verification demo", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("pipeline.demo").joinpath("page.html").read_text(encoding="utf-8")
    info = model_info(verifier)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def model() -> dict:
        return info

    @app.post("/api/verify")
    def verify(request: VerifyRequest) -> JSONResponse:  # plain def: FastAPI runs it in a worker thread
        try:
            result = verifier.verify(
                photo_bytes(request.photo_a, "A"), f"photo A ({request.photo_a.name})",
                photo_bytes(request.photo_b, "B"), f"photo B ({request.photo_b.name})",
            )
        except DemoError as error:
            return JSONResponse({"error": str(error)}, status_code=422)
        return JSONResponse({
            "similarity": result.similarity,
            "threshold": result.threshold,
            "same": result.same,
            "faces": [
                {"marked": marked_photo(face), "crop": data_url(Image.fromarray(face.crop), "PNG"),
                 "score": face.detection.score, "size": list(face.photo.shape[:2])}
                for face in result.faces
            ],
        })

    return app


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a model.pt the pipeline wrote (default: the evaluated model "
                        "with the best recorded accuracy on the protocol)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    parser.add_argument("--profile", help="params.yaml profile the model was trained with (default: params.yaml's)")
    parser.add_argument("--protocol", help="evaluation protocol whose threshold to use (default: the LFW-like one)")
    parser.add_argument("--root", type=Path, default=config.PROJECT_ROOT,
                        help="project root holding params.yaml, data/ and reports/ (default: this checkout)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = arguments(argv)
    try:
        cfg = config.load(args.root / "params.yaml", args.profile)
        print("loading the model and recomputing its evaluation threshold ...", file=sys.stderr, flush=True)
        verifier = build_verifier(cfg, Paths(args.root), args.checkpoint, args.protocol)
    except (FileNotFoundError, ValueError, KeyError) as error:
        sys.exit(f"scripts/demo: {error}")
    info = model_info(verifier)
    print(
        f"model {info['model']} (seed {info['seed']}); threshold {info['threshold']:.4f} from {info['folds']}-fold "
        f"verification on {info['protocol']}; open http://{HOST}:{args.port}/", file=sys.stderr, flush=True,
    )
    uvicorn.run(create_app(verifier), host=HOST, port=args.port, log_level="warning")
