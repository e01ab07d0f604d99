"""A folder per person, `root/<person>/*.<any image format Pillow reads>`, ingested as records.

Labels number the persons (those with at least one image) in sorted name order, so the same tree always gets
the same labels. Images are stored as they are when they already are upright RGB JPEG/PNG, otherwise as a PNG
of the decoded upright RGB pixels (PGM, BMP, TIFF, WebP, ...), so landmarks (given in upright image coordinates)
match any decoder. Every entry of the tree that is not ingested is named, with the reason, in the report's
`ignored`; a JPEG whose scan data is corrupt is refused like any undecodable image. A name that is not UTF-8
is refused, naming it, before anything is written: sources and labels are stored as UTF-8 text.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from pipeline.data.images import CorruptImageError, normalise_encoded
from pipeline.data.records import (
    NO_LANDMARKS, FaceRecord, iter_records, read_metadata, write_benchmark, write_records,
)

log = logging.getLogger("facerepro.data")


def _readable(kind: str) -> bool:
    if kind == "MPO":  # multi-picture JPEG: Pillow opens it through the JPEG plugin
        return True
    factory = Image.OPEN.get(kind, (None,))[0]
    # a stub (BUFR, GRIB, HDF5, WMF) identifies its format but reads no pixels without an installed handler
    return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))


IMAGE_SUFFIXES = frozenset(suffix for suffix, kind in Image.registered_extensions().items() if _readable(kind))

# Given an upright RGB uint8 image, the (5, 2) landmarks in pixels, or None when no face is found.
LandmarksFn = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class FolderScan:
    items: list[tuple[Path, str]]  # (image path, person name), sorted by person then file name
    ignored: list[dict[str, str]]  # {"source": path relative to root, "reason": ...} for every entry not read


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root`; a name that is not UTF-8 is refused (Python holds it with surrogate escapes,
    which the Parquet and JSON writers would reject later without naming the file)."""
    relative = path.relative_to(root).as_posix()
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"image root {root}: the name {os.fsencode(path)!r} is not UTF-8; rename it (e.g. convmv -f latin1 -t "
            "utf8 --notest -r <root>) so sources and labels can be stored"
        ) from None
    return relative


def _ignored_reason(path: Path) -> str | None:
    """Why an entry of a person folder is not read, or None for an image."""
    if path.name.startswith("."):
        return "hidden"
    if path.is_dir():
        return "a folder inside a person folder (only root/<person>/* is read)"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"suffix {path.suffix or '(none)'!r} is no image format Pillow reads"
    return None


