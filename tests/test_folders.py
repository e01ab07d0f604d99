"""Image decoding (pipeline/data/images.py) and folder-per-person ingestion (pipeline/data/folders.py)."""
from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.data import images as img
from pipeline.data.folders import IMAGE_SUFFIXES, check_jpeg_scans, folders_to_records, label_map, scan_folders
from pipeline.data.records import iter_records

ORIENTATION = 0x0112


def pixels(seed: int, h: int = 6, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, orientation: int | None = None, **kwargs) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_png(seed: int, h: int = 6, w: int = 10) -> bytes:
    return encode(Image.fromarray(pixels(seed, h, w)), "PNG")


# --- decode_image ----------------------------------------------------------------------------------------------


def test_decode_rgb_png_exactly():
    array = pixels(1)
    out = img.decode_image(rgb_png(1), "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: a[::-1, ::-1]),
        (6, lambda a: np.rot90(a, k=-1)),  # stored rotated: display needs 90 degrees clockwise
        (8, lambda a: np.rot90(a, k=1)),
    ],
)
def test_exif_orientation_is_applied(orientation, upright):
    array = pixels(2)
    data = encode(Image.fromarray(array), "PNG", orientation=orientation)
    np.testing.assert_array_equal(img.decode_image(data, "r.png"), upright(array))
    assert img.image_size(data, "r.png") == upright(array).shape[:2]


def test_greyscale_becomes_three_equal_channels():
    grey = pixels(3)[:, :, 0]
    out = img.decode_image(encode(Image.fromarray(grey, mode="L"), "PNG"), "g.png")
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_rgba_drops_alpha():
    rgba = np.concatenate([pixels(4), np.full((6, 10, 1), 17, np.uint8)], axis=2)
    out = img.decode_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), "a.png")
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_palette_is_looked_up():
    palette = np.random.default_rng(5).integers(0, 256, (256, 3), dtype=np.uint8)
    index = np.random.default_rng(6).integers(0, 256, (6, 10), dtype=np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    out = img.decode_image(encode(image, "PNG"), "p.png")
    np.testing.assert_array_equal(out, palette[index])


def test_sixteen_bit_grey_keeps_the_top_byte():
    values = np.random.default_rng(7).integers(0, 65536, (6, 10)).astype(np.uint16)
    out = img.decode_image(encode(Image.fromarray(values), "PNG"), "deep.png")
    np.testing.assert_array_equal(out, np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2))


def test_jpeg_decodes_close_to_the_source():
    array = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    out = img.decode_image(img.encode_jpeg(array, quality=95), "j.jpg")
    assert out.shape == array.shape
    assert np.abs(out.astype(int) - array).mean() < 2.0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_images_raise_naming_where(fmt, keep):
    data = encode(Image.fromarray(pixels(8, 64, 64)), fmt)
    with pytest.raises(img.CorruptImageError, match=r"^train\.rec record 17: cannot decode image") as caught:
        img.decode_image(data[: int(len(data) * keep)], "train.rec record 17")
    assert caught.value.where == "train.rec record 17"


@pytest.mark.parametrize("data", [b"", b"definitely not an image", None])
def test_garbage_raises_naming_where(data):
    with pytest.raises(img.CorruptImageError, match="/photos/x.jpg"):
        img.decode_image(data, "/photos/x.jpg")


def test_corrupt_image_error_survives_a_one_string_rebuild():
    # DataLoader workers rebuild an exception from its message alone
    rebuilt = img.CorruptImageError("Caught CorruptImageError ... part-00000.parquet row 3")
    assert str(rebuilt).endswith("row 3") and isinstance(rebuilt, ValueError)


def test_truncated_images_allowed_globally_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES.*x.png"):
        img.decode_image(rgb_png(1), "x.png")


def test_encode_png_round_trip_and_validation():
    array = pixels(9)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encode_png(array)))), array)
    np.testing.assert_array_equal(img.decode_image(img.encode_png(array[:, :, 0]), "g"), np.repeat(array[:, :, :1], 3, 2))
    with pytest.raises(ValueError, match="dtype float64"):
        img.encode_png(array / 255.0)
    with pytest.raises(ValueError, match=r"shape \(6, 10, 4\)"):
        img.encode_png(np.zeros((6, 10, 4), np.uint8))
    with pytest.raises(ValueError, match="quality must be in 1..100"):
        img.encode_jpeg(array, quality=0)


