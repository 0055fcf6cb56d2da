"""The results explorer: one ipywidgets panel over run records.

``explore("runs")`` (or ``explore(records)``) shows the runs that
:func:`ltkit.train.fit` wrote, grouped into *methods* (the seeds of one
configuration), and lets a learner

* choose methods (multi-select), move the **group thresholds** (sliders, default
  ``many = 100``, ``few = 20``) and the sort order;
* read a table of accuracy by group (mean ± std over seeds);
* see per-class accuracy against training class size (log axis, points coloured
  by group), a many / medium / few / worst bar chart per method with the seeds'
  spread, the confusion matrix of one chosen run (seaborn heatmap, rows
  normalised to recall) and the per-epoch history;
* press **refresh** to re-read the folder while a run is still being written
  (pass the folder, not records, to follow a running job).

Groups are recomputed from each run's *training* class sizes ``n_k`` and
per-class accuracies ``a_k`` with the slider values, never read from the stored
result (Liu et al., CVPR 2019, "OLTR"; :func:`ltkit.profiles.class_groups`)::

    g(k) = many if n_k > many,  few if n_k < few,  medium otherwise
    acc(G) = mean_{k: g(k) = G} a_k,   worst = min_k a_k,   overall = trace(M) / sum(M)

(overall and worst do not depend on the thresholds).  Over the seeds of a
method the table shows ``mean ± std`` (sample std, ``ddof = 1``).

Choices
-------
* **Seeds of one method.**  A run's *label* is its name with a trailing
  ``-s<seed>`` removed: the names :func:`ltkit.launch.run_grid` writes
  (``<label>-s<seed>``) and the default ``TrainConfig.run_name()``
  (``<dataset>-<loss>[-<method>]-s<seed>``) both follow it.  Runs that share a
  label but differ in their config beyond the seed (and the volatile fields:
  name, out_dir, device, ...) are kept apart as ``label [2]``, with a note.
  Records passed as ``{label: [records]}`` (what ``run_grid`` returns) keep
  their labels.
* **One data set at a time.**  The first selected method with a finished run
  sets the reference data set (config ``dataset`` and the training class
  sizes); methods on another data set, or on the same one with other class
  sizes (another imbalance factor or subset), are left out with a message.
* **Bad input is a message, not a traceback**: an empty or missing folder, a
  truncated ``config.json`` / ``result.json`` (the message names the run; the
  other runs still load), a result without per-class accuracies, thresholds
  with ``few > many + 1``.
* **Runs still being written** (no ``result.json`` yet) show their history
  only; **runs from a multi-process (DDP) job** are ordinary records (rank 0
  writes one confusion matrix all-reduced over ranks); the list says how many
  processes trained them.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from . import checks, metrics, plots, profiles, runs, stats

GROUP_KEYS = ("overall", "many", "medium", "few", "worst")
SORT_CHOICES = ("as listed", "name", *GROUP_KEYS)
GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
HISTORY_PREFERRED = ("overall", "few", "medium", "many", "worst", "train_loss", "lr")
# config fields that do not make two runs different methods
CONFIG_IGNORED = frozenset({"seed", "data_seed", "name", "label", "out_dir", "if_exists", "progress", "device",
                            "num_workers", "data_root", "threads"})
_PER_SEED_RUN = re.compile(r"-s\d+(?=$|[/\\])")  # a run of one seed in a path: ".../ce-s3" (launch.run_grid's names)


def method_identity(config: Mapping) -> dict:
    """The config fields that make a method what it is: never the seed, nor what varies with it."""

    def normalise(value: Any) -> Any:
        if isinstance(value, str):
            return _PER_SEED_RUN.sub("-s*", value)
        if isinstance(value, Mapping):
            return {k: normalise(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [normalise(v) for v in value]
        return value

    return {k: normalise(v) for k, v in config.items() if k not in CONFIG_IGNORED}
_SEED_SUFFIX = re.compile(r"-s\d+$")


# =========================================================================== runs
def method_label(run_name: str) -> str:
    """The method a run belongs to: its name without a trailing ``-s<seed>`` (``"CE-s2"`` -> ``"CE"``)."""
    return _SEED_SUFFIX.sub("", run_name) or run_name


@dataclass
class Run:
    """One run record (see :func:`ltkit.runs.load_run`) and the method label it is shown under."""

    record: dict
    label: str

    @property
    def name(self) -> str:
        return str(self.record.get("name") or Path(str(self.record.get("dir", "run"))).name)

    @property
    def config(self) -> dict:
        return self.record.get("config") or {}

    @property
    def result(self) -> dict | None:
        return self.record.get("result")

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def history(self) -> list[dict]:
        return self.record.get("history") or []

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "unknown data set"))

    @property
    def class_counts(self) -> list[int] | None:
        return list(self.result["class_counts"]) if self.finished else None

    @property
    def world_size(self) -> int:
        """Processes that trained the run (GPUs of a DDP job); the result says it, else the environment."""
        stored = (self.result or {}).get("world_size") or (self.record.get("env") or {}).get("world_size")
        return int(stored or 1)

    def fingerprint(self) -> str:
        """The method's identity: the config without the fields that vary with the seed (seed, data_seed, name,
        label, ...) and with per-seed run references such as ``.../ce-s3`` written as ``.../ce-s*``; equal
        fingerprints are seeds of one method."""
        return json.dumps(method_identity(self.config), sort_keys=True, default=str)


# the config fields the explorer reads to name, group and compare runs, with their types
_CONFIG_TYPES = {"label": str, "name": str, "dataset": str, "loss": str, "method": str, "seed": int, "epochs": int}


def record_problem(record: Any) -> str | None:
    """Why a record cannot be explored (``None`` when it can; a run without a result yet is fine)."""
    if not isinstance(record, Mapping):
        return f"expected a run record (a dict from ltkit.runs.load_run), got {type(record).__name__}"
    config = record.get("config", {})
    if not isinstance(config, Mapping):
        return f"its config is a {type(config).__name__}, not a dict"
    for key, kind in _CONFIG_TYPES.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"its config field {key!r} is {value!r}, not a {kind.__name__}"
    result = record.get("result")
    if result is None:
        return None
    if not isinstance(result, Mapping):
        return "its result is not a dict"
    per_class, counts = result.get("per_class"), result.get("class_counts")
    if not isinstance(per_class, list) or not isinstance(counts, list) or not per_class:
        return "its result.json has no per-class accuracies or class counts (written by an older ltkit?)"
    if len(per_class) != len(counts):
        return f"its result has {len(per_class)} per-class accuracies but {len(counts)} class counts"
    if not all(_is_number(v) or v is None or (isinstance(v, float) and math.isnan(v)) for v in per_class):
        return "its per-class accuracies are not all numbers"
    try:
        profiles.check_counts(counts)
    except (ValueError, TypeError) as err:
        return f"its class counts are not valid ({err})"
    confusion = result.get("confusion")
    if confusion is not None and np.shape(confusion) != (len(counts), len(counts)):
        return f"its confusion matrix has shape {np.shape(confusion)}, not ({len(counts)}, {len(counts)})"
    return None


def _load_folder(root: Path) -> tuple[list[dict], list[str]]:
    """Every run directory under ``root``, tolerant: a damaged run becomes a problem line naming it."""
    if not root.is_dir():
        return [], [f"there is no folder {root}: train some runs first (ltkit.launch.run_grid(..., out_dir='{root}')) "
                    "or pass the folder that holds them."]
    records, problems = [], []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (run_dir / "config.json").is_file():
            if (run_dir / "result.json").is_file() or (run_dir / "history.jsonl").is_file():
                problems.append(f"run <b>{html.escape(run_dir.name)}</b> has no config.json: skipped.")
            continue
        try:
            records.append(runs.load_run(run_dir))
        except (ValueError, OSError) as err:
            problems.append(f"run <b>{html.escape(run_dir.name)}</b> could not be read: {html.escape(str(err))}")
    if not records and not problems:
        problems.append(f"no runs under {root}/ yet: train some (ltkit.launch.run_grid(..., out_dir='{root}')), "
                        "then press refresh.")
    return records, problems


def collect_runs(source: Any) -> tuple[list[Run], list[str]]:
    """Runs and problem messages from a folder, a record, a list of records or ``{label: [records]}``.

    Never raises for damaged or foreign records (they become problem lines);
    raises :class:`TypeError` for a source of the wrong type.
    """
    if isinstance(source, (str, os.PathLike)):
        records, problems = _load_folder(Path(source))
        labelled = [(None, r) for r in records]
    elif isinstance(source, Mapping) and ("result" in source or "history" in source):
        labelled, problems = [(None, source)], []
    elif isinstance(source, Mapping):
        labelled, problems = [(str(label), r) for label, rs in source.items() for r in _as_list(rs)], []
    elif isinstance(source, (list, tuple)):
        labelled, problems = [(None, r) for r in source], []
    else:
        raise TypeError(f"explore() takes a runs folder, a run record, a list of records or {{label: [records]}}, "
                        f"got {type(source).__name__}.")
    loaded = []
    for label, record in labelled:
        problem = record_problem(record)
        if problem:
            name = record.get("name", "?") if isinstance(record, Mapping) else "?"
            problems.append(f"run <b>{html.escape(str(name))}</b> left out: {html.escape(problem)}.")
            continue
        run = Run(record, label or "")
        run.label = run.label or run.config.get("label") or method_label(run.name)
        loaded.append(run)
    return loaded, problems


def _as_list(records: Any) -> list:
    return list(records) if isinstance(records, (list, tuple)) else [records]


def group_runs(all_runs: Iterable[Run]) -> tuple[dict[str, list[Run]], list[str]]:
    """``{label: [runs]}``: the seeds of each method; a label whose runs differ in config is split."""
    by_label: dict[str, dict[str, list[Run]]] = {}
    for run in all_runs:
        by_label.setdefault(run.label, {}).setdefault(run.fingerprint(), []).append(run)
    groups, notes = {}, []
    for label, variants in by_label.items():
        for i, members in enumerate(variants.values()):
            key = label if i == 0 else f"{label} [{i + 1}]"
            groups[key] = sorted(members, key=lambda r: (r.config.get("seed", 0), r.name))
        if len(variants) > 1:
            differing = _differing_fields([members[0].config for members in variants.values()])
            notes.append(f"runs labelled <b>{html.escape(label)}</b> differ in {html.escape(', '.join(differing))}: "
                         f"shown as {len(variants)} methods.")
    return groups, notes


def _differing_fields(configs: list[dict]) -> list[str]:
    identities = [method_identity(c) for c in configs]
    keys = sorted(set().union(*identities))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in identities}) > 1]


# =========================================================================== numbers
def regroup(result: Mapping, many: int, few: int) -> dict[str, float]:
    """Overall / many / medium / few / worst of one result, with groups recomputed at these thresholds."""
    grouped = metrics.group_accuracy(result["per_class"], result["class_counts"], many, few)
    return {"overall": float(result.get("overall", math.nan)), **grouped}


def summarize_groups(groups: Mapping[str, Sequence[Run]], many: int, few: int) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{label: {key: (mean, std, n)}}`` over the finished seeds of each method (fractions)."""
    summary = {}
    for label, rs in groups.items():
        results = [regroup(r.result, many, few) for r in rs if r.finished]
        if results:
            summary[label] = metrics.summarize_seeds(results, GROUP_KEYS)
    return summary


