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


def fmt_signed_pct(x: float | None) -> str:
    """A signed change as a percentage: ``+0.04%``, ``-12%``, ``0%``."""
    if x is None or not math.isfinite(x):
        return "-"
    text = fmt_pct(abs(x))
    return text if text in ("0%", "-") else ("-" if x < 0 else "+") + text


def _sig(x: float, d: int) -> str:
    """``x`` to ``d`` significant digits, trailing zeros kept (1.0 -> "1.00" at 3)."""
    mant, _, exp = f"{x:#.{d}g}".partition("e")
    return mant.rstrip(".") + (f"e{exp}" if exp else "")


def _same(a: float, b: float) -> bool:
    """Equal but for float rounding (a perplexity pooled over tokens against its windows' mean)."""
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _fixed(x: float, k: int) -> str:
    return "0" if x == 0 else f"{x:.{k}f}"


def fmt_interval(point: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
    """``1.19 [1.17-1.21]``: a point and its interval with as many digits as it takes for the
    three to read apart where they differ, and for the printed ends to hold the printed point
    where the interval holds it (never ``[1.2-1.2]`` around 1.19). Between 1e-4 and
    1e5 and within a factor 1000, the ends share their decimals, from ``digits`` significant
    digits of the larger, each with two at least, and the point has ``digits`` of its own at
    least (``1.006 [0.998-1.004]``, ``7.61 [4.3-18.2]``); else each has its own significant
    digits (``3.62e+05 [3.1e+05-4.2e+05]``).
    An interval of no width (one window) prints as the point alone; a value that is not a
    finite number prints as "-"."""
    vals = (point, lo, hi)
    if any(v is None or not math.isfinite(v) for v in vals):
        return fmt_g(point, digits) if point is not None else "-"
    if _same(lo, hi):  # one window, or windows that agree: no interval to show
        return fmt_g(point, digits)
    ends = max(abs(lo), abs(hi))
    small = min((abs(v) for v in vals if v != 0), default=ends)
    shared = ends > 0 and 1e-4 <= small and max(ends, abs(point)) < 1e5 and ends / small < 1000

    def decimals(x: float, sig: int) -> int:
        return 0 if x == 0 else max(0, sig - 1 - math.floor(math.log10(abs(x))))

    for extra in range(0, 6):
        if shared:  # the ends share their decimals, 2 significant digits each at least; the point has its own 3
            k = max(decimals(ends, digits) + extra, *(decimals(v, 2) for v in (lo, hi)))
            p, a, b = _fixed(point, max(k, decimals(point, digits))), _fixed(lo, k), _fixed(hi, k)
        else:
            p, a, b = _sig(point, digits + extra), _sig(lo, 2 + extra), _sig(hi, 2 + extra)
        apart = (_same(lo, point) or a != p) and (_same(hi, point) or b != p) and a != b
        holds = not (lo <= point <= hi) or float(a) <= float(p) <= float(b)
        if apart and holds:
            break
    return f"{p} [{a}-{b}]"
