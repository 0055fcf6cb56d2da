"""Where does CWS lose on context-digits-lt?  Ablations against CE on the same seeds, and what the clusters capture.

    python benchmarks/diagnose_cws.py --epochs 100 --seeds 0 1 2 3 4

For each variant: overall / few accuracy, the paired difference to CE (same seeds), accuracy on the
backgrounds a class was seen on in training and on the unseen ones (ltkit.context_analysis), and for
CWS variants the normalised mutual information between the sub-class labels of the split classes'
training images and their backgrounds (1: the sub-classes *are* the backgrounds).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from ltkit import context_analysis, launch
from ltkit.context_digits import load_context_digits_lt
from ltkit.methods import cws

VARIANTS = {
    "CE": dict(loss="ce"),
    "CWS": dict(loss="ce", method="cws"),
    "CWS, sub_weight 0": dict(loss="ce", method="cws", method_params=dict(sub_weight=0.0)),
    "CWS, sub_weight 0.1": dict(loss="ce", method="cws", method_params=dict(sub_weight=0.1)),
    "CWS, max_splits 2": dict(loss="ce", method="cws", method_params=dict(max_splits=2)),
    "CWS, momentum 0.99": dict(loss="ce", method="cws", method_params=dict(momentum=0.99)),
    "CWS, mapping logmeanexp": dict(loss="ce", method="cws", method_params=dict(mapping="logmeanexp")),
    "CWS, start at 50 %": dict(loss="ce", method="cws", method_params=dict(start_epoch=50)),
    "static split": dict(loss="ce", method="static-split"),
}


def cluster_background_nmi(run_dir: str, data) -> float:
    """NMI(sub-label, background) over the training images of the classes that were split."""
    split = cws.training_assignments(run_dir, data)
    labels, sub = split["labels"].numpy(), split["sub_labels"].numpy()
    backgrounds = np.asarray(data.info["train_backgrounds"])
    sizes = np.bincount(split["sub_to_class"].numpy())
    scores = [normalized_mutual_info_score(backgrounds[labels == c], sub[labels == c])
              for c in np.nonzero(sizes > 1)[0]]
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/diagnose-cws")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    variants = dict(VARIANTS)
    variants["CWS, start at 50 %"] = dict(loss="ce", method="cws", method_params=dict(start_epoch=args.epochs // 2))
    records = launch.run_grid(variants, args.seeds, base="context-digits-lt", workers=args.workers, progress=False,
                              out_dir=args.out, epochs=args.epochs, eval_every=args.epochs,
                              checkpoint_every=args.epochs)
    table = launch.compare(records, keys=("overall", "few"), baselines={k: "CE" for k in variants if k != "CE"})
    data = load_context_digits_lt()
    context = {label: [context_analysis.group_accuracy_by_background(r) for r in rs] for label, rs in records.items()}
    table["seen ctx"] = [f"{100 * np.mean([c['seen_context'] for c in context[k]]):.1f}" for k in table.index]
    table["unseen ctx"] = [f"{100 * np.mean([c['unseen_context'] for c in context[k]]):.1f}" for k in table.index]
    table["NMI(sub, bg)"] = [f"{np.mean([cluster_background_nmi(r['dir'], data) for r in records[k]]):.2f}"
                             if variants[k].get("method") in ("cws", "static-split") else "" for k in table.index]
    print(f"context-digits-lt, {args.epochs} epochs, seeds {args.seeds}")
    print(table.to_string())


if __name__ == "__main__":
    main()
