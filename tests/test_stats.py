"""Paired statistics (ltkit.stats) against scipy and closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from ltkit import launch, stats


def test_the_paired_difference_is_the_mean_and_std_of_per_seed_differences():
    a, b = [0.80, 0.85, 0.83, 0.90, 0.88], [0.78, 0.80, 0.82, 0.85, 0.83]
    p = stats.paired_difference(a, b)
    d = np.subtract(a, b)
    assert (p.mean, p.std, p.n) == (pytest.approx(d.mean()), pytest.approx(d.std(ddof=1)), 5)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))  # the t statistic, by hand
    assert p.p_value == pytest.approx(2 * sps.t.sf(abs(t), 4))
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (p.ci_low, p.ci_high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert stats.format_paired(p).startswith("+3.6 ± ")


def test_pairs_with_nan_are_dropped_and_a_single_seed_has_no_p_value():
    p = stats.paired_difference([0.5, math.nan, 0.7], [0.4, 0.3, math.nan])
    assert p.n == 1 and p.mean == pytest.approx(0.1) and math.isnan(p.p_value)
    with pytest.raises(ValueError, match="one value per seed on both sides"):
        stats.paired_difference([0.1, 0.2], [0.1])


def _record(seed, overall, few):
    return {"config": {"seed": seed}, "result": {"overall": overall, "many": 1.0, "medium": 0.9, "few": few,
                                                  "worst": few / 2}}


def test_compare_adds_paired_columns_matched_by_seed():
    base = [_record(s, 0.80 + 0.01 * s, 0.50 + 0.02 * s) for s in range(5)]
    method = [_record(s, 0.82 + 0.01 * s + 0.001 * (s % 2), 0.58 + 0.02 * s) for s in reversed(range(5))]
    table = launch.compare({"CE": base, "CE + CMO": method}, baselines={"CE + CMO": "CE"})
    assert table.loc["CE + CMO", "vs"] == "CE" and table.loc["CE", "vs"] == ""
    assert table.loc["CE + CMO", "Δ few"].startswith("+8.0 ± 0.0")
    assert "(p" in table.loc["CE + CMO", "Δ overall"]
    with pytest.raises(ValueError, match="no seed is shared"):
        stats.paired_records([_record(9, 0.5, 0.5)], base)
