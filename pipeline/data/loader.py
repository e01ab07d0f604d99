"""Torch Dataset / DataLoader over records: encoded bytes in memory, decoding and augmentation in the workers.

Determinism: `make_loader` gives the DataLoader a `torch.Generator` seeded from `seed`; it draws the shuffle
order and, once per worker start, the workers' base seed. PyTorch itself then seeds worker k's torch and
`random` with base + k and numpy with a state derived from (base, k), so no `worker_init_fn` is needed (the old
recipe, numpy seeded from `torch.initial_seed()` in a worker_init_fn, only predates that); code that uses
another RNG library in a worker should seed it from `torch.initial_seed()`. Random transforms repeat for the
same seed and worker count; the worker count changes which worker, hence which seed, augments an image. With
`num_workers=0` transforms run in the main process on the global torch RNG: seed it (`torch.manual_seed`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from torchvision.transforms import v2

from pipeline.data.images import CorruptImageError, decode_image, decode_stack
from pipeline.data.records import read_benchmark, shard_paths

Transform = Callable[[torch.Tensor], torch.Tensor]


def eval_transform() -> v2.Compose:
    """uint8 CxHxW -> float32 (x/255 - 0.5)/0.5 = (x - 127.5)/127.5 in [-1, 1], the project's pixel normalisation
    (ArcFace's input setting, arcface-notes-zh.md §3 "Input setting", uses (x - 127.5)/128)."""
    from torchvision.transforms import v2  # here, not at the top: torchvision costs ~2.5 s at every stage start

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])


def train_transform(flip: bool = True) -> v2.Compose:
    """Random horizontal flip (p = 0.5) when `flip`, then `eval_transform`'s normalisation."""
    from torchvision.transforms import v2

    return v2.Compose([*([v2.RandomHorizontalFlip(p=0.5)] if flip else []), eval_transform()])


class _PackedBytes:
    """Many byte strings in one numpy buffer plus offsets: no per-item Python objects, so forked workers
    reading it do not touch reference counts and copy the pages (as a list of bytes would)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_arrow(cls, columns: Sequence[pa.ChunkedArray]) -> _PackedBytes:
        blobs, lengths = [], []
        for column in columns:
            array = column.combine_chunks().cast(pa.large_binary())
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
            data = array.buffers()[2]
            values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
            blobs.append(values[offsets[0] : offsets[-1]])
            lengths.append(np.diff(offsets))
        return cls._from_parts(blobs, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))

    @classmethod
    def _from_parts(cls, blobs: list[np.ndarray], lengths: np.ndarray) -> _PackedBytes:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def take(self, rows: np.ndarray) -> _PackedBytes:
        pieces = [self.blob[self.offsets[r] : self.offsets[r + 1]] for r in rows]
        return self._from_parts(pieces, np.diff(self.offsets)[rows])


def _check_indices(indices: Sequence[int] | np.ndarray, total: int, records_dir: Path) -> np.ndarray:
    rows = np.asarray(indices)
    if rows.dtype == bool or rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(
            f"FaceDataset indices must be a 1-D sequence of row numbers, got {rows.dtype} of shape {rows.shape}"
        )
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        bad = int(rows[(rows < 0) | (rows >= total)][0])
        raise IndexError(f"FaceDataset indices: row {bad} is outside 0..{total - 1} of {records_dir}")
    return rows


class FaceDataset(Dataset):
    """Map-style dataset over a records directory: item i -> (float32 CxHxW image, int label).

    The encoded bytes and labels of the rows in `indices` (all rows by default; row numbers follow
    `read_metadata` order) are read once into memory; images are decoded in `__getitem__`, so in DataLoader
    workers. `transform` maps a uint8 CxHxW tensor to the float image (default `eval_transform()`). A corrupt
    image raises `CorruptImageError` naming its shard, row and source; with `skip_corrupt` every row is decoded
    once up front and the corrupt ones are left out (listed in `skipped`).
    """

    def __init__(
        self,
        records_dir: str | os.PathLike[str],
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Transform | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.records_dir = Path(records_dir)
        self.transform = transform if transform is not None else eval_transform()
        self._default_transform = transform is None
        self.shards = shard_paths(self.records_dir)
        tables = [pq.read_table(path, columns=["image", "label", "source"]) for path in self.shards]
        self._shard_starts = np.cumsum([0] + [table.num_rows for table in tables])
        total = int(self._shard_starts[-1])
        rows = np.arange(total) if indices is None else _check_indices(indices, total, self.records_dir)
        images = _PackedBytes.from_arrow([table.column("image") for table in tables])
        sources = _PackedBytes.from_arrow([table.column("source").cast(pa.large_binary()) for table in tables])
        labels = np.concatenate([table.column("label").to_numpy() for table in tables]).astype(np.int64)
        del tables
        if indices is not None:
            images, sources, labels = images.take(rows), sources.take(rows), labels[rows]
        self._images, self._sources, self._labels, self._rows = images, sources, labels, rows
        self.skipped: list[str] = []
        if skip_corrupt:
            self._drop_corrupt()
        self._labels.setflags(write=False)

    def _drop_corrupt(self) -> None:
        keep = []
        for i in range(len(self)):
            try:
                decode_image(self._images[i], self.describe(i))
                keep.append(i)
            except CorruptImageError as error:
                self.skipped.append(str(error))
        if self.skipped:
            kept = np.asarray(keep, dtype=np.int64)
            self._images, self._sources = self._images.take(kept), self._sources.take(kept)
            self._labels, self._rows = self._labels[kept], self._rows[kept]

    def describe(self, i: int) -> str:
        """Where item i comes from: "<shard path> row <row in shard> (source <source>)"."""
        row = int(self._rows[i])
        shard = int(np.searchsorted(self._shard_starts, row, side="right")) - 1
        source = self._sources[i].decode("utf-8", errors="replace")
        return f"{self.shards[shard]} row {row - int(self._shard_starts[shard])} (source {source})"

    @property
    def labels(self) -> np.ndarray:
        """Label of every item (read-only int64)."""
        return self._labels

    @property
    def rows(self) -> np.ndarray:
        """Row number (in `read_metadata` order) of every item."""
        return self._rows

    def sources(self) -> list[str]:
        """Every item's record `source`, in item order: the stable id that ties it to its original photo."""
        return [self._sources[i].decode("utf-8") for i in range(len(self))]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        array = decode_image(self._images[i], self.describe(i))
        image = self.transform(torch.from_numpy(array).permute(2, 0, 1))
        return image.contiguous(), int(self._labels[i])

    @property
    def normalises_only(self) -> bool:
        """Whether items are `eval_transform` of the decoded image (no random transform): what `Preloaded` needs."""
        return self._default_transform

    def decoded_bytes(self) -> int:
        """Bytes of every item decoded into one uint8 tensor (from the first item's size; aligned crops share it)."""
        if not len(self):
            return 0
        return len(self) * decode_image(self._images[0], self.describe(0)).nbytes

    def decode_all(self) -> torch.Tensor:
        """Every item decoded once: uint8 N x 3 x H x W (a corrupt or odd-sized image raises, naming its record)."""
        return torch.from_numpy(decode_stack([self._images[i] for i in range(len(self))], self.describe)).permute(0, 3, 1, 2)


