r"""CMO — context-rich minority oversampling — and the CutMix family it belongs to.

Park, Hong, Heo, Yun, Choi, "The Majority Can Help the Minority: Context-rich
Minority Oversampling for Long-tailed Classification", CVPR 2022 (reference
code: github.com/naver-ai/cmo).

The idea
--------
Tail classes are seen in too few *contexts*.  CMO pastes a patch of a
minority-weighted image (the **foreground**) into an ordinary training image
(the **background**), so a rare object appears on the many backgrounds of the
head classes.  Two streams over the same training set:

* background ``(x^b, y^b)``: the engine's ordinary batch (shuffled, instance-balanced);
* foreground ``(x^f, y^f)``: drawn with replacement from a weighted
  distribution ``Q`` (below), with the same augmentation.  As in the reference
  code, a fresh pass of ``N`` draws starts at every epoch, and another when a
  pass is exhausted; a foreground batch is drawn for every batch of an on
  epoch, mixed or not.

For every batch, with probability ``p`` (``prob``, 0.5 in the paper)

.. math::

    \lambda_0 \sim \mathrm{Beta}(\alpha, \alpha),\qquad
    h = \lfloor H\sqrt{1-\lambda_0}\rfloor,\ w = \lfloor W\sqrt{1-\lambda_0}\rfloor,\qquad
    (c_y, c_x) \sim \mathcal{U}\{0..H-1\}\times\mathcal{U}\{0..W-1\}

    B = [c_y - \lfloor h/2\rfloor,\ c_y + \lfloor h/2\rfloor) \times
        [c_x - \lfloor w/2\rfloor,\ c_x + \lfloor w/2\rfloor)\ \text{clipped to the image}

    \tilde x = M_B \odot x^f + (1 - M_B) \odot x^b,\qquad
    \lambda = 1 - \frac{|B|}{HW},\qquad
    \mathcal{L} = \lambda\, L(f(\tilde x), y^b) + (1-\lambda)\, L(f(\tilde x), y^f)

for *any* loss ``L`` of :mod:`ltkit.losses` (the engine's
``ctx.mixed_loss``).  One box per batch, as in the reference code; ``λ`` is
recomputed from the real (clipped) box area.  The box is the reference code's
(``rand_bbox`` in naver-ai/cmo's ``cifar_train.py``): ``c ± ⌊side/2⌋``, so an
odd side ``h`` gives ``h - 1`` rows (``box="reference"``, the default; see below
for ``box="exact"``).

The foreground distribution Q
-----------------------------
``weighting`` (see :mod:`ltkit.sampling` for the two views of ``q(r, k)``):

* ``"q-sample"`` (**default, the reference code**): per-sample weight
  ``n_{y_i}^{-r}``, so class ``k`` is drawn with probability ``∝ n_k^{1-r}``;
  ``r = 1`` is class-balanced, ``r = 1/2`` square-root, ``r = 2`` favours the
  tail in proportion to its rarity;
* ``"q-class"``: the paper's formula read as a class probability, ``∝ n_k^{-r}``;
* ``"effective-number"``: class probability ``∝ 1 / E(n_k)``,
  ``E(n) = (1 - β^n)/(1 - β)`` (Cui et al., CVPR 2019): our reading of the
  paper's ``E(k)`` (Table 10), which the public code does not contain;
* ``"effective-number-sample"``: the other reading, the code's per-sample
  convention applied to ``E``: weight ``1 / E(n_{y_i})`` per sample, class
  probability ``∝ n_k / E(n_k)`` (close to class-balanced when ``β → 1``).

When CMO is on
--------------
The paper switches CMO off at both ends; its code mixes only when
``3 < epoch < epochs - 3`` (0-based): off for the first 3 + 1 and the last 3
of 200 epochs.  ltkit mixes when ``off_first <= epoch < epochs - off_last``.
**Choice**: the defaults (``None``) scale the paper's 4 and 3 epochs of 200 to
the run's length, at least one epoch each:
``off_first = max(1, round(4 E / 200))``, ``off_last = max(1, round(3 E / 200))``
(200 epochs: 4 and 3, exactly the paper; 100 epochs: 2 and 2; 30 epochs: 1 and
1).  Pass integers to fix them (``off_first=4, off_last=3`` for the paper's
ImageNet-LT runs).  Outside the on epochs nothing is drawn and the batch
passes through unchanged.

Other choices where the reference code has quirks.  Its box spans
``c ± ⌊side/2⌋``: ``2⌊side/2⌋`` pixels, one short of the side when it is odd.
ltkit follows it by default (``box="reference"``); ``box="exact"`` gives the
unclipped box exactly ``⌊H√(1-λ_0)⌋`` rows and ``⌊W√(1-λ_0)⌋`` columns.  The
difference is small on CIFAR but not on small images: with ``α = 1`` the mean
pasted area is 29.9 % (reference) vs 31.0 % (exact) of a 32 × 32 image, but
23.3 % vs 28.0 % of an 8 × 8 digit, and a side of 1 pastes nothing under the
reference rounding, so 6.25 % of mixed 8 × 8 batches get an empty box (λ = 1:
the foreground label gets no weight) vs 1.56 % (0.39 % vs 0.10 % at 32 × 32).
(Exact values for ``λ_0 ~ U(0, 1)``, checked in ``tests/test_cmo.py``.)  The
reference also calls the height ``W`` (it draws the row centre first, then the
column centre, as here).

**Departure from naver-ai/cmo** (``imbalance_data/imbalance_cifar.py``:
``np.random.seed(rand_number)`` when the long-tailed subset is built): its NumPy stream (coin, λ, centre) is re-seeded by the data subset's
seed whatever the run's seed, so every seed of a run draws the same boxes; here
every draw derives from ``config.seed``, so seeds are independent repetitions.

Variants (the paper's Table 9 and Table 11)
-------------------------------------------
* ``"cutmix"`` — plain CutMix (Yun et al., ICCV 2019): the foreground is the
  *same batch* in a random order (background and foreground both from the
  original distribution).  Same box, λ, ``prob`` and off epochs.
  **Departure from naver-ai/cmo and clovaai/CutMix-PyTorch** under DDP
  (``torch.randperm(input.size()[0])`` in their training loops): they shuffle each
  GPU's shard of the batch; here the permutation runs over the *global* batch (each rank reads
  its partners' images, augmented as the batch, through
  ``Batch.global_images``), so that 1, 2 or 8 processes pair the same images.
* ``"cmo"`` — background original, foreground from ``Q``.
* ``"cmo-minor"`` — background **and** foreground from ``Q`` (the paper's
  CMO_minor: "both images sampled from the minority-weighted distribution").
* ``"cmo-back"`` — background from ``Q``, foreground from the original
  distribution (CMO_back).  **Our reading** of Table 11: "back" names the
  stream that is re-weighted, i.e. the roles of the two streams are swapped.

For the two variants with a weighted background the paper does not say whether
the un-mixed batches (probability ``1 - p``) also come from ``Q``.  **Choice**:
``bg_scope="all"`` (default) replaces the background loader by a ``Q`` stream
during the on epochs, as swapping the loaders in the reference code would;
``bg_scope="mixed"`` re-draws the background from ``Q`` only for the batches
that get mixed.  The "original distribution" of ``cmo-back``'s foreground is a
uniform draw with replacement over the training images (class frequency
``n_k / N``).

Randomness, DDP and resume
--------------------------
Every draw comes from the run's random streams (:meth:`ltkit.train.Context.generator`)
keyed by global positions: the coin, ``λ_0`` and the box centre by ``(epoch,
step)`` — the *same* box on every rank, as in one process; the weighted stream's
draw for the whole global batch by ``(epoch, step)``, of which each rank keeps
its share exactly as the engine shards the background batch, and its
augmentation likewise.  So rank ``r``'s ``i``-th background is paired with the
foreground at the same global position as in a single process, for any number
of processes, and a resumed run replays exactly (no method state to save).

**Departure from naver-ai/cmo** (``train.py``, the weighted sampler's iterator):
the reference takes consecutive positions of a weighted pass of ``N`` draws
with replacement and restarts the pass when it is exhausted; ltkit draws each
batch's foregrounds with replacement from the same weights.  Both are i.i.d.
draws from ``Q``: the same distribution, and independent of the world size.
Plain CutMix permutes the global batch (see its variant above), so no draw here
depends on the number of processes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import checks, sampling, train
from ..checks import param

__all__ = [
    "WEIGHTINGS",
    "BOX_RULES",
    "Box",
    "cut_box",
    "box_lambda",
    "sample_box",
    "paste",
    "soft_targets",
    "foreground_weights",
    "foreground_class_probabilities",
    "off_epochs",
    "is_active",
    "CutMix",
    "CMO",
    "CMOMinor",
    "CMOBack",
]

#: Foreground weightings (see the module docstring).
WEIGHTINGS: tuple[str, ...] = ("q-sample", "q-class", "effective-number", "effective-number-sample")
#: Box roundings: the reference code's ``c ± ⌊side/2⌋`` (default) or exactly ``⌊side⌋`` pixels.
BOX_RULES: tuple[str, ...] = ("reference", "exact")
#: The paper's schedule: CMO off in the first 4 (``epoch <= 3``) and the last 3 of 200 epochs.
PAPER_EPOCHS, PAPER_OFF_FIRST, PAPER_OFF_LAST = 200, 4, 3
BG_SCOPES: tuple[str, ...] = ("all", "mixed")


# =========================================================================== box geometry
@dataclass(frozen=True)
class Box:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of an image."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def cut_box(height: int, width: int, lam: float, center: tuple[int, int], rule: str = "reference") -> Box:
    """The box for ``λ`` centred at ``center = (row, col)``, clipped to the image.

    Sides ``h = ⌊H√(1-λ)⌋``, ``w = ⌊W√(1-λ)⌋``.  ``rule="reference"`` (naver-ai/cmo's
    ``rand_bbox``): rows ``[c_y - ⌊h/2⌋, c_y + ⌊h/2⌋)``, columns likewise, so an odd
    side loses a pixel and a side of 1 gives an empty box; ``rule="exact"``: rows
    ``[c_y - ⌊h/2⌋, c_y - ⌊h/2⌋ + h)``, exactly ``h`` before clipping.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must lie in [0, 1].")
    checks.choice("box rule", rule, BOX_RULES, "'reference' is naver-ai/cmo's rand_bbox")
    cut_h, cut_w = int(height * math.sqrt(1.0 - lam)), int(width * math.sqrt(1.0 - lam))
    top, left = center[0] - cut_h // 2, center[1] - cut_w // 2
    if rule == "reference":
        bottom, right = center[0] + cut_h // 2, center[1] + cut_w // 2
    else:
        bottom, right = top + cut_h, left + cut_w
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return Box(clip(top, height), clip(bottom, height), clip(left, width), clip(right, width))


