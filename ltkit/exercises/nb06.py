"""Exercises of notebook 06 (feedback-guided synthesis): the fill counts, which criteria saturate on a
confident classifier, and one guided DDIM step written by hand."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from . import exercise, is_number, numbers_in, right, same_numbers, wrong
from ..methods import diffusion, feedback


def _digits_counts() -> list[int]:
    from ..data import load_digits_lt

    return list(load_digits_lt().class_counts)


# =========================================================================== 06.1
@exercise(
    id="06.1",
    kind="compute",
    question=(
        "The fill tops every class of digits-lt up to the largest: class $c$ with $n_c$ real images gets "
        "$\\max(N_{\\mathrm{target}} - n_c, 0)$ synthetic ones, $N_{\\mathrm{target}} = 140$. With the class sizes "
        "`counts` (`[140, 103, 76, 56, 42, 31, 23, 17, 12, 9]`), compute the ten fill counts, head first "
        "(without `feedback.fill_counts`)."),
    solution=(
        "`[max(140 - n, 0) for n in counts]` = **[0, 37, 64, 84, 98, 109, 117, 123, 128, 131]**, 891 synthetic "
        "images in all: real + synthetic is 140 in every class (1,400 images, of which 509 real). The head class "
        "gets none, the tail class 9 gets 131 synthetic images for its 9 real ones -- 94 % of what the classifier "
        "sees of a \"9\" is made by the generator, which is why the generator's knowledge of the tail matters so "
        "much. `feedback.fill_counts(counts)` gives the same list; `fill_counts(counts, target)` a smaller fill."),
    answer=lambda: feedback.fill_counts(_digits_counts()),
)
def check_fill_counts(answer: Any) -> Any:
    counts = _digits_counts()
    truth = feedback.fill_counts(counts)
    if is_number(answer):
        if math.isclose(float(answer), sum(truth)):
            return wrong(f"{sum(truth)} is the total; give the list of the ten per-class counts, head first.")
        return wrong("give a list of ten numbers, one per class (head first), not a single number.")
    values = numbers_in(answer)
    if values is None:
        return wrong("give a list of ten whole numbers, one fill count per class, head first.")
    if len(values) != len(counts):
        return wrong(f"digits-lt has {len(counts)} classes: give {len(counts)} numbers, you gave {len(values)}.")
    if values == [max(counts)] * len(counts):
        return wrong("that is real + synthetic (140 in every class); subtract the real images n_c.")
    if values == [float(n) for n in counts]:
        return wrong("those are the real class sizes n_c; the fill is what is missing to reach 140.")
    if any(v < 0 for v in values):
        return wrong("a class never gets a negative number of images: max(N_target - n_c, 0) is at least 0.")
    if values == [float(max(counts) - n) for n in reversed(counts)]:
        return wrong("the list is reversed: head first, so class 0 (140 real images) gets 0.")
    return same_numbers(values, truth, what="the fill counts", hint="N_target - n_c, with N_target = 140.")


# =========================================================================== 06.2
GAP = 30.0  # the logit of the intended class above every other one


def _vanishing_criteria() -> list[str]:
    """The criteria whose gradient (before the normalisation) is below 1e-6 on a confidently classified image."""
    classifier = feedback.load_feedback_classifier("digits-lt")
    logits = torch.zeros(1, 10)
    logits[0, 0] = GAP
    labels = torch.tensor([0])
    norms = {}
    for kind in ("loss", "entropy"):
        z = logits.clone().requires_grad_(True)
        feedback.criterion_values(kind, z, labels).sum().backward()
        norms[kind] = float(z.grad.norm())
    from ..data import load_digits_lt

    digits = load_digits_lt()
    image = digits.x_train[digits.y_train == 0][:1].float() / 255
    with torch.no_grad():
        phi = classifier.model.features(classifier._prepare(image)).float()
    phi.requires_grad_(True)
    feedback.criterion_values("hardness", logits, labels, phi, classifier.means, classifier.precision).sum().backward()
    norms["hardness"] = float(phi.grad.norm())
    return sorted(kind for kind, norm in norms.items() if norm < 1e-6)


def _names(answer: Any) -> set[str] | None:
    if isinstance(answer, str):
        answer = [answer]
    if not hasattr(answer, "__iter__"):
        return None
    names = set()
    for item in answer:
        if not isinstance(item, str):
            return None
        names.add(item.strip().lower())
    return names


@exercise(
    id="06.2",
    kind="predict, then run",
    question=(
        "The feedback classifier is sure about an image: the intended class's logit is 30 above every other "
        "one ($p_y \\approx 1 - 9e^{-30}$). Predict, before running the cell below, which criteria's gradients "
        "(with respect to the classifier's output, before the guidance step normalises them) nearly vanish: "
        "give a list of names among `'loss'`, `'entropy'`, `'hardness'` (an empty list if none)."),
    solution=(
        "**['entropy', 'loss'].** Both are functions of the softmax, and a saturated softmax is flat: "
        "$\\partial(-\\log p_y)/\\partial z = p - e_y$, and $\\partial H / \\partial z_j = -p_j (z_j - \\sum_k p_k z_k)$; "
        "every entry is of order $30\\,e^{-30} \\approx 3 \\cdot 10^{-12}$. The hardness is a squared Mahalanobis "
        "distance of the penultimate features, $(\\phi - \\mu_y)^\\top \\Sigma^{-1} (\\phi - \\mu_y)$: its gradient "
        "$2 \\Sigma^{-1}(\\phi - \\mu_y)$ is as large as the image is atypical, however confident the softmax. "
        "Two consequences. First, the guidance step normalises the gradient to $s \\lVert x_t \\rVert$, so a "
        "tiny gradient still becomes a full step -- only its *direction* counts, and in float32 autograd that "
        "direction is lost on saturated rows (up to 70 degrees off from a logit gap of about 20): this is why "
        "`feedback.entropy` and `feedback.target_loss` write their gradients out. Second, past a gap of about "
        "100 the other probabilities underflow to 0 and the loss and entropy give exactly no step: they steer "
        "only images the classifier still has doubts about, while the hardness also pushes typical-looking, "
        "confidently classified images towards the edge of their class."),
    answer=_vanishing_criteria,
)
def check_vanishing(answer: Any) -> Any:
    names = _names(answer)
    if names is None:
        return wrong("give a list of criterion names (strings), e.g. ['loss'] or [] for none.")
    unknown = names - set(feedback.CRITERIA)
    if unknown:
        return wrong(f"{sorted(unknown)} is no criterion here; the three are 'loss', 'entropy' and 'hardness'.")
    truth = set(_vanishing_criteria())
    if names == truth:
        return right("the loss and the entropy live on the softmax, which is flat once it saturates (gradients "
                     "of order 30 e^-30); the hardness measures the features and keeps its gradient.")
    if "hardness" in names:
        return wrong("the hardness does not saturate: it is a squared Mahalanobis distance of the penultimate "
                     "features, with gradient 2 Σ⁻¹(φ - μ_y) -- as large as the image is atypical, whatever "
                     "the softmax says.")
    if not names:
        return wrong("two of them do vanish: which criteria are functions of the softmax p alone? "
                     "p is flat once one class has all the mass.")
    if names == {"loss"}:
        return wrong("the entropy vanishes too: ∂H/∂z_j = -p_j (z_j - Σ p_k z_k), and every p_j but the winner's "
                     "is e^-30; the winner's term is multiplied by (z_y - Σ p_k z_k), which is almost 0.")
    return wrong("the loss vanishes too: ∂(-log p_y)/∂z = p - e_y, whose entries are 1 - p_y and the other p_k, "
                 "all of order e^-30.")


# =========================================================================== 06.3
def _reference_step(x_t, eps, grad, s, alpha_bar_t, alpha_bar_next):
    """The released sampler's guided step (no blend, no rescaling, no clipping), from ltkit's pieces."""
    moved = x_t + feedback.normalised_step(grad, x_t, float(s))
    x0 = diffusion.predicted_x0(moved, eps, alpha_bar_t)
    return alpha_bar_next.sqrt() * x0 + (1 - alpha_bar_next).sqrt() * eps


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_t, eps, grad = (torch.randn(4, 1, 8, 8, generator=gen) for _ in range(3))
    grad[0] *= 1e-3  # per-sample gradient sizes differ a lot (a batch-wide norm would show)
    grad[1] *= 50
    return x_t, eps, grad, torch.tensor(0.3), torch.tensor(0.6)


def _step_with(move: Callable, x_t, eps, grad, s, ab_t, ab_next):
    x0 = diffusion.predicted_x0(x_t + move(grad, x_t, s), eps, ab_t)
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps


def _batch_norm_move(grad, x, s):
    return s * x.norm() * grad / grad.norm()


WRONG_MOVES = {
    "you moved downhill (x_t - g): the feedback is gradient *ascent*, x_t + g, towards a higher criterion.":
        lambda grad, x, s: -feedback.normalised_step(grad, x, s),
    "the raw gradient was added (x_t + s·grad): normalise it per sample, g = s·‖x_t‖·grad / ‖grad‖.":
        lambda grad, x, s: s * grad,
    "the step is s·grad / ‖grad‖: multiply by the sample's own norm ‖x_t‖ too, so s is a fraction of x_t.":
        lambda grad, x, s: s * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1),
    "the norms are over the whole batch: take ‖x_t‖ and ‖grad‖ per sample (over all but the batch dimension).":
        _batch_norm_move,
    "the feedback move is missing: add g to x_t before the DDIM step.":
        lambda grad, x, s: torch.zeros_like(x),
}


def _check_step(fn: Any) -> Any:
    if not callable(fn):
        return wrong("give your function itself (answer = ddim_guided_step), not its result.")
    x_t, eps, grad, ab_t, ab_next = _inputs()
    s = 0.1
    try:
        with torch.no_grad():
            out = fn(x_t.clone(), eps.clone(), grad.clone(), s, ab_t.clone(), ab_next.clone())
    except Exception as err:  # noqa: BLE001  (the participant's code: explain, never raise)
        return wrong(f"calling your function raised {type(err).__name__}: {err}. It gets x_t, eps and grad as "
                     "(4, 1, 8, 8) tensors, s as a float and the two ᾱ as 0-dim tensors.")
    if out is None:
        return wrong("your function returns None: replace the ... with its body and return x_{t'}.")
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
        return wrong(f"return a tensor of the shape of x_t {tuple(x_t.shape)}, got "
                     f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}.")
    truth = _reference_step(x_t, eps, grad, s, ab_t, ab_next)
    if torch.allclose(out, truth, rtol=1e-4, atol=1e-5):
        return right("the normalised ascent move, then x̂0 from the moved x_t with the noise predicted before "
                     "the move, then DDIM: x_{t'} = sqrt(ᾱ_{t'}) x̂0 + sqrt(1 - ᾱ_{t'}) ε -- the released "
                     "sampler's step (without its blend and rescaling).")
    for message, move in WRONG_MOVES.items():
        if torch.allclose(out, _step_with(move, x_t, eps, grad, s, ab_t, ab_next), rtol=1e-4, atol=1e-5):
            return wrong(message)
    with torch.no_grad():
        plain = fn(x_t.clone(), eps.clone(), grad.clone(), 0.0, ab_t.clone(), ab_next.clone())
    if plain is None or not torch.allclose(plain, _reference_step(x_t, eps, grad, 0.0, ab_t, ab_next),
                                           rtol=1e-4, atol=1e-5):
        return wrong("even with s = 0 (no feedback) your step is not DDIM: check x̂0 = (x - sqrt(1 - ᾱ_t) ε) / "
                     "sqrt(ᾱ_t) and x_{t'} = sqrt(ᾱ_{t'}) x̂0 + sqrt(1 - ᾱ_{t'}) ε (square roots of ᾱ, not ᾱ).")
    worst = float((out - truth).abs().max())
    return wrong(f"with s = 0 your DDIM step is right, but with s = 0.1 it is off by up to {worst:.3g}: check the "
                 "move g = s·‖x_t‖·grad/‖grad‖ (per sample), added to x_t before x̂0 is formed.")


@exercise(
    id="06.3",
    kind="change the code",
    question=(
        "Write one guided DDIM step of the released sampler (without its blend and rescaling, no clipping): "
        "complete `ddim_guided_step(x_t, eps, grad, s, alpha_bar_t, alpha_bar_next)`, where `eps` is the CFG "
        "noise predicted at $x_t$ *before* the move and `grad` is $\\nabla_{x_t} C$. "
        "(1) the move $g = s \\lVert x_t \\rVert\\, \\mathrm{grad} / \\lVert \\mathrm{grad} \\rVert$ per sample, "
        "(2) ascent $x_t \\leftarrow x_t + g$, (3) $\\hat x_0$ from the moved $x_t$ and `eps`, and the DDIM step "
        "$x_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\, \\hat x_0 + \\sqrt{1 - \\bar\\alpha_{t'}}\\, \\varepsilon$. Return "
        "$x_{t'}$. Only torch: no `feedback.*` helpers."),
    solution=(
        "```python\n"
        "def ddim_guided_step(x_t, eps, grad, s, alpha_bar_t, alpha_bar_next):\n"
        "    per_sample = lambda v: v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))\n"
        "    g = s * per_sample(x_t) * grad / (per_sample(grad) + 1e-8)       # (1) normalised, per sample\n"
        "    x_t = x_t + g                                                    # (2) ascent\n"
        "    x0 = (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()   # (3) x̂0 of the moved point\n"
        "    return alpha_bar_next.sqrt() * x0 + (1 - alpha_bar_next).sqrt() * eps\n"
        "```\n"
        "It is `x_t + feedback.normalised_step(grad, x_t, s)` followed by `diffusion.predicted_x0` and the DDIM "
        "update. Because `eps` is reused, the whole move goes into $\\hat x_0$, amplified by "
        "$1 / \\sqrt{\\bar\\alpha_t}$ -- the reason a given $s$ pushes harder in the released sampler than in the "
        "re-evaluating one, which predicts the noise again at the moved point and takes part of the move back. "
        "The released code also blends $\\hat x_0$ into $x_t$ and rescales the decoded image before the "
        "classifier: those change `grad`, not this step."),
    answer=lambda: _reference_step,
)
def check_step(answer: Any) -> Any:
    return _check_step(answer)
