"""InsightFace RecordIO and .bin: files packed by hand here (independent of the module) read right, and back."""
from __future__ import annotations

import gc
import io
import os
import pickle
import re
import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin
from sklearn.model_selection import KFold

from pipeline.data import insightface as ins
from pipeline.data.images import CorruptImageError
from pipeline.data.records import FaceRecord, iter_records, read_benchmark, write_benchmark, write_records

MAGIC = 0xCED7230A
MAGIC_LE = struct.pack("<I", MAGIC)
H, W = 6, 8  # deliberately not square: catches (h, w) swaps


def png(seed: int, text: str | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("note", text)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_with_aligned_magic(seed: int) -> bytes:
    """A valid PNG whose bytes hold the RecordIO magic at a 4-aligned offset (so a writer must split it)."""
    for pad in range(4):
        data = png(seed, "x" * pad + MAGIC_LE.decode("latin-1") + "tail")
        where = data.find(MAGIC_LE)
        if where % 4 == 0:
            return data
    raise AssertionError("could not align the magic word")


# --- an independent minimal RecordIO writer and reader (struct-packing by hand) --------------------------------


def ir(flag: int, label: float, key: int, labels=(), image: bytes = b"") -> bytes:
    return struct.pack("<IfQQ", flag, label, key, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def frame(cflag: int, data: bytes) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * ((4 - len(data) % 4) % 4)


def hand_write(prefix: Path, payloads: dict[int, bytes | list[bytes]], num_classes: int) -> None:
    """payloads: key -> payload (one frame) or list of parts (multi-part: cflag 1, 2.., 3; magic dropped)."""
    rec, lines = b"", []
    for key, payload in payloads.items():
        lines.append(f"{key}\t{len(rec)}\n")
        if isinstance(payload, list):
            flags = [1] + [2] * (len(payload) - 2) + [3]
            rec += b"".join(frame(f, part) for f, part in zip(flags, payload))
        else:
            rec += frame(0, payload)
    Path(f"{prefix}.rec").write_bytes(rec)
    Path(f"{prefix}.idx").write_text("".join(lines))
    (prefix.parent / "property").write_text(f"{num_classes},{H},{W}")


def hand_read(prefix: Path) -> dict[int, bytes]:
    """key -> payload, following the .idx offsets; parts are joined with the magic word put back."""
    rec = Path(f"{prefix}.rec").read_bytes()
    out = {}
    for line in Path(f"{prefix}.idx").read_text().splitlines():
        key, offset = (int(v) for v in line.split("\t"))
        parts = []
        while True:
            magic, lrecord = struct.unpack_from("<II", rec, offset)
            assert magic == MAGIC
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            parts.append(rec[offset + 8 : offset + 8 + length])
            offset += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
        out[key] = MAGIC_LE.join(parts)
    return out


def insightface_layout(prefix: Path, classes: list[list[bytes]], multipart_key: int | None = None) -> list[tuple[int, bytes]]:
    """Header record, images grouped by class, identity records; returns the expected (label, image) list."""
    count = sum(len(images) for images in classes)
    first_identity = count + 1
    payloads: dict[int, bytes | list[bytes]] = {0: ir(2, 0.0, 0, (first_identity, first_identity + len(classes)))}
    expected, key, ranges = [], 1, []
    for label, images in enumerate(classes):
        start = key
        for image in images:
            payloads[key] = ir(0, float(label), key, image=image)
            expected.append((label, image))
            key += 1
        ranges.append((start, key))
    for label, (start, end) in enumerate(ranges):
        payloads[first_identity + label] = ir(2, 0.0, first_identity + label, (start, end))
    if multipart_key is not None:
        whole = payloads[multipart_key]
        payloads[multipart_key] = whole.split(MAGIC_LE)  # the independent writer's split
    hand_write(prefix, payloads, len(classes))
    return expected


# --- RecordIO reading ------------------------------------------------------------------------------------------


def test_read_rec_reads_a_hand_packed_insightface_set(tmp_path):
    prefix = tmp_path / "train"
    # raw bytes are fine here: read_rec does not decode; image 3 holds the magic twice at aligned offsets
    classes = [[b"img-a", b"img-bb"], [b"abcd" + MAGIC_LE + b"efgh" + MAGIC_LE + b"ij"], [b"c1", b"c2", b"c3"]]
    expected = insightface_layout(prefix, classes, multipart_key=3)
    assert list(ins.read_rec(prefix)) == expected
    assert ins.read_identities(prefix) == [(1, 3), (3, 4), (4, 7)]
    assert ins.read_property(prefix) == ins.RecProperty(3, H, W)


def test_image_record_with_label_array_uses_the_first_label(tmp_path):
    prefix = tmp_path / "train"
    hand_write(
        prefix,
        {0: ir(2, 0.0, 0, (3, 4)), 1: ir(0, 0.0, 1, image=b"zero"), 2: ir(3, 0.0, 2, (1.0, 0.5, 0.25), b"one"), 3: ir(2, 0, 3, (1, 3))},
        num_classes=2,
    )
    assert list(ins.read_rec(prefix)) == [(0, b"zero"), (1, b"one")]


def test_without_a_header_record_every_record_is_an_image(tmp_path):
    prefix = tmp_path / "plain"
    hand_write(prefix, {0: ir(0, 5.0, 0, image=b"p"), 1: ir(0, 2.0, 1, image=b"q"), 2: ir(0, 5.0, 2, image=b"r")}, 6)
    assert list(ins.read_rec(prefix)) == [(5, b"p"), (2, b"q"), (5, b"r")]
    assert ins.read_identities(prefix) == []


def test_prefix_may_name_the_rec_file(tmp_path):
    expected = insightface_layout(tmp_path / "train", [[b"a"], [b"b"]])
    assert list(ins.read_rec(tmp_path / "train.rec")) == expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"abc", b"abcd" + MAGIC_LE, MAGIC_LE + b"xyz", b"ab" + MAGIC_LE + b"cd", MAGIC_LE * 3 + b"e", bytes(range(256)) * 3],
)
def test_frame_record_splits_only_at_aligned_magic_and_reads_back(tmp_path, payload):
    framed = ins.frame_record(payload)
    assert len(framed) % 4 == 0
    # count frames by hand: one per aligned magic word plus one
    aligned = sum(1 for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == MAGIC_LE)
    headers, offset = [], 0
    while offset < len(framed):
        magic, lrecord = struct.unpack_from("<II", framed, offset)
        assert magic == MAGIC
        headers.append(lrecord >> 29)
        length = lrecord & ((1 << 29) - 1)
        offset += 8 + length + (-length % 4)
    assert len(headers) == aligned + 1
    assert headers == ([0] if aligned == 0 else [1] + [2] * (aligned - 1) + [3])
    path = tmp_path / "one.rec"
    path.write_bytes(framed)
    with open(path, "rb") as handle:
        assert ins.read_record(handle, 0, len(framed), "one.rec record 0") == payload


