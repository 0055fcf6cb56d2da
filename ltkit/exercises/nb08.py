"""Exercises of notebook 08 (your own method): from "predict, then run" to "change the code".

The right answers come from :mod:`ltkit.sampling`, :mod:`ltkit.stats` and :mod:`ltkit.capstone`
(whose :func:`~ltkit.capstone.check_method` judges the method of 08.3), so the checks follow the kit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import profiles, sampling, stats
from . import exercise, Feedback, is_number, right, wrong

__all__: list[str] = []


# --------------------------------------------------------------------------- 08.1
def _digits_counts() -> list[int]:
    from ..data import load_digits_lt

    return load_digits_lt().class_counts


def _few_mask(counts: list[int]) -> np.ndarray:
    return np.array([g == "few" for g in profiles.class_groups(counts)])


def _few_share(power: float = 1.0) -> float:
    counts = _digits_counts()
    return float(sampling.class_probabilities(counts, power).numpy()[_few_mask(counts)].sum())


@exercise(
    id="08.1",
    kind="predict, then run",
    question=("Tail-repeat adds `extra` images to every batch, drawing class k with probability ∝ n_k^(-power). "
              "With the default power = 1, what **fraction of the extra images** comes from the three few-shot "
              "classes of `digits-lt` (17, 12 and 9 training images; the counts are printed above)? Predict "
              "(more or less than half?), then compute it, e.g. with `sampling.class_probabilities(counts, 1.0)`. "
              "Give one number between 0 and 1."),
    solution=("About 0.63. Class k is drawn with probability p_k = n_k^(-1) / Σ_j n_j^(-1): the three few-shot "
              "classes have the largest 1/n_k, so they take most of the mass.\n\n```python\n"
              "counts = load_digits_lt().class_counts\n"
              "p = sampling.class_probabilities(counts, 1.0)             # ∝ 1 / n_k\n"
              "few = [g == \"few\" for g in profiles.class_groups(counts)]\n"
              "answer = float(p[few].sum())                              # ≈ 0.63\n```\n\n"
              "The engine's own instance-balanced batches give the same three classes only 38 / 509 ≈ 7.5 % of "
              "their images; class-balanced drawing (power = 0) would give them 3 / 10. With 16 extra images per "
              "64, a batch of 80 holds on average 64 · 0.075 + 16 · 0.63 ≈ 14.9 few-shot images instead of 4.8: "
              "about three times as many, while the head classes keep most of the batch."),
    answer=_few_share,
)
def check_few_share(answer: Any) -> Feedback:
    if not is_number(answer):
        return wrong(f"give one number between 0 and 1 (the fraction of extra images from the few-shot classes); "
                     f"you gave {answer!r} ({type(answer).__name__}).")
    value, truth = float(answer), _few_share()
    counts = _digits_counts()
    few = _few_mask(counts)
    if 1 < value <= 100 and math.isclose(value / 100, truth, rel_tol=0.02):
        return wrong(f"{value:g} looks like a percentage: give the fraction ({value / 100:.3g}).")
    if not 0 <= value <= 1:
        return wrong(f"a fraction lies between 0 and 1; {value:g} does not.")
    instance = sum(np.array(counts)[few]) / sum(counts)
    for name, other, why in (
        ("the share of the few-shot classes in the engine's own batches (instance-balanced, ∝ n_k)", instance,
         "tail-repeat's extra images are drawn ∝ n_k^(-power), not ∝ n_k."),
        ("class-balanced drawing (3 of 10 classes, power = 0)", 0.3, "with power = 1 a class's probability is "
         "∝ 1/n_k: rarer classes are drawn more often than common ones, not equally often."),
        ("what per-image weights n_k^(-1) would give if you summed them per class and forgot the class size",
         _few_share(2.0), "the per-image weight is n_k^(-(1 + power)); summed over the n_k images of class k it "
         "gives n_k^(-power): sampling.class_probabilities(counts, 1.0)."),
    ):
        if math.isclose(value, other, rel_tol=0.02) and not math.isclose(other, truth, rel_tol=0.02):
            return wrong(f"{value:.3g} is {name}; {why}")
    if math.isclose(value, truth, rel_tol=0.02, abs_tol=0.005):
        return right(f"{truth:.3f} of the extra images come from the three few-shot classes "
                     f"(their share of the training set is {instance:.3f}).")
    direction = "too high" if value > truth else "too low"
    return wrong(f"{value:.3g} is {direction}. Compute p_k = (1/n_k) / Σ_j (1/n_j) for every class and add up the "
                 "three smallest classes (17, 12 and 9 images).")


# --------------------------------------------------------------------------- 08.2
# few-shot accuracy (%) of a baseline and a method on seeds 0-4 (the few group of digits-lt holds 90 test images)
PAIRED_BASELINE = [62.2, 70.0, 66.7, 73.3, 64.4]
PAIRED_METHOD = [66.7, 72.2, 70.0, 76.7, 66.7]


def _paired() -> tuple[float, float]:
    paired = stats.paired_difference(PAIRED_METHOD, PAIRED_BASELINE)
    return paired.mean, paired.p_value


@exercise(
    id="08.2",
    kind="compute",
    question=("A method and its baseline were trained on the same five seeds (0-4). Their few-shot accuracies (%), "
              f"seed by seed: baseline {PAIRED_BASELINE}, method {PAIRED_METHOD}. As mean ± std the two columns "
              "overlap (67.3 ± 4.4 vs 70.5 ± 4.2). Compute the **paired** comparison that `launch.compare(..., "
              "baselines=...)` reports: the mean of the per-seed differences (method − baseline, in points) and the "
              "two-sided paired t-test's p-value. Give `answer = (mean_difference, p_value)`."),
    solution=("(3.14, 0.0017). The per-seed differences are [4.5, 2.2, 3.3, 3.4, 2.3]: all positive, mean 3.14 "
              "points, std 0.94. The paired t-test asks whether their mean is 0: t = 3.14 / (0.94 / √5) ≈ 7.5 with "
              "4 degrees of freedom, p ≈ 0.0017.\n\n```python\n"
              "from ltkit import stats\n"
              "d = stats.paired_difference(method, baseline)     # or scipy.stats.ttest_rel(method, baseline)\n"
              "answer = (d.mean, d.p_value)                       # (3.14, 0.0017)\n```\n\n"
              "The unpaired test (`scipy.stats.ttest_ind`) gives p ≈ 0.28: the seed-to-seed spread (one seed is "
              "hard for both, another easy for both) swamps a gain of 3 points. Pairing by seed cancels what both "
              "runs of a seed share (data order, initial weights, augmentation), which is why the leaderboard "
              "compares every method with its baseline seed by seed."),
    answer=_paired,
)
def check_paired(answer: Any) -> Feedback:
    if is_number(answer) or isinstance(answer, str):
        return wrong(f"give two numbers, answer = (mean_difference, p_value); you gave {answer!r}.")
    values = list(answer)
    if len(values) != 2 or not all(is_number(v) for v in values):
        return wrong(f"give exactly two numbers, (mean difference in points, p-value); you gave {values!r}.")
    mean, p = (float(v) for v in values)
    true_mean, true_p = _paired()
    if math.isclose(mean, -true_mean, rel_tol=0.02):
        return wrong("the difference has the wrong sign: take method − baseline (a gain is positive).")
    if math.isclose(mean, true_mean / 100, rel_tol=0.02):
        return wrong(f"{mean:.4g} is the difference as a fraction; the accuracies are in %, give it in points "
                     f"({true_mean:.3g}).")
    if not math.isclose(mean, true_mean, rel_tol=0.02, abs_tol=0.02):
        return wrong(f"the mean difference {mean:.4g} is off: subtract the baseline from the method seed by seed "
                     "and average the five differences.")
    from scipy import stats as scipy_stats

    unpaired = float(scipy_stats.ttest_ind(PAIRED_METHOD, PAIRED_BASELINE).pvalue)
    if math.isclose(p, unpaired, rel_tol=0.05):
        return wrong(f"the mean is right, but p = {p:.3g} is the *unpaired* t-test (ttest_ind): pair the runs by "
                     "seed (ttest_rel, stats.paired_difference): the seed-to-seed spread cancels in the differences.")
    if math.isclose(p, true_p / 2, rel_tol=0.05):
        return wrong(f"p = {p:.3g} is the one-sided p-value; the kit reports the two-sided one ({true_p:.2g}).")
    if not math.isclose(p, true_p, rel_tol=0.05, abs_tol=1e-4):
        return wrong(f"the mean is right, but p = {p:.3g} is not the paired t-test's; use "
                     "stats.paired_difference(method, baseline).p_value or scipy.stats.ttest_rel(method, baseline).")
    return right(f"a gain of {true_mean:.2f} points on every seed, p = {true_p:.2g}: clear evidence, although the "
                 "two mean ± std columns overlap (the unpaired test gives p = {:.2f}).".format(unpaired))


# --------------------------------------------------------------------------- 08.3
def _balanced_mixup() -> type:
    """The fixed class-balanced mixup of 08.3 (registered under its name, as the notebook's cell does)."""
    import torch

    from .. import train
    from ..checks import param

    @dataclass(frozen=True)
    class MixupParams:
        alpha: float = param(0.4, low=0, low_open=True, hint="λ ~ Beta(α, α)")

    @train.register_method
    class BalancedMixup(train.Method):
        """Class-balanced mixup: every image mixed with a class-balanced draw, λ ~ Beta(α, α) per batch."""

        name = "balanced-mixup"
        Params = MixupParams

        def setup(self, ctx):
            self.weights = sampling.sample_weights(ctx.train_y.cpu(), ctx.class_counts, 1.0)  # class-balanced

        def batch(self, ctx, batch):
            stream = ("balanced-mixup", ctx.epoch, batch.step)
            positions = torch.multinomial(self.weights, batch.global_size, replacement=True,
                                          generator=ctx.generator(*stream, "draw"))
            other = ctx.images(positions, ctx.generator(*stream, "augment"))
            lam = float(ctx.rng(*stream, "lambda").beta(self.params.alpha, self.params.alpha))
            x = lam * batch.x + (1 - lam) * other
            return dataclasses.replace(batch, x=x, y2=ctx.train_y[ctx.local(positions).to(ctx.device)], lam=lam)

    return BalancedMixup


@exercise(
    id="08.3",
    kind="change the code",
    question=("The cell below defines `BalancedMixup` (`\"balanced-mixup\"`): every image of a batch is mixed with "
              "a class-balanced draw, λ ~ Beta(α, α). `capstone.check_method` rejects it. Read its report, fix the "
              "cell (two bugs) until the check passes, and give the fixed class: `answer = BalancedMixup`. Keep the "
              "mixing (y2 and λ < 1): returning the batch unchanged is no fix."),
    solution=("Two lines change:\n\n```python\n"
              "        lam = float(ctx.rng(*stream, \"lambda\").beta(self.params.alpha, self.params.alpha))  # 1\n"
              "        x = lam * batch.x + (1 - lam) * other                                              # 2\n"
              "```\n\n"
              "1. `np.random.beta` draws from NumPy's global generator, which the engine never seeds: two runs with "
              "the same seed mix differently, a resumed run differently again. `ctx.rng(...)` is a NumPy generator "
              "keyed by the run's seed and (epoch, step): the same λ on every rank and after a resume.\n"
              "2. `lam * x + other` is not a mixture: its weights sum to 1 + λ, so pixels reach up to 1 + λ. A "
              "mixture weighs the two images λ and 1 − λ (the labels get the same weights through y2 and lam), "
              "and stays in [0, 1]. `clamp(0, 1)` would pass the check but saturate the pixels: the model would "
              "train on images unlike the test images.\n\nThen `answer = BalancedMixup`; "
              "`capstone.check_method(BalancedMixup)` shows ✓ on every line."),
    answer=_balanced_mixup,
)
def check_balanced_mixup(answer: Any) -> Feedback:
    from .. import capstone, train

    if not isinstance(answer, type):
        hint = " (the class itself, not an instance: no brackets)" if isinstance(answer, train.Method) else ""
        return wrong(f"give the fixed class, answer = BalancedMixup{hint}; you gave {answer!r} "
                     f"({type(answer).__name__}).")
    if not issubclass(answer, train.Method) or getattr(answer, "name", None) != "balanced-mixup":
        return wrong(f"{answer.__name__} is not the method of this exercise: fix the class BalancedMixup "
                     "(name = \"balanced-mixup\") in the cell and give it.")
    report = capstone.check_method(answer, portable=False)
    if not report.ok:
        failed = "; ".join(f"{item.check}: {item.message}" for item in report.failures if item.ok is False)
        return wrong(f"check_method still rejects it: {failed}")
    if report.stats.get("mixed_steps", 0) == 0:
        return wrong("the check passes, but no batch is mixed any more (no y2 with λ < 1): fix the mixing instead "
                     "of removing it.")
    return right(f"check_method accepts BalancedMixup and it mixes {report.stats['mixed_steps']} of "
                 f"{report.stats['steps']} checked batches: λ from ctx.rng, images λ·x + (1 − λ)·x'.")