def test_encode_jpeg_quality_changes_size():
    array = pixels(10, 64, 64)
    assert len(img.encode_jpeg(array, quality=30)) < len(img.encode_jpeg(array, quality=95))


def test_normalise_encoded_passes_plain_files_and_rewrites_others():
    plain = rgb_png(11)
    data, array = img.normalise_encoded(plain, "p.png")
    assert data == plain
    jpeg = encode(Image.fromarray(pixels(12)), "JPEG", quality=90)
    assert img.normalise_encoded(jpeg, "p.jpg")[0] == jpeg
    rotated = encode(Image.fromarray(pixels(13)), "JPEG", orientation=6, quality=90)
    data, array = img.normalise_encoded(rotated, "r.jpg")
    assert data != rotated and data.startswith(b"\x89PNG")
    assert array.shape == (10, 6, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)  # upright for any decoder
    grey = encode(Image.fromarray(pixels(14)[:, :, 0], mode="L"), "PNG")
    data, array = img.normalise_encoded(grey, "g.png")
    assert Image.open(io.BytesIO(data)).mode == "RGB"


# --- folders ---------------------------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "zoe/b.JPG": encode(Image.fromarray(pixels(1)), "JPEG", quality=92),
        "zoe/a.png": rgb_png(2),
        "zoe/notes.txt": b"not an image",
        "amy/c.jpeg": encode(Image.fromarray(pixels(3)), "JPEG", quality=92),
        "amy/sub/deeper.png": rgb_png(4),  # only root/<person>/* counts
        ".cache/x.png": rgb_png(5),
        "stray.png": rgb_png(6),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "empty_person").mkdir()
    return files


def test_scan_folders_is_sorted_and_case_insensitive(tmp_path):
    make_tree(tmp_path)
    items = scan_folders(tmp_path).items
    assert [(p.relative_to(tmp_path).as_posix(), name) for p, name in items] == [
        ("amy/c.jpeg", "amy"),
        ("zoe/a.png", "zoe"),
        ("zoe/b.JPG", "zoe"),
    ]
    assert label_map(items) == {"amy": 0, "zoe": 1}


def test_labels_follow_names_not_creation_order(tmp_path):
    for name in ["delta", "bravo", "charlie", "alpha"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes(rgb_png(0))
    assert label_map(scan_folders(tmp_path).items) == {"alpha": 0, "bravo": 1, "charlie": 2, "delta": 3}


def test_scan_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_folders(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(rgb_png(0))
    with pytest.raises(ValueError, match="no person folders"):
        scan_folders(tmp_path / "flat")
    (tmp_path / "bare" / "amy").mkdir(parents=True)
    (tmp_path / "bare" / "amy" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="hold no images"):
        scan_folders(tmp_path / "bare")


def test_folders_to_records(tmp_path):
    files = make_tree(tmp_path / "root")
    report = folders_to_records(tmp_path / "root", tmp_path / "records")
    assert report["images"] == 3 and report["identities"] == 2
    assert report["labels"] == {"amy": 0, "zoe": 1}
    assert report["empty_folders"] == ["empty_person"] and report["skipped"] == [] and report["empty_labels"] == []
    records = list(iter_records(tmp_path / "records"))
    assert [(r.source, r.label, r.identity) for r in records] == [("amy/c.jpeg", 0, 0), ("zoe/a.png", 1, 1), ("zoe/b.JPG", 1, 1)]
    for record in records:
        assert record.image == files[record.source]  # plain RGB files pass through untouched
        assert np.isnan(record.landmarks).all()


def test_landmarks_fn_sees_the_upright_image(tmp_path):
    (tmp_path / "root" / "amy").mkdir(parents=True)
    array = pixels(20, 6, 10)
    (tmp_path / "root" / "amy" / "rot.png").write_bytes(encode(Image.fromarray(array), "PNG", orientation=6))
    (tmp_path / "root" / "amy" / "plain.png").write_bytes(rgb_png(21))
    seen = []

    def landmarks(image: np.ndarray) -> np.ndarray | None:
        seen.append(image.shape)
        if image.shape[0] == 10:  # the rotated one: pretend a face was found
            return np.arange(10, dtype=np.float32).reshape(5, 2) + image[0, 0, 0]
        return None

    report = folders_to_records(tmp_path / "root", tmp_path / "records", landmarks_fn=landmarks)
    assert sorted(seen) == [(6, 10, 3), (10, 6, 3)]
    assert report["no_landmarks"] == ["amy/plain.png"]
    by_source = {r.source: r for r in iter_records(tmp_path / "records")}
    upright = np.rot90(array, k=-1)
    rot = by_source["amy/rot.png"]
    np.testing.assert_array_equal(img.decode_image(rot.image, "rot"), upright)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rot.image))), upright)  # stored upright
    np.testing.assert_array_equal(rot.landmarks, np.arange(10, dtype=np.float32).reshape(5, 2) + upright[0, 0, 0])
    assert np.isnan(by_source["amy/plain.png"].landmarks).all()


