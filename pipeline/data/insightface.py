"""InsightFace dataset formats, read and written without mxnet: RecordIO training sets and `.bin` pair sets.

RecordIO (`<prefix>.rec`, `<prefix>.idx`, `property` in the same directory):
- `.rec` is a sequence of frames: uint32 magic 0xced7230a, uint32 lrecord (upper 3 bits: continuation flag
  cflag, lower 29 bits: length), payload, zero padding to a multiple of 4 bytes. A record is one frame with
  cflag 0, or frames with cflag 1 (first), 2 (middle), 3 (last); the writer splits a record wherever the
  magic word appears 4-byte aligned in it, dropping that word, and the reader puts it back between parts.
- `.idx` is text, one `key<TAB>offset` line per record (offset of the record's first frame).
- `property` is text `num_classes,height,width`.
- Every payload starts with an IRHeader, struct '<IfQQ' (flag, label, id, id2); when flag > 0, `flag` float32
  labels follow it (the first is the class label) and `label` is unused; the encoded image follows.
- Record 0 is the header record: its two labels are (first identity key, one past the last identity key), so
  image records are keys 1 .. labels[0]-1 and identity record k carries the image key range [start, end) of
  one class. If record 0 has flag 0 there is no header record and every record is an image.

`.bin` (LFW, CFP-FP, AgeDB-30, ...): a pickle of (list of encoded images, list of issame bools); pair i is
images (2i, 2i+1). It is loaded by a restricted unpickler that builds nothing but bytes, lists, tuples, bools
and ints: a data file never gets to run code. Its size and item count are bounded and a list or tuple may appear
only once in it, so a few bytes of self-referencing or shared lists cannot make the reader walk forever.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from pipeline.data.images import CorruptImageError, decode_image, decode_stack, decode_uniform, encode_png
from pipeline.data.images import image_size as encoded_size
from pipeline.data.records import NO_LANDMARKS, FaceRecord, iter_records, read_benchmark, write_benchmark, write_records
from pipeline.core.atomic_io import atomic_path, write_bytes_atomic

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_BITS = 29
_MAX_PART = (1 << _LENGTH_BITS) - 1
_FLOAT32_EXACT = 1 << 24  # integers above this are not exact as float32 labels
_HEADER_KEY = 0
BIN_FOLDS = 10


class RecordIOError(ValueError):
    """A malformed .rec / .idx / property file; the message names the file and the record."""


class UnsafePickleError(ValueError):
    """A .bin whose pickle holds anything but bytes, lists, tuples, bools and ints."""


@dataclass(frozen=True)
class IRHeader:
    label: float  # class label when `labels` is empty
    id: int
    id2: int = 0
    labels: tuple[float, ...] = ()  # the `flag` float32 labels that follow the header, if any

    @property
    def flag(self) -> int:
        return len(self.labels)

    @property
    def class_label(self) -> float:
        return self.labels[0] if self.labels else self.label


@dataclass(frozen=True)
class RecProperty:
    num_classes: int
    height: int
    width: int


@dataclass(frozen=True)
class RecPaths:
    rec: Path
    idx: Path
    property: Path


def rec_paths(prefix: str | os.PathLike[str]) -> RecPaths:
    """`prefix` is the path without `.rec`/`.idx` (a trailing `.rec` or `.idx` is accepted and dropped)."""
    prefix = Path(prefix)
    if prefix.suffix in (".rec", ".idx"):
        prefix = prefix.with_suffix("")
    return RecPaths(
        rec=prefix.with_name(prefix.name + ".rec"),
        idx=prefix.with_name(prefix.name + ".idx"),
        property=prefix.parent / "property",
    )


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


# --- RecordIO frames -------------------------------------------------------------------------------------------


def frame_record(payload: bytes) -> bytes:
    """One record as RecordIO frames: split at every 4-byte-aligned magic word (which is dropped)."""
    cuts = []
    found = payload.find(_MAGIC_BYTES)
    while found != -1:
        if found % 4 == 0:
            cuts.append(found)
            found = payload.find(_MAGIC_BYTES, found + 4)
        else:
            found = payload.find(_MAGIC_BYTES, found + 1)
    starts = [0] + [cut + 4 for cut in cuts]
    ends = cuts + [len(payload)]
    frames = []
    last = len(starts) - 1
    for number, (start, end) in enumerate(zip(starts, ends)):
        cflag = 0 if last == 0 else 1 if number == 0 else 3 if number == last else 2
        length = end - start
        if length > _MAX_PART:
            raise ValueError(f"a RecordIO record part of {length} bytes exceeds the 29-bit length field")
        frames.append(_FRAME.pack(MAGIC, (cflag << _LENGTH_BITS) | length))
        frames.append(payload[start:end])
        frames.append(b"\0" * (-length % 4))
    return b"".join(frames)


def read_record(handle: BinaryIO, offset: int, file_size: int, where: str) -> bytes:
    """The payload of the record whose first frame starts at `offset`, joining multi-part records."""
    parts: list[bytes] = []
    position = offset
    while True:
        handle.seek(position)
        head = handle.read(_FRAME.size)
        if len(head) < _FRAME.size:
            raise RecordIOError(
                f"{where}: truncated: frame header at offset {position} runs past the end ({file_size} bytes)"
            )
        magic, lrecord = _FRAME.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(f"{where}: bad magic 0x{magic:08x} at offset {position} (expected 0x{MAGIC:08x})")
        cflag, length = lrecord >> _LENGTH_BITS, lrecord & _MAX_PART
        expected = (0, 1) if not parts else (2, 3)
        if cflag not in expected:
            raise RecordIOError(
                f"{where}: frame at offset {position} has continuation flag {cflag}, expected one of {expected}"
            )
        body = handle.read(length)
        if len(body) < length:
            raise RecordIOError(
                f"{where}: truncated: frame at offset {position} declares {length} bytes, "
                f"the file holds {len(body)} more"
            )
        parts.append(body)
        position += _FRAME.size + length + (-length % 4)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def read_idx(path: str | os.PathLike[str]) -> dict[int, int]:
    """The `.idx` file as {key: offset}, in file order."""
    path = Path(path)
    _require_file(path, "RecordIO index")
    index: dict[int, int] = {}
    for number, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            key, offset = int(fields[0]), int(fields[1])
            if len(fields) != 2 or offset < 0:
                raise ValueError
        except (ValueError, IndexError):
            raise RecordIOError(f"{path} line {number}: expected 'key<TAB>offset', got {line!r}") from None
        if key in index:
            raise RecordIOError(f"{path} line {number}: record {key} is listed twice")
        index[key] = offset
    return index


# --- IRHeader --------------------------------------------------------------------------------------------------


def pack_ir(header: IRHeader, image: bytes) -> bytes:
    labels = struct.pack(f"<{header.flag}f", *header.labels)
    return _IR.pack(header.flag, header.label, header.id, header.id2) + labels + image


def unpack_ir(payload: bytes, where: str) -> tuple[IRHeader, bytes]:
    if len(payload) < _IR.size:
        raise RecordIOError(f"{where}: payload of {len(payload)} bytes is shorter than the {_IR.size}-byte IRHeader")
    flag, label, key, key2 = _IR.unpack_from(payload)
    end = _IR.size + 4 * flag
    if end > len(payload):
        raise RecordIOError(f"{where}: IRHeader announces {flag} labels but the payload has only {len(payload)} bytes")
    labels = struct.unpack_from(f"<{flag}f", payload, _IR.size)
    return IRHeader(label=label, id=key, id2=key2, labels=labels), payload[end:]


def _as_index(value: float, where: str, what: str) -> int:
    if not math.isfinite(value) or value < 0 or value != int(value) or value >= _FLOAT32_EXACT:
        raise RecordIOError(f"{where}: {what} {value!r} is not a non-negative integer")
    return int(value)


# --- reading ---------------------------------------------------------------------------------------------------


def read_property(prefix: str | os.PathLike[str]) -> RecProperty:
    path = rec_paths(prefix).property
    _require_file(path, "RecordIO property file")
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        num_classes, height, width = (int(field) for field in text.split(","))
    except ValueError:
        raise RecordIOError(f"{path}: expected 'num_classes,height,width', got {text!r}") from None
    if min(num_classes, height, width) <= 0:
        raise RecordIOError(f"{path}: expected positive 'num_classes,height,width', got {text!r}")
    return RecProperty(num_classes, height, width)


def _open_index(prefix: str | os.PathLike[str]) -> tuple[RecPaths, dict[int, int], int]:
    """Paths, index and .rec size, with every index offset checked against the .rec size."""
    paths = rec_paths(prefix)
    _require_file(paths.rec, "RecordIO file")
    index = read_idx(paths.idx)
    file_size = paths.rec.stat().st_size
    for key, offset in index.items():
        if offset + _FRAME.size > file_size:
            raise RecordIOError(
                f"{paths.idx}: offset {offset} of record {key} is outside {paths.rec} ({file_size} bytes)"
            )
    return paths, index, file_size


def _identity_keys(handle: BinaryIO, index: dict[int, int], file_size: int, rec: Path) -> range | None:
    """Keys of the identity records as the header record gives them; None when record 0 is an image (flag 0)."""
    where = f"{rec} record {_HEADER_KEY}"
    if _HEADER_KEY not in index:
        raise RecordIOError(f"{where}: the header record is not in the index")
    header, _ = unpack_ir(read_record(handle, index[_HEADER_KEY], file_size, where), where)
    if header.flag == 0:
        return None
    if header.flag < 2:
        raise RecordIOError(f"{where}: header record has {header.flag} label(s), expected 2 (first, end identity key)")
    first = _as_index(header.labels[0], where, "first identity key")
    end = _as_index(header.labels[1], where, "end identity key")
    if not 1 <= first <= end:
        raise RecordIOError(f"{where}: header record's identity keys [{first}, {end}) are inconsistent")
    return range(first, end)


def _require_keys(keys: Iterable[int], index: dict[int, int], rec: Path, what: str) -> None:
    missing = next((key for key in keys if key not in index), None)
    if missing is not None:
        raise RecordIOError(f"{rec} record {missing}: {what} record is not in the index")


def iter_rec_images(prefix: str | os.PathLike[str]) -> Iterator[tuple[int, int, bytes]]:
    """(key, label, encoded image) for every image record; the files are checked before the first item."""
    paths, index, file_size = _open_index(prefix)
    return _iter_images(paths.rec, index, file_size)


def _iter_images(rec: Path, index: dict[int, int], file_size: int) -> Iterator[tuple[int, int, bytes]]:
    with open(rec, "rb") as handle:
        identities = _identity_keys(handle, index, file_size, rec)
        keys = list(index) if identities is None else range(1, identities.start)
        _require_keys(keys, index, rec, "image")
        for key in keys:
            where = f"{rec} record {key}"
            header, image = unpack_ir(read_record(handle, index[key], file_size, where), where)
            yield key, _as_index(header.class_label, where, "label"), image


def read_rec(prefix: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(label, encoded image) for every image record of `<prefix>.rec`, in key order."""
    return ((label, image) for _, label, image in iter_rec_images(prefix))