# --- RecordIO writing ------------------------------------------------------------------------------------------


def test_write_rec_layout_checked_by_an_independent_reader(tmp_path):
    images = {(label, n): png(10 * label + n) for label in range(3) for n in range(label + 1)}
    images[(2, 1)] = png_with_aligned_magic(99)
    items = [(label, images[(label, n)]) for n in range(3) for label in range(3) if (label, n) in images]  # interleaved
    prefix = tmp_path / "out" / "train"
    assert ins.write_rec(prefix, items, image_size=(H, W)) == ins.RecProperty(3, H, W)

    assert (tmp_path / "out" / "property").read_text().strip() == f"3,{H},{W}"
    records = hand_read(prefix)
    assert sorted(records) == list(range(1 + 6 + 3))
    flag, _, _, _ = struct.unpack_from("<IfQQ", records[0])
    assert flag == 2 and struct.unpack_from("<2f", records[0], 24) == (7.0, 10.0)
    # images grouped by label, input order kept within a label
    want = [(label, images[(label, n)]) for label in range(3) for n in range(label + 1)]
    for key, (label, data) in enumerate(want, start=1):
        flag, stored_label, stored_key, _ = struct.unpack_from("<IfQQ", records[key])
        assert (flag, stored_label, stored_key) == (0, float(label), key)
        assert records[key][24:] == data
    ranges = [struct.unpack_from("<2f", records[key], 24) for key in (7, 8, 9)]
    assert ranges == [(1.0, 2.0), (2.0, 4.0), (4.0, 7.0)]
    # the magic-bearing image was written as a multi-part record
    rec = Path(f"{prefix}.rec").read_bytes()
    cflags = []
    for line in Path(f"{prefix}.idx").read_text().splitlines():
        offset = int(line.split("\t")[1])
        cflags.append(struct.unpack_from("<II", rec, offset)[1] >> 29)
    assert cflags.count(1) == 1


