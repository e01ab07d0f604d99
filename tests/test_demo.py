"""The verification demo (pipeline/demo): its decision logic, its JSON API, and the page in a real headless Chromium.

The model is an untrained MobileFaceNet saved in the pipeline's checkpoint format and evaluated by the real evaluate
stage on a small aligned synthetic protocol: these tests check the plumbing (threshold from the evaluation, decision,
crops, errors), never accuracy. The reference model (dlib's ResNet descriptor, --reference) is served from a small
record of stage reference written here: its threshold is the record's, its distances dlib's own on real LFW photos
(those tests skip without LFW). The browser test needs Debian's chromium and chromium-driver (.ci/run installs them);
it skips where they are absent, except under CI (CI set), where it fails instead.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.core import config
from pipeline.data.align import align
from pipeline.data.images import encode_png
from pipeline.data.lfw import lfw_root_from_env
from pipeline.data.records import FaceRecord, write_benchmark
from pipeline.data.synthetic import make_identity, neutral, render
from pipeline.demo import app as demo_app
from pipeline.demo import verify as demo_verify
from pipeline.demo.reference import (
    ReferenceVerifier, build_reference_verifier, reference_model, reference_threshold,
)
from pipeline.demo.verify import (
    DemoError, NoFaceError, Verifier, build_verifier, default_checkpoint, load_model, photo_detector,
)
from pipeline.reference.descriptors import DescriberSettings
from pipeline.reference.dlib_resnet import CHIP_SIZE, PUBLISHED_THRESHOLD, DlibResnet
from pipeline.reference.evaluation import ProtocolFigures, ReferenceEvaluation
from pipeline.data.detect import GroundTruthLandmarks
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.data.loader import load_benchmark_arrays
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import recipes
from pipeline.experiment.runs import build_backbone, seed_dir
from pipeline.train import checkpoint
from stages import evaluate as evaluate_stage

PROFILE = "cpu"  # the profile whose models the demo serves by default
CROP = config.load(config.PROJECT_ROOT / "params.yaml", PROFILE).align.crop_size
PROTOCOL = "synth-lfw"
CANVAS = 128


def synthetic_photo(index: int, yaw_deg: float = 0.0, roll_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    identity = make_identity(0, 0, index, 0, 0, 0.0, 0.3, 1.0)
    return render(identity.traits, neutral(CANVAS, yaw_deg=yaw_deg, roll_deg=roll_deg), CANVAS)


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A project root with params.yaml, an untrained checkpoint of one row, a 40-pair aligned protocol, and that
    model's metrics JSON written by the evaluate stage itself."""
    root = tmp_path_factory.mktemp("demo_root")
    shutil.copy(config.PROJECT_ROOT / "params.yaml", root / "params.yaml")
    cfg = config.load(root / "params.yaml", PROFILE)
    cfg = cfg.model_copy(update={"seeds": [0]})  # one trained checkpoint is all the demo serves
    paths = Paths(root)
    name = next(iter(cfg.rows))
    recipe = recipes(cfg)[name]
    torch.manual_seed(0)
    backbone = build_backbone(recipe, cfg.align.crop_size)
    meta = {"name": name, "diverged_at_step": None,
            **recipe.description(0, cfg.align.crop_size, cfg.train.batch_size, cfg.train.scale)}
    checkpoint.save(seed_dir(paths, name, 0) / "model.pt", {"backbone": backbone.state_dict(), "head": {}, "meta": meta})
    (seed_dir(paths, name, 0) / "train.json").write_text("{}")
    # 10 identities x 2 views; each fold: 2 same pairs and 2 different pairs
    records, crop = [], cfg.align.crop_size
    for index in range(10):
        for roll in (0.0, 12.0):
            pixels, landmarks = synthetic_photo(index, yaw_deg=roll / 2, roll_deg=roll)
            aligned, aligned_landmarks = align(pixels, landmarks, crop)
            records.append(FaceRecord(image=encode_png(aligned), label=index, identity=str(index),
                                      landmarks=aligned_landmarks.astype(np.float32), source=f"id{index}-{roll}"))
    rows = []
    for fold in range(10):
        i, j = fold, (fold + 1) % 10
        rows += [(2 * i, 2 * i + 1, True), (2 * j, 2 * j + 1, True), (2 * i, 2 * j + 1, False), (2 * i + 1, 2 * j, False)]
    pairs = pd.DataFrame(rows, columns=["a", "b", "same"]).assign(fold=np.repeat(np.arange(10), 4))
    write_benchmark(paths.benchmarks(paths.aligned) / PROTOCOL, records, pairs)
    evaluate_stage.run(cfg, paths, name)
    return root


