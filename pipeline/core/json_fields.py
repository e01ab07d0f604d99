"""Reading a record's JSON with an error that names the file and the dotted field path of a bad value."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonField:
    """Where a value sits (the file and its dotted field path), so that a bad one is named in one line; `what` names
    the record in an error about the whole of it."""

    source: str
    what: str
    path: str = ""

    def child(self, key: str) -> JsonField:
        return JsonField(self.source, self.what, f"{self.path}.{key}" if self.path else key)

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.source}: {f'field {self.path}' if self.path else self.what} {problem}")

    def fields(
        self, raw: Any, required: tuple[str, ...], optional: tuple[str, ...] = (), also: str = ""
    ) -> dict[str, Any]:
        """`raw` as an object with every required field and none the layout does not name (`also` names the
        patterned keys the caller took out before)."""
        found = self.object(raw)
        missing = [key for key in required if key not in found]
        if missing:
            raise self.child(missing[0]).error("is missing")
        unknown = [key for key in found if key not in required and key not in optional]
        if unknown:
            known = ", ".join([*required, *optional, *([also] if also else [])])
            raise self.child(unknown[0]).error(f"is not a field of this layout (known: {known})")
        return found

    def object(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(f"is {_shown(raw)}, not an object")
        return raw

    def array(self, raw: Any) -> list[Any]:
        if not isinstance(raw, list):
            raise self.error(f"is {_shown(raw)}, not a list")
        return raw

    def number(self, raw: Any) -> float:
        if raw is None:
            return math.nan  # how the file writes a NaN (strict JSON)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise self.error(f"is {_shown(raw)}, not a number")
        return float(raw)

    def integer(self, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(f"is {_shown(raw)}, not an integer")
        return raw

    def text(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise self.error(f"is {_shown(raw)}, not a string")
        return raw

    def flag(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise self.error(f"is {_shown(raw)}, not true or false")
        return raw


def _shown(raw: Any) -> str:
    return json.dumps(raw, default=repr)[:40]