class WithItems(Dataset):
    """`dataset`'s items with their item number: (image, label, i), so that a batch says which items it holds
    (per-item targets, such as a fixed teacher's, are looked up by it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i]
        return image, label, i


class Preloaded:
    """Training batches cut from one decoded uint8 tensor: each image is decoded once per run instead of once per
    step, and a batch is normalised in one operation. Yields what a DataLoader over the same `FaceDataset` and
    `batch_sampler` yields, bit for bit (`eval_transform` is elementwise); with `with_items`, what one over
    `WithItems(dataset)` yields: each batch's item numbers as a third tensor."""

    def __init__(self, dataset: FaceDataset, batch_sampler: Iterable[list[int]], with_items: bool = False) -> None:
        if not dataset.normalises_only:
            raise ValueError("Preloaded needs a FaceDataset with the default transform (a random one is per image)")
        self.images = dataset.decode_all().contiguous()
        self.labels = torch.from_numpy(dataset.labels.copy())
        self.batch_sampler = batch_sampler
        self.with_items = with_items
        self.normalise = eval_transform()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for indices in self.batch_sampler:
            rows = torch.as_tensor(indices, dtype=torch.int64)
            batch = self.normalise(self.images[rows]), self.labels[rows]
            yield (*batch, rows) if self.with_items else batch


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, device_type: str = "cpu"
) -> DataLoader:
    """A seeded DataLoader: `shuffle=True` means a training loader, which also drops the last partial batch.

    Pinned memory only when feeding CUDA; workers persist across epochs when there are any.
    """
    if batch_size <= 0 or num_workers < 0:
        raise ValueError(f"make_loader needs batch_size > 0 and num_workers >= 0, got {batch_size} and {num_workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        num_workers=num_workers,
        pin_memory=device_type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def load_benchmark_arrays(bench_dir: str | os.PathLike[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(images uint8 N x H x W x 3 RGB, pairs a/b/same/fold) of a benchmark, every image decoded."""
    images, pairs = read_benchmark(bench_dir)
    where = Path(bench_dir) / "images.parquet"
    encoded = [record.image for record in images]
    return decode_stack(encoded, lambda i: f"{where} row {i} (source {images[i].source})"), pairs