@pytest.fixture(scope="module")
def verifier(demo_root) -> Verifier:
    return build_verifier(config.load(demo_root / "params.yaml", PROFILE), Paths(demo_root), None, None)


def with_detector(verifier: Verifier, landmarks: np.ndarray) -> Verifier:
    """The same model and threshold, with the photo's known landmarks as the 'detector'."""
    return Verifier(verifier.backbone, verifier.meta, verifier.threshold, GroundTruthLandmarks(landmarks),
                    verifier.device, verifier.channels_last, verifier.align)


# --- the decision logic ------------------------------------------------------------------------------------------


def test_threshold_is_the_evaluate_stages_own(demo_root, verifier):
    paths = Paths(demo_root)
    name = verifier.meta["name"]
    record = json.loads(paths.metrics("eval", name).read_text())
    threshold = verifier.threshold
    assert verifier.meta["checkpoint"] == str(seed_dir(paths, name, 0) / "model.pt")
    assert threshold.protocol == PROTOCOL and threshold.pairs == 40 and threshold.flip is record["flip"] is True
    assert threshold.metrics_path == paths.metrics("eval", name)
    assert threshold.recorded_accuracy == record["seeds"]["0"]["benchmarks"][PROTOCOL]["accuracy_flip"]
    assert threshold.accuracy == pytest.approx(threshold.recorded_accuracy, abs=1 / 40)
    # the evaluate stage's own function, called separately, chose these per-fold thresholds
    images, pairs = load_benchmark_arrays(paths.benchmarks(paths.aligned) / PROTOCOL)
    cfg = config.load(demo_root / "params.yaml", PROFILE)
    backbone, _ = load_model(cfg, paths, Path(verifier.meta["checkpoint"]))
    expected = evaluate_pairs(
        backbone, images, pairs, batch_size=cfg.evaluate.batch_size, channels_last=cfg.train.channels_last
    ).thresholds_flip
    np.testing.assert_allclose(threshold.fold_thresholds, expected, rtol=0, atol=1e-6)
    assert threshold.value == pytest.approx(float(np.mean(expected)), abs=1e-6)


def test_same_photo_gives_similarity_one_and_same(verifier):
    pixels, landmarks = synthetic_photo(42)
    result = with_detector(verifier, landmarks).verify(png(pixels), "photo A", png(pixels), "photo B")
    assert result.similarity == pytest.approx(1.0, abs=1e-5)
    assert result.threshold == verifier.threshold.value < 1.0 and result.same
    assert all(face.crop.shape == (CROP, CROP, 3) for face in result.faces)


def test_rgba_and_grey_photos_are_decoded_to_rgb(verifier):
    pixels, landmarks = synthetic_photo(7)
    judge = with_detector(verifier, landmarks)
    rgba = judge.verify(png(pixels), "photo A", png(pixels, "RGBA"), "photo B")
    assert rgba.similarity == pytest.approx(1.0, abs=1e-5)  # alpha dropped: the same pixels
    grey = judge.verify(png(pixels), "photo A", png(pixels, "L"), "photo B")
    crop = grey.faces[1].crop
    assert crop.shape == (CROP, CROP, 3) and np.array_equal(crop[..., 0], crop[..., 2])
    assert grey.similarity < 1.0 - 1e-4  # a grey photo is not the colour one


def test_exif_rotated_and_large_photos_give_the_upright_crop(verifier):
    """Through the real detector: an EXIF-rotated JPEG and a 2400x1800 photo (detected downscaled) yield the crop
    of the plain photo (measured: mean differences 2-9 grey levels; a misplaced face differs by tens)."""
    judge = Verifier(verifier.backbone, verifier.meta, verifier.threshold, photo_detector(verifier.align),
                     verifier.device, verifier.channels_last, verifier.align)
    for index in range(20):
        pixels, _ = synthetic_photo(index)
        background = np.broadcast_to(pixels[0, 0], (CANVAS, 32, 3))
        pixels = np.ascontiguousarray(np.concatenate([background, pixels], axis=1))  # 128 x 160: not square
        try:
            upright = judge.face(png(pixels), "photo A (upright)")
        except NoFaceError:
            continue  # MTCNN finds about half of the synthetic faces
        break
    else:
        pytest.fail("MTCNN found none of 20 synthetic faces")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the file stores the photo turned the other way
    stored = io.BytesIO()
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(stored, format="JPEG", quality=95, exif=exif.tobytes())
    large = np.empty((1800, 2400, 3), np.uint8)
    large[:] = pixels[0, 0]
    large[700:988, 1000:1360] = np.asarray(Image.fromarray(pixels).resize((360, 288), Image.Resampling.LANCZOS))
    for data, shape in ((stored.getvalue(), pixels.shape), (png(large), large.shape)):
        face = judge.face(data, "photo B")
        assert face.photo.shape == shape
        assert np.abs(face.crop.astype(float) - upright.crop).mean() < 16


