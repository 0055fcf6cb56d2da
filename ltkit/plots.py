"""Plots shared by the notebooks and the demo (matplotlib / seaborn)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import profiles

GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}


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
    ax.legend(handles, [f"{g} ({sizes[g]})" for g in profiles.GROUPS], loc="upper right", fontsize=8)
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
    ax.legend(fontsize=8)
    return ax