def scan_folders(root: str | os.PathLike[str]) -> FolderScan:
    """Every image of `root/<person>/`, and every entry of the tree that is not read with the reason why."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist or is not a directory")
    persons: list[Path] = []
    ignored: list[dict[str, str]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        source = _relative(entry, root)
        if entry.is_dir() and not entry.name.startswith("."):
            persons.append(entry)
        else:
            reason = "hidden" if entry.name.startswith(".") else "not inside a person folder"
            ignored.append({"source": source, "reason": reason})
    if not persons:
        raise ValueError(f"image root {root} holds no person folders (expected root/<person>/*.jpg)")
    items = []
    for person in persons:
        for path in sorted(person.iterdir(), key=lambda p: p.name):
            source = _relative(path, root)
            reason = _ignored_reason(path)
            if reason is None:
                items.append((path, person.name))
            else:
                ignored.append({"source": source, "reason": reason})
    if not items:
        raise ValueError(
            f"image root {root}: its {len(persons)} person folders hold no images in a format Pillow reads "
            f"(ignored: {', '.join(entry['source'] for entry in ignored[:5])})"
        )
    return FolderScan(items, ignored)


# --- JPEG scan data ---------------------------------------------------------------------------------------------
# Garbage inside a JPEG scan gives libjpeg only warnings (bad Huffman code, premature end of data segment, bytes
# left before the next marker), which Pillow discards: the file decodes to wrong pixels without an error. Walking
# the Huffman codes of every block finds it. Only sequential Huffman-coded JPEGs (nearly every photo) are walked;
# progressive, lossless and arithmetic-coded ones, and streams relying on default tables (no DHT), are not.

_JPEG_START = b"\xff\xd8"
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)
_OTHER_FRAMES = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are no frame headers
_RESTARTS = range(0xD0, 0xD8)
_SCAN_END = re.compile(rb"\xff(?![\x00\xd0-\xd7])")  # a marker other than a stuffed byte or a restart
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_LONGEST_BLOCK = 64 * 32 // 8 + 3  # bytes a block may span (64 codes of at most 16 + 15 bits) and the peek


class _BadScan(ValueError):
    pass


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


@functools.lru_cache(maxsize=64)  # most files of a collection share the encoder's tables
def _huffman_lookup(counts: bytes, symbols: bytes) -> list[int]:
    """Every 16-bit prefix -> code length << 8 | symbol of the code it starts with; 0 where no code does."""
    table = [0] * (1 << 16)
    code = index = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            if code >= 1 << length:
                raise _BadScan("a Huffman table with more codes than its code lengths allow")
            span = 1 << (16 - length)
            table[code * span:(code + 1) * span] = [length << 8 | symbols[index]] * span
            code, index = code + 1, index + 1
        code <<= 1
    return table


def _walk_interval(chunk: bytes, mcus: int, blocks: list[tuple[list[int], list[int]]], where: str) -> None:
    """Decode the Huffman codes of `mcus` MCUs (each `blocks`: DC and AC table per block) from one restart
    interval, without dequantising; the codes must end inside the interval's last byte."""
    bits = 8 * len(chunk)
    data = chunk + bytes(_LONGEST_BLOCK)
    position = 0
    for _ in range(mcus):
        for dc, ac in blocks:
            i = position >> 3
            entry = dc[((data[i] << 16 | data[i + 1] << 8 | data[i + 2]) >> (8 - (position & 7))) & 0xFFFF]
            if not entry:
                raise _BadScan(f"bad Huffman code at bit {position} of {where}")
            position += (entry >> 8) + (entry & 0xFF)  # the code, then the DC difference's bits
            coefficient = 1
            while coefficient < 64:
                i = position >> 3
                entry = ac[((data[i] << 16 | data[i + 1] << 8 | data[i + 2]) >> (8 - (position & 7))) & 0xFFFF]
                if not entry:
                    raise _BadScan(f"bad Huffman code at bit {position} of {where}")
                position += (entry >> 8) + (entry & 15)
                run, size = (entry >> 4) & 15, entry & 15
                if size:
                    coefficient += run + 1
                elif run == 15:
                    coefficient += 16
                else:
                    break  # end of block
            if coefficient > 64:
                raise _BadScan(f"a block's coefficients run past the 64th at bit {position} of {where}")
            if position > bits:
                raise _BadScan(f"premature end of {where}: its blocks need more bits than it holds")
    if bits - position >= 8:
        raise _BadScan(f"{(bits - position) // 8} bytes of {where} left after its last block")