def test_a_photo_without_a_face_is_a_clear_error(verifier):
    pixels, _ = synthetic_photo(3)
    no_landmarks = with_detector(verifier, np.full((5, 2), np.nan))
    with pytest.raises(NoFaceError, match=r"no face found in photo B \(wall.png\)"):
        no_landmarks.verify(png(pixels), "photo B (wall.png)", png(pixels), "photo A")
    mtcnn = Verifier(verifier.backbone, verifier.meta, verifier.threshold, photo_detector(verifier.align),
                     verifier.device, verifier.channels_last, verifier.align)
    with pytest.raises(NoFaceError, match=r"no face found in photo A \(grey.png\)"):
        mtcnn.face(png(np.full((200, 200, 3), 128, np.uint8)), "photo A (grey.png)")
    with pytest.raises(NoFaceError, match=r"photo A \(dot.png\) is 8x8 px, too small"):
        mtcnn.face(png(np.zeros((8, 8, 3), np.uint8)), "photo A (dot.png)")
    with pytest.raises(DemoError, match=r"photo A \(notes.txt\): cannot decode image"):
        mtcnn.face(b"not an image", "photo A (notes.txt)")


def test_a_checkpoint_that_is_not_the_evaluated_one_is_refused(demo_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_root, root)
    cfg = config.load(root / "params.yaml", PROFILE)
    metrics_path = next((root / "reports" / "metrics" / "eval").glob("*.json"))
    record = json.loads(metrics_path.read_text())
    benchmark = record["seeds"]["0"]["benchmarks"][PROTOCOL]
    benchmark["accuracy_flip"] = 1.0 - benchmark["accuracy_flip"] + 0.1
    metrics_path.write_text(json.dumps(record))
    with pytest.raises(DemoError, match=rf"{re.escape(str(metrics_path))} records accuracy_flip .* not the evaluated one"):
        build_verifier(cfg, Paths(root), None, None)
    with pytest.raises(DemoError, match="has no protocol 'agedb'"):
        build_verifier(cfg, Paths(root), None, "agedb")


def test_missing_model_or_evaluation_names_the_path_and_the_command(demo_root, tmp_path):
    cfg = config.load(demo_root / "params.yaml", PROFILE)
    with pytest.raises(FileNotFoundError, match=r"no trained and evaluated model.*bash scripts/reproduce"):
        default_checkpoint(Paths(tmp_path), None)
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {re.escape(str(tmp_path))}/model.pt does not exist.*bash scripts/reproduce"):
        load_model(cfg, Paths(tmp_path), tmp_path / "model.pt")
    weights = next((demo_root / "data" / "models").glob("*/seed0/model.pt"))
    with pytest.raises(FileNotFoundError, match=r"eval/.*\.json does not exist.*dvc repro evaluate@"):
        build_verifier(cfg, Paths(tmp_path), weights, None)
    with pytest.raises(DemoError, match=f"trained on {CROP} px crops but profile 'smoke' aligns to 32 px"):
        load_model(config.load(demo_root / "params.yaml", "smoke"), Paths(demo_root), weights)


# --- the JSON API ------------------------------------------------------------------------------------------------


