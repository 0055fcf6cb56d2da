"""What feedback guidance costs: guided against unguided DDIM sampling time per image.

What is measured
----------------
Seconds per generated image of :func:`ltkit.methods.feedback.guided_sample`, side by
side in one process, on the same model, classes and initial noise:

* **unguided**: DDIM with classifier-free guidance (one batched forward pass of
  ``2B`` images per step);
* **guided**, for each sampler (``Guidance.mode``), criterion (loss, entropy,
  hardness) and ``--every``: at every ``every``-th step the frozen classifier on
  ``x̂0`` and a backward pass to ``x_t`` (float32), and

  - ``released`` (the authors' sampler, facebookresearch/Feedback-guided-Data-Synthesis):
    the conditional forward pass with gradients is the conditional half of the
    step's CFG noise, predicted before the guidance move, plus an unconditional
    pass: ``B + B`` images through the network per guided step;
  - ``re-evaluate``: a conditional forward pass with gradients, then the CFG noise
    predicted again at the moved point: ``B + 2B`` images per guided step.

The ratio column is the guided time per image over the unguided one.

Model: the committed ``digits-lt`` checkpoint (``ltkit.methods.diffusion``, 0.64 M
parameters, 1x8x8) and feedback classifier, or ``--random`` for a randomly
initialised model of the same shape (no checkpoint needed; timings are the
same).  Every guided run follows an unguided one on the same batch; the
ratio column is the median over ``--repeats`` of these paired ratios.  On CPU
the time is the process's CPU time, so that other programs on a shared machine
do not count (the load average is printed); one thread by default
(``--threads``).  On
CPU, and on the GPU as well when one is visible (``--device auto``).

Run it
------
    python benchmarks/guidance_cost.py                    # CPU (+ GPU if available): 10 steps, every 1 and 2, batch 64
    python benchmarks/guidance_cost.py --steps 30 --every 5 --cfg 3 --scale 0.03 --batch 256   # the paper's schedule
    python benchmarks/guidance_cost.py --criteria entropy --modes released   # one row per --every

(from the repository root).  It prints; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltkit.methods import diffusion, feedback  # noqa: E402


def _models(random: bool, device: str):
    if random:
        torch.manual_seed(0)
        unet = diffusion.make_unet(10).eval().requires_grad_(False)
        model = diffusion.ClassDiffusion(unet, dict(diffusion.SCHEDULE_DEFAULTS), [str(k) for k in range(10)])
        from ltkit import data, models

        digits = data.load_digits_lt()
        clf = feedback.FeedbackClassifier(models.make_model("small-cnn", 10, in_channels=1, image_size=8))
        clf.fit_gaussians(digits.x_train, digits.y_train)
    else:
        model, clf = diffusion.load_diffusion("digits-lt"), feedback.load_feedback_classifier("digits-lt")
    model.unet.to(device)
    return model, clf.to(device)


def _time(fn, device: str) -> float:
    """Seconds of ``fn``: on CPU the process's CPU time (other programs on a shared machine do not count),
    on GPU wall time between synchronisations."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(device: str, args) -> None:
    model, clf = _models(args.random, device)
    labels = torch.arange(args.batch) % 10
    common = dict(steps=args.steps, cfg_scale=args.cfg, seed=0)
    variants = {("unguided", "", 0): None}
    for mode in args.modes:
        for k in args.every:
            for c in args.criteria:
                variants[mode, c, k] = feedback.Guidance(c, args.scale, every=k, mode=mode)
    sample = lambda g: feedback.guided_sample(model, labels, clf, g, **common)  # noqa: E731
    for mode in args.modes:  # warm-up
        sample(feedback.Guidance("entropy", args.scale, mode=mode))
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    ratios: dict[tuple, list[float]] = {key: [] for key in variants}
    for _ in range(args.repeats):  # each guided run right after an unguided one: a ratio per pair
        for key, guidance in variants.items():
            if guidance is None:
                continue
            base = _time(lambda: sample(None), device) / args.batch
            times["unguided", "", 0].append(base)
            times[key].append(_time(lambda: sample(guidance), device) / args.batch)
            ratios[key].append(times[key][-1] / base)
    ratios["unguided", "", 0] = [1.0]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}: {args.steps} DDIM steps, CFG {args.cfg}, feedback scale {args.scale}, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'sampler':>12} {'criterion':>9} {'every':>5} {'ms / image':>11} {'x unguided':>11}")
    summary: dict[tuple, list[float]] = {}
    for (mode, criterion, k), values in times.items():
        ratio = statistics.median(ratios[mode, criterion, k])
        print(f"{mode:>12} {criterion:>9} {k or '':>5} {1000 * statistics.median(values):11.2f} {ratio:11.2f}")
        if mode != "unguided":
            summary.setdefault((mode, k), []).append(ratio)
    print("guided / unguided per image (median of the paired ratios), over the criteria:")
    for (mode, k), values in summary.items():
        print(f"  {mode:>12}, every {k}: {min(values):.2f} - {max(values):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2],
                        help="feedback at every k-th DDIM step (the paper's code: 5); several values allowed")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--modes", nargs="+", default=list(feedback.MODES), choices=feedback.MODES,
                        help="samplers to time side by side (default: both)")
    parser.add_argument("--criteria", nargs="+", default=list(feedback.CRITERIA), choices=feedback.CRITERIA)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random", action="store_true", help="a random model of the same shape (no checkpoint)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a small shared CPU two threads of a tiny model mostly "
                             "wait for each other; 0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPU cores")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        run(device, args)
    if "cuda" not in devices:
        print("\n(no GPU visible: CPU only)")


if __name__ == "__main__":
    main()