def _walk_scan(
    entropy: bytes, header: bytes, size: tuple[int, int], sampling: dict[int, tuple[int, int]],
    tables: dict[tuple[int, int], list[int]], restart: int, number: int,
) -> bool:
    """Walk one scan's entropy-coded data; False when it uses a Huffman table the file never defined."""
    height, width = size
    h_max = max(h for h, _ in sampling.values())
    v_max = max(v for _, v in sampling.values())
    blocks: list[tuple[list[int], list[int]]] = []
    components = [(header[1 + 2 * i], header[2 + 2 * i]) for i in range(header[0])]
    for component, selectors in components:
        if (0, selectors >> 4) not in tables or (1, selectors & 15) not in tables:
            return False
        if component not in sampling:
            raise _BadScan(f"scan {number} names component {component}, which the frame header does not define")
        h, v = sampling[component] if len(components) > 1 else (1, 1)
        blocks += [(tables[0, selectors >> 4], tables[1, selectors & 15])] * (h * v)
    if len(components) > 1:
        mcus = _ceil_div(width, 8 * h_max) * _ceil_div(height, 8 * v_max)
    else:  # a single component's scan is not interleaved: one block per MCU over that component's own size
        h, v = sampling[components[0][0]]
        mcus = _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)
    markers = list(_RESTART.finditer(entropy))
    expected = -(-mcus // restart) - 1 if restart else 0
    if len(markers) != expected:
        raise _BadScan(f"scan {number} holds {len(markers)} restart markers, its {mcus} MCUs need {expected}")
    starts = [0] + [marker.end() for marker in markers]
    ends = [marker.start() for marker in markers] + [len(entropy)]
    for interval, (start, end) in enumerate(zip(starts, ends)):
        if interval and entropy[start - 1] != 0xD0 + (interval - 1) % 8:
            raise _BadScan(f"scan {number}: restart marker {interval} is out of sequence")
        count = min(restart, mcus - interval * restart) if restart else mcus
        where = f"scan {number}" + (f" restart interval {interval}" if restart else "")
        _walk_interval(entropy[start:end].replace(b"\xff\x00", b"\xff"), count, blocks, where)
    return True


def check_jpeg_scans(data: bytes, where: str) -> None:
    """Raise CorruptImageError naming `where` when the scans of a sequential Huffman-coded JPEG do not decode to
    exactly their blocks (see above); other JPEG kinds pass unchecked."""
    tables: dict[tuple[int, int], list[int]] = {}
    sampling: dict[int, tuple[int, int]] = {}
    size, restart, scans, position = (0, 0), 0, 0, 2
    try:
        while True:
            if position + 2 > len(data):
                raise _BadScan("the file ends before its end-of-image marker")
            if data[position] != 0xFF:
                raise _BadScan(f"expected a marker at byte {position}")
            while data[position + 1] == 0xFF:  # fill bytes
                position += 1
            marker = data[position + 1]
            if marker == 0xD9:
                return
            if marker in _RESTARTS or marker == 0x01:
                position += 2
                continue
            length = int.from_bytes(data[position + 2:position + 4], "big")
            body = data[position + 4:position + 2 + length]
            position += 2 + length
            if marker in _OTHER_FRAMES:
                return
            if marker in _SEQUENTIAL_HUFFMAN:
                size = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
                sampling = {body[6 + 3 * i]: (body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(body[5])}
                if 0 in size or not sampling or any(0 in hv for hv in sampling.values()):
                    return  # height defined later (DNL) or no components: Pillow has judged such files already
            elif marker == 0xC4:
                offset = 0
                while offset + 17 <= len(body):
                    counts = body[offset + 1:offset + 17]
                    symbols = body[offset + 17:offset + 17 + sum(counts)]
                    tables[body[offset] >> 4, body[offset] & 15] = _huffman_lookup(counts, symbols)
                    offset += 17 + sum(counts)
            elif marker == 0xDD:
                restart = int.from_bytes(body[0:2], "big")
            elif marker == 0xDA:
                scans += 1
                found = _SCAN_END.search(data, position)
                end = found.start() if found else len(data)
                if not sampling or not _walk_scan(data[position:end], body, size, sampling, tables, restart, scans):
                    return  # default tables (motion JPEG) or no frame header: left to Pillow
                position = end
    except _BadScan as error:
        raise CorruptImageError(where, f"corrupt JPEG data: {error}") from None
    except IndexError:  # a header segment cut short
        raise CorruptImageError(where, f"corrupt JPEG data: a marker segment runs past byte {position}") from None


def label_map(items: list[tuple[Path, str]]) -> dict[str, int]:
    """Person name -> label, numbering the persons in sorted name order."""
    return {name: label for label, name in enumerate(sorted({name for _, name in items}))}


def _landmarks(landmarks_fn: LandmarksFn | None, array: np.ndarray, where: str) -> np.ndarray:
    if landmarks_fn is None:
        return NO_LANDMARKS.copy()
    found = landmarks_fn(array)
    if found is None:
        return NO_LANDMARKS.copy()
    found = np.asarray(found, dtype=np.float32)
    if found.shape != (5, 2):
        raise ValueError(f"{where}: landmarks_fn returned shape {found.shape}, expected (5, 2)")
    return found


def folders_to_records(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    landmarks_fn: LandmarksFn | None = None,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """Ingest `root/<person>/*` into records at `out_dir` (atomically); returns a report.

    `identity` is the label (the folder is the ground truth); `source` is the path relative to root. A corrupt
    image raises, or with `skip_corrupt` is left out and listed under `skipped`. Landmarks are NaN unless
    `landmarks_fn` is given; images it finds no face in are listed under `no_landmarks`. Labels are fixed by
    the scan, so a person whose every image was skipped leaves an unused label, listed under `empty_labels`.
    """
    root = Path(root)
    scan = scan_folders(root)
    labels = label_map(scan.items)
    report: dict[str, Any] = {
        "root": str(root),
        "identities": len(labels),
        "labels": labels,
        "empty_folders": sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                and p.name not in labels),
        "ignored": scan.ignored,
        "skipped": [],
        "no_landmarks": [],
    }
    if scan.ignored:
        shown = "; ".join(f"{entry['source']} ({entry['reason']})" for entry in scan.ignored[:5])
        more = f" and {len(scan.ignored) - 5} more" if len(scan.ignored) > 5 else ""
        log.warning("%s: %d entries not ingested, listed under 'ignored' in the report: %s%s",
                    root, len(scan.ignored), shown, more)
    written = {name: 0 for name in labels}

    def records() -> Iterator[FaceRecord]:
        for path, name in scan.items:
            source = path.relative_to(root).as_posix()
            try:
                encoded = path.read_bytes()
                data, array = normalise_encoded(encoded, str(path))
                if encoded.startswith(_JPEG_START):
                    check_jpeg_scans(encoded, str(path))
            except CorruptImageError as error:
                if not skip_corrupt:
                    raise
                log.warning("skipping %s", error)
                report["skipped"].append({"source": source, "error": str(error)})
                continue
            landmarks = _landmarks(landmarks_fn, array, str(path))
            if landmarks_fn is not None and np.isnan(landmarks).all():
                report["no_landmarks"].append(source)
            written[name] += 1
            yield FaceRecord(image=data, label=labels[name], identity=labels[name], landmarks=landmarks, source=source)

    report["images"] = write_records(out_dir, records())
    report["empty_labels"] = sorted(labels[name] for name, count in written.items() if count == 0)
    return report


# --- held-out persons as a pair protocol (the folders one-command job) -----------------------------------------

HELDOUT_PROTOCOL = "folders-heldout"


def balanced_folds(same: pd.DataFrame, different: pd.DataFrame, folds: int) -> pd.DataFrame:
    """Pairs (a, b, same, fold) in `folds` consecutive blocks, each the next 1/folds of `same` then of `different`."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    for name, frame in (("same", same), ("different", different)):
        if len(frame) == 0 or len(frame) % folds:
            raise ValueError(f"{len(frame)} {name} pairs do not split into {folds} equal folds")
    per_same, per_different = len(same) // folds, len(different) // folds
    blocks = []
    for fold in range(folds):
        blocks.append(same[["a", "b"]].iloc[fold * per_same:(fold + 1) * per_same].assign(same=True, fold=fold))
        blocks.append(different[["a", "b"]].iloc[fold * per_different:(fold + 1) * per_different].assign(same=False, fold=fold))
    return pd.concat(blocks, ignore_index=True).astype({"a": "int64", "b": "int64", "same": "bool", "fold": "int64"})


def split_persons(counts: dict[int, int], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train labels, held-out labels): round(heldout x persons) persons, at least 2, drawn with `seed` among the
    persons with at least 2 images (a held-out person must be able to form a same pair)."""
    if not 0.0 < heldout < 1.0:
        raise ValueError(f"data.folders_heldout must be in (0, 1) to hold persons out, got {heldout}")
    eligible = sorted(label for label, n in counts.items() if n >= 2)
    wanted = max(2, round(heldout * len(counts)))
    if wanted > len(eligible) or wanted >= len(counts) - 1:
        raise ValueError(
            f"data.folders_heldout {heldout}: {wanted} persons to hold out, but only {len(eligible)} of "
            f"{len(counts)} persons have 2+ images and at least 2 must remain for training"
        )
    rng = np.random.default_rng(seed)
    held = sorted(int(x) for x in rng.choice(eligible, size=wanted, replace=False))
    return sorted(set(counts) - set(held)), held


def sample_pairs(identities: np.ndarray, pairs_per_fold: int, folds: int, seed: int) -> pd.DataFrame:
    """Seeded same and different pairs of image rows, none repeated, as `balanced_folds`; fewer per fold (equal
    in every fold) where the images allow fewer same pairs than asked."""
    identities = np.asarray(identities)
    rng = np.random.default_rng(seed)
    rows_of = {person: np.flatnonzero(identities == person) for person in np.unique(identities)}
    same = np.array([pair for rows in rows_of.values() for pair in itertools.combinations(rows.tolist(), 2)],
                    dtype=np.int64).reshape(-1, 2)
    per_fold = min(pairs_per_fold, len(same) // folds)
    if per_fold < 1:
        raise ValueError(f"held-out persons give {len(same)} same pairs: too few for {folds} folds (data.folders_folds)")
    same = same[rng.permutation(len(same))[: per_fold * folds]]
    different: set[tuple[int, int]] = set()
    persons = len(np.unique(identities))
    possible = (len(identities) ** 2 - sum(int(c) ** 2 for c in np.unique(identities, return_counts=True)[1])) // 2
    if persons < 2 or possible < per_fold * folds:
        raise ValueError(f"held-out persons allow {possible} different pairs, {per_fold * folds} needed")
    while len(different) < per_fold * folds:
        i, j = sorted(int(x) for x in rng.choice(len(identities), size=2, replace=False))
        if identities[i] != identities[j]:
            different.add((i, j))
    different_rows = np.array(sorted(different), dtype=np.int64)[rng.permutation(len(different))]
    return balanced_folds(
        pd.DataFrame(same, columns=["a", "b"]), pd.DataFrame(different_rows, columns=["a", "b"]), folds
    )


def folders_to_raw(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    heldout: float = 0.0,
    pairs_per_fold: int = 30,
    folds: int = 10,
    seed: int = 0,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """`out_dir/train` (records) and, with `heldout` > 0, `out_dir/benchmarks/folders-heldout`: a seeded share of
    the persons, never trained on, as a pair protocol. Training labels are renumbered 0..K-1 in name order."""
    out_dir = Path(out_dir)
    if heldout == 0.0:
        return folders_to_records(root, out_dir / "train", skip_corrupt=skip_corrupt)
    everything = out_dir / ".all-persons"
    report = folders_to_records(root, everything, skip_corrupt=skip_corrupt)
    counts = read_metadata(everything)["label"].value_counts().to_dict()
    train_labels, held = split_persons({int(k): int(v) for k, v in counts.items()}, heldout, seed)
    names = {label: name for name, label in report["labels"].items()}
    relabel = {old: new for new, old in enumerate(train_labels)}

    def train_records() -> Iterator[FaceRecord]:
        for record in iter_records(everything):
            if record.label in relabel:
                record.label = record.identity = relabel[record.label]
                yield record

    report["images"] = write_records(out_dir / "train", train_records())
    bench = [r for r in iter_records(everything) if r.label in set(held)]
    pairs = sample_pairs(np.array([r.label for r in bench]), pairs_per_fold, folds, seed)
    write_benchmark(out_dir / "benchmarks" / HELDOUT_PROTOCOL, bench, pairs)
    shutil.rmtree(everything)
    report["labels"] = {names[old]: new for old, new in relabel.items()}
    report["persons_without_images"] = [names[old] for old in report["empty_labels"]]
    report["empty_labels"] = []  # the renumbering leaves persons without images out
    report[HELDOUT_PROTOCOL] = {
        "persons": [names[label] for label in held], "images": len(bench), "pairs": len(pairs),
        "pairs_per_fold": len(pairs) // folds, "folds": folds, "seed": seed,
    }
    return report