def test_api_answers_errors_as_json(verifier):
    from fastapi.testclient import TestClient

    from pipeline.demo.app import create_app

    client = TestClient(create_app(verifier), base_url="http://127.0.0.1:8765")
    assert client.get("/api/model").json()["threshold"] == verifier.threshold.value
    assert 'id="verify"' in client.get("/").text
    grey = base64.b64encode(png(np.full((120, 120, 3), 90, np.uint8))).decode()
    reply = client.post("/api/verify", json={"photo_a": {"name": "a.png", "data": grey},
                                             "photo_b": {"name": "b.png", "data": "%%%"}})
    assert reply.status_code == 422 and "photo B (b.png) did not arrive as base64" in reply.json()["error"]
    reply = client.post("/api/verify", json={"photo_a": {"name": "a.png", "data": grey},
                                             "photo_b": {"name": "b.png", "data": grey}})
    assert reply.status_code == 422 and reply.json()["error"].startswith("no face found in photo A (a.png)")


def client_for(verifier: Verifier, host: str):
    from fastapi.testclient import TestClient

    return TestClient(demo_app.create_app(verifier), base_url=f"http://{host}")


def huge_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height (its pixel data is never reached)."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR: width, height ...
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # ... and its checksum
    return bytes(data)


def test_only_requests_naming_this_machine_are_answered(verifier):
    for host in ("127.0.0.1:8765", "localhost:9000", "127.0.0.1"):
        assert client_for(verifier, host).get("/api/model").status_code == 200, host
    for host in ("attacker.example:8765", "127.0.0.1.attacker.example", "192.168.1.20:8765"):  # DNS rebinding
        reply = client_for(verifier, host).post("/api/verify", json={})
        assert reply.status_code == 400 and "host" in reply.text.lower(), host


def test_a_photo_over_the_pixel_cap_is_refused_from_its_header(verifier, monkeypatch):
    data = huge_png(12000, 12000)
    assert len(data) < 1000

    def no_decoding(data: bytes, where: str) -> np.ndarray:
        raise AssertionError(f"{where} was decoded")

    monkeypatch.setattr(demo_verify, "decode_image", no_decoding)
    with pytest.raises(DemoError, match=r"photo A \(big.png\) is 12000x12000 px; the limit is 50 megapixels"):
        verifier.decode(data, "photo A (big.png)")
    encoded = base64.b64encode(data).decode()
    reply = client_for(verifier, "127.0.0.1:8765").post(
        "/api/verify", json={"photo_a": {"name": "a.png", "data": encoded}, "photo_b": {"name": "big.png", "data": encoded}}
    )
    assert reply.status_code == 422 and reply.json()["error"].startswith("photo A (a.png) is 12000x12000 px")


def test_an_oversized_body_is_refused_by_its_length_before_json_parsing(verifier, monkeypatch):
    monkeypatch.setattr(demo_app, "MAX_BODY_BYTES", 1000)
    client = client_for(verifier, "127.0.0.1:8765")
    reply = client.post("/api/verify", content=b"{" * 1001, headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "declares '1001' bytes; the limit is 1000 bytes" in reply.json()["error"]
    reply = client.post("/api/verify", content=b"{" * 1000, headers={"content-type": "application/json"})
    assert reply.status_code == 422  # within the limit: parsed (and refused as JSON)


def test_a_body_without_a_length_is_refused_while_it_arrives():
    """Chunked bodies carry no Content-Length: the limit holds while reading, and what follows is never read."""
    reached, chunks_read = [], []

    async def app(scope, receive, send) -> None:
        reached.append(scope["path"])

    async def receive() -> dict:
        chunks_read.append(len(chunks_read))
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}  # an endless body

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/verify", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(demo_app.BodyLimit(app, limit=1000)(scope, receive, send))
    assert reached == [] and len(chunks_read) == 3  # refused on the chunk that ran past 1000 bytes
    assert sent[0]["status"] == 413 and b"runs past 1000 bytes" in sent[1]["body"]


def test_photos_are_decoded_outside_the_model_lock(verifier, monkeypatch):
    pixels, landmarks = synthetic_photo(42)
    judge = with_detector(verifier, landmarks)
    decoded, both = [], threading.Event()

    def decode(data: bytes, where: str) -> np.ndarray:
        decoded.append(where)
        if len(decoded) == 2:
            both.set()
        return Verifier.decode(data, where)

    monkeypatch.setattr(judge, "decode", decode)
    results = []
    with judge._lock:  # another request busy with the model
        worker = threading.Thread(target=lambda: results.append(judge.verify(png(pixels), "A", png(pixels), "B")))
        worker.start()
        assert both.wait(timeout=30), "the photos were not decoded while the model was busy"
    worker.join(timeout=120)
    assert decoded == ["A", "B"] and results[0].similarity == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("port, message", [("0", "--port 0 is outside the TCP port range 1..65535"),
                                           ("65536", "--port 65536 is outside"), ("http", "--port 'http' is not a number")])
