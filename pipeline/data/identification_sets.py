"""An identification set on disk: `images/` (a records directory, every image aligned), `roles.parquet` (one row per
image, in record order: role code into ROLES, identity) and `protocol.json` (the distractor counts of the curve and
the FARs of the verification figures). Pair protocols keep the benchmark layout (records.py)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic_io import atomic_path
from pipeline.data.images import decode_stack
from pipeline.data.records import FaceRecord, iter_records, write_records

ROLES = ("mate", "probe", "distractor")  # a gallery image of a probe identity, a probe, a distractor
ROLES_SCHEMA = pa.schema([("role", pa.int8()), ("identity", pa.int64())])


@dataclass(frozen=True)
class IdentificationSet:
    images: np.ndarray  # N x H x W x 3 uint8, RGB
    roles: pd.DataFrame  # role (index into ROLES), identity
    distractor_counts: list[int]  # the curve's points (MegaFace: 10 ... 1M)
    fars: list[float]

    def rows(self, role: str) -> np.ndarray:
        return np.flatnonzero(self.roles["role"].to_numpy() == ROLES.index(role))


def is_identification_set(directory: Path) -> bool:
    return (directory / "roles.parquet").is_file()


def write_identification_set(out_dir: str | Path, records: Iterable[FaceRecord], roles: pd.DataFrame,
                             distractor_counts: list[int], fars: list[float]) -> None:
    """Write the images and their roles, atomically; every probe identity must have exactly one mate."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        count = write_records(staged / "images", records)
        if count != len(roles):
            raise ValueError(f"{out_dir}: {count} images but {len(roles)} roles")
        _check_roles(roles, str(out_dir))
        pq.write_table(pa.Table.from_pandas(roles[["role", "identity"]], schema=ROLES_SCHEMA, preserve_index=False),
                       staged / "roles.parquet")
        (staged / "protocol.json").write_text(json.dumps({"distractor_counts": distractor_counts, "fars": fars}) + "\n")


def read_identification_set(directory: str | Path) -> IdentificationSet:
    directory = Path(directory)
    if not is_identification_set(directory):
        raise FileNotFoundError(f"identification set {directory} lacks roles.parquet")
    roles = pq.read_table(directory / "roles.parquet").to_pandas()
    records = list(iter_records(directory / "images"))
    if len(records) != len(roles):
        raise ValueError(f"{directory}: {len(records)} images but {len(roles)} roles")
    _check_roles(roles, str(directory))
    where = directory / "images"
    images = decode_stack([r.image for r in records], lambda i: f"{where} row {i} (source {records[i].source})")
    settings = json.loads((directory / "protocol.json").read_text())
    return IdentificationSet(images, roles, settings["distractor_counts"], settings["fars"])


def _check_roles(roles: pd.DataFrame, where: str) -> None:
    codes = roles["role"].to_numpy()
    if codes.size and (codes.min() < 0 or codes.max() >= len(ROLES)):
        raise ValueError(f"{where}: role codes must be 0..{len(ROLES) - 1} ({', '.join(ROLES)})")
    mates = roles[codes == 0]["identity"]
    if mates.duplicated().any():
        raise ValueError(f"{where}: identities with more than one mate: {mates[mates.duplicated()].head().tolist()}")
    probes = set(roles[codes == 1]["identity"])
    missing = probes - set(mates)
    if missing:
        raise ValueError(f"{where}: probe identities without a mate: {sorted(missing)[:5]}")
    overlap = set(roles[codes == 2]["identity"]) & (set(mates) | probes)
    if overlap:
        raise ValueError(f"{where}: distractor identities that are also probe identities: {sorted(overlap)[:5]}")
