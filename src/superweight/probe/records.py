"""The plain records a proof produces, free of torch so that a cached verdict is read and
printed without loading it (or a model): what one down projection did on a prompt
(``SiteRecord``) and what one edit does on real text, window by window (``TextEffect``),
with the spread of its mean over windows (``spread``).

``spread`` is a percentile bootstrap of the mean over windows, drawn with the standard
library's generator seeded at 0, so a verdict and its interval repeat exactly on any
machine (2,000 resamples: the ends move by about 1% of the interval between seeds).
"""
from __future__ import annotations

import array
import functools
import math
import operator
import random
from dataclasses import dataclass

CONFIDENCE = 0.95  # the two-sided level of a verdict's interval over windows (``spread``)


@dataclass
class SiteRecord:
    """What one down projection did on one prompt (token = position in the prompt)."""

    layer: int
    expert: int | None
    path: str
    max_input: float  # max |X|
    input_token: int
    input_channel: int
    max_output: float  # max |Y|
    output_token: int
    output_channel: int  # the row of the spike
    output_value: float  # signed Y[t, row]
    # The weight that accounts for the output spike: col = argmax_k |X[t,k] * W[row,k]|.
    col: int
    weight: float  # W[row, col]
    x_col: float  # X[t, col]
    share: float  # X[t,col]*W[row,col] / Y[t,row]

    @property
    def coord(self):
        """The weight that accounts for the spike: (layer, row = the spike's channel, col)."""
        from superweight.coords import Coord

        return Coord(self.layer, self.output_channel, self.col, self.expert)


def spread(values: list[float], confidence: float = CONFIDENCE, resamples: int = 2000) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (one per window) at
    ``confidence``, widened to hold the mean itself; one value: (it, it). Deterministic: the
    resampling generator is seeded, so a verdict and its interval repeat exactly."""
    return _spread(tuple(values), confidence, resamples)


@functools.lru_cache(maxsize=4096)  # the grading asks for the same intervals many times
def _spread(values: tuple[float, ...], confidence: float, resamples: int) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, mean
    draws = _draws(n, resamples)(values)  # resamples x n values, one resample after another
    means = sorted(s / n for s in map(math.fsum, zip(*[iter(draws)] * n)))
    a = (1 - confidence) / 2
    return min(_quantile(means, a), mean), max(_quantile(means, 1 - a), mean)


@functools.lru_cache(maxsize=64)
def _draws(n: int, resamples: int):
    """The resampling of ``n`` windows, ``resamples`` times: which window each draw takes
    depends only on n (the generator is seeded), so it is drawn once per n and applied to
    any values at C speed."""
    words = array.array("I", random.Random(0).randbytes(4 * resamples * n))  # 32-bit draws: the modulo's bias < n / 2**32
    return operator.itemgetter(*[w % n for w in words])


def _quantile(xs: list[float], q: float) -> float:
    """The q-quantile of sorted ``xs``, interpolated linearly between the two nearest ranks."""
    pos = q * (len(xs) - 1)
    i = int(pos)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (pos - i) * (xs[i + 1] - xs[i])


@dataclass
class TextEffect:
    """What one edit does on real text, per condition, window by window: the mean NLL
    change (edited - intact) and the mean KL(intact || edited) of each window. The point
    values are their means over the windows (all windows have the same length):
    ``ppl_ratio`` = exp(mean NLL change), ``kl`` = mean KL; ``interval`` is their spread."""

    nll: dict[str, list[float]]  # condition -> per window: mean NLL edited - intact (nats)
    kls: dict[str, list[float]]  # condition -> per window: mean KL(intact || edited) (nats)

    @classmethod
    def single(cls, ppl_ratio: dict[str, float], kl: dict[str, float]) -> "TextEffect":
        """One window per condition with these values (a hand-made effect, as in tests)."""
        return cls({c: [math.log(v)] for c, v in ppl_ratio.items()}, {c: [v] for c, v in kl.items()})

    @property
    def ppl_ratio(self) -> dict[str, float]:
        return {c: math.exp(sum(v) / len(v)) for c, v in self.nll.items()}

    @property
    def kl(self) -> dict[str, float]:
        return {c: sum(v) / len(v) for c, v in self.kls.items()}

    def windows(self, cond: str) -> int:
        return len(self.kls.get(cond, ()))

    def interval(self, cond: str, confidence: float = CONFIDENCE) -> dict:
        """{"windows": n, "ppl_ratio": [lo, hi], "kl": [lo, hi]}: the bootstrap interval over
        windows (``spread``) of the perplexity ratio and the KL in ``cond``."""
        lo, hi = spread(self.nll[cond], confidence)
        klo, khi = spread(self.kls[cond], confidence)
        return {"windows": len(self.kls[cond]), "ppl_ratio": [math.exp(lo), math.exp(hi)], "kl": [max(klo, 0.0), khi]}

    def extended(self, more: "TextEffect") -> "TextEffect":
        """These windows, then ``more``'s (the next windows, possibly in other conditions)."""
        conds = list(self.kls) + [c for c in more.kls if c not in self.kls]
        return TextEffect({c: self.nll.get(c, []) + more.nll.get(c, []) for c in conds},
                          {c: self.kls.get(c, []) + more.kls.get(c, []) for c in conds})

    def worst(self) -> str:
        """The condition where the edit matters most (by KL)."""
        kl = self.kl
        return max(kl, key=lambda c: kl[c])

    def to_dict(self) -> dict:
        ppl, kl = self.ppl_ratio, self.kl
        return {c: {"ppl_ratio": ppl[c], "kl": kl[c], "spread": self.interval(c)} for c in self.kls}
