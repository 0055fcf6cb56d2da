"""``make demo``: the bundled ``digits-lt`` data set at a glance.

Prints the class counts, the many / medium / few group sizes and the summary
statistics, and writes a profile plot under ``runs/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import plots, profiles  # noqa: E402
from .data import load_digits_lt  # noqa: E402


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
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    plots.plot_profile(counts, axes[0], title="digits-lt (linear)")
    plots.plot_profile(counts, axes[1], log=True, title="digits-lt (log)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits-lt-profile.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nprofile plot: {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs", help="folder for the plot (default: runs/)")
    args = parser.parse_args(argv)
    show_profile(Path(args.out))


if __name__ == "__main__":
    main()
