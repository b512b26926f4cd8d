"""Statistics over seeds: confidence intervals and multiple-comparison-corrected tests.

Pure numpy / scipy. The conventions every report states:

* a mean over n seeds comes with its 95 % Student t-interval, mean ± t_{0.975, n−1}·s/√n
  (s the sample standard deviation, ddof 1; `t_interval`); with one seed there is no spread
  to give, and the interval is None — reports say so instead of printing "± 0.00";
* two sets of seeds are compared by Welch's two-sided t-test (unequal variances, Welch–
  Satterthwaite degrees of freedom), with the t-interval of the difference of the means
  (`welch`);
* a family of such tests is corrected by Holm's step-down method (`holm`; Holm 1979), which
  controls the family-wise error rate at α like Bonferroni but rejects at least as much.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "CI_METHOD",
    "CORRECTION",
    "NO_SPREAD",
    "TEST_METHOD",
    "Comparison",
    "Interval",
    "comparison_cells",
    "verdict_cell",
    "format_interval",
    "holm",
    "t_interval",
    "welch",
]

CI_METHOD = "Student t-interval over seeds, 95 % (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample std)"
TEST_METHOD = "Welch's two-sided t-test on the per-seed values (unequal variances)"
CORRECTION = "Holm's step-down correction (family-wise error rate 5 %) over all the comparisons listed"
NO_SPREAD = "1 seed: no spread can be given"


@dataclass(frozen=True)
class Interval:
    """A mean over n values with its confidence interval [low, high] (None when n < 2)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    std: float | None  # sample std (ddof 1); None when n < 2
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "std": self.std,
                "confidence": self.confidence}


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)


def t_interval(values: Sequence[float | None], confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> Interval:
    """Mean and Student t-interval of `values` (None / non-finite entries left out).

    n = 0: everything None. n = 1: the mean, no interval (no spread can be estimated). Equal
    values: a zero-width interval. bounds (lo, hi): the range the quantity can take (an accuracy:
    (0, 1)); the interval is intersected with it — with 3 seeds and one collapsed run the t-interval
    of an accuracy can otherwise reach below 0 or above 1. Raises: ValueError for a confidence
    outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return Interval(None, None, None, 0, None, confidence)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, None, None, 1, None, confidence)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, n, std, confidence)


@dataclass(frozen=True)
class Comparison:
    """Welch's test of mean(a) − mean(b): the difference, its t-interval, t, df and p (two-sided).
    p, t, df and the interval are None when either side has fewer than 2 values."""

    diff: float
    low: float | None
    high: float | None
    t: float | None
    df: float | None
    p: float | None

    def as_dict(self) -> dict:
        return {"diff": self.diff, "low": self.low, "high": self.high, "t": self.t, "df": self.df, "p": self.p}


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Welch's two-sided t-test of mean(a) = mean(b) and the t-interval of the difference.

    t = (ā − b̄) / √(s_a²/n_a + s_b²/n_b), df = (s_a²/n_a + s_b²/n_b)² / Σ (s²/n)²/(n − 1)
    (Welch–Satterthwaite). Both spreads zero: p = 0 if the means differ, else 1, and a
    zero-width interval (there is no noise to compare with). Raises: ValueError if a side is empty.
    """
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        raise ValueError("welch: both samples need at least one value")
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Comparison(diff, None, None, None, None, None)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = float(va + vb)
    if se2 == 0.0:
        return Comparison(diff, diff, diff, None, None, 0.0 if diff != 0 else 1.0)
    df = se2**2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    se = math.sqrt(se2)
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(diff, diff - half, diff + half, float(t), float(df), p)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the order given (None entries stay None and do not count).

    With the m p-values sorted ascending p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1,
    (m − j + 1)·p_(j)). Rejecting where p̃ < α is Holm's step-down procedure at level α.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def format_interval(iv: Interval | dict, scale: float = 100.0, digits: int = 2) -> str:
    """'89.12 [88.50, 89.74]' (mean and interval, times `scale`), '89.12 (1 seed: no spread can
    be given)' for one seed, '–' without values."""
    if isinstance(iv, Interval):
        iv = iv.as_dict()
    if iv["mean"] is None:
        return "–"
    mean = f"{scale * iv['mean']:.{digits}f}"
    if iv["low"] is None:
        return f"{mean} ({NO_SPREAD})"
    return f"{mean} [{scale * iv['low']:.{digits}f}, {scale * iv['high']:.{digits}f}]"


def comparison_cells(c: dict) -> tuple[str, str, str]:
    """Table cells of a `Comparison.as_dict()` with a Holm p added ("p_holm"): (Δ in points with
    its interval, p, p_Holm); "–" where a value is None (fewer than 2 seeds on a side)."""
    ci = f" [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]" if c["low"] is not None else ""
    p = "–" if c["p"] is None else f"{c['p']:.3g}"
    ph = "–" if c.get("p_holm") is None else f"{c['p_holm']:.3g}"
    return f"{100 * c['diff']:+.2f}{ci}", p, ph


def verdict_cell(flag: bool | None) -> str:
    """A yes / no table cell for a test's verdict; None (fewer than 2 seeds on a side: no test)."""
    return "n/a (fewer than 2 seeds)" if flag is None else ("yes" if flag else "no")
