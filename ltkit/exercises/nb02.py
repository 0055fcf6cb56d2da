"""Exercises of notebook 02 (sampling q(r, k) and re-weighting losses): from "predict, then run" to "change the code".

Every right answer is computed from :mod:`ltkit.sampling` / :mod:`ltkit.losses`, so the checks follow
the kit if a sampler or a loss ever changes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import losses, sampling
from . import exercise, Feedback, is_number, right, same_numbers, wrong

__all__: list[str] = []


# --------------------------------------------------------------------------- 02.1
SQRT_COUNTS = [100, 25]


def _sqrt_probabilities() -> list[float]:
    return sampling.implied_class_probabilities(SQRT_COUNTS, 0.5).tolist()


@exercise(
    id="02.1",
    kind="predict, then run",
    question=("Predict, before running anything: a training set has two classes with 100 and 25 images. "
              "With **square-root sampling** (`sampler=\"sqrt\"`, as in Mahajan et al. 2018 and Kang et al. 2020), "
              "what is the probability that one draw lands in each class? Give the two probabilities, e.g. "
              "`answer = [0.5, 0.5]`. Then run `sampling.make_sampler(labels, [100, 25], \"sqrt\")` on "
              "`labels = torch.tensor([0] * 100 + [1] * 25)` and count one epoch of draws to see it."),
    solution=("[2/3, 1/3]. Square-root sampling draws class k with probability p_k ∝ n_k^(1/2): √100 = 10 and "
              "√25 = 5, so p = [10, 5] / 15 = [0.667, 0.333].\n\n```python\n"
              "answer = sampling.implied_class_probabilities([100, 25], 0.5).tolist()   # [0.667, 0.333]\n"
              "labels = torch.tensor([0] * 100 + [1] * 25)\n"
              "s = sampling.make_sampler(labels, [100, 25], \"sqrt\", seed=0, num_samples=12_500)\n"
              "torch.bincount(labels[sampling.epoch_indices(s)]) / 12_500          # about [0.67, 0.33]\n```\n\n"
              "The head class is still drawn more often, but only twice as often for four times the images: "
              "half-way (on a log scale) between instance-balanced [0.8, 0.2] and class-balanced [0.5, 0.5]. "
              "It is the code view of q(r, k) at r = 1/2 (per-sample weight n^(-1/2)). The *paper view* "
              "q(1/2, k) ∝ n^(-1/2) would give [1/3, 2/3], favouring the tail: that is `q-class` with r = 0.5."),
    answer=_sqrt_probabilities,
)
def check_sqrt_probabilities(answer: Any) -> Feedback:
    if is_number(answer) or isinstance(answer, str):
        return wrong(f"give one probability per class, two numbers such as [0.5, 0.5]; you gave {answer!r}.")
    values = np.asarray(list(answer), dtype=float)
    if values.shape != (2,):
        return wrong(f"there are two classes (100 and 25 images), so give two probabilities; you gave {values.size}.")
    if not np.isclose(values.sum(), 1.0, atol=0.01):
        if np.allclose(values / values.sum(), _sqrt_probabilities(), rtol=0.02):
            return wrong(f"the proportions are right but {values.tolist()} sums to {values.sum():.3g}: "
                         "divide by the sum so that the probabilities add up to 1.")
        return wrong(f"probabilities of drawing one class or the other must add up to 1; {values.tolist()} sums "
                     f"to {values.sum():.3g}.")
    for name, probs, why in (
        ("instance-balanced sampling (p ∝ n)", [0.8, 0.2], "square-root sampling flattens that: p ∝ √n."),
        ("class-balanced sampling (p ∝ 1)", [0.5, 0.5], "square-root sampling still favours the head: p ∝ √n."),
        ("the paper view q(1/2, k) ∝ n^(-1/2) (sampler 'q-class', r = 0.5)", [1 / 3, 2 / 3],
         "square-root sampling in the literature is p ∝ n^(+1/2): the head stays more likely."),
        ("inverse-frequency sampling (p ∝ 1/n)", [0.2, 0.8], "square-root sampling is p ∝ √n."),
    ):
        if np.allclose(values, probs, atol=0.01):
            return wrong(f"{np.round(values, 3).tolist()} is {name}; {why}")
    return same_numbers(values, _sqrt_probabilities(), rel=0.02, what="the class probabilities",
                        hint="Take the square root of each class size and divide by their sum.")


# --------------------------------------------------------------------------- 02.2
def _effective_number() -> float:
    return float(sampling.effective_number([1000, 1], 0.999)[0])


@exercise(
    id="02.2",
    kind="compute",
    question=("Compute the **effective number** of a class of n = 1000 images at β = 0.999 "
              "(Cui et al., CVPR 2019): E(n) = (1 - β^n) / (1 - β). By hand (or with numpy) first, then with "
              "`sampling.effective_number([1000, 1], 0.999)`. Give E(1000) as one number."),
    solution=("E(1000) ≈ 632.3: β^n = 0.999^1000 = e^(1000 · ln 0.999) ≈ e^(-1.0005) ≈ 0.368, so "
              "E = (1 - 0.368) / 0.001 ≈ 632.\n\n```python\n"
              "answer = (1 - 0.999 ** 1000) / (1 - 0.999)                      # 632.3\n"
              "float(sampling.effective_number([1000, 1], 0.999)[0])           # the same\n```\n\n"
              "A thousand images count like about 632 'new' ones: at β = 0.999 a class saturates near "
              "1 / (1 - β) = 1000, so the weights 1 / E(n_k) of the head classes flatten out while the tail "
              "(E(n) ≈ n for n ≪ 1000) keeps weights ∝ 1/n. β → 0 gives E = 1 (no re-weighting), β → 1 gives "
              "E = n (inverse frequency)."),
    answer=_effective_number,
)
def check_effective_number(answer: Any) -> Feedback:
    if not is_number(answer):
        return wrong(f"give E(1000) as one number, e.g. answer = 500.0; you gave {answer!r} "
                     f"({type(answer).__name__}).")
    value, truth = float(answer), _effective_number()
    if math.isclose(value, 1000, rel_tol=1e-3):
        return wrong("1000 is n itself: E(n) = n only as β → 1. At β = 0.999 the overlap between samples "
                     "makes a class count for fewer than its n images.")
    if math.isclose(value, 1.0, rel_tol=1e-3):
        return wrong("E(n) = 1 is the limit β = 0 (every class counts as one sample). Use β = 0.999.")
    if math.isclose(value, 0.999**1000 / 0.001, rel_tol=0.01):
        return wrong(f"{value:.4g} is β^n / (1 - β); the numerator is 1 - β^n, not β^n.")
    if math.isclose(value, 1 / truth, rel_tol=0.01):
        return wrong(f"{value:.4g} is the class weight 1 / E(n), not the effective number E(n) itself.")
    if math.isclose(value, truth, rel_tol=0.005):
        return right(f"E(1000) at β = 0.999 is {truth:.1f}: a thousand images count like about {truth:.0f}.")
    direction = "too high" if value > truth else "too low"
    return wrong(f"{value:.4g} is {direction} for E(1000) at β = 0.999. Compute (1 - 0.999 ** 1000) / (1 - 0.999): "
                 "β^n is 0.999 multiplied by itself 1000 times, not 0.999 · 1000.")


# --------------------------------------------------------------------------- 02.3
def _reference_posthoc(logits: torch.Tensor, counts: list[int], tau: float = 1.0) -> torch.Tensor:
    return losses.make_loss("la-posthoc", counts, tau=tau).predict_logits(logits)


def _posthoc_solution(logits: torch.Tensor, counts: Any, tau: float = 1.0) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    prior = counts / counts.sum()
    return logits - tau * torch.log(prior).to(logits.dtype)


def _cases() -> list[tuple[torch.Tensor, list[int], float]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), [400, 100, 20, 5], tau) for tau in (1.0, 0.5, 2.0)]


@exercise(
    id="02.3",
    kind="change the code",
    question=("Write **post-hoc logit adjustment** yourself (Menon et al., ICLR 2021): a function "
              "`my_posthoc(logits, counts, tau=1.0)` that returns the adjusted logits z - τ · log π, with the "
              "class prior π_k = n_k / N from the training counts. Pass the *function* as the answer; the check "
              "compares it with `losses.make_loss(\"la-posthoc\", counts, tau=tau).predict_logits(logits)` on "
              "random logits for τ = 1, 0.5 and 2."),
    solution=("```python\ndef my_posthoc(logits, counts, tau=1.0):\n"
              "    counts = torch.as_tensor(counts, dtype=torch.float64)\n"
              "    log_prior = torch.log(counts / counts.sum())\n"
              "    return logits - tau * log_prior.to(logits.dtype)\n\nanswer = my_posthoc\n```\n\n"
              "Subtracting τ log π_k *raises* the score of rare classes (log π_k is very negative for them), "
              "so the argmax moves toward the tail without retraining: the network is CE's, only the decision "
              "rule changes. That is why the `LA (post hoc)` runs above have exactly CE's weights, seed for "
              "seed, and their paired difference to CE is the effect of the decision rule alone. "
              "Training with `+ τ log π` inside the loss instead (`la`; Balanced Softmax at τ = 1) changes the "
              "network."),
    answer=lambda: _posthoc_solution,
)
def check_posthoc(answer: Any) -> Feedback:
    if not callable(answer):
        return wrong(f"the answer is your function itself (answer = my_posthoc, without brackets); you gave "
                     f"{answer!r} ({type(answer).__name__}).")
    for logits, counts, tau in _cases():
        try:
            mine = answer(logits.clone(), list(counts), tau)
        except Exception as err:  # noqa: BLE001  (the participant's code: explain, never crash)
            return wrong(f"calling your function with 8 x 4 logits, counts {counts} and tau={tau} raised "
                         f"{type(err).__name__}: {err}.")
        if mine is None:
            return wrong("your function returned None: end it with `return logits - tau * log_prior` "
                         "(replace the ... with your code).")
        try:
            mine = torch.as_tensor(mine, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            return wrong(f"your function returned {type(mine).__name__}, which is not an array of logits ({err}).")
        truth = _reference_posthoc(logits, counts, tau).double()
        if mine.shape != truth.shape:
            return wrong(f"the adjusted logits should have the shape of the logits, {tuple(truth.shape)}; yours "
                         f"have {tuple(mine.shape)}. Subtract one value per class (broadcast over the batch).")
        if torch.allclose(mine, truth, atol=1e-5):
            continue
        log_prior = torch.log(torch.tensor(counts, dtype=torch.float64) / sum(counts))
        z = logits.double()
        if torch.allclose(mine, z + tau * log_prior, atol=1e-5):
            return wrong("you added τ log π: that is the *training-time* adjustment (the `la` loss, Balanced "
                         "Softmax at τ = 1). Post hoc, the prior is *subtracted*: z - τ log π raises the rare classes.")
        if torch.allclose(mine, z - log_prior, atol=1e-5):
            return wrong(f"right for τ = 1, but with tau={tau} your function still subtracts log π once: "
                         "multiply the log prior by tau.")
        if torch.allclose(mine, z - tau * torch.log(torch.tensor(counts, dtype=torch.float64)), atol=1e-5):
            return wrong("you subtracted τ log n_k (the counts), not τ log π_k: the argmax is the same, but the "
                         "logits are off by τ log N. Divide the counts by their sum first.")
        off = (mine - truth).abs().max().item()
        return wrong(f"with tau={tau} and counts {counts} your logits differ from ltkit's by up to {off:.3g}. "
                     "Compute log_prior = log(counts / counts.sum()) and return logits - tau * log_prior.")
    return right("your post-hoc adjustment matches ltkit.losses' la-posthoc for τ = 1, 0.5 and 2.")