def test_port_is_checked(port, message, capsys):
    assert demo_app.arguments(["--port", "8080"]).port == 8080
    with pytest.raises(SystemExit):
        demo_app.arguments(["--port", port])
    assert message in capsys.readouterr().err


def test_scripts_demo_refuses_a_bad_port_before_loading_anything():
    done = subprocess.run(["bash", "scripts/demo", "--port", "99999"], cwd=config.PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--port 99999 is outside the TCP port range 1..65535" in done.stderr
    assert "loading the model" not in done.stderr


# --- the reference model (--reference): dlib's ResNet descriptor, its threshold from stage reference's record ------


REFERENCE = "dlib_resnet"


def protocol_figures(fold_thresholds: np.ndarray, pairs: int) -> ProtocolFigures:
    """A protocol's figures as stage reference records them; only the thresholds and counts matter to the demo."""
    photos = 2 * pairs
    return ProtocolFigures(
        pairs=pairs, photos=photos, photos_detected=photos - 3, folds=len(fold_thresholds), accuracy=97.5,
        accuracy_std=1.2, ci_low=96.6, ci_high=98.4, fold_thresholds=tuple(float(t) for t in fold_thresholds),
        accuracy_at_published_threshold=97.0, tar_at_far={"0.001": 0.9},
    )


def write_reference_record(root: Path, seed: int, **changes) -> ReferenceEvaluation:
    """A record of stage reference under `root` with two LFW protocols whose 10 fold thresholds lie around dlib's
    0.6 (different draws, so which protocol served is visible in the mean); `changes` replace record fields."""
    rng = np.random.default_rng(seed)
    settings = DescriberSettings(kind=REFERENCE, face_selection="central", upsample=1, fallback_crop=0.6)
    record = ReferenceEvaluation(
        model=REFERENCE, label="dlib ResNet (pretrained reference)", kind=REFERENCE, settings=asdict(settings),
        published={"lfw-view2": 99.38}, published_source="dlib's authors",
        protocols={"lfw-devtest": protocol_figures(rng.uniform(0.50, 0.58, 10), 1000),
                   "lfw-view2": protocol_figures(rng.uniform(0.56, 0.64, 10), 6000)},
        not_scored={"synth-lfw": "synthetic faces"},
    )
    record = replace(record, **changes)
    record.save(Paths(root).metrics("reference", REFERENCE))
    return record


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference_root")
    write_reference_record(root, seed=0)
    return root


@pytest.fixture(scope="module")
def reference_verifier(reference_root) -> ReferenceVerifier:
    return build_reference_verifier(Paths(reference_root), REFERENCE, None)


def lfw_same_pair_or_skip() -> tuple[Path, Path]:
    """View 2's first same pair (two photos of one person), or a skip where LFW is absent."""
    lfw = lfw_root_from_env()
    if not (lfw / "pairs_view2.csv").is_file():
        pytest.skip(f"LFW is absent ({lfw}; set $FACEREPRO_LFW)")
    pairs = pd.read_csv(lfw / "pairs_view2.csv")
    same = pairs[pairs["same"] == 1].iloc[0]
    return lfw / same["img_a"], lfw / same["img_b"]


def dlib_distance(photo_a: Path, photo_b: Path) -> float:
    """The distance of two photos' descriptors by pipeline.reference alone (the evaluation's path, no demo code)."""
    model = DlibResnet("central", 1, 0.6)
    a, b = (model.embed_encoded(path.read_bytes(), path.name) for path in (photo_a, photo_b))
    assert a.detected and b.detected
    return float(np.linalg.norm(a.vector.astype(np.float64) - b.vector))


def test_reference_threshold_is_the_records_own(reference_root, tmp_path):
    paths = Paths(reference_root)
    record = ReferenceEvaluation.load(paths.metrics("reference", REFERENCE))
    served = reference_threshold(paths, REFERENCE, None)
    # default: the LFW-like protocol with the most pairs, View 2 here
    assert served.protocol == "lfw-view2" and served.figures == record.protocols["lfw-view2"]
    assert served.value == pytest.approx(float(np.mean(record.protocols["lfw-view2"].fold_thresholds)), abs=1e-12)
    devtest = reference_threshold(paths, REFERENCE, "lfw-devtest")
    assert devtest.value == pytest.approx(float(np.mean(record.protocols["lfw-devtest"].fold_thresholds)), abs=1e-12)
    assert devtest.value != served.value
    with pytest.raises(DemoError, match="has no protocol 'agedb'; it has lfw-devtest, lfw-view2"):
        reference_threshold(paths, REFERENCE, "agedb")
    # the describer is set up as the record says, with the demo's detection bound
    model = reference_model(record, served.metrics_path)
    assert (model.selection, model.upsample, model.fallback_crop) == ("central", 1, 0.6) and model.detect_max_side


def test_reference_record_problems_name_the_file_and_the_command(tmp_path):
    missing = Paths(tmp_path).metrics("reference", REFERENCE)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(missing))} does not exist.*`dvc repro reference`"):
        build_reference_verifier(Paths(tmp_path), REFERENCE, None)
    record = write_reference_record(tmp_path, seed=1)
    other = Paths(tmp_path).metrics("reference", "other")
    other.write_text(missing.read_text())
    with pytest.raises(DemoError, match=rf"{re.escape(str(other))} holds reference model 'dlib_resnet', not 'other'"):
        build_reference_verifier(Paths(tmp_path), "other", None)
    hopeless = replace(record.protocols["lfw-view2"], fold_thresholds=(float("inf"),) * 10)
    write_reference_record(tmp_path, seed=1, protocols={"lfw-view2": hopeless})
    with pytest.raises(DemoError, match="separates no pairs on lfw-view2"):
        build_reference_verifier(Paths(tmp_path), REFERENCE, None)
    write_reference_record(tmp_path, seed=1, settings={**record.settings, "dlib": "19.0.0"})
    with pytest.raises(DemoError, match=r"measured with dlib-bin 19.0.0, but .* is installed.*dvc repro reference"):
        build_reference_verifier(Paths(tmp_path), REFERENCE, None)
    with pytest.raises(SystemExit) as stopped:  # what scripts/demo prints before exiting with status 1
        demo_app.main(["--reference", "absent", "--root", str(tmp_path)])
    message = str(stopped.value.code)
    assert message.startswith(f"scripts/demo: {Paths(tmp_path).metrics('reference', 'absent')} does not exist")
    assert "`dvc repro reference`" in message


