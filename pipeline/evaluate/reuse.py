"""Which seeds stage evaluate takes from its previous outputs instead of evaluating them again, so that a seed added
to `seeds` is the only one evaluated. A seed's previous entry is reused when, and only when, its key (record.
EvaluationKey: the seed's weights, the parameters evaluate reads, each protocol's files, the evaluate code) is the
key it would be evaluated under now, and its rows of pairs.parquet are the rows written beside that entry."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.dependencies import code_digest
from pipeline.evaluate.record import EvaluationKey, ModelEvaluation, SeedEvaluation
from pipeline.experiment.recipes import Recipe
from pipeline.experiment.runs import file_digest

log = logging.getLogger("facerepro.evaluate")

PAIR_COLUMNS = ["seed", "benchmark", "pair", "correct"]  # data/eval/<model>/pairs.parquet: each pair's decision
NOT_IN_SETTINGS = frozenset({"alpha"})  # evaluate parameters the stage does not read (the tables' significance level)


def settings_digest(cfg: Config, recipe: Recipe, device_type: str) -> str:
    """The parameters an evaluation depends on beside its weights and data: every evaluate parameter the stage reads,
    how the backbone is built and run (architecture, embedding size, crop, memory layout) and the device type (the
    arithmetic differs between devices)."""
    settings = {
        "evaluate": {k: v for k, v in cfg.evaluate.model_dump().items() if k not in NOT_IN_SETTINGS},
        "backbone": recipe.backbone,
        "embedding_size": recipe.embedding_size,
        "crop_size": cfg.align.crop_size,
        "channels_last": cfg.train.channels_last,
        "device_type": device_type,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def files_digest(directory: Path) -> str:
    """sha256 over a protocol directory's files, by relative path and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def evaluation_keys(
    weights: Mapping[int, Path], settings: str, protocols: Mapping[str, Path]
) -> dict[int, EvaluationKey]:
    """Each seed's key: the digest of its model file `weights[seed]`, with what every seed shares: the settings
    (settings_digest), the files of each protocol directory and the code of stage evaluate's import closure."""
    shared = {name: files_digest(directory) for name, directory in protocols.items()}
    code = code_digest("stages/evaluate.py")
    return {seed: EvaluationKey(file_digest(path), settings, shared, code) for seed, path in weights.items()}


def rows_digest(rows: pd.DataFrame) -> str:
    """sha256 over one seed's rows of pairs.parquet, in their order: protocol, pair index and decision."""
    digest = hashlib.sha256()
    for name, pair, correct in zip(rows["benchmark"], rows["pair"], rows["correct"]):
        digest.update(f"{name}\0{int(pair)}\0{int(bool(correct))}\n".encode())
    return digest.hexdigest()[:16]


def in_protocol_order(rows: pd.DataFrame, protocols: list[str]) -> pd.DataFrame:
    """One seed's rows with its protocols in the order they are scored now (each protocol's rows as they were), as an
    evaluation from scratch would write them."""
    order = {name: index for index, name in enumerate(protocols)}
    position = rows["benchmark"].map(order).to_numpy()
    return rows.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)


def key_changes(previous: EvaluationKey, now: EvaluationKey) -> list[str]:
    """What differs between the key an entry was evaluated under and the key of now, in words."""
    changes = [f"its {part}" for part in ("weights", "settings", "code")
               if getattr(previous, part) != getattr(now, part)]
    changes += [f"protocol {name} added" for name in now.protocols if name not in previous.protocols]
    changes += [f"protocol {name} dropped" for name in previous.protocols if name not in now.protocols]
    changes += [f"protocol {name}'s files" for name, digest in now.protocols.items()
                if name in previous.protocols and previous.protocols[name] != digest]
    return changes


def refusal(previous: SeedEvaluation | None, key: EvaluationKey, rows: pd.DataFrame) -> str | None:
    """Why `previous` (the seed's entry in the previous record; `rows`, its rows of the previous pairs.parquet) cannot
    stand for an evaluation under `key`, in a few words for the log; None when it can."""
    if previous is None:
        return "not evaluated before"
    if previous.key is None or previous.pairs_digest is None:
        return "its entry records no key"
    changes = key_changes(previous.key, key)
    if changes:
        return "changed: " + ", ".join(changes)
    if rows_digest(rows) != previous.pairs_digest:
        return "its rows of pairs.parquet are not the ones written with its entry"
    return None


def reused_seeds(model: str, previous: PreviousEvaluation, keys: Mapping[int, EvaluationKey]) -> set[int]:
    """The seeds whose previous evaluation stands for the one under their key now; each decision logged with why."""
    reused = set()
    for seed, key in keys.items():
        why = refusal(previous.seeds.get(seed), key, previous.rows(seed))
        if why is None:
            reused.add(seed)
        log.info("%s seed %d: %s", model, seed, "previous evaluation reused" if why is None else f"evaluated ({why})")
    return reused


@dataclass(frozen=True)
class PreviousEvaluation:
    """What the last run of stage evaluate left for a model (kept by DVC: the outputs are `persist`): its entries by
    seed and its pairs.parquet; nothing when either is missing or cannot be read."""
    seeds: dict[int, SeedEvaluation]
    pairs: pd.DataFrame

    def rows(self, seed: int) -> pd.DataFrame:
        return self.pairs[self.pairs["seed"] == seed]


NOTHING = PreviousEvaluation({}, pd.DataFrame(columns=PAIR_COLUMNS))


def previous_evaluation(record: Path, pairs: Path) -> PreviousEvaluation:
    """The record at `record` and the rows at `pairs`; NOTHING, with a log line saying why, when one cannot be read
    (every seed is evaluated then: a damaged output is never a reason to fail)."""
    if not (record.is_file() and pairs.is_file()):
        return NOTHING
    try:
        evaluation = ModelEvaluation.load(record)
        frame = pd.read_parquet(pairs)
    except (ValueError, OSError) as error:  # a malformed record or parquet file: its message names the file
        log.warning("%s: nothing of the previous evaluation is reused", str(error).splitlines()[0][:300])
        return NOTHING
    if list(frame.columns) != PAIR_COLUMNS:
        log.warning("%s has columns %s, not %s: nothing of the previous evaluation is reused",
                    pairs, list(frame.columns), PAIR_COLUMNS)
        return NOTHING
    return PreviousEvaluation(evaluation.seeds, frame)
