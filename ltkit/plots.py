"""Plots shared by the notebooks, the explorer and the demo (matplotlib / seaborn), in one style.

Readable on a projector and in a laptop browser at 100 % zoom: :func:`use_style`
sets seaborn's ``notebook`` context with every text at 10 pt or more at the
figure's display size; :func:`panels` lays out at most three panels per row
(wrapping the rest); legends go outside the data (:func:`legend_outside`).
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import profiles

GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
MAX_PANELS_PER_ROW = 3
PANEL_SIZE = (4.4, 3.4)  # inches per panel: 10-pt text stays legible at 100 % zoom
STYLE_RC = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
            "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10, "legend.title_fontsize": 10,
            "figure.titlesize": 13, "figure.constrained_layout.use": True}


def use_style() -> None:
    """The kit's one figure style (seaborn ``notebook`` context, white grid, 10-pt minimum text)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", rc=STYLE_RC)


def panels(n: int, *, size: tuple[float, float] = PANEL_SIZE, sharey: bool = False,
           **subplot_kw) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``n`` panels, at most three per row (the rest wrap); returns ``(fig, axes)`` (a flat list)."""
    cols = min(n, MAX_PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, sharey=sharey,
                             **subplot_kw)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def legend_outside(ax: plt.Axes, *, below: bool = False, **kwargs) -> None:
    """The legend beside (or below) the axes, never over the data."""
    if not ax.get_legend_handles_labels()[0] and "handles" not in kwargs:
        return
    handles = kwargs.pop("handles", None)
    labels = kwargs.pop("labels", None)
    where = (dict(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=kwargs.pop("ncol", 3)) if below
             else dict(loc="upper left", bbox_to_anchor=(1.01, 1.0)))
    args = (handles, labels) if handles is not None else ()
    ax.legend(*args, frameon=False, **where, **kwargs)


def plot_profile(
    counts: Sequence[int],
    ax: plt.Axes | None = None,
    *,
    many: int = profiles.MANY_THRESHOLD,
    few: int = profiles.FEW_THRESHOLD,
    log: bool = False,
    title: str | None = None,
) -> plt.Axes:
    """Bar chart of class sizes (head to tail), bars coloured by many / medium / few."""
    ax = ax or plt.gca()
    groups = profiles.class_groups(counts, many, few)
    ax.bar(np.arange(len(counts)), counts, width=1.0 if len(counts) > 50 else 0.8,
           color=[GROUP_COLORS[g] for g in groups], linewidth=0)
    for threshold, style in ((many, "--"), (few, ":")):
        ax.axhline(threshold, color="grey", linestyle=style, linewidth=1)
    if log:
        ax.set_yscale("log")
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in profiles.GROUPS]
    sizes = profiles.group_sizes(counts, many, few)
    legend_outside(ax, handles=handles, labels=[f"{g} ({sizes[g]})" for g in profiles.GROUPS])
    ax.set_xlabel("class rank (head → tail)")
    ax.set_ylabel("training images" + (" (log)" if log else ""))
    ax.set_title(title or f"IF = {profiles.imbalance_factor(counts):.0f}, {sum(counts):,} images")
    return ax


def plot_cumulative_share(counts_by_name: dict[str, Sequence[int]], ax: plt.Axes | None = None) -> plt.Axes:
    """Cumulative share of images against the fraction of classes (a Lorenz-style curve)."""
    ax = ax or plt.gca()
    for name, counts in counts_by_name.items():
        values = np.sort(np.asarray(counts))[::-1]
        share = np.concatenate([[0], np.cumsum(values) / values.sum()])
        ax.plot(np.linspace(0, 1, len(share)), share, label=f"{name} (Gini {profiles.gini(values):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="balanced")
    ax.set_xlabel("fraction of classes (head first)")
    ax.set_ylabel("share of training images")
    legend_outside(ax)
    return ax


def plot_group_bars(records: dict[str, list[dict]], ax: plt.Axes | None = None,
                    keys: Sequence[str] = ("overall", "many", "medium", "few", "worst")) -> plt.Axes:
    """Grouped bars: accuracy by group for each label, mean over seeds with ± std error bars."""
    ax = ax or plt.gca()
    width = 0.8 / max(1, len(records))
    for i, (label, rs) in enumerate(records.items()):
        values = np.array([[r["result"][k] for k in keys] for r in rs], dtype=float) * 100
        ax.bar(np.arange(len(keys)) + i * width, np.nanmean(values, 0), width,
               yerr=np.nanstd(values, 0, ddof=1) if len(rs) > 1 else None, capsize=2, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys)
    ax.set_ylabel("test accuracy (%)")
    legend_outside(ax)
    return ax


def plot_per_class_vs_size(records: dict[str, list[dict]], ax: plt.Axes | None = None,
                           many: int = profiles.MANY_THRESHOLD, few: int = profiles.FEW_THRESHOLD) -> plt.Axes:
    """Per-class accuracy (mean over seeds) against training class size (log axis); background shaded by group."""
    ax = ax or plt.gca()
    counts = None
    for label, rs in records.items():
        counts = np.array(rs[0]["result"]["class_counts"])
        acc = np.nanmean([r["result"]["per_class"] for r in rs], axis=0) * 100
        order = np.argsort(counts)
        ax.plot(counts[order], acc[order], marker="o", markersize=3, label=label)
    if counts is not None:
        lo, hi = counts.min() * 0.8, counts.max() * 1.25
        ax.axvspan(lo, few, color=GROUP_COLORS["few"], alpha=0.08)
        ax.axvspan(few, many, color=GROUP_COLORS["medium"], alpha=0.08)
        ax.axvspan(many, max(hi, many), color=GROUP_COLORS["many"], alpha=0.08)
        ax.set_xlim(lo, hi)
    ax.set_xscale("log")
    ax.set_xlabel("training images in the class (log)")
    ax.set_ylabel("per-class test accuracy (%)")
    legend_outside(ax)
    return ax


def plot_leaderboard(records: dict[str, list[dict]], ax: plt.Axes | None = None,
                     keys: Sequence[str] = ("overall", "few", "worst")) -> plt.Axes:
    """One row per label: each seed's accuracy (small dots) and the mean (large marker) for every key."""
    ax = ax or plt.gca()
    labels = list(records)
    markers = ("o", "s", "D", "^", "v")
    for j, key in enumerate(keys):
        offset = (j - (len(keys) - 1) / 2) * 0.22
        for i, label in enumerate(labels):
            values = np.array([r["result"][key] for r in records[label]], dtype=float) * 100
            ax.scatter(values, np.full(len(values), i + offset), s=8, color=f"C{j}", alpha=0.45, linewidths=0)
            ax.scatter([np.nanmean(values)], [i + offset], s=36, color=f"C{j}", marker=markers[j % len(markers)],
                       label=key if i == 0 else None, edgecolors="black", linewidths=0.4)
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, 101)
    ax.set_xlabel("test accuracy (%): seeds (dots) and their mean")
    legend_outside(ax, below=True, ncol=len(keys))
    return ax


def show_table(frame):
    """A DataFrame styled for the notebook: no cell ever wraps (a "75.7 ± 1.5" stays on one line)."""
    return frame.style.set_properties(**{"white-space": "nowrap", "text-align": "right"}).set_table_styles(
        [{"selector": "th", "props": [("white-space", "nowrap")]}])