def test_landmarks_fn_with_a_wrong_shape_is_named(tmp_path):
    make_tree(tmp_path / "root")
    with pytest.raises(ValueError, match=r"amy/c\.jpeg: landmarks_fn returned shape \(10,\)"):
        folders_to_records(tmp_path / "root", tmp_path / "records", landmarks_fn=lambda a: np.zeros(10))
    assert not (tmp_path / "records").exists()


def test_corrupt_file_raises_or_is_skipped(tmp_path):
    files = make_tree(tmp_path / "root")
    (tmp_path / "root" / "zoe" / "a.png").write_bytes(files["zoe/a.png"][:50])
    (tmp_path / "root" / "bob").mkdir()
    (tmp_path / "root" / "bob" / "only.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(img.CorruptImageError, match=r"root/bob/only\.jpg"):
        folders_to_records(tmp_path / "root", tmp_path / "records")
    assert not (tmp_path / "records").exists()
    report = folders_to_records(tmp_path / "root", tmp_path / "records", skip_corrupt=True)
    assert [s["source"] for s in report["skipped"]] == ["bob/only.jpg", "zoe/a.png"]
    assert "cannot decode image" in report["skipped"][0]["error"]
    assert report["images"] == 2 and report["labels"] == {"amy": 0, "bob": 1, "zoe": 2}
    assert report["empty_labels"] == [1]  # bob's label is taken but no image of his was kept
    assert [r.source for r in iter_records(tmp_path / "records")] == ["amy/c.jpeg", "zoe/b.JPG"]


def test_every_format_pillow_reads_is_ingested(tmp_path):
    """The classic face databases ship as PGM (AT&T/ORL, Yale); BMP, TIFF and WebP turn up too."""
    assert {".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jpg", ".png"} <= IMAGE_SUFFIXES
    assert ".pdf" not in IMAGE_SUFFIXES  # Pillow writes PDF but cannot read it
    grey = pixels(30)[:, :, 0]
    colour = pixels(31)
    files = {
        "s1/1.pgm": (encode(Image.fromarray(grey, mode="L"), "PPM"), np.repeat(grey[:, :, None], 3, axis=2)),
        "s1/2.bmp": (encode(Image.fromarray(colour), "BMP"), colour),
        "s2/3.TIF": (encode(Image.fromarray(colour), "TIFF"), colour),
        "s2/4.webp": (encode(Image.fromarray(colour), "WEBP", lossless=True), colour),
    }
    for name, (data, _) in files.items():
        (tmp_path / "root" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / name).write_bytes(data)
    report = folders_to_records(tmp_path / "root", tmp_path / "records")
    assert report["images"] == 4 and report["ignored"] == [] and report["skipped"] == []
    for record in iter_records(tmp_path / "records"):
        assert record.image.startswith(b"\x89PNG")  # stored as PNG of the decoded RGB pixels
        np.testing.assert_array_equal(img.decode_image(record.image, record.source), files[record.source][1])


def test_every_entry_not_ingested_is_named_with_its_reason(tmp_path, caplog):
    make_tree(tmp_path / "root")
    (tmp_path / "root" / "amy" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "root" / "amy" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with caplog.at_level(logging.WARNING, logger="facerepro.data"):
        report = folders_to_records(tmp_path / "root", tmp_path / "records")
    assert report["ignored"] == [
        {"source": ".cache", "reason": "hidden"},
        {"source": "stray.png", "reason": "not inside a person folder"},
        {"source": "amy/.DS_Store", "reason": "hidden"},
        {"source": "amy/dangling.jpg", "reason": "not a regular file"},
        {"source": "amy/sub", "reason": "a folder inside a person folder (only root/<person>/* is read)"},
        {"source": "zoe/notes.txt", "reason": "suffix '.txt' is no image format Pillow reads"},
    ]
    assert report["images"] == 3
    [line] = [r.getMessage() for r in caplog.records if "not ingested" in r.getMessage()]
    assert "6 entries not ingested" in line and "stray.png (not inside a person folder)" in line and "1 more" in line


def garbled_jpeg() -> bytes:
    """A JPEG with random bytes written over part of its scan that Pillow (libjpeg) decodes without an error."""
    y, x = np.mgrid[0:96, 0:128]
    array = np.stack([x * 2 % 256, y * 2 % 256, (x + y) % 256], -1).astype(np.uint8)
    data = bytearray(encode(Image.fromarray(array), "JPEG", quality=90))
    start = data.find(b"\xff\xda") + (len(data) - data.find(b"\xff\xda")) // 2
    data[start:start + 64] = bytes((37 * i + 11) % 251 for i in range(64))  # no 0xff: no marker is faked
    with Image.open(io.BytesIO(bytes(data))) as image:
        image.load()  # no error: the very gap this check fills
    return bytes(data)


def test_jpeg_with_garbage_mid_scan_is_refused_or_skipped_naming_the_file(tmp_path):
    files = make_tree(tmp_path / "root")
    (tmp_path / "root" / "zoe" / "b.JPG").write_bytes(garbled_jpeg())
    with pytest.raises(img.CorruptImageError, match=r"root/zoe/b\.JPG: cannot decode image \(corrupt JPEG data: "):
        folders_to_records(tmp_path / "root", tmp_path / "records")
    assert not (tmp_path / "records").exists()
    report = folders_to_records(tmp_path / "root", tmp_path / "records", skip_corrupt=True)
    assert [s["source"] for s in report["skipped"]] == ["zoe/b.JPG"] and report["images"] == 2
    assert "corrupt JPEG data" in report["skipped"][0]["error"]
    assert files["amy/c.jpeg"] in [r.image for r in iter_records(tmp_path / "records")]


@pytest.mark.parametrize(
    "options",
    [{"quality": 90}, {"subsampling": 0}, {"subsampling": 1}, {"optimize": True}, {"progressive": True},
     {"restart_marker_blocks": 3}, {"restart_marker_rows": 1, "subsampling": 0}],
)
@pytest.mark.parametrize("shape", [(6, 10, 3), (101, 67, 3), (33, 47)])
def test_valid_jpegs_pass_the_scan_check(options, shape):
    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    check_jpeg_scans(encode(Image.fromarray(array), "JPEG", **options), "fine.jpg")


def test_jpeg_scan_check_names_what_is_wrong():
    data = encode(Image.fromarray(pixels(40, 64, 64)), "JPEG", quality=90)
    with pytest.raises(img.CorruptImageError, match=r"^cut\.jpg: .*ends before its end-of-image marker"):
        check_jpeg_scans(data[:-2], "cut.jpg")
    with pytest.raises(img.CorruptImageError, match=r"^long\.jpg: .*(bytes of scan 1 left|bad Huffman code)"):
        check_jpeg_scans(data[:-2] + bytes(40) + data[-2:], "long.jpg")  # bytes after the last block
    restarted = encode(Image.fromarray(pixels(41, 64, 64)), "JPEG", restart_marker_blocks=2)
    first = restarted.find(b"\xff\xd0")
    swapped = restarted[:first + 1] + b"\xd3" + restarted[first + 2:]
    with pytest.raises(img.CorruptImageError, match=r"^rst\.jpg: .*restart marker 1 is out of sequence"):
        check_jpeg_scans(swapped, "rst.jpg")


@pytest.mark.parametrize("created, named", [(b"amy/caf\xe9.jpg", b"amy/caf\xe9.jpg"), (b"Ren\xe9/1.png", b"Ren\xe9")])
def test_a_name_that_is_not_utf8_is_refused_naming_it(tmp_path, created, named):
    root = tmp_path / "root"
    make_tree(root)
    path = root / os.fsdecode(created)  # a Latin-1 name, as old archives unpack
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rgb_png(50))
    with pytest.raises(ValueError, match=re.escape(repr(os.fsencode(root) + b"/" + named)) + " is not UTF-8; rename it"):
        folders_to_records(root, tmp_path / "records")
    assert not (tmp_path / "records").exists()