def box_lambda(box: Box, height: int, width: int) -> float:
    """``λ = 1 - |B| / (H W)``: the weight of the background label after pasting ``box``."""
    return 1.0 - box.area / (height * width)


def sample_box(height: int, width: int, alpha: float, rng: np.random.Generator,
               rule: str = "reference") -> tuple[Box, float, float]:
    """Draw ``λ_0 ~ Beta(α, α)`` and a uniform centre; returns ``(box, λ, λ_0)`` with ``λ`` from the real area."""
    lam0 = float(rng.beta(alpha, alpha))
    center = (int(rng.integers(height)), int(rng.integers(width)))
    box = cut_box(height, width, lam0, center, rule)
    return box, box_lambda(box, height, width), lam0


def paste(background: Tensor, foreground: Tensor, box: Box) -> Tensor:
    """A copy of ``background`` whose pixels inside ``box`` come from ``foreground`` (``(N, C, H, W)``)."""
    if background.shape != foreground.shape:
        raise ValueError(f"background {tuple(background.shape)} and foreground {tuple(foreground.shape)} "
                         "must have the same shape.")
    mixed = background.clone()
    mixed[..., box.top:box.bottom, box.left:box.right] = foreground[..., box.top:box.bottom, box.left:box.right]
    return mixed


def soft_targets(y_background: Tensor, y_foreground: Tensor, lam: float, num_classes: int) -> Tensor:
    """``λ·onehot(y^b) + (1-λ)·onehot(y^f)``: the label of a mixed image (for cross-entropy the loss
    ``λ L(y^b) + (1-λ) L(y^f)`` equals CE against these soft targets)."""
    eye = torch.eye(num_classes, device=y_background.device)
    return lam * eye[y_background] + (1.0 - lam) * eye[y_foreground]


