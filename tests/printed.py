"""What the console and the page print of a real model's detection, checked against its JSON
(issue 40): intervals that hold their point, partners named, the header's window counts."""
from __future__ import annotations

import re

from superweight.numbers import fmt_interval

# ``x1.19 [1.17-1.21]`` or ``KL 0.123 [0.118-0.130]``; numbers may carry an exponent
NUM = r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?"
INTERVAL = re.compile(rf"({NUM}) \[({NUM})-({NUM})\]")


def check_intervals(result) -> int:
    """Every graded finding's interval, printed: the three numbers read apart where they
    differ, and the printed ends hold the printed point where the numbers do. Returns how
    many were checked."""
    n = 0
    for f in result.super_weights + result.strong + result.uncertain:
        for c in f.effect.text.kls:
            iv = f.effect.text.interval(c)
            for point, (lo, hi) in ((f.effect.text.ppl_ratio[c], iv["ppl_ratio"]), (f.effect.text.kl[c], iv["kl"])):
                p, a, b = (float(x) for x in INTERVAL.fullmatch(fmt_interval(point, lo, hi)).groups())
                if lo <= point <= hi:
                    assert a <= p <= b, (f.coord, c, point, lo, hi)
                assert (p != a or point == lo) and (p != b or point == hi), (f.coord, c, point, lo, hi)
                n += 1
    return n


def check_console(result) -> str:
    """``print_detect``'s text: each jointly graded weight names its partners, the header
    gives the windows the graded weights used per condition as the JSON counts them, and
    every interval printed holds its point."""
    from rich.console import Console

    from superweight.output.console import print_detect

    con = Console(record=True, width=400)
    print_detect(con, result, None, None)
    text = con.export_text()
    for f in result.super_weights + result.strong + result.uncertain:
        if f.jointly_with:
            assert f"{f.grade}, jointly with {', '.join(map(str, f.jointly_with))}" in text
    js = result.to_dict()
    graded = [f for k in ("super_weights", "strong", "uncertain") for f in js.get(k, [])]
    for c in ("bos", "mid"):
        counts = sorted({f["effect"]["text"][c]["spread"]["windows"] for f in graded if c in f["effect"]["text"]})
        if counts:
            want = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            assert re.search(rf"the graded weights used [^;]*\b{c} {want}\b", text), (c, want, text[:600])
    assert check_intervals(result) and INTERVAL.search(text)
    return text
