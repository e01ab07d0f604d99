"""The held-out test protocols of stage `protocols` (data/protocols/<name>), each built by its kind
(pipeline.data.heldout): rendered by the synthetic generator on identities of their own, or read from LFW, and
aligned like the benchmarks of stage align. They live apart from data/aligned so that adding or resizing one reruns
the evaluations, never the training (whose curves read data/aligned/benchmarks)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.atomic_io import atomic_path
from pipeline.core.config import Config
from pipeline.data.heldout.kinds import parse


def build(cfg: Config, out_dir: Path) -> dict:
    """Write every protocol of params `protocols` into `out_dir` (whole or not at all); returns the summary.

    A synthetic kind needs the synthetic source (its identities come from that generator) and lfw_identification
    needs data.lfw_root; a protocol the data cannot give is listed as skipped, with the reason."""
    specs = parse(cfg.protocols)
    summary: dict = {"crop_size": cfg.align.crop_size, "protocols": {}, "skipped": {}}
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        for name, spec in specs.items():
            reason = spec.unavailable(cfg)
            if reason:
                summary["skipped"][name] = reason
                continue
            summary["protocols"][name] = spec.build(cfg, name, staged / name)
    return summary