def read_identities(prefix: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """The [start, end) image key range of each identity record (empty when record 0 has flag 0)."""
    paths, index, file_size = _open_index(prefix)
    with open(paths.rec, "rb") as handle:
        identities = _identity_keys(handle, index, file_size, paths.rec)
        if identities is None:
            return []
        _require_keys(identities, index, paths.rec, "identity")
        ranges = []
        for key in identities:
            where = f"{paths.rec} record {key}"
            header, _ = unpack_ir(read_record(handle, index[key], file_size, where), where)
            if header.flag < 2:
                raise RecordIOError(f"{where}: identity record has {header.flag} label(s), expected 2 (start, end)")
            ranges.append((_as_index(header.labels[0], where, "start"), _as_index(header.labels[1], where, "end")))
    return ranges


# --- writing ---------------------------------------------------------------------------------------------------


def _check_label(label: Any, where: str) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < _FLOAT32_EXACT:
        raise ValueError(f"{where}: label {label!r} must be an integer in 0..{_FLOAT32_EXACT - 1}")
    return int(label)


def write_rec(
    prefix: str | os.PathLike[str], items: Iterable[tuple[int, bytes]], image_size: tuple[int, int] = (112, 112)
) -> RecProperty:
    """Write `<prefix>.rec`, `<prefix>.idx` and `property` in the InsightFace layout, atomically.

    Images are grouped by label (stable within a label) so each identity is one contiguous key range; labels
    must be exactly 0..C-1 (identity record k+first belongs to label k). Every image must be `image_size`
    (height, width). Image bytes spill to a temporary file while grouping, so memory holds only offsets.
    """
    paths = rec_paths(prefix)
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"write_rec image_size must be positive (height, width), got {image_size}")
    paths.rec.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=paths.rec.parent) as spill:
        entries: list[tuple[int, int, int]] = []  # label, spill offset, length
        for number, (label, data) in enumerate(items):
            where = f"write_rec item {number}"
            label = _check_label(label, where)
            found = encoded_size(data, where)
            if found != (height, width):
                raise ValueError(f"{where}: image is {found} (h, w), expected {(height, width)}")
            entries.append((label, spill.tell(), len(data)))
            spill.write(data)
        if not entries:
            raise ValueError(f"write_rec {paths.rec}: no images to write")
        num_classes = max(label for label, _, _ in entries) + 1
        present = {label for label, _, _ in entries}
        if len(present) != num_classes:
            absent = sorted(set(range(num_classes)) - present)[:5]
            raise ValueError(
                f"write_rec {paths.rec}: labels must be 0..{num_classes - 1} with none absent; absent: {absent}"
            )
        first_identity = 1 + len(entries)
        end_identity = first_identity + num_classes
        if end_identity >= _FLOAT32_EXACT:
            raise ValueError(
                f"write_rec {paths.rec}: {end_identity} records exceed what float32 header labels index exactly"
            )
        order = sorted(range(len(entries)), key=lambda j: entries[j][0])

        with ExitStack() as stack:
            staged_rec = stack.enter_context(atomic_path(paths.rec))
            staged_idx = stack.enter_context(atomic_path(paths.idx))
            staged_property = stack.enter_context(atomic_path(paths.property))
            with open(staged_rec, "wb") as rec, open(staged_idx, "w", encoding="ascii") as idx:

                def put(header: IRHeader, image: bytes) -> None:
                    idx.write(f"{header.id}\t{rec.tell()}\n")
                    rec.write(frame_record(pack_ir(header, image)))

                put(IRHeader(label=0.0, id=_HEADER_KEY, labels=(float(first_identity), float(end_identity))), b"")
                starts = [0] * num_classes
                ends = [0] * num_classes
                for key, j in enumerate(order, start=1):
                    label, offset, length = entries[j]
                    spill.seek(offset)
                    put(IRHeader(label=float(label), id=key), spill.read(length))
                    if ends[label] == 0:
                        starts[label] = key
                    ends[label] = key + 1
                for label in range(num_classes):
                    key = first_identity + label
                    put(IRHeader(label=0.0, id=key, labels=(float(starts[label]), float(ends[label]))), b"")
                rec.flush()
                os.fsync(rec.fileno())
            staged_property.write_text(f"{num_classes},{height},{width}\n", encoding="ascii")
    return RecProperty(num_classes, height, width)