def test_write_rec_read_rec_round_trip(tmp_path):
    items = [(1, png(1)), (0, png(2)), (1, png_with_aligned_magic(3)), (0, png(4))]
    ins.write_rec(tmp_path / "train", items, image_size=(H, W))
    back = list(ins.read_rec(tmp_path / "train"))
    assert back == [items[1], items[3], items[0], items[2]]
    np.testing.assert_array_equal(pixels_of(back[3][1]), pixels_of(items[2][1]))


def test_write_rec_rejects_label_gaps_and_wrong_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"absent: \[1\]"):
        ins.write_rec(tmp_path / "a", [(0, png(1)), (2, png(2))], image_size=(H, W))
    with pytest.raises(ValueError, match=r"item 0: image is \(6, 8\) \(h, w\), expected \(8, 6\)"):
        ins.write_rec(tmp_path / "b", [(0, png(1)), (0, png(2))], image_size=(W, H))
    with pytest.raises(ValueError, match="item 0: label -1"):
        ins.write_rec(tmp_path / "c", [(-1, png(1))], image_size=(H, W))
    with pytest.raises(CorruptImageError, match="write_rec item 0"):
        ins.write_rec(tmp_path / "d", [(0, b"not an image")], image_size=(H, W))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_write_rec_failure_keeps_previous_files(tmp_path):
    ins.write_rec(tmp_path / "train", [(0, png(1))], image_size=(H, W))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing():
        yield 0, png(2)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        ins.write_rec(tmp_path / "train", failing(), image_size=(H, W))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- RecordIO errors -------------------------------------------------------------------------------------------


def test_truncated_rec_names_file_and_record(tmp_path):
    prefix = tmp_path / "train"
    hand_write(prefix, {key: ir(0, 0.0, key, image=bytes([97 + key]) * 40) for key in range(3)}, 1)
    rec = Path(f"{prefix}.rec")
    last = int(Path(f"{prefix}.idx").read_text().splitlines()[2].split("\t")[1])
    rec.write_bytes(rec.read_bytes()[: last + 8 + 30])  # cut inside the last record's payload
    stream = ins.read_rec(prefix)
    assert [label for label, _ in (next(stream), next(stream))] == [0, 0]
    with pytest.raises(ins.RecordIOError, match=r"train\.rec record 2: truncated: .*declares 64 bytes.* 30 more"):
        next(stream)


def test_rec_cut_short_is_caught_by_the_index_check(tmp_path):
    prefix = tmp_path / "train"
    insightface_layout(prefix, [[b"a" * 40], [b"b" * 40, b"c" * 40]])
    rec = Path(f"{prefix}.rec")
    offsets = [int(line.split("\t")[1]) for line in Path(f"{prefix}.idx").read_text().splitlines()]
    rec.write_bytes(rec.read_bytes()[: offsets[3] + 8 + 30])  # a download cut inside record 3
    with pytest.raises(ins.RecordIOError, match=r"train\.idx: offset \d+ of record 4 is outside .*train\.rec"):
        ins.read_rec(prefix)


def test_bad_magic_names_file_and_record(tmp_path):
    prefix = tmp_path / "train"
    insightface_layout(prefix, [[b"a" * 8], [b"b" * 8]])
    rec = Path(f"{prefix}.rec")
    offset = int(Path(f"{prefix}.idx").read_text().splitlines()[2].split("\t")[1])
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = b"\xde\xad\xbe\xef"
    rec.write_bytes(bytes(data))
    with pytest.raises(ins.RecordIOError, match=r"train\.rec record 2: bad magic 0xefbeadde"):
        list(ins.read_rec(prefix))


def test_idx_offset_outside_the_file_names_idx_and_record(tmp_path):
    prefix = tmp_path / "train"
    insightface_layout(prefix, [[b"a"], [b"b"]])
    idx = Path(f"{prefix}.idx")
    lines = idx.read_text().splitlines()
    lines[1] = "1\t999999"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ins.RecordIOError, match=r"train\.idx: offset 999999 of record 1 is outside .*train\.rec"):
        ins.read_rec(prefix)  # checked before the first item