def sort_labels(labels: Sequence[str], summary: Mapping[str, Mapping], order: str) -> list[str]:
    """Labels in the chosen order: as listed, by name, or by a group's mean accuracy (best first)."""
    if order == "as listed":
        return list(labels)
    if order == "name":
        return sorted(labels)

    def key(label: str) -> float:
        mean = summary.get(label, {}).get(order, (math.nan,))[0]
        return -mean if not math.isnan(mean) else math.inf

    return sorted(labels, key=key)


def paired_columns(groups: Mapping[str, Sequence[Run]], labels: Sequence[str], baselines: Mapping[str, str],
                   many: int, few: int, keys: Sequence[str] = ("overall", "few")) -> dict[str, list[str]]:
    """``vs`` and ``Δ <key>`` columns: each method against its baseline, paired by seed (:mod:`ltkit.stats`)."""

    def by_seed(rs: Sequence[Run], key: str) -> dict[int, float]:
        return {r.config.get("seed", 0): regroup(r.result, many, few)[key] for r in rs if r.finished}

    columns: dict[str, list[str]] = {"vs": [], **{f"Δ {k}": [] for k in keys}}
    for label in labels:
        base = baselines.get(label)
        columns["vs"].append(base if base in groups else "")
        for key in keys:
            if base not in groups:
                columns[f"Δ {key}"].append("")
                continue
            mine, theirs = by_seed(groups[label], key), by_seed(groups[base], key)
            seeds = sorted(set(mine) & set(theirs))
            paired = stats.paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
            columns[f"Δ {key}"].append(stats.format_paired(paired))
    return columns


