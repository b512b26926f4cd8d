"""Statistics over seeds against hand-computed values: t-intervals, Welch's test, Holm's step-down."""

import math

import pytest
from scipy import stats

from distill.analysis.statistics import (
    NO_SPREAD,
    format_interval,
    holm,
    t_interval,
    welch,
)

T_975_DF3 = 3.182446305284263  # Student t quantile 0.975, 3 degrees of freedom (tables)
T_975_DF2 = 4.302652729749464  # ... 2 degrees of freedom


def test_t_interval_by_hand():
    # [1, 2, 3, 4]: mean 2.5, s² = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, half = t·s/√4
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    half = T_975_DF3 * math.sqrt(5 / 3) / 2
    assert iv.mean == 2.5 and iv.n == 4 and iv.std == pytest.approx(math.sqrt(5 / 3), rel=1e-14)
    assert (iv.low, iv.high) == (pytest.approx(2.5 - half, rel=1e-12), pytest.approx(2.5 + half, rel=1e-12))
    # three seeds of test accuracy: 0.90, 0.91, 0.92 → s = 0.01, half = t(2)·0.01/√3
    iv = t_interval([0.90, 0.91, 0.92])
    assert iv.half_width == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3), rel=1e-9)
    assert format_interval(iv) == f"91.00 [{100 * iv.low:.2f}, {100 * iv.high:.2f}]" == "91.00 [88.52, 93.48]"


def test_one_seed_gives_no_spread_and_missing_values_are_left_out():
    iv = t_interval([0.9])
    assert (iv.mean, iv.low, iv.high, iv.std, iv.n) == (0.9, None, None, None, 1)
    assert format_interval(iv) == f"90.00 ({NO_SPREAD})" and "± 0.00" not in format_interval(iv)
    assert t_interval([None, float("nan"), 0.5, 0.7]).n == 2
    assert t_interval([]).mean is None and format_interval(t_interval([])) == "–"
    iv = t_interval([0.8, 0.8, 0.8])  # no spread at all: a zero-width interval, not None
    assert iv.low == pytest.approx(0.8) and iv.high == pytest.approx(0.8)


def test_welch_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0, 10.0]
    # s_a² = 1, s_b² = 20/3; se² = 1/3 + 5/3 = 2; t = (2 − 7)/√2; df = 4 / ((1/3)²/2 + (5/3)²/3)
    c = welch(a, b)
    df = 4 / ((1 / 3) ** 2 / 2 + (5 / 3) ** 2 / 3)
    assert c.diff == -5.0 and c.t == pytest.approx(-5 / math.sqrt(2), rel=1e-14)
    assert c.df == pytest.approx(df, rel=1e-14)
    assert c.p == pytest.approx(2 * stats.t.sf(5 / math.sqrt(2), df), rel=1e-12)
    assert c.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-10)
    half = stats.t.ppf(0.975, df) * math.sqrt(2)
    assert (c.low, c.high) == (pytest.approx(-5 - half), pytest.approx(-5 + half))
    # fewer than 2 values on a side: the difference only
    one = welch([0.9], [0.8, 0.85])
    assert one.diff == pytest.approx(0.075) and one.p is None and one.low is None
    # no noise at all on either side
    assert welch([0.9, 0.9], [0.8, 0.8]).p == 0.0 and welch([0.9, 0.9], [0.9, 0.9]).p == 1.0


def test_holm_step_down_by_hand():
    # sorted 0.005 (×4 = 0.02), 0.01 (×3 = 0.03), 0.03 (×2 = 0.06), 0.04 (×1 = 0.04 → kept monotone: 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]  # None does not count
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == [] and holm([None]) == [None]
    # Holm rejects at least what Bonferroni rejects: here 0.012·3 = 0.036 > 0.025 only after the first step
    adj = holm([0.012, 0.02, 0.001])
    assert [p < 0.05 for p in adj] == [True, True, True]
    assert [p * 3 < 0.05 for p in (0.012, 0.02, 0.001)] == [True, False, True]


def test_t_interval_is_clipped_to_the_possible_range():
    # three seeds, one collapsed: mean 0.667, s = 0.491, half-width 4.3027·0.491/√3 ≈ 1.22 (t₀.₉₇₅,₂ = 4.3027)
    vals = [0.95, 0.95, 0.10]
    raw = t_interval(vals)
    assert raw.low < 0 and raw.high > 1
    iv = t_interval(vals, bounds=(0.0, 1.0))
    assert iv.mean == pytest.approx(raw.mean) and iv.std == pytest.approx(raw.std)
    assert (iv.low, iv.high) == (0.0, 1.0)
    tight = t_interval([0.90, 0.91, 0.92], bounds=(0.0, 1.0))
    assert (tight.low, tight.high) == (pytest.approx(0.91 - 4.302652729911275 * 0.01 / 3**0.5),
                                       pytest.approx(0.91 + 4.302652729911275 * 0.01 / 3**0.5))
