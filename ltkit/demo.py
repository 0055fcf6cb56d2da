"""``make demo``: the kit's leaderboard on the bundled data sets.

1. ``digits-lt`` at a glance: class counts, many / medium / few groups, statistics;
2. every method of the kit trained under one fitted protocol (the data set's
   preset: small CNN, 100 epochs, cosine schedule, crop augmentation; final-epoch
   accuracy on the balanced test set) over 5 seeds, on ``digits-lt`` and on
   ``context-digits-lt`` (the digits pasted on backgrounds, where the tail
   classes are seen on only one or two of them: CMO's setting);
3. one table by data set and method (overall / many / medium / few / worst
   class, mean ± std over seeds, and each method against its baseline as a
   paired same-seed difference with its p-value), the runs under
   ``runs/leaderboard/<data set>/`` and one plot, ``runs/leaderboard.png``.

Every run trains in one pool of ``--workers`` processes shared by both data sets
(:func:`ltkit.launch.run_grid` with ``pool=``), a run that reads another one starting
as soon as that one has finished; CE-DRW and Syn-LT train exactly as CE until epoch 80 (the DRW switch, the
synthesis start), so they continue from CE's snapshot there (``continue_from``) with the records training
from scratch gives: 4 min 19 s, 502 CPU-seconds, on an idle 2-core machine.

The line-up (:func:`leaderboard_methods`): the loss baselines (CE, CE-DRW,
LDAM-DRW, Balanced Softmax, logit adjustment post hoc), CMO on top of CE and of
Balanced Softmax, CWS, Syn-LT (its classifier ``g`` is the CE run of the same
seed, as in M2m), and Balanced Softmax + the feedback-guided diffusion fill.
Logit adjustment *as a loss* is not trained: with τ = 1 it is the same loss as
Balanced Softmax (``log_softmax(z + log π)``), so it would only repeat the BS row.
Post-hoc logit adjustment is not trained either: it trains exactly as CE does, so its
runs evaluate the CE runs' final weights with the adjusted rule (``weights_from``).
The fill exists for ``digits-lt`` only: the committed generator is trained on
the plain digits, and training one for ``context-digits-lt`` is notebook 6's
paper-scale path, not a demo.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import launch, plots, profiles, train  # noqa: E402
from .data import load_digits_lt  # noqa: E402

FEEDBACK_FILL = "loss"  # the committed fill of the leaderboard: the criterion notebook 6 found best

# The presets train 100 epochs; deferred re-weighting starts at 80 (160 of 200 in the paper, the same 80 %).
DRW_EPOCH = 80
LOSS_BASELINES = {
    "CE": dict(loss="ce"),
    "CE-DRW": dict(loss="ce-drw", loss_params={"drw_epoch": DRW_EPOCH}),
    "LDAM-DRW": dict(loss="ldam-drw", loss_params={"drw_epoch": DRW_EPOCH}),
    "BS": dict(loss="bs"),
    "LA (post hoc)": dict(loss="la-posthoc"),
}
SEEDS = (0, 1, 2, 3, 4)
# Each method against the run it adds to (paired by seed in the table's "vs" columns).
BASELINES = {"CE-DRW": "CE", "LDAM-DRW": "CE", "BS": "CE", "LA (post hoc)": "CE", "CE + CMO": "CE",
             "BS + CMO": "BS", "CWS": "CE", "Syn-LT": "CE", f"BS + feedback fill ({FEEDBACK_FILL})": "BS"}
DATASETS = ("digits-lt", "context-digits-lt")
# Syn-LT's classifier g is the CE run of its seed; LA (post hoc) evaluates that run's weights (it trains as CE
# does, ltkit.losses.trains_as); CE-DRW and Syn-LT train exactly as CE until DRW / synthesis starts, so they
# continue from CE's snapshot there (continue_from): all three start once the CE run of their seed has finished
AFTER = {"Syn-LT": "CE", "LA (post hoc)": "CE", "CE-DRW": "CE"}


def leaderboard_methods(dataset: str, runs_dir: str | os.PathLike,
                        epochs: int | None = None) -> dict[str, launch.Overrides]:
    """``{label: overrides}`` of every method of the kit on ``dataset`` (runs under ``runs_dir``; ``epochs``:
    the preset's when None).

    The overrides of the methods that read the CE run of their seed, ``runs_dir/ce-s<seed>``,
    are functions of the seed (train ``CE`` first: :func:`train_leaderboard` does, :data:`AFTER`):

    - Syn-LT's classifier ``g`` is that run, as in M2m;
    - LA (post hoc) evaluates its final weights with the adjusted prediction rule
      (``weights_from``: it trains exactly as CE, so training it again would only repeat CE);
    - CE-DRW and Syn-LT train exactly as CE until DRW switches on / synthesis starts, so they
      continue from CE's snapshot at that epoch (``continue_from``; CE keeps it,
      ``snapshot_epochs``) instead of repeating CE's first 80 epochs.  Their records are the
      ones training from scratch gives (``tests/test_train.py``); without the snapshot they
      train from scratch.
    """
    from .methods import feedback, synlt

    epochs = epochs or train.PRESETS[dataset]["epochs"]
    synthesis_start = round(0.8 * epochs)  # Syn-LT's default start_epoch
    drw_continues = DRW_EPOCH < epochs  # else CE-DRW *is* CE: nothing to continue

    def ce_run(seed: int) -> str:
        return str(Path(runs_dir) / launch.grid_run_name("CE", seed))

    def ce_drw(seed: int) -> dict:
        return {**LOSS_BASELINES["CE-DRW"], **(dict(continue_from=ce_run(seed)) if drw_continues else {})}

    def syn_lt(seed: int) -> dict:
        return dict(loss="ce", method="synlt", method_params={**synlt.QUICK_PARAMS, "g_run": ce_run(seed)},
                    continue_from=ce_run(seed))

    def la_post_hoc(seed: int) -> dict:  # CE's weights, adjusted at prediction: evaluated, not trained again
        return dict(loss="la-posthoc", weights_from=ce_run(seed))

    shared = sorted({e for e in (DRW_EPOCH, synthesis_start) if 0 < e < epochs})  # where CE-DRW, Syn-LT part
    methods: dict[str, launch.Overrides] = {
        **LOSS_BASELINES,
        "CE": dict(LOSS_BASELINES["CE"], snapshot_epochs=shared),
        "CE-DRW": ce_drw,
        "LA (post hoc)": la_post_hoc,
        "CE + CMO": dict(loss="ce", method="cmo"),
        "BS + CMO": dict(loss="bs", method="cmo"),
        "CWS": dict(loss="ce", method="cws"),
        "Syn-LT": syn_lt,
    }
    if dataset == "digits-lt":
        fill = feedback.committed_fill("digits-lt", FEEDBACK_FILL)  # a name, not a path: records travel
        methods[f"BS + feedback fill ({FEEDBACK_FILL})"] = dict(loss="bs", method="feedback-fill",
                                                               method_params={"synthetic": fill})
    return methods


def train_leaderboard(dataset: str = "digits-lt", seeds: Sequence[int] = SEEDS, *,
                      runs_dir: str | os.PathLike = "runs", only: Sequence[str] | None = None, workers: int = 1,
                      progress: bool = True, **common) -> dict[str, list[dict]]:
    """Train (or reuse) every method of :func:`leaderboard_methods` (or the labels ``only``) for every seed.

    Returns ``{label: records}``.  One :func:`ltkit.launch.run_grid`; the methods that
    read the CE run of their seed (:data:`AFTER`: Syn-LT, LA (post hoc), CE-DRW; ``only`` with
    one of them trains CE too) start as soon as that run has finished.
    """
    methods = leaderboard_methods(dataset, runs_dir, common.get("epochs"))
    if only is not None:
        unknown = [label for label in only if label not in methods]
        if unknown:
            raise ValueError(f"not on the {dataset} line-up: {unknown}; choose from {list(methods)}.")
        needed = {AFTER[label] for label in only if label in AFTER}  # e.g. Syn-LT's CE runs
        methods = {label: methods[label] for label in methods if label in only or label in needed}
    after = {label: needed for label, needed in AFTER.items() if label in methods}
    return launch.run_grid(methods, seeds, base=dataset, out_dir=str(runs_dir), workers=workers, progress=progress,
                           after=after, **common)


def follow(jobs: dict[str, launch.GridJob], every: float = 2.0) -> None:
    """One progress bar over the finished runs of background grids, until every grid is done."""
    from tqdm.auto import tqdm

    dirs = [d for job in jobs.values() for ds in job.run_dirs.values() for d in ds]
    with tqdm(total=len(dirs), desc="runs") as bar:
        for job in jobs.values():
            while not job.done:
                job.join(every)  # returns as soon as the grid is done
                bar.update(sum((d / "result.json").is_file() for d in dirs) - bar.n)
        bar.update(sum((d / "result.json").is_file() for d in dirs) - bar.n)


def show_profile(out_dir: Path) -> Path:
    data = load_digits_lt()
    counts = data.class_counts
    summary = profiles.summarize(counts)
    print(f"{data}\n")
    print("class:  " + " ".join(f"{k:>4}" for k in data.classes))
    print("images: " + " ".join(f"{n:>4}" for n in counts))
    print("group:  " + " ".join(f"{g[:4]:>4}" for g in profiles.class_groups(counts)))
    print(f"\ngroups (many > {profiles.MANY_THRESHOLD}, few < {profiles.FEW_THRESHOLD}): {summary.groups}")
    for key in ("total", "imbalance_factor", "gini", "head_share", "tail_share"):
        print(f"{key:>17}: {getattr(summary, key)}")
    plots.use_style()
    fig, axes = plots.panels(2)
    plots.plot_profile(counts, axes[0], title="digits-lt (linear)")
    plots.plot_profile(counts, axes[1], log=True, title="digits-lt (log)")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits-lt-profile.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nprofile plot: {path}")
    return path


def leaderboard_table(records_by_dataset: dict[str, dict[str, list[dict]]]):
    """One table, rows (data set, method): overall / many / medium / few / worst (mean ± std), and the paired
    same-seed difference to the method's baseline (:data:`BASELINES`) in overall and few-shot accuracy."""
    import pandas

    tables = {dataset: launch.compare(records, baselines=BASELINES) for dataset, records in records_by_dataset.items()}
    return pandas.concat(tables, names=["data set", "method"])


