"""Exercises of notebook 04 (Syn-LT / M2m): M2m's acceptance probability, an exact OT cost by hand, and
whether Syn-LT beats CE on ``context-digits-lt``.

The right answers are computed from :mod:`ltkit.methods.synlt` (04.1), :mod:`ltkit.methods.ot` (04.2) and the
measured diagnosis ``notebooks/results/diagnose_synlt_context-digits-lt.txt`` (04.3, made by
``benchmarks/diagnose_synlt.py``; its numbers are also kept here for an installed package without the notebooks).
"""

from __future__ import annotations

import math
from typing import Any

import ot
import torch

from ..methods import ot as lot
from ..methods import synlt
from . import close_to, exercise, Feedback, is_number, numbers_in, right, wrong

__all__: list[str] = []


# --------------------------------------------------------------------------- 04.1
ACCEPT_CASES = ((0.999, 5000, 50), (0.999, 100, 50), (0.96, 136, 5))  # (beta, n_k seed class, n_c target class)


def _acceptance(cases=ACCEPT_CASES) -> list[float]:
    out = []
    for beta, n_k, n_c in cases:
        p = synlt.acceptance_probabilities(torch.tensor([0]), torch.tensor([1]), [n_k, n_c], beta)
        out.append(float(p[0, 0]))
    return out


@exercise(
    id="04.1",
    kind="compute",
    question=("M2m keeps a synthetic sample of target class $c$ seeded from class $k$ with probability "
              "$1 - \\beta^{(n_k - n_c)_+}$. Compute it for (a) CIFAR-10-LT at IF 100, the paper's $\\beta = 0.999$, "
              "$n_k = 5000$, $n_c = 50$; (b) the same $\\beta$ with $n_k = 100$, $n_c = 50$; (c) this notebook's quick "
              "$\\beta = 0.96$ with $n_k = 136$, $n_c = 5$. Give three numbers, e.g. `answer = [0.5, 0.5, 0.5]`."),
    solution=("**[0.9930, 0.0488, 0.9952]** (rounded).\n\n(a) $1 - 0.999^{4950} = 1 - e^{4950 \\ln 0.999} "
              "\\approx 1 - e^{-4.95} \\approx 0.993$; (b) $1 - 0.999^{50} \\approx 0.049$: a gap of 50 images, tiny "
              "for $\\beta = 0.999$, almost never lets a seed through; (c) $1 - 0.96^{131} \\approx 0.995$, why quick "
              "mode uses $\\beta = 0.96$: `digits-lt`'s gaps are a few dozen to 131 images, not thousands.\n\n"
              "```python\nimport torch\nfrom ltkit.methods import synlt\n"
              "answer = [float(synlt.acceptance_probabilities(torch.tensor([0]), torch.tensor([1]), [nk, nc], beta)[0, 0])\n"
              "          for beta, nk, nc in ((0.999, 5000, 50), (0.999, 100, 50), (0.96, 136, 5))]\n```"),
    answer=_acceptance,
)
def check_acceptance(answer: Any) -> Feedback:
    if is_number(answer):
        return wrong(f"give three probabilities, one per case (a), (b), (c); you gave one number, {answer}.")
    values = numbers_in(answer)
    if values is None:
        return wrong(f"give a list of three numbers, the probabilities of (a), (b) and (c); {answer!r} is not one.")
    if len(values) != 3:
        return wrong(f"there are three cases, (a), (b), (c): give three probabilities, you gave {len(values)}.")
    truth = _acceptance()
    if any(not 0 <= v <= 1 for v in values):
        return wrong("a probability lies between 0 and 1; one of yours does not. The formula is 1 - beta ** (n_k - n_c).")
    for name, v, t, (beta, n_k, n_c) in zip("abc", values, truth, ACCEPT_CASES):
        if not math.isclose(v, t, abs_tol=2e-3):
            if math.isclose(v, 1 - t, abs_tol=2e-3):
                return wrong(f"({name}): {v:.4g} is beta^(n_k - n_c), the probability of *rejecting*; "
                             f"the acceptance is 1 minus it.")
            return wrong(f"({name}) should be 1 - {beta} ** ({n_k} - {n_c}); {v:.4g} is "
                         f"{'too high' if v > t else 'too low'}.")
    return right(f"[{', '.join(f'{t:.4f}' for t in truth)}]: a gap of thousands of images is accepted almost surely "
                 f"at beta = 0.999, a gap of 50 almost never; beta must be matched to the data set's counts.")


# --------------------------------------------------------------------------- 04.2
CLOUD_X = ((0.0, 0.0), (1.0, 0.0), (2.0, 0.0))   # weights 1/3 each
CLOUD_Y = ((0.0, 1.0), (2.0, 1.0))               # weights 1/2 each


def _clouds() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(CLOUD_X, dtype=torch.float64), torch.tensor(CLOUD_Y, dtype=torch.float64)


def _exact_ot() -> float:
    return float(lot.exact_cost(*_clouds()))


