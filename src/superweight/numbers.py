"""How numbers are written for people: the console, the report page and the audit's sentences."""
from __future__ import annotations

import math


def fmt_g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage, two significant digits below 10%, whole percents above
    (1.0 -> "100%", not "1e+02%"), never "-0%" nor an exponent ("<0.01%")."""
    if x is None or not math.isfinite(x):
        return "-"
    v = 100 * x
    if v == 0:
        return "0%"
    if abs(v) < 0.01:
        return "<0.01%" if v > 0 else ">-0.01%"
    text = f"{v:.0f}%" if abs(v) >= 9.95 else f"{v:.2g}%"
    return "0%" if text == "-0%" else text