def test_malformed_idx_line_is_named(tmp_path):
    prefix = tmp_path / "train"
    insightface_layout(prefix, [[b"a"]])
    Path(f"{prefix}.idx").write_text("0\t0\n1\tlots\n")
    with pytest.raises(ins.RecordIOError, match=r"train\.idx line 2"):
        ins.read_rec(prefix)


def test_header_pointing_at_missing_records_is_named(tmp_path):
    prefix = tmp_path / "train"
    hand_write(prefix, {0: ir(2, 0.0, 0, (4, 5)), 1: ir(0, 0.0, 1, image=b"x")}, 1)
    with pytest.raises(ins.RecordIOError, match=r"train\.rec record 2: image record is not in the index"):
        list(ins.read_rec(prefix))


def test_continuation_frame_without_a_start_is_refused(tmp_path):
    prefix = tmp_path / "train"
    hand_write(prefix, {0: ir(0, 0.0, 0, image=b"x")}, 1)
    rec = Path(f"{prefix}.rec")
    data = bytearray(rec.read_bytes())
    data[4:8] = struct.pack("<I", (2 << 29) | struct.unpack_from("<I", data, 4)[0])
    rec.write_bytes(bytes(data))
    with pytest.raises(ins.RecordIOError, match="record 0: .*continuation flag 2"):
        list(ins.read_rec(prefix))


@pytest.mark.parametrize("missing", ["train.rec", "train.idx", "property"])
def test_missing_files_are_named(tmp_path, missing):
    insightface_layout(tmp_path / "train", [[png(1)]])
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        ins.rec_to_records(tmp_path / "train", tmp_path / "records")
    assert not (tmp_path / "records").exists()


def test_bad_property_is_named(tmp_path):
    insightface_layout(tmp_path / "train", [[png(1)]])
    (tmp_path / "property").write_text("lots,112")
    with pytest.raises(ins.RecordIOError, match="property"):
        ins.read_property(tmp_path / "train")


# --- RecordIO -> records ---------------------------------------------------------------------------------------


def test_rec_to_records_converts_and_reports(tmp_path):
    classes = [[png(1), png(2)], [png(3)]]
    expected = insightface_layout(tmp_path / "train", classes)
    report = ins.rec_to_records(tmp_path / "train", tmp_path / "records")
    assert report["images"] == 3 and report["skipped"] == [] and report["num_classes"] == 2
    assert (report["height"], report["width"], report["labels_seen"]) == (H, W, 2)
    back = list(iter_records(tmp_path / "records"))
    assert [(r.label, r.image) for r in back] == expected
    assert [r.source for r in back] == ["train.rec:1", "train.rec:2", "train.rec:3"]
    assert all(np.isnan(r.landmarks).all() and r.landmarks.shape == (5, 2) for r in back)


def test_rec_to_records_corrupt_image_raises_or_is_skipped(tmp_path):
    classes = [[png(1), png(2)[:40]], [png(3)]]  # record 2 truncated
    insightface_layout(tmp_path / "train", classes)
    with pytest.raises(CorruptImageError, match=r"train\.rec record 2"):
        ins.rec_to_records(tmp_path / "train", tmp_path / "records")
    assert not (tmp_path / "records").exists()
    report = ins.rec_to_records(tmp_path / "train", tmp_path / "records", skip_corrupt=True)
    assert report["images"] == 2
    assert len(report["skipped"]) == 1 and "train.rec record 2" in report["skipped"][0]
    assert [r.source for r in iter_records(tmp_path / "records")] == ["train.rec:1", "train.rec:3"]


def test_rec_to_records_checks_property(tmp_path):
    insightface_layout(tmp_path / "train", [[png(1)], [png(2)]])
    (tmp_path / "property").write_text(f"1,{H},{W}")
    with pytest.raises(ins.RecordIOError, match=r"record 2: label 1 is not below num_classes 1"):
        ins.rec_to_records(tmp_path / "train", tmp_path / "records")
    (tmp_path / "property").write_text(f"2,{H + 1},{W}")
    with pytest.raises(ins.RecordIOError, match=r"record 1: image is \(6, 8\)"):
        ins.rec_to_records(tmp_path / "train", tmp_path / "records")