# --- .bin pair sets --------------------------------------------------------------------------------------------

# Opcodes that only build bytes, str-as-bytes (Python 2), ints, bools, lists and tuples, plus framing and memo
# bookkeeping. Everything else (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ*, EXT*, PERSID, buffers,
# dicts, sets, strings) is refused before unpickling starts. The EXT opcodes matter: they fetch objects from
# copyreg's extension cache without ever calling find_class.
_DATA_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET", "MEMOIZE",
        "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    }
)  # fmt: skip
_DATA_TYPES = (bytes, bytearray, list, tuple, bool, int)
# Far above real pair sets (LFW's .bin: 12,000 images, 0.1 GB) and far below what would exhaust memory or time.
BIN_MAX_BYTES = 4 << 30  # the file, and the image bytes it references (a shared image counted each time)
BIN_MAX_ITEMS = 1 << 24  # list and tuple entries, all levels together


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global, so no class or function (os.system, eval, ...) can be reached from the file."""

    def __init__(self, file: BinaryIO, where: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 `str` image bytes load as bytes
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self.where}: refuses to load {module}.{name}; a .bin may hold only bytes, lists and bools"
        )


def _check_opcodes(data: bytes, where: str) -> None:
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name not in _DATA_OPCODES:
                raise UnsafePickleError(
                    f"{where}: refuses pickle opcode {opcode.name} at byte {position}; "
                    "a .bin may hold only bytes, lists and bools"
                )
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnsafePickleError(f"{where}: not a readable pickle ({type(error).__name__}: {error})") from error


_PATH_ENDS = 8  # a path deeper than twice this shows its first and last levels only: an error stays one short line


def _path(steps: list[tuple[int, int]], parent: int, index: int) -> str:
    """The `[i][j]...` path of entry `index` of container `parent`, built back along the parent chain."""
    indices = []
    while parent >= 0:
        indices.append(index)
        parent, index = steps[parent]
    if not indices:
        return "top level"
    indices.reverse()
    if len(indices) > 2 * _PATH_ENDS:
        hidden = len(indices) - 2 * _PATH_ENDS
        head, tail = indices[:_PATH_ENDS], indices[-_PATH_ENDS:]
        return "".join(f"[{i}]" for i in head) + f"[… {hidden:,} more levels …]" + "".join(f"[{i}]" for i in tail)
    return "".join(f"[{i}]" for i in indices)


def _check_types(value: Any, where: str) -> None:
    """Only data types, each non-empty list or tuple reached once (a cycle would make every later walk loop, shared
    lists nested a few levels deep would make it exponential), at most BIN_MAX_ITEMS entries and BIN_MAX_BYTES of
    image bytes."""
    seen: set[int] = set()  # ids of the lists reached; all stay alive during the walk, so an id means one object
    items = size = 0
    # Each container walked is a step (its container's step, its index there); an entry's path is built from them
    # only for an error, since a path string per entry would make nested lists cost time quadratic in their depth.
    steps: list[tuple[int, int]] = []
    stack: list[tuple[Any, int, int]] = [(value, -1, 0)]  # (entry, its container's step or -1 at the top, index)
    while stack:
        item, parent, index = stack.pop()
        if not isinstance(item, _DATA_TYPES):
            raise UnsafePickleError(
                f"{where}: holds a {type(item).__name__} at {_path(steps, parent, index)}; "
                "only bytes, lists, tuples, bools and ints are allowed"
            )
        if isinstance(item, (bytes, bytearray)):
            size += len(item)
            if size > BIN_MAX_BYTES:
                raise UnsafePickleError(f"{where}: holds more than {BIN_MAX_BYTES} bytes of images")
        if not isinstance(item, (list, tuple)) or not item:  # an empty one repeats nothing (and () is shared)
            continue
        if id(item) in seen:
            raise UnsafePickleError(
                f"{where}: the {type(item).__name__} at {_path(steps, parent, index)} is reached twice (a cyclic or "
                "shared reference); a .bin holds plain nested lists"
            )
        seen.add(id(item))
        items += len(item)
        if items > BIN_MAX_ITEMS:
            raise UnsafePickleError(f"{where}: holds more than {BIN_MAX_ITEMS} list entries")
        step = len(steps)
        steps.append((parent, index))
        stack.extend((child, step, child_index) for child_index, child in enumerate(item))


def load_bin_payload(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and issame flags of a `.bin`, without decoding images."""
    path = Path(path)
    _require_file(path, "pair set")
    if path.stat().st_size > BIN_MAX_BYTES:
        raise UnsafePickleError(f"{path}: {path.stat().st_size} bytes; a .bin may hold at most {BIN_MAX_BYTES}")
    data = path.read_bytes()
    _check_opcodes(data, str(path))
    try:
        value = _DataOnlyUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
    _check_types(value, str(path))
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (list, tuple)) for v in value):
        raise UnsafePickleError(f"{path}: expected a pickled (list of images, list of issame), got another structure")
    images, issame = value
    bad_image = next((i for i, image in enumerate(images) if not isinstance(image, (bytes, bytearray))), None)
    if bad_image is not None:
        raise ValueError(f"{path} image {bad_image}: expected encoded bytes, got {type(images[bad_image]).__name__}")
    bad_flag = next((i for i, flag in enumerate(issame) if not (isinstance(flag, bool) or flag in (0, 1))), None)
    if bad_flag is not None:
        raise ValueError(f"{path} pair {bad_flag}: issame must be a bool, got {issame[bad_flag]!r}")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (expected two images per pair)")
    return [bytes(image) for image in images], np.array([bool(flag) for flag in issame], dtype=bool)


