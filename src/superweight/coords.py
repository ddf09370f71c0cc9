"""The one coordinate type.

A super weight is named by ``Coord(layer, row, col)`` (plus ``expert`` for a routed
expert of a mixture-of-experts layer):

- ``layer`` is the decoder-layer index as Hugging Face numbers it (0-based);
- ``row`` is the **output channel** of the MLP down projection: the residual-stream
  channel the weight writes to, where the super activation appears;
- ``col`` is the **input channel**: the intermediate (post-activation) channel it reads.

This is ``down_proj.weight[row, col]`` for every ``nn.Linear`` (stored ``[out, in]``).
GPT-2's ``Conv1D`` stores its weight transposed (``[in, out]``); there the same
coordinate is ``c_proj.weight[col, row]``. The adapter translates; nothing else does.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from superweight.errors import UsageError

_PATTERN = re.compile(r"^\s*(\d+)\s*[:,]\s*(\d+)\s*[:,]\s*(\d+)\s*(?:[:,]\s*[eE]?(\d+))?\s*$")


@dataclass(frozen=True, order=True)
class Coord:
    layer: int
    row: int  # output channel
    col: int  # input channel
    expert: int | None = None  # routed expert index in a mixture-of-experts layer

    @classmethod
    def parse(cls, text: str) -> "Coord":
        """Parse ``L:R:C`` (or ``L:R:C:E`` for an expert)."""
        m = _PATTERN.match(text)
        if not m:
            raise UsageError(f"bad coordinate {text!r}: expected LAYER:ROW:COL (or LAYER:ROW:COL:EXPERT)")
        layer, row, col, expert = m.groups()
        return cls(int(layer), int(row), int(col), None if expert is None else int(expert))

    def __str__(self) -> str:
        base = f"{self.layer}:{self.row}:{self.col}"
        return base if self.expert is None else f"{base}:{self.expert}"

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["expert"] is None:
            del d["expert"]
        return d