# =========================================================================== the foreground distribution
def _check_weighting(weighting: str) -> str:
    return checks.choice("weighting", weighting, WEIGHTINGS, "'q-sample' is the reference code's: class-balanced at r = 1")


def foreground_class_probabilities(class_counts: Sequence[int], weighting: str = "q-sample", r: float = 1.0,
                                   beta: float = 0.999) -> Tensor:
    """The probability that one foreground draw lands in class ``k`` (float64, ``(C,)``)."""
    weighting = _check_weighting(weighting)
    if weighting == "q-sample":
        return sampling.implied_class_probabilities(class_counts, r)
    if weighting == "q-class":
        return sampling.class_probabilities(class_counts, r)
    if weighting == "effective-number":
        return sampling.effective_number_probabilities(class_counts, beta)
    mass = torch.as_tensor(class_counts, dtype=torch.float64) / sampling.effective_number(class_counts, beta)
    return mass / mass.sum()


def foreground_weights(labels: Tensor | Sequence[int], class_counts: Sequence[int] | None = None,
                       weighting: str = "q-sample", r: float = 1.0, beta: float = 0.999) -> Tensor:
    """Per-sample weights of the foreground stream (``None`` counts the classes from ``labels``)."""
    weighting = _check_weighting(weighting)
    labels = torch.as_tensor(labels).cpu()
    if class_counts is None:
        class_counts = torch.bincount(labels).tolist()
    if weighting == "q-sample":
        return sampling.sample_weights(labels, class_counts, r)
    if weighting == "effective-number-sample":
        sampling.sample_weights(labels, class_counts, 0.0)  # validates the labels against the counts
        return (1.0 / sampling.effective_number(class_counts, beta))[labels.long()]
    probs = foreground_class_probabilities(class_counts, weighting, r, beta)
    return sampling.per_sample_weights_from_class_probabilities(labels, probs)


