"""A profile run's params.yaml (scripts/reproduce-profile): `profile:` set, KEY=VALUE overrides put in the profile.

    python -m pipeline.profiles.params PARAMS PROFILE [KEY=VALUE ...]      e.g. data.folders_root=/home/me/photos

Values are read as YAML (`0.2` a number, `[0, 1]` a list); the result is validated before it is written.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import config
from pipeline.core.config import Config
from pipeline.core.atomic_io import write_text_atomic


def set_override(section: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` inside `section` (a profile's dict), creating the dicts on the way."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. data.folders_root=/path/to/photos")
    *parents, leaf = key.split(".")
    node = section
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is a value, not a section")
    node[leaf] = yaml.safe_load(value)


def apply(path: Path, profile: str, overrides: list[str]) -> Config:
    """Rewrite `path` with `profile:` set and the overrides in `profiles.<profile>`; returns the validated config."""
    raw = yaml.safe_load(path.read_text())
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise ValueError(f"{path}: profile {profile!r} is not defined under profiles (known: {', '.join(profiles)})")
    raw["profile"] = profile
    profiles[profile] = profiles[profile] or {}
    for item in overrides:
        set_override(profiles[profile], item)
    cfg = config.resolve(raw, profile, str(path))  # an unknown key or a bad value stops here, naming it
    write_text_atomic(path, yaml.safe_dump(raw, sort_keys=False))
    return cfg


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    try:
        apply(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
    except ValueError as error:
        sys.exit(f"reproduce-profile: {error}")


if __name__ == "__main__":
    main()
