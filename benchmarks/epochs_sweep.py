"""How many epochs fit the bundled data sets?  Train CE / BS with and without CMO at several lengths.

    python benchmarks/epochs_sweep.py --dataset context-digits-lt --epochs 30 60 100 150 --seeds 0 1 2 3 4

Prints, per length, the final-epoch train loss and test accuracy (overall / few) of each method, mean ± std
over seeds, and CMO's paired gain over its loss (same seeds) with its p-value: the data behind the
leaderboard protocol (the presets' 100 epochs) and notebook 03's "epochs vs gain" plot.  Writes
``<out>/<dataset>.json``: per length, each CMO row's train loss and paired differences, and the
baselines' train loss (notebook 03 reads the copy in ``notebooks/results/``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ltkit import launch, stats

METHODS = {"CE": dict(loss="ce"), "CE + CMO": dict(loss="ce", method="cmo"),
           "BS": dict(loss="bs"), "BS + CMO": dict(loss="bs", method="cmo")}
BASELINES = {"CE + CMO": "CE", "BS + CMO": "BS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="context-digits-lt")
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 60, 100, 150])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/epochs-sweep")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    summary = {}
    for epochs in args.epochs:
        started = time.time()
        records = launch.run_grid(METHODS, args.seeds, base=args.dataset, workers=args.workers, progress=False,
                                  out_dir=str(Path(args.out) / args.dataset / f"e{epochs}"), epochs=epochs,
                                  eval_every=epochs, checkpoint_every=epochs)
        elapsed = time.time() - started
        print(f"\n{args.dataset}, {epochs} epochs ({elapsed:.0f} s for {len(METHODS) * len(args.seeds)} runs)")
        print(launch.compare(records, baselines=BASELINES).to_string())
        losses = {label: sum(r["history"][-1]["train_loss"] for r in rs) / len(rs) for label, rs in records.items()}
        print("final train loss:", {k: round(v, 4) for k, v in losses.items()})
        summary[epochs] = {label: dict(train_loss=losses[label], **{
            f"d_{key}": stats.paired_records(records[label], records[base], key).__dict__
            for key in ("overall", "few")}) for label, base in BASELINES.items()}
        summary[epochs].update({base: dict(train_loss=losses[base]) for base in set(BASELINES.values())})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.dataset}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