# =========================================================================== schedule
def off_epochs(epochs: int, off_first: int | None = None, off_last: int | None = None) -> tuple[int, int]:
    """``(off_first, off_last)``; ``None`` scales the paper's 4 and 3 of 200 epochs (at least 1 each)."""
    first = max(1, round(PAPER_OFF_FIRST * epochs / PAPER_EPOCHS)) if off_first is None else off_first
    last = max(1, round(PAPER_OFF_LAST * epochs / PAPER_EPOCHS)) if off_last is None else off_last
    return first, last


def is_active(epoch: int, epochs: int, off_first: int | None = None, off_last: int | None = None) -> bool:
    """Whether mixing is on in (0-based) ``epoch``: ``off_first <= epoch < epochs - off_last``."""
    first, last = off_epochs(epochs, off_first, off_last)
    return first <= epoch < epochs - last


# =========================================================================== parameters
@dataclass(frozen=True)
class CutMixParams:
    """CutMix's (and CMO's) mixing: ``λ_0 ~ Beta(α, α)``, a batch mixed with probability ``prob``, the box rounding."""

    alpha: float = param(1.0, low=0, low_open=True, hint="λ ~ Beta(α, α); the paper uses α = 1, uniform λ")
    prob: float = param(0.5, low=0, high=1, hint="the probability that a batch is mixed; the paper uses 0.5")
    off_first: int | None = param(None, low=0, hint="epochs off at the start; None scales the paper's 4 of 200")
    off_last: int | None = param(None, low=0, hint="epochs off at the end; None scales the paper's 3 of 200")
    box: str = param("reference", choices=BOX_RULES, hint="'reference': naver-ai/cmo's rand_bbox, c ± ⌊side/2⌋; "
                     "'exact': ⌊side⌋ pixels")


@dataclass(frozen=True)
class CMOParams(CutMixParams):
    """CMO: the mixing above, with foregrounds from ``Q`` (:func:`foreground_weights`)."""

    weighting: str = param("q-sample", choices=WEIGHTINGS, hint="'q-sample' is the reference code's")
    r: float = param(1.0, low=0, hint="q(r, k): 0 no re-weighting, 1/2 square root, 1 class-balanced (default)")
    beta: float = param(0.999, low=0, high=1, high_open=True, hint="effective number; Cui et al. use 0.999, 0.9999")


@dataclass(frozen=True)
class CMOVariantParams(CMOParams):
    """CMO_minor / CMO_back: also which batches draw their background from ``Q``."""

    bg_scope: str = param("all", choices=BG_SCOPES, hint="'all': every batch of an on epoch; 'mixed': mixed ones")