def summary_frame(summary: Mapping[str, Mapping], labels: Sequence[str]):
    """The table shown in the widget: "mean ± std" (percent) by group and the number of seeds."""
    import pandas

    rows = {label: {**{k: metrics.format_mean_std(*summary[label][k][:2]) for k in GROUP_KEYS},
                    "seeds": summary[label]["overall"][2]} for label in labels if label in summary}
    return pandas.DataFrame.from_dict(rows, orient="index", columns=[*GROUP_KEYS, "seeds"])


# =========================================================================== plots
# method colours and markers avoid the group colours (blue / orange / red)
METHOD_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79",
                 "#637939", "#8c6d31", "#843c39", "#7b4173")
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


# The leaderboard's labels keep one colour in every figure (live view, explorer, any notebook); other labels
# take the next free colour in the order this process first draws them.
_COLOR_OF: dict[str, str] = {}
_KIT_LABELS = ("CE", "CE-DRW", "LDAM-DRW", "BS", "LA (post hoc)", "CE + CMO", "BS + CMO", "CWS", "Syn-LT",
               "BS + feedback fill (loss)")


def _method_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per method label, the same wherever the label is drawn.

    A label seen for the first time takes a colour no label of this figure has, the least used one so far.
    """
    if not _COLOR_OF:
        _COLOR_OF.update(zip(_KIT_LABELS, METHOD_COLORS))
    for label in labels:
        if label not in _COLOR_OF:
            here = {_COLOR_OF[other] for other in labels if other in _COLOR_OF}
            used = [list(_COLOR_OF.values()).count(color) for color in METHOD_COLORS]
            _COLOR_OF[label] = min(METHOD_COLORS, key=lambda c: (c in here, used[METHOD_COLORS.index(c)]))
    return {label: _COLOR_OF[label] for label in labels}


def _figure_style():
    """The kit's style for a figure drawn here; from a background thread, the current one: ``rc_context``
    changes the process's global settings, which would restyle the notebook's own figures drawn meanwhile."""
    import contextlib

    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return matplotlib.rc_context(plots.STYLE_RC)


def _shade_groups(ax, counts: np.ndarray, many: int, few: int) -> None:
    """Background by group at these thresholds (few: n < few, many: n > many) and the two boundaries."""
    lo, hi = counts.min() * 0.8, counts.max() * 1.25
    few_edge, many_edge = few - 0.5, many + 0.5
    for group, (a, b) in {"few": (lo, few_edge), "medium": (few_edge, many_edge), "many": (many_edge, hi)}.items():
        if b > a:
            ax.axvspan(max(a, lo), min(b, hi), color=GROUP_COLORS[group], alpha=0.08, zorder=0)
    for edge, text in ((few_edge, f"few < {few}"), (many_edge, f"many > {many}")):
        if lo < edge < hi:
            ax.axvline(edge, color="grey", linestyle="--", linewidth=1)
            ax.text(edge, 1.0, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", color="grey")
    ax.set_xlim(lo, hi)


def draw_per_class(ax, groups: Mapping[str, Sequence[Run]], colors: Mapping, many: int, few: int) -> None:
    """Per-class accuracy (mean over seeds) against training class size; points coloured by group."""
    from matplotlib.lines import Line2D

    counts, handles = None, []
    for i, (label, rs) in enumerate(groups.items()):
        finished = [r for r in rs if r.finished]
        if not finished:
            continue
        counts = np.asarray(finished[0].class_counts, dtype=float)
        acc = np.nanmean([r.result["per_class"] for r in finished], axis=0) * 100
        order = np.argsort(counts, kind="stable")
        marker = METHOD_MARKERS[i % len(METHOD_MARKERS)]
        ax.plot(counts[order], acc[order], color=colors[label], linewidth=1.2, alpha=0.8, zorder=2)
        point_colors = [GROUP_COLORS[g] for g in profiles.class_groups(finished[0].class_counts, many, few)]
        ax.scatter(counts, acc, c=point_colors, marker=marker, edgecolors=colors[label], linewidths=1, s=36, zorder=3)
        handles.append(Line2D([], [], color=colors[label], marker=marker, markerfacecolor="white", label=label))
    if counts is None:
        ax.text(0.5, 0.5, "no finished run selected", ha="center", va="center", transform=ax.transAxes)
        return
    _shade_groups(ax, counts, many, few)
    sizes = profiles.group_sizes(counts.astype(int).tolist(), many, few)
    handles += [Line2D([], [], linestyle="", marker="o", color=GROUP_COLORS[g], label=f"{g} ({sizes[g]} classes)")
                for g in profiles.GROUPS]
    ax.set_xscale("log")
    ax.set_ylim(-5, 105)
    ax.set_xlabel("training images in the class (log)")
    ax.set_ylabel("per-class test accuracy (%), mean over seeds")
    ax.set_title("per-class accuracy vs class size (colour = group)", pad=14)
    plots.legend_outside(ax, handles=handles, labels=[h.get_label() for h in handles])


def draw_group_bars(ax, groups: Mapping[str, Sequence[Run]], summary: Mapping, colors: Mapping,
                    many: int, few: int) -> None:
    """Bars: mean accuracy by group for each method, ± std error bars, one dot per seed."""
    labels = [label for label in groups if label in summary]
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(GROUP_KEYS))
    for i, label in enumerate(labels):
        means = np.array([summary[label][k][0] for k in GROUP_KEYS]) * 100
        stds = np.array([summary[label][k][1] for k in GROUP_KEYS]) * 100
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width, yerr=np.where(np.isnan(stds), 0, stds), capsize=2, color=colors[label], label=label)
        for run in (r for r in groups[label] if r.finished):
            seed = regroup(run.result, many, few)
            ax.scatter(pos, [seed[k] * 100 for k in GROUP_KEYS], s=6, color="black", zorder=3)
    counts = next((r.class_counts for rs in groups.values() for r in rs if r.finished), None)
    sizes = profiles.group_sizes(counts, many, few) if counts else {}
    ax.set_xticks(x, [f"{k}\n({sizes[k]})" if k in sizes else k for k in GROUP_KEYS])
    if sizes:
        ax.set_xlabel("group (number of classes)")
    for k, xi in zip(GROUP_KEYS, x):
        if sizes.get(k) == 0:
            ax.text(xi, 2, "no class", ha="center", color="grey")
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy by group: mean ± std over seeds, dots = seeds")
    if labels:
        plots.legend_outside(ax)


def draw_confusion(ax, run: Run | None) -> None:
    """Row-normalised confusion matrix (recall, %) of one run as a seaborn heatmap."""
    import seaborn as sns

    confusion = run.result.get("confusion") if run is not None and run.finished else None
    if confusion is None:
        ax.text(0.5, 0.5, "no confusion matrix to show" if run is None else f"{run.name}: no confusion matrix stored",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    matrix = np.asarray(confusion, dtype=float)
    support = matrix.sum(1, keepdims=True)
    recall = np.divide(matrix, support, out=np.zeros_like(matrix), where=support > 0) * 100
    small = len(matrix) <= 15
    sns.heatmap(recall, ax=ax, cmap="Blues", vmin=0, vmax=100, annot=small, fmt=".0f", annot_kws={"fontsize": 10},
                cbar_kws={"label": "% of the true class"}, square=small,
                xticklabels="auto", yticklabels="auto")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (0 = largest)" if _is_descending(run.class_counts) else "true class")
    # two lines: one line would run over the colour bar's top label
    ax.set_title(f"confusion matrix of {run.name}\n(overall {run.result.get('overall', math.nan) * 100:.1f} %)")


def _is_descending(counts: Sequence[int] | None) -> bool:
    return bool(counts) and all(a >= b for a, b in zip(counts, counts[1:]))


def _per_epoch(rs: Sequence[Run], metric: str) -> dict[int, list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for run in rs:
        for row in run.history:
            if metric in row and "epoch" in row and _is_number(row[metric]):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[metric]))
    return by_epoch


def draw_history(ax, groups: Mapping[str, Sequence[Run]], colors: Mapping, metric: str | None) -> None:
    """The metric at every epoch it was evaluated (markers where evaluation is sparse), mean over seeds with a
    min-max band, and the training loss of every epoch on a second axis (thin dashed lines)."""
    drawn = False
    for label, rs in groups.items():
        by_epoch = _per_epoch(rs, metric) if metric else {}
        if not by_epoch:
            continue
        epochs = np.array(sorted(by_epoch))
        scale = 100 if metric in GROUP_KEYS else 1
        values = [np.array(by_epoch[e]) * scale for e in epochs]
        last = max(int(row.get("epoch", 0)) for r in rs for row in r.history) + 1
        sparse = len(epochs) < 0.5 * last
        running = sum(not r.finished for r in rs)
        ax.plot(epochs + 1, [v.mean() for v in values], color=colors[label], marker="o" if sparse else None,
                markersize=4, label=label + (f" ({running} running)" if running else ""))
        ax.fill_between(epochs + 1, [v.min() for v in values], [v.max() for v in values], color=colors[label], alpha=0.15)
        drawn = True
    loss_drawn = metric != "train_loss" and _draw_train_loss(ax, groups, colors)
    if not drawn and not loss_drawn:
        evaluated = sum(len(r.history) for rs in groups.values() for r in rs)
        reason = ("no run has a history yet (is training still starting?)" if not evaluated else
                  f"no run recorded {metric!r}; choose another metric in 'history of'")
        ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, wrap=True)
        ax.set_axis_off()
        return
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    if drawn:
        ax.set_ylabel(f"{metric} (%)" if metric in GROUP_KEYS else str(metric))
        plots.legend_outside(ax, below=True)
    ax.set_title(f"history: {metric} (markers: evaluated epochs) and train loss (dashed)" if loss_drawn
                 else f"history: {metric} per epoch (mean over seeds, band = min-max)")


def _draw_train_loss(ax, groups: Mapping[str, Sequence[Run]], colors: Mapping) -> bool:
    twin = None
    for label, rs in groups.items():
        by_epoch = _per_epoch(rs, "train_loss")
        if not by_epoch:
            continue
        twin = twin or ax.twinx()
        epochs = np.array(sorted(by_epoch))
        twin.plot(epochs + 1, [np.mean(by_epoch[e]) for e in epochs], color=colors[label], linestyle="--",
                  linewidth=1, alpha=0.8)
    if twin is None:
        return False
    twin.set_yscale("log")
    twin.yaxis.set_major_formatter(LogFormatter())
    twin.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=True))
    twin.set_ylabel("train loss (log, dashed)")
    twin.grid(False)
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# =========================================================================== the widget
class Explorer:
    """The explorer's state and widgets; ``explorer.widget`` is what a notebook displays.

    Everything a person can do is reachable from Python (and tested so):
    ``explorer.many.value = 50``, ``explorer.select.value = ("CE", "BS")``,
    ``explorer.refresh_button.click()``; the results are in
    ``explorer.message.value``, ``explorer.table.value``, ``explorer.image.value``
    (PNG bytes), :meth:`summary` and :meth:`class_groups`.
    """

    def __init__(self, runs_or_dir: Any = "runs", *, many: int = profiles.MANY_THRESHOLD,
                 few: int = profiles.FEW_THRESHOLD, select: Sequence[str] | None = None,
                 sort: str = "as listed", dpi: int = 80, baselines: Mapping[str, str] | None = None) -> None:
        checks.choice("sort", sort, SORT_CHOICES)
        hint = "thresholds are class sizes, e.g. many=100 and few=20"
        many, few = checks.integer("many", many, low=1, hint=hint), checks.integer("few", few, low=1, hint=hint)
        self.source, self.dpi, self.baselines = runs_or_dir, dpi, dict(baselines or {})
        self.runs: list[Run] = []
        self.groups: dict[str, list[Run]] = {}
        self.load_notes: list[str] = []
        self.render_count = 0
        self._quiet = False
        self._build_controls(many, few, sort)
        self._load(select)
        self._update()

    # ------------------------------------------------------------------ layout
    def _build_controls(self, many: int, few: int, sort: str) -> None:
        style = {"description_width": "110px"}
        wide = widgets.Layout(width="380px")
        self.select = widgets.SelectMultiple(description="methods", rows=8, layout=widgets.Layout(width="340px"))
        self.many = widgets.IntSlider(value=many, min=1, max=max(200, many), description="many if n >",
                                      continuous_update=False, style=style, layout=wide)
        self.few = widgets.IntSlider(value=few, min=1, max=max(200, few), description="few if n <",
                                     continuous_update=False, style=style, layout=wide)
        self.sort = widgets.Dropdown(options=SORT_CHOICES, value=sort, description="sort by", style=style, layout=wide)
        self.confusion_run = widgets.Dropdown(description="confusion of", style=style, layout=wide)
        self.history_metric = widgets.Dropdown(description="history of", style=style, layout=wide)
        self.refresh_button = widgets.Button(description="refresh", icon="refresh",
                                             tooltip="re-read the runs folder (runs still being written)")
        self.message = widgets.HTML()
        self.table = widgets.HTML(layout=widgets.Layout(width="100%", overflow="auto"))  # wide tables scroll
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        controls = widgets.VBox([self.many, self.few, self.sort, self.confusion_run, self.history_metric,
                                 self.refresh_button])
        self.widget = _PicturedBox([widgets.HBox([self.select, controls]), self.message, self.table, self.image])
        self.widget.add_class("ltkit-explorer")
        self.widget.explorer = self  # reach the state from what explore() returns
        for control in (self.select, self.many, self.few, self.sort, self.confusion_run, self.history_metric):
            control.observe(self._on_change, names="value")
        self.refresh_button.on_click(lambda _: self.refresh())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ loading
    def _load(self, select: Sequence[str] | None) -> None:
        self.runs, problems = collect_runs(self.source)
        self.groups, notes = group_runs(self.runs)
        self.load_notes = problems + notes
        top = max([200, self.many.value, self.few.value, *(max(r.class_counts) for r in self.runs if r.finished)])
        self._quiet = True
        try:
            self.many.max = self.few.max = top
            self.select.options = [(self._option_text(label, rs), label) for label, rs in self.groups.items()]
            wanted = [s for s in (select or []) if s in self.groups] or self._default_selection()
            self.select.value = tuple(wanted)
            metrics_found = [k for k in HISTORY_PREFERRED if any(k in row for r in self.runs for row in r.history)]
            current = self.history_metric.value
            self.history_metric.options = metrics_found
            self.history_metric.value = current if current in metrics_found else (metrics_found[0] if metrics_found else None)
        finally:
            self._quiet = False

    def _default_selection(self) -> list[str]:
        """Every method on the data set of the first method that has a finished run."""
        first = next((rs for rs in self.groups.values() if any(r.finished for r in rs)), None)
        if first is None:
            return list(self.groups)
        reference = _data_key(first)
        return [label for label, rs in self.groups.items() if _data_key(rs) in (reference, None)]

    @staticmethod
    def _option_text(label: str, rs: Sequence[Run]) -> str:
        done = sum(r.finished for r in rs)
        text = f"{label} · {done} seed{'s' if done != 1 else ''}"
        running = [r for r in rs if not r.finished]
        if running:
            epochs = max(len(r.history) for r in running)
            text += f" + {len(running)} running (epoch {epochs}/{running[0].config.get('epochs', '?')})"
        world = max(r.world_size for r in rs)
        return text + (f" · {world} processes" if world > 1 else "")

    def refresh(self) -> None:
        """Re-read the runs folder and redraw, keeping the selection (records passed in are shown as given)."""
        self._load(self.select.value)
        self._update()

    # ------------------------------------------------------------------ state
    def selected(self) -> tuple[dict[str, list[Run]], list[str]]:
        """The selected methods comparable with the first one (one data set), and notes on the rest."""
        chosen = {label: self.groups[label] for label in self.select.value if label in self.groups}
        reference = next((_data_key(rs) for rs in chosen.values() if _data_key(rs) is not None), None)
        kept, notes = {}, []
        for label, rs in chosen.items():
            key = _data_key(rs)
            if key is None or key == reference:
                kept[label] = rs
                if not any(r.finished for r in rs):
                    notes.append(f"<b>{html.escape(label)}</b> is still running: only its history is shown "
                                 "(press refresh for newer epochs).")
            else:
                notes.append(f"<b>{html.escape(label)}</b> left out: it was trained on {_describe(key)}, "
                             f"not {_describe(reference)}. The explorer compares one data set at a time: "
                             "select runs of one data set.")
        return kept, notes

    def class_groups(self) -> list[str]:
        """The group of every class of the reference data set at the current thresholds."""
        kept, _ = self.selected()
        counts = next((r.class_counts for rs in kept.values() for r in rs if r.finished), None)
        return profiles.class_groups(counts, self.many.value, self.few.value) if counts else []

    def summary(self) -> dict[str, dict[str, tuple[float, float, int]]]:
        """``{label: {key: (mean, std, n)}}`` (fractions) of the selected methods at the current thresholds."""
        kept, _ = self.selected()
        return summarize_groups(kept, self.many.value, self.few.value)

    # ------------------------------------------------------------------ drawing
    def _on_change(self, _change: Any = None) -> None:
        if not self._quiet:
            self._update()

    def _update(self) -> None:
        """Recompute everything from the controls; any failure becomes a message, never a traceback."""
        try:
            self._update_confusion_choices()
            self._render()
        except Exception as err:  # noqa: BLE001 - a widget must not print tracebacks at a learner
            self._show_messages(self.load_notes + [f"could not draw: {html.escape(type(err).__name__)}: "
                                                   f"{html.escape(str(err))}"])

    def _update_confusion_choices(self) -> None:
        kept, _ = self.selected()
        options = [(r.name, r.name) for rs in kept.values() for r in rs if r.finished and "confusion" in r.result]
        self._quiet = True
        try:
            current = self.confusion_run.value
            self.confusion_run.options = options
            values = [v for _, v in options]
            self.confusion_run.value = current if current in values else (values[0] if values else None)
        finally:
            self._quiet = False

    def _render(self) -> None:
        many, few = self.many.value, self.few.value
        notes = list(self.load_notes)
        if few > many + 1:
            self._show_messages(notes + [f"the few threshold ({few}) must not exceed the many threshold ({many}) + 1: "
                                         "move one of the sliders."])
            return
        kept, selection_notes = self.selected()
        notes += selection_notes
        if self.groups and not self.select.value:
            notes.append("select one or more methods in the list.")
        summary = summarize_groups(kept, many, few)
        order = sort_labels(list(kept), summary, self.sort.value)
        kept = {label: kept[label] for label in order}
        self._show_messages(notes)
        self.table.value = self._table_html(summary, order, many, few)
        self.image.value = self._figure_png(kept, summary, many, few)
        self.render_count += 1

    def _show_messages(self, notes: Sequence[str]) -> None:
        items = "".join(f"<li>{n}</li>" for n in notes if n)
        self.message.value = (f"<div class='ltkit-explorer-message' style='color:#8a4b00'><b>⚠ note</b><ul>{items}</ul></div>"
                              if items else "")

    def _table_html(self, summary: Mapping, order: Sequence[str], many: int, few: int) -> str:
        counts = next((r.class_counts for label in order for r in self.groups[label] if r.finished), None)
        if counts is None:
            return ""
        sizes = profiles.group_sizes(counts, many, few)
        caption = (f"test accuracy (%), mean ± std over seeds; groups by training size: many n &gt; {many} "
                   f"({sizes['many']} classes), medium ({sizes['medium']}), few n &lt; {few} ({sizes['few']})")
        frame = summary_frame(summary, order)
        if self.baselines:
            caption += ("; Δ = the paired difference to the baseline over the seeds both have (mean ± std, points) "
                        "and a paired t-test's p-value")
            for column, values in paired_columns(self.groups, order, self.baselines, many, few).items():
                frame[column] = values
        return (f"<div class='ltkit-explorer-table' style='white-space: normal'>{_TABLE_STYLE}<p>{caption}</p>"
                f"{frame.to_html(classes='ltkit-table', border=0)}</div>")

    def _figure_png(self, kept: Mapping[str, list[Run]], summary: Mapping, many: int, few: int) -> bytes:
        with _DRAWING:
            return self._draw_png(kept, summary, many, few)

    def _draw_png(self, kept: Mapping[str, list[Run]], summary: Mapping, many: int, few: int) -> bytes:
        colors = _method_colors(list(kept))
        chosen = next((r for rs in kept.values() for r in rs if r.name == self.confusion_run.value), None)
        with _figure_style():
            fig = Figure(figsize=(13, 10), dpi=self.dpi, layout="none")
            axes = fig.subplots(2, 2)
            draw_per_class(axes[0, 0], kept, colors, many, few)
            draw_group_bars(axes[0, 1], kept, summary, colors, many, few)
            draw_confusion(axes[1, 0], chosen)
            draw_history(axes[1, 1], kept, colors, self.history_metric.value)
            fig.tight_layout(h_pad=2.0)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
        return buffer.getvalue()


class _PicturedBox(widgets.VBox):
    """A VBox whose notebook output also holds a PNG of its current figure: JupyterLab shows the live widget,
    a notebook that is not running (or read on a code host) shows the picture instead of ``VBox(...)``."""

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        return with_picture(bundle, self.explorer.image.value)


def with_picture(bundle: dict | None, png: bytes) -> dict:
    """A widget's display bundle with ``image/png`` added (the static view of what it shows by default)."""
    import base64

    bundle = dict(bundle or {})
    if png:
        bundle["image/png"] = base64.b64encode(png).decode("ascii")
    return bundle