def test_reference_and_checkpoint_exclude_each_other(capsys):
    assert demo_app.arguments(["--reference", REFERENCE]).reference == REFERENCE
    with pytest.raises(SystemExit):
        demo_app.arguments(["--reference", REFERENCE, "--checkpoint", "model.pt"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_reference_without_a_face_is_a_clear_error(reference_verifier):
    """dlib's evaluation describes a fallback box where no face is found; the demo says so instead."""
    with pytest.raises(NoFaceError, match=r"no face found in photo A \(grey.png\) by dlib's detector.*~40 px wide"):
        reference_verifier.face(png(np.full((200, 200, 3), 128, np.uint8)), "photo A (grey.png)")
    with pytest.raises(NoFaceError, match=r"no face found in photo B \(dot.png\)"):
        reference_verifier.face(png(np.zeros((8, 8, 3), np.uint8)), "photo B (dot.png)")
    with pytest.raises(DemoError, match=r"photo A \(notes.txt\): cannot decode image"):
        reference_verifier.face(b"not an image", "photo A (notes.txt)")


def test_reference_distance_is_dlibs_own_on_real_photos(reference_verifier):
    photo_a, photo_b = lfw_same_pair_or_skip()
    data_a, data_b = photo_a.read_bytes(), photo_b.read_bytes()
    itself = reference_verifier.verify(data_a, "photo A", data_a, "photo B")
    assert itself.distance == pytest.approx(0.0, abs=1e-6) and itself.same
    result = reference_verifier.verify(data_a, "photo A", data_b, "photo B")
    assert result.distance == pytest.approx(dlib_distance(photo_a, photo_b), abs=1e-5)
    assert result.threshold == reference_verifier.threshold.value
    assert result.same == (result.distance < result.threshold)
    for face in result.faces:
        height, width = face.photo.shape[:2]
        assert face.face.chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and face.face.detected
        assert 0 <= face.face.box[0] < face.face.box[2] < width and 0 <= face.face.box[1] < face.face.box[3] < height
        inside = (face.face.points >= face.face.box[:2]) & (face.face.points <= face.face.box[2:])
        assert face.face.points.shape == (5, 2) and inside.all()


def test_reference_api_describes_the_threshold_and_answers_errors(reference_verifier):
    client = client_for(reference_verifier, "127.0.0.1:8765")
    info = client.get("/api/model").json()
    figures = reference_verifier.threshold.figures
    assert (info["kind"], info["model"], info["protocol"]) == ("reference", REFERENCE, "lfw-view2")
    assert (info["measure"], info["same_when"]) == ("descriptor distance", "below")
    assert info["threshold"] == reference_verifier.threshold.value and info["crop_size"] == CHIP_SIZE
    assert info["fold_thresholds"] == list(figures.fold_thresholds) and info["pairs"] == figures.pairs
    assert info["published"] == 99.38 and info["published_threshold"] == PUBLISHED_THRESHOLD
    grey = base64.b64encode(png(np.full((120, 120, 3), 90, np.uint8))).decode()
    reply = client.post("/api/verify", json={"photo_a": {"name": "a.png", "data": grey},
                                             "photo_b": {"name": "b.png", "data": grey}})
    assert reply.status_code == 422 and reply.json()["error"].startswith("no face found in photo A (a.png)")


# --- the page in a real browser ----------------------------------------------------------------------------------


def browser_or_skip() -> tuple[str, str]:
    """(chromium, chromedriver); a skip on a machine without them, a failure under CI."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI: {reason}; .ci/run installs them")
        pytest.skip(reason)
    return chromium, driver


def browser_photos(folder: Path) -> dict[str, Path]:
    """A same pair and a different pair of LFW photos (View 2's first of each) where LFW is present, else
    synthetic faces MTCNN finds; and a photo with no face."""
    lfw = lfw_root_from_env()
    photos: dict[str, Path] = {}
    if (lfw / "pairs_view2.csv").is_file():
        pairs = pd.read_csv(lfw / "pairs_view2.csv")
        same, different = pairs[pairs["same"] == 1].iloc[0], pairs[pairs["same"] == 0].iloc[0]
        photos.update(same_a=lfw / same["img_a"], same_b=lfw / same["img_b"],
                      different_a=lfw / different["img_a"], different_b=lfw / different["img_b"])
    else:
        detector = photo_detector(config.load(profile=PROFILE).align)
        found = []
        for index in range(40):
            views = [synthetic_photo(index)[0], synthetic_photo(index, yaw_deg=5, roll_deg=8)[0]]
            if all(detector.detect(view) is not None for view in views):
                found.append(views)
            if len(found) == 2:
                break
        assert len(found) == 2, "MTCNN found fewer than two of 40 synthetic identities in both views"
        for key, pixels in (("same_a", found[0][0]), ("same_b", found[0][1]), ("different_b", found[1][0])):
            photos[key] = folder / f"{key}.png"
            photos[key].write_bytes(png(pixels))
        photos["different_a"] = photos["same_a"]
    photos["no_face"] = folder / "wall.png"
    photos["no_face"].write_bytes(png(np.full((240, 320, 3), (180, 170, 150), np.uint8)))
    return photos


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(server: subprocess.Popen, url: str, log: Path) -> dict:
    deadline = time.monotonic() + 300  # model load and threshold on a loaded 2-core machine
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the demo server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "api/model", timeout=5) as reply:
                return json.load(reply)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo server did not answer at {url}:\n{log.read_text()}")


@contextmanager
def demo_server(arguments: list[str], folder: Path) -> Iterator[tuple[str, dict]]:
    """`python -m pipeline.demo ARGUMENTS` on a free port: (its URL, its /api/model); stopped by SIGTERM after."""
    port, log = free_port(), folder / "server.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeline.demo", *arguments, "--port", str(port)],
            cwd=config.PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield url, wait_for_server(server, url, log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            pytest.fail(f"the demo server ignored SIGTERM:\n{log.read_text()}")


@contextmanager
def headless_chromium(folder: Path):
    """A selenium driver of headless Chromium, with no network chatter of its own; quit after."""
    chromium, chromedriver = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={folder / 'chromium-profile'}", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()
        assert driver.service.process.poll() is not None, "chromedriver still running"


class DemoPage:
    """The demo page open in a driver: upload two photos, press Verify, read what it shows."""

    def __init__(self, driver, url: str, info: dict) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.info, self.by, self.wait = driver, info, By, WebDriverWait(driver, 120)
        driver.get(url)
        self.wait.until(lambda d: info["model"] in self.text("model-info"))

    def element(self, id_: str):
        return self.driver.find_element(self.by.ID, id_)

    def text(self, id_: str) -> str:
        return self.element(id_).get_attribute("textContent")

    def compare(self, photo_a: Path, photo_b: Path, value: str = "similarity") -> tuple[str, float, float]:
        """(decision, the `value` element's number, threshold) as the page shows them, or (the error, nan, nan)."""
        self.element("photo-a").send_keys(str(photo_a))
        self.element("photo-b").send_keys(str(photo_b))
        self.wait.until(lambda d: self.element("verify").is_enabled())
        self.element("verify").click()
        self.wait.until(lambda d: self.element("result").is_displayed() or self.element("error").is_displayed())
        if self.element("error").is_displayed():
            return self.element("error").text, float("nan"), float("nan")
        return self.element("decision").text, float(self.element(value).text), float(self.element("threshold").text)

    def crops_rendered(self) -> None:
        for slot in ("a", "b"):
            size = self.driver.execute_script(f"const c = document.getElementById('crop-{slot}'); "
                                              f"const m = document.getElementById('marked-{slot}'); "
                                              "return [c.complete, c.naturalWidth, c.naturalHeight, m.naturalWidth];")
            assert size[:3] == [True, self.info["crop_size"], self.info["crop_size"]] and size[3] > 0, (slot, size)


def test_page_in_headless_chromium(demo_root, tmp_path):
    browser_or_skip()
    photos = browser_photos(tmp_path)
    with demo_server(["--root", str(demo_root), "--profile", PROFILE], tmp_path) as (url, info), \
            headless_chromium(tmp_path) as driver:
        page = DemoPage(driver, url, info)
        assert f"{info['protocol']}" in page.text("threshold-source")
        decision, similarity, threshold = page.compare(photos["same_a"], photos["same_a"])
        assert (decision, similarity, threshold) == ("Same person", 1.0, round(info["threshold"], 4))
        page.crops_rendered()
        for pair in ("same", "different"):  # an untrained model: the decision must follow the numbers, nothing more
            decision, similarity, threshold = page.compare(photos[f"{pair}_a"], photos[f"{pair}_b"])
            assert -1.0 <= similarity <= 1.0 and threshold == round(info["threshold"], 4), decision
            assert decision == ("Same person" if similarity > threshold else "Different people")
            page.crops_rendered()
        error, _, _ = page.compare(photos["same_a"], photos["no_face"])
        assert error.startswith("no face found in photo B (wall.png)"), error
        assert not page.element("result").is_displayed()


def test_reference_page_in_headless_chromium(reference_root, tmp_path):
    """`scripts/demo --reference dlib_resnet` as a person would use it: two real LFW photos of one person uploaded,
    the page's distance is dlib's own and its decision follows the record's threshold."""
    browser_or_skip()
    photo_a, photo_b = lfw_same_pair_or_skip()
    record = ReferenceEvaluation.load(Paths(reference_root).metrics("reference", REFERENCE))
    with demo_server(["--reference", REFERENCE, "--root", str(reference_root)], tmp_path) as (url, info), \
            headless_chromium(tmp_path) as driver:
        page = DemoPage(driver, url, info)
        assert info["kind"] == "reference" and info["protocol"] == "lfw-view2"
        source = page.text("threshold-source")
        assert "lfw-view2 (6000 pairs" in source and "distance is below it" in source, source
        assert str(Paths(reference_root).metrics("reference", REFERENCE)) in source
        assert f"{record.protocols['lfw-view2'].accuracy:.2f}%" in source
        decision, distance, threshold = page.compare(photo_a, photo_b, value="distance")
        assert page.text("measure") == "descriptor distance" and page.text("similarity") == ""
        assert threshold == round(float(np.mean(record.protocols["lfw-view2"].fold_thresholds)), 4)
        assert distance == pytest.approx(dlib_distance(photo_a, photo_b), abs=1e-4)  # shown to 4 decimals
        assert decision == ("Same person" if distance < threshold else "Different people")
        # dlib's own chips of one person: well within its authors' 0.6 (a misplaced chip lands far beyond it)
        assert distance < PUBLISHED_THRESHOLD and decision == "Same person"
        page.crops_rendered()
        assert "dlib's face chip" in page.text("views-a")