def test_records_to_rec_round_trip(tmp_path):
    nan = np.full((5, 2), np.nan, np.float32)
    records = [FaceRecord(image=png(i), label=i % 2, landmarks=nan, source=f"s{i}") for i in range(4)]
    write_records(tmp_path / "records", records)
    ins.records_to_rec(tmp_path / "records", tmp_path / "train", image_size=(H, W))
    assert list(ins.read_rec(tmp_path / "train")) == [(0, png(0)), (0, png(2)), (1, png(1)), (1, png(3))]


# --- .bin ------------------------------------------------------------------------------------------------------


def py2_style_bin(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's pickle.dump((bins, issame_list), f, protocol=2) writes: py2 `str` as (SHORT_)BINSTRING."""
    out = [b"\x80\x02", b"]q\x00(" if images else b"]q\x00"]
    for data in images:
        out.append(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data)
    out.append(b"e" if images else b"")
    out.append(b"]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e")
    out.append(b"\x86q\x02.")
    return b"".join(out)


def test_read_bin_reads_a_python2_style_pickle(tmp_path):
    images = [png(i) for i in range(4)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(py2_style_bin(images, [True, False]))
    arrays, issame = ins.read_bin(path)
    assert arrays.shape == (4, H, W, 3) and arrays.dtype == np.uint8
    for array, data in zip(arrays, images):
        np.testing.assert_array_equal(array, pixels_of(data))
    assert issame.tolist() == [True, False] and issame.dtype == bool


def test_write_bin_read_bin_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8)
    ins.write_bin(tmp_path / "x.bin", images, [True, False, True])
    arrays, issame = ins.read_bin(tmp_path / "x.bin")
    np.testing.assert_array_equal(arrays, images)  # PNG: lossless
    assert issame.tolist() == [True, False, True]
    # the file is a plain pickle of (list of bytes, list of bool), readable the usual way
    bins, flags = pickle.loads((tmp_path / "x.bin").read_bytes(), encoding="bytes")
    assert all(isinstance(b, bytes) for b in bins) and flags == [True, False, True]


def test_write_bin_rejects_pair_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        ins.write_bin(tmp_path / "x.bin", [png(0)] * 3, [True])
    assert not (tmp_path / "x.bin").exists()


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class WritesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("payload_class", [RunsShell, WritesFile])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_bin_is_refused_and_runs_nothing(tmp_path, payload_class, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([payload_class(marker), b"x"], [True]), protocol=protocol))
    with pytest.raises(ins.UnsafePickleError, match="evil.bin"):
        ins.read_bin(path)
    with pytest.raises(ins.UnsafePickleError, match="evil.bin"):
        ins.bin_to_benchmark(path, tmp_path / "bench")
    assert not marker.exists()
    assert not (tmp_path / "bench").exists()


def test_find_class_refuses_every_global_even_without_the_opcode_scan(tmp_path):
    marker = tmp_path / "marker"
    unpickler = ins._DataOnlyUnpickler(io.BytesIO(pickle.dumps(RunsShell(marker))), "evil.bin")
    with pytest.raises(ins.UnsafePickleError, match="evil.bin: refuses to load (posix|os|nt).system"):
        unpickler.load()
    assert not marker.exists()


def test_extension_registry_opcodes_are_refused(tmp_path):
    path = tmp_path / "ext.bin"
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1 code 1: copyreg's registry lookup skips find_class
    with pytest.raises(ins.UnsafePickleError, match="EXT1"):
        ins.read_bin(path)


def test_numpy_arrays_and_other_types_in_a_bin_are_refused(tmp_path):
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps(([np.zeros(3, np.uint8), np.zeros(3, np.uint8)], [True])))
    with pytest.raises(ins.UnsafePickleError, match=r"np\.bin: refuses"):
        ins.read_bin(path)
    path.write_bytes(pickle.dumps(({"images": []}, [])))
    with pytest.raises(ins.UnsafePickleError, match="EMPTY_DICT"):
        ins.read_bin(path)
    with pytest.raises(ins.UnsafePickleError, match="holds a dict"):
        ins._check_types(([b"x", {"a": 1}], [True]), "t.bin")
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ins.UnsafePickleError, match=r"np\.bin: not a readable pickle"):
        ins.read_bin(path)


