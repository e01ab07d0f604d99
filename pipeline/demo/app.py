"""The verification web demo: a FastAPI app on 127.0.0.1 (uvicorn) serving one page and a JSON API, for a model the
pipeline trained or a pretrained reference model (--reference).

The page sends both photos as base64 in one JSON request (no multipart parser needed); the reply carries the
similarity (trained model) or descriptor distance (reference model), the threshold and where it comes from, the
decision, each photo with its box and landmarks drawn, and the crops the model sees, all as data URLs. Only
requests naming this machine in their Host header are answered (a web page whose domain is re-resolved to 127.0.0.1
must not reach the demo), and a body is refused as soon as it is longer than two photos can be, before any JSON is
parsed.
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
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.core import config
from pipeline.demo.reference import ReferenceVerification, ReferenceVerifier, build_reference_verifier
from pipeline.demo.verify import DemoError, Verification, Verifier, build_verifier
from pipeline.core.paths import Paths
from pipeline.reference.dlib_resnet import CHIP_SIZE, PUBLISHED_THRESHOLD

HOST = "127.0.0.1"  # the demo is for the person at this machine only
ALLOWED_HOSTS = (HOST, "localhost")  # Host header names, any port
MAX_PHOTO_BYTES = 25 * 1024 * 1024
MAX_BODY_BYTES = 2 * (4 * MAX_PHOTO_BYTES // 3 + 4) + 64 * 1024  # two photos in base64, names and JSON around them
SHOWN_SIDE = 320  # longest side of the annotated photo sent back
LANDMARK_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231")  # eyes, nose, mouth corners
# dlib's 5 points: the outer and inner corner of one eye, of the other, then below the nose
DLIB_POINT_COLOURS = ("#e6194b", "#e6194b", "#3cb44b", "#3cb44b", "#ffe119")


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


class BodyLimit:
    """Refuses a request body longer than `limit` by its Content-Length, or else while it arrives, so no more than
    `limit` bytes are ever read and the app (and its JSON parser) sees only bodies within it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self.refuse(f"declares {declared.decode('latin-1')!r} bytes", scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self.refuse(f"runs past {self.limit} bytes", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:  # the body once, then the client's own messages (a disconnect)
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def refuse(self, what: str, scope: Scope, receive: Receive, send: Send) -> None:
        error = f"the request body {what}; the limit is {self.limit} bytes (two photos of {MAX_PHOTO_BYTES // 2**20} MiB)"
        await JSONResponse({"error": error}, status_code=413)(scope, receive, send)


def port_number(text: str) -> int:
    """argparse type of --port: a TCP port number; an error names the value."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {port} is outside the TCP port range 1..65535")
    return port


def data_url(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def marked_photo(photo: np.ndarray, box: np.ndarray, landmarks: np.ndarray, colours: tuple[str, ...]) -> str:
    """The photo scaled to SHOWN_SIDE (small ones up, so the marks stay visible) with the box and landmarks drawn."""
    image = Image.fromarray(photo)
    scale = SHOWN_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)

    def shown(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5  # pixel centres at integers

    x0, y0, x1, y1 = shown(np.asarray(box).reshape(2, 2)).reshape(4)
    draw.rectangle((x0, y0, x1, y1), outline="#00e0ff", width=2)
    radius = 0.015 * SHOWN_SIDE
    for (x, y), colour in zip(shown(landmarks), colours):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="black")
    return data_url(image, "JPEG")


def model_info(verifier: Verifier | ReferenceVerifier) -> dict:
    if isinstance(verifier, ReferenceVerifier):
        return reference_info(verifier)
    meta, threshold = verifier.meta, verifier.threshold
    return {
        "kind": verifier.kind, "measure": "cosine similarity", "same_when": "above",
        "model": meta["name"], "label": meta["label"], "seed": meta["seed"], "checkpoint": meta["checkpoint"],
        "backbone": meta["backbone"], "embedding_size": meta["embedding_size"], "crop_size": meta["crop_size"],
        "threshold": threshold.value, "fold_thresholds": list(threshold.fold_thresholds),
        "protocol": threshold.protocol, "pairs": threshold.pairs, "folds": len(threshold.fold_thresholds),
        "flip": threshold.flip, "accuracy": threshold.accuracy, "recorded_accuracy": threshold.recorded_accuracy,
        "metrics": str(threshold.metrics_path), "profile": meta["profile"], "trained_on": meta["trained_on"],
    }


def reference_info(verifier: ReferenceVerifier) -> dict:
    """What the page says of a reference model and of its threshold's origin (stage reference's record)."""
    threshold, model = verifier.threshold, verifier.model
    record, figures = threshold.record, threshold.figures
    return {
        "kind": verifier.kind, "measure": "descriptor distance", "same_when": "below",
        "model": record.model, "label": record.label, "reference_kind": record.kind, "settings": record.settings,
        "embedding_size": model.embedding_size, "crop_size": CHIP_SIZE, "detect_max_side": model.detect_max_side,
        "threshold": threshold.value, "fold_thresholds": list(figures.fold_thresholds), "protocol": threshold.protocol,
        "pairs": figures.pairs, "folds": figures.folds, "photos": figures.photos,
        "photos_detected": figures.photos_detected, "accuracy": figures.accuracy, "accuracy_std": figures.accuracy_std,
        "ci_low": figures.ci_low, "ci_high": figures.ci_high,
        "published": record.published.get(threshold.protocol), "published_source": record.published_source,
        "published_threshold": PUBLISHED_THRESHOLD,
        "accuracy_at_published_threshold": figures.accuracy_at_published_threshold,
        "metrics": str(threshold.metrics_path),
    }


def verification_reply(result: Verification | ReferenceVerification) -> dict:
    """The JSON the page shows: the score, the threshold, the decision and each photo marked, with its crop."""
    if isinstance(result, ReferenceVerification):
        return {
            "distance": result.distance, "threshold": result.threshold, "same": result.same,
            "faces": [
                {"marked": marked_photo(face.photo, face.face.box, face.face.points, DLIB_POINT_COLOURS),
                 "crop": data_url(Image.fromarray(face.face.chip), "PNG"), "score": face.face.score,
                 "size": list(face.photo.shape[:2])}
                for face in result.faces
            ],
        }
    return {
        "similarity": result.similarity,
        "threshold": result.threshold,
        "same": result.same,
        "faces": [
            {"marked": marked_photo(face.photo, face.detection.box, face.detection.landmarks, LANDMARK_COLOURS),
             "crop": data_url(Image.fromarray(face.crop), "PNG"), "score": face.detection.score,
             "size": list(face.photo.shape[:2])}
            for face in result.faces
        ],
    }


def create_app(verifier: Verifier | ReferenceVerifier) -> FastAPI:
    app = FastAPI(title="facerepro verification demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(ALLOWED_HOSTS))  # added last: checked first
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
        return JSONResponse(verification_reply(result))

    return app


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", type=Path, help="a model.pt the pipeline wrote (default: the evaluated model "
                       "with the best recorded accuracy on the protocol)")
    model.add_argument("--reference", metavar="MODEL", help="serve a pretrained reference model (params "
                       "reference.models, e.g. dlib_resnet) with the threshold stage reference chose for it")
    parser.add_argument("--port", type=port_number, default=8765, help="port on 127.0.0.1 (default 8765)")
    parser.add_argument("--profile", help="params.yaml profile the model was trained with (default: params.yaml's)")
    parser.add_argument("--protocol", help="evaluation protocol whose threshold to use (default: the LFW-like one; "
                        "for --reference the LFW-like one with the most pairs)")
    parser.add_argument("--root", type=Path, default=config.PROJECT_ROOT,
                        help="project root holding params.yaml, data/ and reports/ (default: this checkout)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = arguments(argv)
    try:
        if args.reference is not None:  # the record names its own settings: no profile to load
            print("loading the reference model and its threshold ...", file=sys.stderr, flush=True)
            verifier: Verifier | ReferenceVerifier = build_reference_verifier(
                Paths(args.root), args.reference, args.protocol)
        else:
            cfg = config.load(args.root / "params.yaml", args.profile)
            print("loading the model and recomputing its evaluation threshold ...", file=sys.stderr, flush=True)
            verifier = build_verifier(cfg, Paths(args.root), args.checkpoint, args.protocol)
    except (FileNotFoundError, ValueError, KeyError, ModuleNotFoundError) as error:
        sys.exit(f"scripts/demo: {error}")
    info = model_info(verifier)
    who = (f"reference model {info['model']}" if args.reference is not None
           else f"model {info['model']} (seed {info['seed']})")
    print(
        f"{who}; threshold {info['threshold']:.4f} ({info['measure']}, same {info['same_when']}) from "
        f"{info['folds']}-fold verification on {info['protocol']}; open http://{HOST}:{args.port}/",
        file=sys.stderr, flush=True,
    )
    uvicorn.run(create_app(verifier), host=HOST, port=args.port, log_level="warning")