def save_leaderboard_figure(records_by_dataset: dict[str, dict[str, list[dict]]], path: Path) -> Path:
    plots.use_style()
    fig, axes = plots.panels(len(records_by_dataset), size=(6.5, 6.0))
    for ax, (dataset, records) in zip(axes, records_by_dataset.items()):
        plots.plot_leaderboard(records, ax)
        ax.set_title(dataset)
    seeds = max(len(rs) for records in records_by_dataset.values() for rs in records.values())
    fig.suptitle(f"the leaderboard: final-epoch test accuracy, {seeds} seed{'s' if seeds > 1 else ''}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs", help="folder for runs and plots (default: runs/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained side by side, one CPU thread each (default: 2, or 1 on a 1-core machine)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give at least 1 (runs trained side by side).")
    out = Path(args.out)
    started = time.time()
    print(f"training the line-up on {', '.join(args.datasets)}: {args.workers} runs at a time in one pool of worker "
          "processes (finished runs are reused)", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=launch.spawn_context()) as pool:
        jobs = {dataset: train_leaderboard(dataset, args.seeds, runs_dir=out / "leaderboard" / dataset,
                                           workers=args.workers, pool=pool, background=True)
                for dataset in args.datasets}  # both grids share the workers: none idles at a grid's end
        show_profile(out)  # drawn while the first runs train
        follow(jobs)
        records = {dataset: job.wait() for dataset, job in jobs.items()}
    print(f"\nFinal-epoch accuracy (%) on the balanced test sets, mean ± std over seeds {args.seeds} "
          f"(many > {profiles.MANY_THRESHOLD}, few < {profiles.FEW_THRESHOLD} training images):\n")
    print(leaderboard_table(records).to_string())
    if "context-digits-lt" in records:
        print("\ncontext-digits-lt has no feedback-fill row: the committed diffusion generator knows the plain digits only.")
    path = save_leaderboard_figure(records, out / "leaderboard.png")
    print(f"\nruns: {out / 'leaderboard'}/   plot: {path}   ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