def test_bin_structure_errors_are_named(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(py2_style_bin([png(0)] * 3, [True]))
    with pytest.raises(ValueError, match=r"odd\.bin: 3 images for 1 pairs"):
        ins.read_bin(path)
    path.write_bytes(pickle.dumps(([png(0), png(1)], [2])))
    with pytest.raises(ValueError, match=r"odd\.bin pair 0: issame"):
        ins.read_bin(path)
    path.write_bytes(pickle.dumps(([png(0), b"garbage"], [True])))
    with pytest.raises(CorruptImageError, match=r"odd\.bin image 1"):
        ins.read_bin(path)


def cyclic_bin() -> bytes:
    images: list = [b"x"]
    images.append(images)  # the image list holds itself
    return pickle.dumps((images, [True]), protocol=4)


def shared_bin() -> bytes:
    nested: list = [b"x"]
    for _ in range(64):  # 2**64 leaves when walked as a tree, a few hundred bytes as a pickle
        nested = [nested, nested]
    return pickle.dumps(([nested, b"y"], [True]), protocol=4)


@pytest.mark.parametrize("payload, where", [(cyclic_bin, r"\[0\]\[1\]"), (shared_bin, r"\[0\]\[0\](\[\d\])+\[… \d+ more levels …\](\[\d\])+")])
def test_cyclic_and_shared_lists_in_a_bin_are_refused(tmp_path, payload, where):
    path = tmp_path / "loop.bin"
    path.write_bytes(payload())
    assert path.stat().st_size < 1024
    with pytest.raises(ins.UnsafePickleError, match=rf"loop\.bin: the list at {where} is reached twice \(a cyclic or shared"):
        ins.read_bin(path)
    with pytest.raises(ins.UnsafePickleError, match=r"loop\.bin"):
        ins.bin_to_benchmark(path, tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


def test_a_few_bytes_of_self_referencing_pickle_are_refused(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\x80\x02]q\x00h\x00a]q\x01\x88a\x86q\x02.")  # ([<itself>], [True]), packed by hand
    with pytest.raises(ins.UnsafePickleError, match=r"tiny\.bin: the list at \[0\]\[0\] is reached twice"):
        ins.load_bin_payload(path)


def test_shared_images_and_empty_containers_still_load(tmp_path):
    image = png(0)
    path = tmp_path / "shared.bin"
    ins.write_bin(path, [image, image, image, png(1)], [True, False])
    assert len(path.read_bytes()) < 2 * len(image) + len(png(1)) + 100  # the pickle refers back to the one image
    arrays, issame = ins.read_bin(path)
    np.testing.assert_array_equal(arrays[2], pixels_of(image))
    assert issame.tolist() == [True, False]
    ins._check_types(([(), ()], [[], []]), "empty.bin")  # CPython shares the empty tuple: harmless, allowed


def test_bin_size_limits_are_named(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    ins.write_bin(path, [png(i) for i in range(4)], [True, False])
    monkeypatch.setattr(ins, "BIN_MAX_ITEMS", 5)
    with pytest.raises(ins.UnsafePickleError, match=r"big\.bin: holds more than 5 list entries"):
        ins.read_bin(path)
    monkeypatch.setattr(ins, "BIN_MAX_ITEMS", 1000)
    monkeypatch.setattr(ins, "BIN_MAX_BYTES", 10 * len(png(0)))
    with pytest.raises(ins.UnsafePickleError, match=r"many\.bin: holds more than \d+ bytes of images"):
        ins._check_types(([png(0)] * 100, []), "many.bin")  # one image referenced 100 times counts 100 times
    monkeypatch.setattr(ins, "BIN_MAX_BYTES", path.stat().st_size - 1)
    with pytest.raises(ins.UnsafePickleError, match=rf"big\.bin: {path.stat().st_size} bytes; a \.bin may hold at most"):
        ins.read_bin(path)


def deep_list(depth: int, leaf: object = b"x") -> list:
    nested: list = [leaf]
    for _ in range(depth):
        nested = [nested]
    return nested


def check_seconds(value: object, repeats: int = 3) -> float:
    """CPU seconds of the type check, the least of a few runs (the least is the one other processes disturbed least)."""
    spent = []
    for _ in range(repeats):
        started = time.process_time()
        ins._check_types(value, "deep.bin")
        spent.append(time.process_time() - started)
    return min(spent)


def test_a_deeply_nested_list_is_checked_in_time_linear_in_its_depth():
    """Issue 25: the walk built each entry's path string from its parent's, so a chain of nested lists cost time
    quadratic in its depth (a 1 MB .bin: 16 s). 8 times deeper must cost about 8 times more, far from 64."""
    gc.disable()  # a collection landing in one measurement and not the other would distort the ratio
    try:
        shallow, deep = check_seconds((deep_list(25_000), [])), check_seconds((deep_list(200_000), []))
    finally:
        gc.enable()
    assert deep / shallow < 16, f"depth 25,000: {shallow:.3f} s, depth 200,000: {deep:.3f} s"


def test_a_refusal_deep_in_nested_lists_names_the_place_in_one_short_line():
    shared = [b"x"]
    with pytest.raises(ins.UnsafePickleError, match=r"deep\.bin: holds a dict at \[1\]\[0\]\[0\];"):
        ins._check_types(([b"y"], [[{"a": 1}]]), "deep.bin")
    with pytest.raises(ins.UnsafePickleError) as found:
        ins._check_types(([deep_list(100_000, shared), shared], []), "deep.bin")
    message = str(found.value)
    assert "\n" not in message and len(message) < 300, message
    at = r"\[0\]\[0\](\[0\])+\[… 99,9\d\d more levels …\](\[0\])+"
    assert re.search(rf"the list at {at} is reached twice", message), message


@pytest.mark.parametrize("num_pairs", [10, 23, 600, 6001])
def test_contiguous_folds_match_unshuffled_kfold(num_pairs):
    want = np.empty(num_pairs, dtype=int)
    for fold, (_, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.zeros(num_pairs))):
        want[test] = fold
    np.testing.assert_array_equal(ins.contiguous_folds(num_pairs), want)


def test_contiguous_folds_need_a_pair_per_fold():
    with pytest.raises(ValueError, match="9 pairs cannot fill 10 folds"):
        ins.contiguous_folds(9)


def test_bin_to_benchmark(tmp_path):
    images = [png(i) for i in range(24)]
    issame = [i % 3 == 0 for i in range(12)]
    (tmp_path / "agedb.bin").write_bytes(py2_style_bin(images, issame))
    report = ins.bin_to_benchmark(tmp_path / "agedb.bin", tmp_path / "bench")
    assert report == {
        "source": str(tmp_path / "agedb.bin"), "images": 24, "pairs": 12, "same": 4, "height": H, "width": W, "folds": 10,
    }  # fmt: skip
    records, pairs = read_benchmark(tmp_path / "bench")
    assert [r.image for r in records] == images
    assert records[5].source == "agedb.bin:5" and np.isnan(records[5].landmarks).all()
    assert pairs["a"].tolist() == list(range(0, 24, 2)) and pairs["b"].tolist() == list(range(1, 24, 2))
    assert pairs["same"].tolist() == issame
    assert pairs["fold"].tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # 12 pairs: first two folds get two


def test_bin_to_benchmark_corrupt_image_writes_nothing(tmp_path):
    images = [png(i) for i in range(20)]
    images[13] = images[13][:60]
    (tmp_path / "cfp.bin").write_bytes(py2_style_bin(images, [True] * 10))
    with pytest.raises(CorruptImageError, match=r"cfp\.bin image 13"):
        ins.bin_to_benchmark(tmp_path / "cfp.bin", tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


def test_benchmark_to_bin_lays_images_out_pair_by_pair(tmp_path):
    nan = np.full((5, 2), np.nan, np.float32)
    records = [FaceRecord(image=png(i), label=-1, landmarks=nan, source=str(i)) for i in range(3)]
    pairs = pd.DataFrame({"a": [0, 2], "b": [1, 0], "same": [False, True], "fold": [0, 1]})
    write_benchmark(tmp_path / "bench", records, pairs)
    ins.benchmark_to_bin(tmp_path / "bench", tmp_path / "out.bin")
    bins, flags = ins.load_bin_payload(tmp_path / "out.bin")
    assert bins == [png(0), png(1), png(2), png(0)]
    assert flags.tolist() == [False, True]