def pictured(widget: widgets.Widget, figure: Any) -> Any:
    """``widget`` displayed with a static PNG of ``figure`` (a matplotlib figure) in the same output.

    Use it for any interactive cell (``pictured(widgets.interactive(...), fig)``): a notebook opened but not
    yet run shows the picture; a running one shows the controls.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")

    class _Pictured:
        def _repr_mimebundle_(self, **kwargs):
            return with_picture(widget._repr_mimebundle_(**kwargs), buffer.getvalue())

    return _Pictured()


_TABLE_STYLE = ("<style>.ltkit-table th, .ltkit-table td {padding: 2px 12px; text-align: right;} "
                ".ltkit-table tbody tr:nth-child(odd) {background: rgba(127, 127, 127, 0.08);} "
                ".ltkit-table td, .ltkit-table th {white-space: nowrap;}</style>")


def _data_key(rs: Run | Sequence[Run]) -> tuple | None:
    """(data set, training class sizes) of the first finished run; ``None`` when none has finished."""
    rs = [rs] if isinstance(rs, Run) else rs
    run = next((r for r in rs if r.finished), None)
    return None if run is None else (run.dataset, tuple(run.class_counts))


def _describe(key: tuple | None) -> str:
    if key is None:
        return "an unknown data set"
    name, counts = key
    return f"{html.escape(name)} ({len(counts)} classes, {sum(counts):,} training images)"


def explore(runs_or_dir: Any = "runs", *, many: int = profiles.MANY_THRESHOLD, few: int = profiles.FEW_THRESHOLD,
            select: Sequence[str] | None = None, sort: str = "as listed", dpi: int = 80,
            baselines: Mapping[str, str] | None = None) -> widgets.Widget:
    """The results explorer over a runs folder or records; display the returned widget in a notebook.

    ``runs_or_dir``: a folder of run directories (default ``"runs"``), one
    record, a list of records or ``{label: [records]}`` (``launch.run_grid``'s
    result).  ``many`` / ``few``: initial group thresholds; ``select``: the
    methods selected at first (default: every method on the first data set);
    ``sort``: one of :data:`SORT_CHOICES`; ``dpi``: resolution of the charts
    (the figure is 13 x 10 inches); ``baselines`` (``{label: baseline label}``) adds
    each method's paired difference to its baseline.  The :class:`Explorer` behind
    the widget is ``widget.explorer``; the widget's output also holds a PNG of its
    default view (shown where widgets are not live).
    """
    return Explorer(runs_or_dir, many=many, few=few, select=select, sort=sort, dpi=dpi, baselines=baselines).widget


# =========================================================================== live view of training
LIVE_KEYS = ("many", "medium", "few", "train_loss")
_DRAWING = threading.Lock()  # matplotlib is not thread-safe: one figure drawn at a time by ltkit's widgets


class LiveView:
    """Curves of a grid that is training: accuracy of the many / medium / few classes and the training loss per
    method, against epochs; each seed a thin line, their mean bold.  Redrawn every ``interval`` seconds from
    the runs' ``history.jsonl`` by a background thread, so the notebook's other widgets stay responsive."""

    def __init__(self, run_dirs: Mapping[str, Sequence[Path]], *, is_done: Any = None, error: Any = None,
                 interval: float = 1.0, dpi: int = 80) -> None:
        self.run_dirs = {label: [Path(d) for d in dirs] for label, dirs in run_dirs.items()}
        self.is_done = is_done or (lambda: True)
        self.error = error or (lambda: None)  # the grid's error once it failed (shown, not only raised by wait())
        self.dpi, self.interval = dpi, interval
        self.updates = 0
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.widget = widgets.VBox([self.status, self.image])
        self.widget.add_class("ltkit-live")
        self.update()
        if not self.is_done():
            threading.Thread(target=self._follow, daemon=True, name="ltkit-live").start()

    def _follow(self) -> None:
        import time

        while not self.is_done():
            time.sleep(self.interval)
            self.update(only_if_changed=True)
        self.update()

    def _stamp(self) -> tuple:
        """What changed on disk since the last drawing (history and result files' sizes and times)."""
        stamp = []
        for dirs in self.run_dirs.values():
            for run_dir in dirs:
                for name in ("history.jsonl", "result.json"):
                    path = Path(run_dir) / name
                    stamp.append((path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None)
        return tuple(stamp)

    def histories(self) -> dict[str, list[list[dict]]]:
        """``{label: [history of each seed]}`` as written so far (a half-written last line is skipped)."""
        out = {}
        for label, dirs in self.run_dirs.items():
            out[label] = []
            for run_dir in dirs:
                try:
                    out[label].append(runs.read_history(run_dir, strict=False))
                except (OSError, ValueError):
                    out[label].append([])
        return out

    def update(self, only_if_changed: bool = False) -> None:
        """Redraw from the runs' files (``only_if_changed``: not when no file changed since the last drawing)."""
        with _DRAWING:  # the follow thread and the kernel's thread may both redraw
            self._update(only_if_changed)

    def _update(self, only_if_changed: bool) -> None:
        stamp = self._stamp()
        if only_if_changed and stamp == getattr(self, "_last_stamp", None):
            return
        self._last_stamp = stamp
        histories = self.histories()
        epochs = [max((row.get("epoch", -1) for row in h), default=-1) + 1 for hs in histories.values() for h in hs]
        finished = sum((Path(d) / "result.json").is_file() for dirs in self.run_dirs.values() for d in dirs)
        total = sum(len(dirs) for dirs in self.run_dirs.values())
        state = "finished" if self.is_done() else "training"
        failed = self.error() if self.is_done() else None
        if failed is not None:
            state = f"failed ({html.escape(type(failed).__name__)}: {html.escape(str(failed)[:300])}; wait() raises it)"
        self.status.value = (f"<b>{state}</b>: {finished} of {total} runs done; epochs so far per run: "
                             f"{min(epochs, default=0)}-{max(epochs, default=0)}")
        self.image.value = self._figure_png(histories)
        self.updates += 1

    def _figure_png(self, histories: Mapping[str, list[list[dict]]]) -> bytes:
        colors = _method_colors(list(histories))
        with _figure_style():
            fig = Figure(figsize=(13, 7.5), dpi=self.dpi, layout="none")
            axes = fig.subplots(2, 3).flat
            for ax, key in zip(axes, LIVE_KEYS):
                for label, seeds in histories.items():
                    _draw_live_curves(ax, seeds, key, colors[label], label)
                ax.set_title(f"{key} accuracy (%)" if key != "train_loss" else "training loss")
                ax.set_xlabel("epoch")
                if key == "train_loss":  # plain tick labels: mathtext is not safe to draw from two threads
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(LogFormatter())
                    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=True))
            legend_ax = list(fig.axes)[4]
            handles, labels = fig.axes[0].get_legend_handles_labels()
            legend_ax.legend(handles, labels, loc="center left", frameon=False, title="method (bold: mean over seeds)")
            legend_ax.set_axis_off()
            fig.axes[5].set_axis_off()
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
        return buffer.getvalue()

    def _repr_mimebundle_(self, **kwargs):
        return with_picture(self.widget._repr_mimebundle_(**kwargs), self.image.value)


def _draw_live_curves(ax, seeds: Sequence[list[dict]], key: str, color: str, label: str) -> None:
    scale = 1 if key == "train_loss" else 100
    series = []
    for history in seeds:
        points = [(row["epoch"] + 1, row[key] * scale) for row in history if _is_number(row.get(key))]
        if points:
            x, y = zip(*points)
            ax.plot(x, y, color=color, linewidth=0.7, alpha=0.45)
            series.append(dict(points))
    if not series:
        return
    common = sorted(set.intersection(*(set(s) for s in series)))
    if common:
        ax.plot(common, [np.mean([s[e] for s in series]) for e in common], color=color, linewidth=2.4, label=label,
                marker="o" if len(common) < 15 else None, markersize=4)