# =========================================================================== methods
@train.register_method
class CutMix(train.Method):
    """Plain CutMix within the batch (Yun et al., ICCV 2019), with CMO's box, λ, ``prob`` and off epochs.

    Parameters (``config.method_params``): :class:`CutMixParams`.
    """

    name = "cutmix"
    Params = CutMixParams
    background_weighted = False  # background drawn from Q
    foreground_source = "batch"  # "batch" (CutMix), "weighted" (CMO), "original"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.active = False
        self.mixed_batches = 0  # this epoch (for inspection)

    # -- hooks ------------------------------------------------------------------------------------
    def setup(self, ctx: train.Context) -> None:
        if ctx.train_x is None:
            raise ValueError(f"method {self.name!r} works on tensor data sets held on the device (digits-lt, "
                             f"context-digits-lt, CIFAR-LT); {ctx.config.dataset!r} is read from files.")
        epochs = ctx.config.epochs
        self.off_first, self.off_last = off_epochs(epochs, self.params.off_first, self.params.off_last)
        if self.off_first + self.off_last >= epochs:
            raise ValueError(f"method {self.name!r} would never be on: off_first={self.off_first} + "
                             f"off_last={self.off_last} >= epochs={epochs}. Lower them (0 is allowed).")
        n = len(ctx.train_y)
        weights = self._weights(ctx) if self.background_weighted or self.foreground_source == "weighted" else None
        self.weights = {"weighted": weights, "original": torch.ones(n, dtype=torch.float64)}

    def epoch_start(self, ctx: train.Context, epoch: int) -> None:
        self.active = self.off_first <= epoch < ctx.config.epochs - self.off_last
        self.mixed_batches = 0

    def batch(self, ctx: train.Context, batch: train.Batch) -> train.Batch:
        if not self.active:
            return batch
        rng = ctx.rng("cmo-mix", ctx.epoch, batch.step)  # the coin, λ and the box: the same on every rank
        mix = bool(rng.random() < self.params.prob)
        if self.background_weighted and (mix or self.params.bg_scope == "all"):
            batch = self._draw(ctx, batch, "background", "weighted")
        fg_x, fg_y = self._foreground(ctx, batch)
        if not mix:
            return batch
        _, _, height, width = batch.x.shape
        box, lam, _ = sample_box(height, width, self.params.alpha, rng, self.params.box)
        self.mixed_batches += 1
        return dataclasses.replace(batch, x=paste(batch.x, fg_x, box), y2=fg_y, lam=lam)

    # -- helpers ----------------------------------------------------------------------------------
    def _weights(self, ctx: train.Context) -> Tensor:
        p = self.params
        return foreground_weights(ctx.train_y.cpu(), None, p.weighting, p.r, p.beta)

    def _foreground(self, ctx: train.Context, batch: train.Batch) -> tuple[Tensor, Tensor]:
        if self.foreground_source == "batch":  # a permutation of the global batch, this rank's share of it
            if batch.global_images is None:
                raise ValueError(f"method {self.name!r} pairs images within the engine's global batch; this batch "
                                 "does not come from it (another method replaced it?).")
            order = ctx.permutation(batch.global_size, "cutmix-order", ctx.epoch, batch.step, 0)
            partners = ctx.local(order)
            return batch.global_images(partners), ctx.train_y[batch.global_index[partners.to(ctx.device)]]
        drawn = self._draw(ctx, batch, "foreground", self.foreground_source)
        return drawn.x, drawn.y

    def _draw(self, ctx: train.Context, batch: train.Batch, role: str, weighting: str) -> train.Batch:
        """A batch-sized draw with replacement from a stream, augmented like the engine's batches.

        One draw for the whole global batch, keyed by ``(epoch, step)``; this rank keeps its share.
        """
        stream = ("cmo", role, ctx.epoch, batch.step)
        positions = torch.multinomial(self.weights[weighting], batch.global_size or len(batch.y), replacement=True,
                                      generator=ctx.generator(*stream, "draw"))
        idx = ctx.local(positions).to(ctx.device)
        x = ctx.images(positions, ctx.generator(*stream, "augment"))
        return dataclasses.replace(batch, x=x, y=ctx.train_y[idx], index=idx, global_index=None, global_images=None)


@train.register_method
class CMO(CutMix):
    """CMO (Park et al., CVPR 2022): background from the ordinary loader, foreground from ``Q``.

    Parameters: :class:`CMOParams`.
    """

    name = "cmo"
    Params = CMOParams
    foreground_source = "weighted"


@train.register_method
class CMOMinor(CMO):
    """CMO_minor (paper, Table 11): background *and* foreground from ``Q`` (+ ``bg_scope="all"``)."""

    name = "cmo-minor"
    Params = CMOVariantParams
    background_weighted = True


@train.register_method
class CMOBack(CMO):
    """CMO_back (paper, Table 11): background from ``Q``, foreground from the original distribution."""

    name = "cmo-back"
    Params = CMOVariantParams
    background_weighted = True
    foreground_source = "original"