def read_bin(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x H x W x 3 RGB, issame bool of N/2) from an InsightFace `.bin` pair set."""
    images, issame = load_bin_payload(path)
    name = Path(path).name
    return decode_stack(images, lambda i: f"{name} image {i}"), issame


def write_bin(path: str | os.PathLike[str], images: np.ndarray | Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a `.bin` pair set atomically; an (N, H, W, 3) uint8 array is stored as PNGs, bytes as they are."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"write_bin {path}: images must be (N, H, W, 3), got shape {images.shape}")
        encoded = [encode_png(image) for image in images]
    else:
        encoded = [bytes(image) for image in images]
    flags = [bool(flag) for flag in issame]
    if len(encoded) != 2 * len(flags):
        raise ValueError(f"write_bin {path}: {len(encoded)} images for {len(flags)} pairs (expected two per pair)")
    write_bytes_atomic(path, pickle.dumps((encoded, flags), protocol=4))


def contiguous_folds(num_pairs: int, num_folds: int = BIN_FOLDS) -> np.ndarray:
    """Fold of each pair: consecutive blocks, the first num_pairs % num_folds one pair larger (unshuffled k-fold)."""
    if num_pairs < num_folds:
        raise ValueError(f"{num_pairs} pairs cannot fill {num_folds} folds")
    sizes = np.full(num_folds, num_pairs // num_folds)
    sizes[: num_pairs % num_folds] += 1
    return np.repeat(np.arange(num_folds), sizes)


# --- converters to and from the internal format ----------------------------------------------------------------


def rec_to_records(
    prefix: str | os.PathLike[str], out_dir: str | os.PathLike[str], skip_corrupt: bool = False
) -> dict[str, Any]:
    """Convert an InsightFace RecordIO set to records (image bytes kept as they are; landmarks NaN, the set is
    already aligned). Every image is decoded once to check it; a corrupt one raises, or with `skip_corrupt` is
    left out and listed in the report."""
    paths = rec_paths(prefix)
    prop = read_property(prefix)
    report: dict[str, Any] = {
        "source": str(paths.rec), "num_classes": prop.num_classes, "height": prop.height, "width": prop.width,
        "images": 0, "skipped": [],
    }  # fmt: skip
    labels_seen: set[int] = set()

    def records() -> Iterator[FaceRecord]:
        for key, label, image in iter_rec_images(prefix):
            where = f"{paths.rec.name} record {key}"
            if label >= prop.num_classes:
                raise RecordIOError(
                    f"{paths.rec} record {key}: label {label} is not below num_classes {prop.num_classes} "
                    f"of {paths.property}"
                )
            try:
                array = decode_image(image, where)
            except CorruptImageError as error:
                if not skip_corrupt:
                    raise
                report["skipped"].append(str(error))
                continue
            if array.shape[:2] != (prop.height, prop.width):
                raise RecordIOError(
                    f"{paths.rec} record {key}: image is {array.shape[:2]}, "
                    f"{paths.property} says {(prop.height, prop.width)}"
                )
            labels_seen.add(label)
            yield FaceRecord(image=image, label=label, landmarks=NO_LANDMARKS.copy(), source=f"{paths.rec.name}:{key}")

    report["images"] = write_records(out_dir, records())
    report["labels_seen"] = len(labels_seen)
    return report


def records_to_rec(
    records_dir: str | os.PathLike[str], prefix: str | os.PathLike[str], image_size: tuple[int, int] = (112, 112)
) -> RecProperty:
    """Export records (labels 0..C-1) as an InsightFace RecordIO set."""
    return write_rec(prefix, ((record.label, record.image) for record in iter_records(records_dir)), image_size)


def bin_to_benchmark(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert a `.bin` pair set to a benchmark: pairs (2i, 2i+1), folds = 10 consecutive blocks of pairs."""
    path = Path(path)
    images, issame = load_bin_payload(path)
    shape = (0, 0, 3)
    for array in decode_uniform(images, lambda i: f"{path.name} image {i}"):  # all checked before writing
        shape = array.shape
    pairs = pd.DataFrame(
        {
            "a": np.arange(0, 2 * len(issame), 2),
            "b": np.arange(1, 2 * len(issame), 2),
            "same": issame,
            "fold": contiguous_folds(len(issame)),
        }
    )
    records = (
        FaceRecord(image=data, label=-1, landmarks=NO_LANDMARKS.copy(), source=f"{path.name}:{i}")
        for i, data in enumerate(images)
    )
    write_benchmark(out_dir, records, pairs)
    return {
        "source": str(path), "images": len(images), "pairs": len(issame), "same": int(issame.sum()),
        "height": shape[0], "width": shape[1], "folds": BIN_FOLDS,
    }  # fmt: skip


def benchmark_to_bin(bench_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Export a benchmark as a `.bin` (images laid out pair by pair; the `.bin` format keeps no folds)."""
    images, pairs = read_benchmark(bench_dir)
    encoded = [images[int(index)].image for a, b in zip(pairs["a"], pairs["b"]) for index in (a, b)]
    write_bin(path, encoded, pairs["same"].astype(bool).tolist())
