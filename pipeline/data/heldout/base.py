"""The held-out protocol contract: a kind is a frozen dataclass of its params (one block of params `protocols`) that
checks itself, says whether this data source can give it, and builds its set; `register` files it under its kind."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from pipeline.core.config import Config
from pipeline.core.registry import Registry
from pipeline.data.heldout.scoring import Scoring


class HeldoutSpec:
    """One protocol's params, with what the stages do with them.

    A kind is a frozen dataclass subclassing this one: its fields are the params it accepts (with the defaults a
    block may leave out), `scoring` says how stage evaluate scores what `build` writes, and `check` refuses bad values
    with a message that starts with `where` (protocols.<name>) and names the field."""

    kind: ClassVar[str]  # set by `register`
    scoring: ClassVar[Scoring]

    def check(self, where: str) -> None:
        raise NotImplementedError

    def identity_block(self) -> int | None:
        """The identity block the protocol draws from (no two protocols may share one), None if it draws none."""
        return None

    def pair_folds(self) -> int | None:
        """The folds stage evaluate scores this protocol's pairs on, None if it has no pairs."""
        return None

    def unavailable(self, cfg: Config) -> str | None:
        """Why this data source cannot give the protocol (stage protocols lists it as skipped), None if it can."""
        raise NotImplementedError

    def build(self, cfg: Config, name: str, out: Path) -> dict:
        """Write the protocol's set into `out` (laid out as `scoring` reads it); returns its summary entry."""
        raise NotImplementedError


KINDS: Registry[HeldoutSpec] = Registry[HeldoutSpec]("held-out protocol kind")

S = TypeVar("S", bound=type[HeldoutSpec])


def register(kind: str) -> Callable[[S], S]:
    """`KINDS.register(kind)` that also records the kind on the class (for summaries and messages)."""

    def decorate(cls: S) -> S:
        cls.kind = kind
        KINDS.register(kind)(cls)
        return cls

    return decorate


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_search(distractor_counts: list[int], fars: list[float], where: str) -> None:
    """A 1:N search's curve points (nested distractor counts) and the FARs of its verification figures."""
    counts = distractor_counts
    require(bool(counts) and counts == sorted(set(counts)) and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts),
        f"{where}.distractor_counts must be increasing integers >= 1, got {counts}")
    require(bool(fars) and all(0.0 < far < 1.0 for far in fars), f"{where}.fars must lie in (0, 1)")