@exercise(
    id="04.2",
    kind="compute",
    question=("Three points $x = (0,0), (1,0), (2,0)$ of mass $1/3$ each, two points $y = (0,1), (2,1)$ of mass "
              "$1/2$ each, cost $C_{ij} = \\|x_i - y_j\\|^2$. What is the **exact** OT cost $\\min_P \\langle P, C\\rangle$? "
              "Find the plan by hand first (the middle point must split its mass), then check it with POT: "
              "`ot.emd2(a, b, C)` (or `lot.exact_cost(x, y)`). Give one number."),
    solution=("**4/3 ≈ 1.333**.\n\nThe outer points go straight up: $x_1 \\to y_1$ and $x_3 \\to y_2$, mass $1/3$ each "
              "at cost 1. The middle point $(1,0)$ is at squared distance $1 + 1 = 2$ from both $y$'s and sends $1/6$ to "
              "each (each $y$ needs $1/2 = 1/3 + 1/6$). Cost $= \\tfrac13 \\cdot 1 + \\tfrac13 \\cdot 1 + \\tfrac13 \\cdot 2 "
              "= 4/3$.\n\n```python\nimport numpy as np, ot\nx = np.array([[0, 0], [1, 0], [2, 0]], float); "
              "y = np.array([[0, 1], [2, 1]], float)\nanswer = ot.emd2(np.full(3, 1/3), np.full(2, 1/2), "
              "ot.dist(x, y))   # ot.dist: squared Euclidean by default\n```\n\nThe plan is not a permutation: with "
              "unequal numbers of points, mass must split — what a one-to-one matching cannot express."),
    answer=_exact_ot,
)
def check_exact_ot(answer: Any) -> Feedback:
    if not is_number(answer) and not (hasattr(answer, "item") and getattr(answer, "ndim", 1) == 0):
        return wrong(f"give one number, the exact OT cost; {answer!r} is not one.")
    value, truth = float(answer), _exact_ot()
    if value < 0:
        return wrong(f"an OT cost is a sum of masses times non-negative costs, never negative; {value:.4g} cannot be it.")
    x, y = _clouds()
    euclid = float(ot.emd2(torch.full((3,), 1 / 3, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64),
                           torch.cdist(x, y)))
    if math.isclose(value, euclid, rel_tol=1e-3) and not math.isclose(euclid, truth, rel_tol=1e-3):
        return wrong(f"{value:.4g} is the cost with plain Euclidean distances; the cost here is the *squared* distance.")
    if math.isclose(value, 1.0, rel_tol=1e-3):
        return wrong("1.0 sends every point straight up at cost 1, but the middle point (1, 0) has no y straight above "
                     "it: its squared distance to both y's is 2.")
    return close_to(value, truth, rel=1e-3, what="the exact OT cost",
                    hint="Each outer point goes straight up (cost 1, mass 1/3); the middle one splits its 1/3 between "
                         "the two y's at squared distance 2.")


# --------------------------------------------------------------------------- 04.3
# notebooks/results/diagnose_synlt_context-digits-lt.txt: 100 epochs, seeds 0-4, paired with CE of the same seed
DIAGNOSIS = {"Syn-LT": dict(overall=-4.2, few=-9.4), "M2m": dict(overall=-4.2, few=-9.4),
             "DRS (re-draw only)": dict(overall=-4.2, few=-10.4)}


def _delta_few() -> float:
    return DIAGNOSIS["Syn-LT"]["few"]


@exercise(
    id="04.3",
    kind="predict, then run",
    question=("**Predict first**: on `context-digits-lt` (100 epochs, 5 seeds), does Syn-LT beat plain CE on the "
              "**few** group, and by how much? Write your guess down, then run the diagnosis cell below and give the "
              "paired difference Syn-LT − CE on the few group, in points (with its sign), e.g. `answer = 3.0`."),
    solution=("**−9.4 points** (± 2.2 over the 5 paired seeds, p < 0.001): Syn-LT *trails* CE on the few group, "
              "and by 4.2 points overall.\n\nThe row \"DRS (re-draw only)\" — the class-balanced re-draw M2m switches "
              "on with generation, without any synthesis — loses as much (−10.4 few, −4.2 overall), and M2m (no OT term) "
              "lands where Syn-LT does: all of the loss comes from the deferred re-sampling, and neither the synthetic "
              "images nor the OT term change anything measurable, whatever η (acceptance 2 % at 0.1), λ1 or τ."),
    answer=_delta_few,
)
def check_delta_few(answer: Any) -> Feedback:
    if not is_number(answer):
        return wrong(f"give one number, Syn-LT's few-group accuracy minus CE's, in points; {answer!r} is not one.")
    value, truth = float(answer), _delta_few()
    if math.isclose(value, -truth, abs_tol=0.15):
        return wrong(f"{value:+.1f} has the wrong sign: Syn-LT is *below* CE on the few group (Syn-LT − CE < 0).")
    if math.isclose(value, DIAGNOSIS["Syn-LT"]["overall"], abs_tol=0.15):
        return wrong(f"{value:+.1f} is the overall difference; the question asks for the few group (column Δ few).")
    if math.isclose(value, DIAGNOSIS["DRS (re-draw only)"]["few"], abs_tol=0.15):
        return wrong(f"{value:+.1f} is the re-draw alone (DRS); read the Syn-LT row (η = 0.5, λ1 = 0.5, τ = 0.9).")
    if abs(value) > 100:
        return wrong(f"{value:+.1f} points is impossible: accuracies lie between 0 and 100.")
    if not math.isclose(value, truth, abs_tol=0.15):
        return wrong(f"{value:+.1f} is not the Syn-LT row's Δ few; read the column 'Δ few' of the row 'Syn-LT' "
                     f"(it is {'below' if truth < value else 'above'} your value).")
    return right(f"{truth:+.1f} points (p < 0.001): Syn-LT trails CE on the few group, and the re-draw alone (DRS) "
                 f"loses as much: synthesis and the OT term add nothing measurable here.")
