"""Exercises of notebook 03 (CMO): the box and its λ, the foreground distribution Q, what a short schedule
does to CMO's gain, and the reference box written by hand.

Every right answer is computed from :mod:`ltkit.methods.cmo` (03.1, 03.2, 03.4) or from the measured epochs
sweep (03.3: ``notebooks/results/epochs_sweep_context-digits-lt.json``, made by ``benchmarks/epochs_sweep.py``;
the numbers are also kept here for an installed package without the notebooks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import cmo
from . import exercise, Feedback, is_number, numbers_in, right, same_numbers, wrong

__all__: list[str] = []


# --------------------------------------------------------------------------- 03.1
BOX_CASES = ((0.75, (2, 16)), (0.7, (16, 16)))  # (λ0, centre (row, col)) on a 32 x 32 image


def _box_lambdas(rule: str = "reference") -> list[float]:
    return [cmo.box_lambda(cmo.cut_box(32, 32, lam0, centre, rule), 32, 32) for lam0, centre in BOX_CASES]


@exercise(
    id="03.1",
    kind="compute",
    question=("A 32 × 32 image, the **reference rounding** of the box (naver-ai/cmo's `rand_bbox`, ltkit's default). "
              "Compute by hand the label weight λ of the background after pasting, for two draws: "
              "(a) λ0 = 0.75 with the box centred at row 2, column 16; (b) λ0 = 0.7 centred at row 16, column 16. "
              "Give the two values, e.g. `answer = [0.8, 0.7]`."),
    solution=("**[0.84375, 0.75]**.\n\n"
              "(a) side $h = w = \\lfloor 32\\sqrt{1-0.75}\\rfloor = 16$, half 8: rows $[2-8, 2+8) = [-6, 10)$, "
              "clipped to $[0, 10)$: 10 rows; columns $[8, 24)$: 16. Area 160, so "
              "$\\lambda = 1 - 160/1024 = 0.84375$: the border cut the box, the foreground gets less than "
              "$1-\\lambda_0$ of the label.\n\n"
              "(b) side $\\lfloor 32\\sqrt{0.3}\\rfloor = \\lfloor 17.53\\rfloor = 17$, odd; "
              "$\\lfloor 17/2\\rfloor = 8$: "
              "rows and columns $[16-8, 16+8) = [8, 24)$, 16 each (one pixel short of 17: the reference rounding). "
              "Area 256, $\\lambda = 1 - 256/1024 = 0.75$. With `box=\"exact\"` the box is 17 × 17 and "
              "$\\lambda = 1 - 289/1024 \\approx 0.718$.\n\n```python\n"
              "answer = [cmo.box_lambda(cmo.cut_box(32, 32, 0.75, (2, 16)), 32, 32),\n"
              "          cmo.box_lambda(cmo.cut_box(32, 32, 0.7, (16, 16)), 32, 32)]     # [0.84375, 0.75]\n```\n\n"
              "In both cases $\\lambda \\ge \\lambda_0$: λ is recomputed from the pasted area, which clipping and the "
              "rounding only make smaller."),
    answer=_box_lambdas,
)
def check_box_lambdas(answer: Any) -> Feedback:
    if is_number(answer):
        return wrong(f"give two values of λ, one per draw (a) and (b), e.g. [0.8, 0.7]; you gave one number, "
                     f"{answer}.")
    values = numbers_in(answer)
    if values is None:
        return wrong(f"give a list of two numbers, λ for (a) and λ for (b); {answer!r} is not one.")
    if len(values) != 2:
        return wrong(f"there are two draws, (a) and (b): give two values of λ, you gave {len(values)}.")
    truth = _box_lambdas()
    a_ok, b_ok = (math.isclose(v, t, abs_tol=2e-3) for v, t in zip(values, truth))
    if a_ok and b_ok:
        return right(f"λ = {truth[0]:.5f} (the border clips the box of (a) to 10 × 16) and λ = {truth[1]:.2f} "
                     "(the odd side 17 pastes 16 × 16 pixels under the reference rounding).")
    notes = []
    if not a_ok:
        if math.isclose(values[0], 0.75, abs_tol=2e-3):
            notes.append("(a): 0.75 is λ0 itself, or the unclipped 16 × 16 box; the box starts at row 2 - 8 = -6 and "
                         "is clipped to the image, so only 10 rows are pasted")
        elif math.isclose(values[0], 1 - 0.75, abs_tol=2e-3) or math.isclose(values[0], 1 - truth[0], abs_tol=2e-3):
            notes.append("(a): that is the foreground's share 1 - λ; λ is the background label's weight, "
                         "1 - area / (H W)")
        else:
            notes.append(f"(a): {values[0]:.4g} is not it; find the side ⌊32 √(1 - λ0)⌋, the rows and columns "
                         "c ± ⌊side/2⌋ clipped to [0, 32), then λ = 1 - area / 1024")
    if not b_ok:
        exact = _box_lambdas("exact")[1]
        if math.isclose(values[1], exact, abs_tol=2e-3):
            notes.append(f"(b): {exact:.4f} is the exact 17 × 17 box; the reference rounding spans c ± ⌊17/2⌋ = "
                         "[8, 24), 16 pixels per side")
        elif math.isclose(values[1], 0.7, abs_tol=2e-3):
            notes.append("(b): 0.7 is λ0; λ is recomputed from the pasted area, 1 - area / 1024")
        elif math.isclose(values[1], 1 - truth[1], abs_tol=2e-3):
            notes.append("(b): that is the foreground's share 1 - λ, not λ")
        else:
            notes.append(f"(b): {values[1]:.4g} is not it; the side is ⌊32 √0.3⌋ = 17 and the reference box "
                         "spans c ± ⌊17/2⌋")
    return wrong("; ".join(notes) + ".")


# --------------------------------------------------------------------------- 03.2
def _context_counts() -> list[int]:
    # context-digits-lt keeps digits-lt's long-tailed training subset (the same class sizes), so the cheap
    # loader gives its counts without drawing any background.
    from ..data import load_digits_lt

    return list(load_digits_lt().class_counts)


def _q_sample_r1() -> list[float]:
    return cmo.foreground_class_probabilities(_context_counts(), "q-sample", 1.0).tolist()


@exercise(
    id="03.2",
    kind="predict, then run",
    question=("CMO's default foreground distribution Q is the reference code's `q-sample` with r = 1: every "
              "training image gets the weight $n_{y_i}^{-r}$ and is drawn with replacement in proportion to it. "
              "Predict the probability that one foreground draw is of class k, for the ten classes of "
              "context-digits-lt (`counts = [140, 103, 76, 56, 42, 31, 23, 17, 12, 9]`), head first. Then check "
              "with `cmo.foreground_class_probabilities(counts, \"q-sample\", 1.0)` or the widget above."),
    solution=("**0.1 for every class**: class k holds $n_k$ images of weight $n_k^{-1}$, so its total weight is "
              "$n_k \\cdot n_k^{-1} = 1$ whatever its size, and the class probability is $\\propto n_k^{1-r} = 1$: "
              "**class-balanced**. A few-shot class of 9 images is drawn as often as the head class of 140, so each "
              "of its images is pasted about 15 times as often as a head image.\n\n```python\n"
              "answer = cmo.foreground_class_probabilities(counts, \"q-sample\", 1.0).tolist()   # [0.1] * 10\n```\n\n"
              "The paper's formula $q(r, k) \\propto n_k^{-r}$ read as a *class* probability (`q-class`) would give "
              "$\\propto 1/n_k$ at r = 1: the tail class 9 would be drawn 15.6 times as often as class 0. That is "
              "the r = 2 behaviour of the code's view, not its default."),
    answer=_q_sample_r1,
)
def check_q_sample(answer: Any) -> Feedback:
    counts = _context_counts()
    if is_number(answer):
        if math.isclose(float(answer), 0.1, rel_tol=1e-3):
            return wrong("right value, but give the whole list: ten probabilities, one per class, head first.")
        return wrong("give ten probabilities, one per class (head first), not a single number.")
    values = numbers_in(answer)
    if values is None:
        return wrong(f"give a list of ten probabilities, one per class, head first; {answer!r} is not one.")
    if len(values) != len(counts):
        return wrong(f"context-digits-lt has {len(counts)} classes: give {len(counts)} probabilities, "
                     f"you gave {len(values)}.")
    values = np.asarray(values)
    truth = np.asarray(_q_sample_r1())
    if np.allclose(values, counts):
        return wrong("those are the class sizes n_k; give the probability that one foreground draw is of class k.")
    n = np.asarray(counts, dtype=float)
    if np.allclose(values, truth, atol=2e-3):
        return right("Q is class-balanced: 0.1 for every class. Each class's n_k images weigh n_k^-1 each, "
                     "so every class weighs 1 in total.")
    for name, probs, why in (
        ("the instance-balanced distribution n_k / N (r = 0)", n / n.sum(),
         "with r = 1 every image is weighted by 1 / n_k, which cancels the class size."),
        ("the paper's formula read as a class probability, ∝ 1 / n_k (weighting 'q-class')", (1 / n) / (1 / n).sum(),
         "the reference code weights each *sample* by n^-r, so a class gets n_k · n_k^-1 = 1."),
        ("the per-sample weights n_k^-1 without summing over the images of a class", (1 / n) / (1 / n).sum(),
         "multiply by the n_k images of the class."),
    ):
        if np.allclose(values, probs, atol=2e-3):
            return wrong(f"that is {name}; {why}")
    if not math.isclose(values.sum(), 1.0, abs_tol=0.01):
        return wrong(f"the probabilities of the ten classes must add up to 1; yours add up to {values.sum():.3g}.")
    return same_numbers(values, truth, rel=0.02, what="the class probabilities",
                        hint="Sum the per-sample weights n_k^-r over the n_k images of each class, then normalise.")


# --------------------------------------------------------------------------- 03.3
SWEEP_FILE = Path(__file__).resolve().parents[2] / "notebooks" / "results" / "epochs_sweep_context-digits-lt.json"
# Paired by seed (5 seeds), CE + CMO - CE overall accuracy (fraction) and the paired t-test's p-value, as measured by
# benchmarks/epochs_sweep.py (the file above); used when the file is not there (an installed package).
SWEEP_CE_CMO = {30: (-0.0534, 0.0080), 60: (-0.0111, 0.024), 100: (0.0063, 0.241), 150: (0.0060, 0.224)}
VERDICTS = ("better", "tie", "worse")
_SYNONYMS = {"better": "better", "helps": "better", "higher": "better", "yes": "better", "beats": "better",
             "gain": "better", "tie": "tie", "same": "tie", "equal": "tie", "no difference": "tie",
             "worse": "worse", "hurts": "worse", "lower": "worse", "loses": "worse"}


def _sweep() -> dict[int, tuple[float, float]]:
    """``{epochs: (mean paired overall difference, p-value)}`` of CE + CMO vs CE on context-digits-lt."""
    try:
        data = json.loads(SWEEP_FILE.read_text())
        return {int(e): (row["CE + CMO"]["d_overall"]["mean"], row["CE + CMO"]["d_overall"]["p_value"])
                for e, row in data.items()}
    except (OSError, ValueError, KeyError):
        return dict(SWEEP_CE_CMO)


def verdict(mean: float, p_value: float, alpha: float = 0.05) -> str:
    """``"better"`` / ``"worse"`` when the paired difference is significant at ``alpha``, else ``"tie"``."""
    if not p_value < alpha:
        return "tie"
    return "better" if mean > 0 else "worse"


def _ce_cmo_verdicts() -> dict[int, str]:
    sweep = _sweep()
    return {e: verdict(*sweep[e]) for e in (30, 100)}


def _read_verdicts(answer: Any) -> dict[int, str] | str:
    """``{30: verdict, 100: verdict}`` from a dict or a pair of words, or a sentence saying what is wrong."""
    if isinstance(answer, dict):
        missing = [e for e in (30, 100) if e not in answer and str(e) not in answer]
        if missing:
            return f"the dict needs the keys 30 and 100 (epochs); {missing} missing"
        raw = {e: answer.get(e, answer.get(str(e))) for e in (30, 100)}
    elif isinstance(answer, (list, tuple)) and len(answer) == 2:
        raw = dict(zip((30, 100), answer))
    else:
        return ("give one word per length, e.g. {30: \"better\", 100: \"tie\"}, using \"better\", \"tie\" or "
                "\"worse\"")
    out = {}
    for e, word in raw.items():
        key = str(word).strip().lower() if isinstance(word, str) else None
        if key == "no":
            return (f"\"no\" for {e} epochs leaves it open whether CE + CMO ties with CE or is worse: "
                    "say \"tie\" or \"worse\"")
        if key not in _SYNONYMS:
            return f"{word!r} for {e} epochs is not one of \"better\", \"tie\", \"worse\""
        out[e] = _SYNONYMS[key]
    return out


@exercise(
    id="03.3",
    kind="predict, then run",
    question=("Predict before you look at the results below: on context-digits-lt (built so that the tail lacks "
              "contexts, CMO's premise), does **CE + CMO beat CE** in overall accuracy when both train **30 "
              "epochs**? And at **100 epochs** (the fitted protocol)? Answer per length with \"better\", \"tie\" "
              "(no difference a paired test over 5 seeds can see, p ≥ 0.05) or \"worse\", e.g. "
              "`answer = {30: \"better\", 100: \"better\"}`. Then read the epochs-vs-gain figure and this "
              "notebook's own 100-epoch table."),
    solution=("**{30: \"worse\", 100: \"tie\"}** (5 seeds, paired by seed; `benchmarks/epochs_sweep.py`). At 30 "
              "epochs CE + CMO is 5.3 points *below* CE (p = 0.008): every model is still under-fitted (CE + CMO's "
              "final train loss 0.36) and every mixed batch is a harder, noisier batch, so a regulariser costs "
              "more than it gives. At 100 epochs the loss is fitted (0.11) and the difference is +0.6 points "
              "(p = 0.24): nothing measurable. The paper's CE + CMO gain (38.6 → 43.9 on CIFAR-100-LT) is **not "
              "reproduced** here at any length up to 150 epochs; what does reproduce is **BS + CMO vs BS**: "
              "+8.7 few-shot (p = 0.004) at 100 epochs (overall +1.6, p = 0.077: 5 seeds do not resolve it). A short schedule turned "
              "a method that helps the tail into one that hurts everyone: judge a regulariser only once the "
              "baseline is fitted.\n\n```python\n"
              "answer = {30: \"worse\", 100: \"tie\"}\n```"),
    answer=_ce_cmo_verdicts,
)
def check_ce_cmo_verdicts(answer: Any) -> Feedback:
    read = _read_verdicts(answer)
    if isinstance(read, str):
        return wrong(read + ".")
    sweep, truth = _sweep(), _ce_cmo_verdicts()
    if read == truth:
        (m30, p30), (m100, p100) = sweep[30], sweep[100]
        return right(f"at 30 epochs CE + CMO is {100 * m30:+.1f} points vs CE (p = {p30:.3f}): worse; at 100 "
                     f"epochs {100 * m100:+.1f} (p = {p100:.2f}): a tie. Under-fitted, the regulariser only costs.")
    notes = []
    for e in (30, 100):
        if read[e] == truth[e]:
            continue
        mean, p = sweep[e]
        measured = f"measured: {100 * mean:+.1f} points overall, p = {p:.3f}"
        if e == 30:
            notes.append(f"at 30 epochs you said \"{read[e]}\" ({measured}): the models are under-fitted and "
                         "mixing makes every batch harder, so CMO costs accuracy before it can regularise")
        elif read[e] == "better":
            notes.append(f"at 100 epochs you said \"better\" ({measured}): fitted, CE + CMO and CE are "
                         "indistinguishable on this data set; it is BS + CMO that gains over BS")
        else:
            notes.append(f"at 100 epochs you said \"{read[e]}\" ({measured}): once fitted, the cost of mixing "
                         "is gone; the difference is within the seed-to-seed noise")
    return wrong("; ".join(notes) + ".")


# --------------------------------------------------------------------------- 03.4
def _hand_box(height: int, width: int, lam0: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The reference box (naver-ai/cmo's rand_bbox), written out: c ± ⌊side/2⌋, clipped."""
    cut_h, cut_w = int(height * math.sqrt(1 - lam0)), int(width * math.sqrt(1 - lam0))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def _box_cases() -> list[tuple[int, int, float, int, int]]:
    cases = []
    for height, width in ((32, 32), (8, 8), (12, 20)):
        for lam0 in (0.0, 0.3, 0.5, 0.7, 0.75, 0.9, 0.97, 1.0):
            centres = ((0, 0), (height // 2, width // 2), (height - 1, width - 1), (2, width - 3), (height // 3, 1))
            for cy, cx in centres:
                cases.append((height, width, lam0, cy, cx))
    return cases


def _as_tuple(box: Any) -> tuple[int, ...]:
    if all(hasattr(box, k) for k in ("top", "bottom", "left", "right")):
        return (box.top, box.bottom, box.left, box.right)
    return tuple(int(v) for v in box)


@exercise(
    id="03.4",
    kind="change the code",
    question=("Write the box yourself: complete `my_box(height, width, lam0, cy, cx)` so that it returns "
              "`(top, bottom, left, right)` (rows `[top, bottom)`, columns `[left, right)`) of CMO's box with the "
              "**reference rounding**: sides $h = \\lfloor H\\sqrt{1-\\lambda_0}\\rfloor$, "
              "$w = \\lfloor W\\sqrt{1-\\lambda_0}\\rfloor$, "
              "rows $[c_y - \\lfloor h/2\\rfloor, c_y + \\lfloor h/2\\rfloor)$, "
              "columns likewise, clipped to the image. Then `answer = my_box`. The check compares it with "
              "`cmo.cut_box` on 120 draws (square and non-square images, borders, odd sides)."),
    solution=("```python\n"
              "def my_box(height, width, lam0, cy, cx):\n"
              "    cut_h = int(height * math.sqrt(1 - lam0))\n"
              "    cut_w = int(width * math.sqrt(1 - lam0))\n"
              "    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)\n"
              "    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)\n"
              "    return top, bottom, left, right\n\n"
              "answer = my_box\n```\n\n"
              "Three places to go wrong: the end of the box is `c + h // 2`, not `top + h` (that is `box=\"exact\"`, "
              "one pixel more for an odd side); rows use the height and columns the width (the reference code calls "
              "the height `W`, which is easy to copy wrongly); and both ends are clipped to the image, which is "
              "what makes λ ≥ λ0 near a border."),
    answer=lambda: _hand_box,
)
def check_my_box(answer: Any) -> Feedback:
    if not callable(answer):
        return wrong(f"give the function itself, answer = my_box (without calling it); {answer!r} is not a function.")
    exact_hits, swapped_hits, unclipped_hits, misses = 0, 0, 0, 0
    first_off = None
    cases = _box_cases()
    for height, width, lam0, cy, cx in cases:
        truth = _as_tuple(cmo.cut_box(height, width, lam0, (cy, cx), "reference"))
        try:
            got = _as_tuple(answer(height, width, lam0, cy, cx))
        except Exception as err:  # noqa: BLE001  (the participant's code: explain, never crash)
            return wrong(f"my_box({height}, {width}, {lam0}, {cy}, {cx}) raised {type(err).__name__}: {err}. "
                         "It must return four integers (top, bottom, left, right).")
        if len(got) != 4:
            return wrong(f"my_box must return four numbers (top, bottom, left, right); it returned {len(got)}.")
        if got == truth:
            continue
        first_off = first_off or ((height, width, lam0, cy, cx), got, truth)
        misses += 1
        exact_hits += got == _as_tuple(cmo.cut_box(height, width, lam0, (cy, cx), "exact"))
        swapped = _as_tuple(cmo.cut_box(width, height, lam0, (cy, cx), "reference")) if height != width else None
        swapped_hits += swapped is not None and got == swapped
        cut_h, cut_w = int(height * math.sqrt(1 - lam0)), int(width * math.sqrt(1 - lam0))
        unclipped_hits += got == (cy - cut_h // 2, cy + cut_h // 2, cx - cut_w // 2, cx + cut_w // 2)
    if first_off is None:
        return right(f"my_box agrees with cmo.cut_box(..., rule=\"reference\") on all {len(cases)} draws.")
    (height, width, lam0, cy, cx), got, truth = first_off
    where = (f"for H = {height}, W = {width}, λ0 = {lam0}, centre ({cy}, {cx}) it returns {got}, "
             f"cmo.cut_box gives {truth}")
    if exact_hits == misses:
        return wrong(f"{where}: that is the exact box (end = start + side). The reference ends at c + ⌊side/2⌋, "
                     "so an odd side loses a pixel.")
    if unclipped_hits == misses:
        return wrong(f"{where}: the box is not clipped. Clip every end to [0, H] for rows and [0, W] for columns.")
    if swapped_hits == misses:
        return wrong(f"{where}: rows and columns are swapped. The rows' side uses the height H, the columns' the "
                     "width W.")
    return wrong(f"{where}. Side ⌊H √(1-λ0)⌋ (int, not round), ends c ± side // 2, then clip to the image.")
