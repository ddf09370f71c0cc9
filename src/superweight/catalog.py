"""The index of known super weights shipped with the package (data/index.json).

Model ids match case-insensitively and exactly by repo id (``org/name``), never by
substring: ``huggyllama/llama-7b`` is not ``huggyllama/llama-7b-chat``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from superweight.coords import Coord


@dataclass(frozen=True)
class IndexEntry:
    model: str
    source: str
    super_weights: tuple[Coord, ...]
    note: str | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        d = {"model": self.model, "source": self.source, "super_weights": [c.to_dict() for c in self.super_weights]}
        if self.note:
            d["note"] = self.note
        if self.checkpoint:
            d["checkpoint"] = self.checkpoint
        return d


@lru_cache(maxsize=1)
def index() -> tuple[IndexEntry, ...]:
    raw = json.loads(resources.files("superweight").joinpath("data/index.json").read_text())
    return tuple(
        IndexEntry(
            model=m["model"], source=m["source"], note=m.get("note"), checkpoint=m.get("checkpoint"),
            super_weights=tuple(Coord(*c) for c in m["super_weights"]),
        )
        for m in raw["models"]
    )


def _norm(model_id: str) -> str:
    return model_id.strip().strip("/").lower()


def known(model_id: str | None) -> IndexEntry | None:
    """The index entry whose repo id equals ``model_id`` (case-insensitive), else None."""
    if not model_id:
        return None
    want = _norm(model_id)
    for e in index():
        if _norm(e.model) == want:
            return e
    return None


def compare(found: list[Coord], entry: IndexEntry) -> dict:
    """How detected coordinates agree with an index entry."""
    got, claim = set(found), set(entry.super_weights)
    both = sorted(got & claim)
    status = "agrees" if got == claim else ("partly agrees" if both else "disagrees")
    return {
        "model": entry.model,
        "source": entry.source,
        "status": status,
        "matched": [str(c) for c in both],
        "only_detected": [str(c) for c in sorted(got - claim)],
        "only_in_index": [str(c) for c in sorted(claim - got)],
    }
