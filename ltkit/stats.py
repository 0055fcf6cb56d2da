"""Paired statistics: a method against its baseline, seed by seed.

Two methods trained with the same seeds share the data order, the initial
weights and the augmentation draws of every seed, so the honest comparison is
the *paired* one: the per-seed difference ``d_s = a_s - b_s``, its mean ± std,
and a two-sided paired t-test of ``mean(d) = 0`` (``scipy.stats.ttest_rel``),
with a 95 % t confidence interval of the mean difference.  Paired differences
cancel the seed-to-seed spread both runs share, so they see effects that two
overlapping "mean ± std" columns hide (and refuse effects that one lucky seed
makes look large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from . import checks

__all__ = ["Paired", "paired_difference", "paired_records", "format_paired"]


@dataclass(frozen=True)
class Paired:
    """The paired difference of a method and its baseline over ``n`` shared seeds (fractions, not %)."""

    mean: float
    std: float
    n: int
    p_value: float  # two-sided paired t-test; nan with fewer than 2 seeds or no spread
    ci_low: float
    ci_high: float


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> Paired:
    """``values[s] - baseline[s]`` over the seeds both have (pairs with a nan are dropped)."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise checks.InputError(f"paired values need one value per seed on both sides, got {a.shape} and {b.shape}; "
                                "compare runs trained with the same seeds.")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = int(d.size)
    if n == 0:
        return Paired(math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    if n > 1 and std <= 1e-12 * max(1.0, abs(mean)):  # no spread at all (up to rounding)
        std = 0.0
    if n < 2 or std == 0.0:
        return Paired(mean, std, n, math.nan if n < 2 else (1.0 if mean == 0 else 0.0), mean, mean)
    from scipy import stats

    p_value = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Paired(mean, std, n, p_value, mean - half, mean + half)


def paired_records(records: Sequence[dict], baseline: Sequence[dict], key: str = "overall") -> Paired:
    """The paired difference of ``key`` between two lists of run records, matched by their config's seed."""
    by_seed = {r["config"]["seed"]: r["result"][key] for r in baseline if r.get("result")}
    mine = {r["config"]["seed"]: r["result"][key] for r in records if r.get("result")}
    seeds = sorted(set(mine) & set(by_seed))
    if not seeds:
        raise checks.InputError("no seed is shared by the method and its baseline: train both with the same seeds.")
    return paired_difference([mine[s] for s in seeds], [by_seed[s] for s in seeds])


def format_paired(paired: Paired, scale: float = 100.0, digits: int = 1) -> str:
    """``"+8.1 ± 2.0 (p = 0.003)"``: the mean difference ± std in points, and the p-value."""
    if paired.n == 0:
        return "n/a"
    text = f"{paired.mean * scale:+.{digits}f} ± {paired.std * scale:.{digits}f}"
    if math.isnan(paired.p_value):
        return text
    p = "< 0.001" if paired.p_value < 0.001 else f"= {paired.p_value:.3f}"
    return f"{text} (p {p})"


def baseline_columns(records: Mapping[str, Sequence[dict]], baselines: Mapping[str, str],
                     keys: Sequence[str] = ("overall", "few")) -> dict[str, dict[str, str]]:
    """``{label: {"Δ overall": "...", "Δ few": "...", "vs": baseline}}`` for every label that has a baseline."""
    columns: dict[str, dict[str, str]] = {}
    for label, base in baselines.items():
        if label not in records or base not in records:
            continue
        row = {f"Δ {key}": format_paired(paired_records(records[label], records[base], key)) for key in keys}
        columns[label] = {"vs": base, **row}
    return columns
