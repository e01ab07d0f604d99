"""Every held-out protocol kind, registered by importing its module (a new kind: its module, listed here), and
`parse`, which turns params `protocols` into their specs."""
from __future__ import annotations

from typing import Any

# each module registers its kind
from pipeline.data.heldout import cross_age, cross_pose, group, identification, lfw_identification  # noqa: F401
from pipeline.data.heldout.base import KINDS, HeldoutSpec
from pipeline.data.synthetic.spec import build_spec


def parse(protocols: dict[str, Any], source: str = "protocols") -> dict[str, HeldoutSpec]:
    """The specs of params `protocols` (name -> {kind, block, ...}); errors name the protocol and field."""
    if not isinstance(protocols, dict):
        raise ValueError(f"{source} must be a mapping of name -> protocol, got {type(protocols).__name__}")
    specs: dict[str, HeldoutSpec] = {}
    blocks: dict[int, str] = {}
    for name, values in protocols.items():
        where = f"{source}.{name}"
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping with a kind, got {type(values).__name__}")
        values = dict(values)
        kind = values.pop("kind", None)
        if kind not in KINDS.names():
            raise ValueError(f"{where}.kind must be one of {', '.join(KINDS.names())}, got {kind!r}")
        spec = build_spec(KINDS.get(kind), values, where)
        spec.check(where)
        block = spec.identity_block()
        if block is not None:
            if block in blocks:
                raise ValueError(f"{where}.block {block} is also {source}.{blocks[block]}'s: "
                                 "each protocol needs its own")
            blocks[block] = name
        specs[name] = spec
    return specs
