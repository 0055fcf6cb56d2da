"""Where does Syn-LT lose on context-digits-lt?  Ablations against CE on the same seeds.

    python benchmarks/diagnose_synlt.py --epochs 100 --seeds 0 1 2 3 4

Variants: the deferred re-balanced re-draw alone (DRS: M2m's batches without synthesis), M2m (no OT
term), Syn-LT with the leaderboard's settings, and Syn-LT with another step size, OT weight and
acceptance threshold.  ``g`` is the CE run of the same seed (as in M2m and the leaderboard).  Printed:
overall / few accuracy, the paired difference to CE, the acceptance rate of the synthesised samples
(synthesis.json) and g's own test accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ltkit import launch, runs
from ltkit.methods import synlt


def variants(runs_dir: Path) -> dict:
    def with_g(params: dict, method: str = "synlt"):
        return lambda seed: dict(loss="ce", method=method, method_params={
            **synlt.QUICK_PARAMS, **params, "g_run": str(runs_dir / f"{runs.safe_name('CE')}-s{seed}")})

    return {
        "CE": dict(loss="ce"),
        "DRS (re-draw only)": dict(loss="ce", method="m2m", method_params=dict(synthesis=False)),
        "M2m": with_g({"lambda1": 0.0}, method="m2m"),
        "Syn-LT": with_g({}),
        "Syn-LT, eta 0.1": with_g({"eta": 0.1}),
        "Syn-LT, lambda1 2": with_g({"lambda1": 2.0}),
        "Syn-LT, tau 0.5": with_g({"tau": 0.5}),
    }


def acceptance(record: dict) -> float:
    path = Path(record["dir"]) / "synthesis.json"
    if not path.is_file():
        return float("nan")
    history = json.loads(path.read_text())["history"]
    accepted, candidates = sum(h["accepted"] for h in history), sum(h["candidates"] for h in history)
    return accepted / candidates if candidates else float("nan")


def _mean_rate(rates: list[float]) -> str:
    known = [r for r in rates if not np.isnan(r)]
    return f"{np.mean(known):.2f}" if known else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/diagnose-synlt")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    lineup = variants(out)
    common = dict(base="context-digits-lt", workers=args.workers, progress=False, out_dir=str(out), epochs=args.epochs,
                  eval_every=args.epochs, checkpoint_every=args.epochs)
    records = launch.run_grid({"CE": lineup["CE"]}, args.seeds, **common)  # g first
    records.update(launch.run_grid({k: v for k, v in lineup.items() if k != "CE"}, args.seeds, **common))
    table = launch.compare(records, keys=("overall", "few"), baselines={k: "CE" for k in lineup if k != "CE"})
    table["accepted"] = [_mean_rate([acceptance(r) for r in records[k]]) for k in table.index]
    print(f"context-digits-lt, {args.epochs} epochs, seeds {args.seeds} (g = the CE run of the same seed)")
    print(table.to_string())


if __name__ == "__main__":
    main()
