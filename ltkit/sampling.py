r"""Class-rebalancing samplers for long-tailed training.

Notation: ``C`` classes, class ``k`` has ``n_k > 0`` training images,
``N = sum_k n_k``, and image ``i`` has label ``y_i``. A *class-level*
probability ``p_k`` is the chance that one draw lands in class ``k``; a
*per-sample* weight ``w_i`` is what :class:`torch.utils.data.WeightedRandomSampler`
receives. The two are linked by

.. math::

    p_k = \frac{n_k\, w_{(k)}}{\sum_j n_j\, w_{(j)}}
    \qquad\text{(every image of class } k \text{ has weight } w_{(k)}\text{)},

so a per-sample weight ``w_i = p_{y_i} / n_{y_i}`` realises any class-level
``p`` exactly (:func:`per_sample_weights_from_class_probabilities`).

The sampling distribution q(r, k) — two views
---------------------------------------------
Park et al., "The Majority Can Help the Minority: Context-rich Minority
Oversampling for Long-tailed Classification" (CMO), CVPR 2022, Eq. (2), write

.. math::

    q(r, k) = \frac{n_k^{-r}}{\sum_{j=1}^{C} n_j^{-r}}

and describe it as the probability of sampling *class* ``k``
(:func:`class_probabilities`, the **paper view**). Their public code
(``get_weighted_sampler`` in naver-ai/cmo) instead gives each *sample* the
weight ``n_{y_i}^{-r}`` and draws ``N`` indices per epoch with
``WeightedRandomSampler(replacement=True)`` (:func:`sample_weights`, the
**code view**). Summing the weights of a class shows that the class-level
probability the code actually realises is

.. math::

    \tilde q(r, k) = \frac{n_k \cdot n_k^{-r}}{\sum_j n_j \cdot n_j^{-r}}
                   = \frac{n_k^{1-r}}{\sum_j n_j^{1-r}}
                   = q(r - 1, k)

(:func:`implied_class_probabilities`). So with the default ``r = 1`` the code
is *class-balanced* (every class equally likely), whereas the paper formula
read literally would be inverse-frequency (tail classes *more* likely than
head classes). The paper's wording — "r = 0 instance-balanced, r = 1/2
square-root, r = 1 inverse frequency" of *samples* — matches the code view.
ltkit exposes both; ``make_sampler(kind="q-sample")`` reproduces the
reference code.

Effective number of samples
---------------------------
Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019:

.. math::

    E(n) = \frac{1 - \beta^{n}}{1 - \beta}, \qquad \beta \in [0, 1),

with ``E(n) = 1`` at ``beta = 0`` and ``E(n) -> n`` as ``beta -> 1``. The
re-weighting is ``∝ 1 / E(n_k)``; as a sampler ltkit uses it as a class-level
probability ``p_k ∝ 1 / E(n_k)`` (:func:`effective_number_probabilities`):
``beta = 0`` is class-balanced and ``beta -> 1`` tends to inverse frequency.

Progressively-balanced sampling
-------------------------------
Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020, interpolate over training from instance-balanced to
class-balanced sampling:

.. math::

    p_k(t) = \left(1 - \frac{t}{T}\right)\frac{n_k}{N}
             + \frac{t}{T}\,\frac{1}{C}

(:func:`progressive_probabilities`).

Square-root sampling
--------------------
Mahajan et al., "Exploring the Limits of Weakly Supervised Pretraining",
ECCV 2018, and Kang et al. (ICLR 2020, with ``q = 1/2`` in their
``p_j = n_j^q / sum_i n_i^q``) draw class ``k`` with probability

.. math::

    p_k = \frac{n_k^{1/2}}{\sum_j n_j^{1/2}},

between instance-balanced (``q = 1``) and class-balanced (``q = 0``): head
classes are still drawn more often, but less than in proportion to their size.
That is ``make_sampler(kind="sqrt")``: per-sample weight ``n_{y_i}^{-1/2}``,
i.e. the code view of q(r, k) at ``r = 1/2`` (the same weights as
``kind="q-sample", r=0.5``, so the same draws). The *paper view*
``q(1/2, k) ∝ n_k^{-1/2}``, which favours the tail, is
``kind="q-class", r=0.5``; up to this release ltkit's ``"sqrt"`` meant that,
the opposite of the literature's square-root sampling.

All probabilities are returned as ``float64`` tensors. Bad input raises
:class:`ltkit.checks.InputError` (a :class:`ValueError`) or, for a value of the
wrong type, :class:`ltkit.checks.InputTypeError` (a :class:`TypeError`), with a
message that says what was wrong and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from . import checks
from .checks import InputError, InputTypeError

__all__ = [
    "SAMPLER_KINDS",
    "DistributedWeightedSampler",
    "class_probabilities",
    "counts_tensor",
    "effective_number",
    "effective_number_probabilities",
    "epoch_indices",
    "expected_samples_per_class",
    "implied_class_probabilities",
    "make_sampler",
    "per_sample_weights_from_class_probabilities",
    "progressive_probabilities",
    "sample_weights",
    "weighted_sampler",
]

#: Valid values of ``kind`` for :func:`make_sampler`.
SAMPLER_KINDS: tuple[str, ...] = (
    "instance",
    "q-class",
    "q-sample",
    "class-balanced",
    "sqrt",
    "effective-number",
    "progressive",
)

#: The parameters each sampler kind takes (``sampler_params`` of a config).
SAMPLER_PARAMS: dict[str, tuple[str, ...]] = {"instance": (), "q-class": ("r",), "q-sample": ("r",),
                                              "class-balanced": (), "sqrt": (), "effective-number": ("beta",),
                                              "progressive": ()}

ArrayLike = Union[Tensor, np.ndarray, Sequence[float], Sequence[int]]

# torch.multinomial accepts at most 2**24 categories.
_MULTINOMIAL_MAX_CATEGORIES = 2**24


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------
def counts_tensor(class_counts: ArrayLike, *, positive: bool = True) -> Tensor:
    """``class_counts`` as a validated 1-D float64 CPU tensor (at least 2 classes).

    Whole-number counts are checked by :func:`ltkit.checks.class_counts`
    (``positive``: every class has an image); nominal fractional sizes (such as
    CWS's even split ``n_c / K_c`` of a class) are checked entry by entry with
    :func:`ltkit.checks.real`.
    """
    try:
        counts = torch.as_tensor(
            class_counts.detach().cpu() if isinstance(class_counts, Tensor) else class_counts
        ).to(torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputTypeError(
            "class_counts must be a 1-D sequence of per-class image counts, "
            f"e.g. [500, 200, 80]; could not convert it ({exc})."
        ) from exc
    if counts.ndim != 1:
        raise InputError(
            f"class_counts must be 1-D (one count per class); got shape {tuple(counts.shape)}."
        )
    values = counts.tolist()
    if len(values) < 2 or all(math.isfinite(v) and v.is_integer() for v in values):
        checks.class_counts(values, min_classes=2, positive=positive)
    else:
        for i, v in enumerate(values):
            checks.real(f"class_counts[{i}]", v, low=0, low_open=positive,
                        hint=f"the number of training images of class {i}")
    return counts


#: Hints of the shared validators for the two parameters used throughout.
_R_HINT = "r=0: no rebalancing in the code view, r=0.5: square root, r=1: the CMO default"
_BETA_HINT = ("Cui et al. use 0.999 or 0.9999; beta=1 would make E(n)=n: use class_probabilities(counts, r=1) "
              "for that")


def _as_labels(labels: ArrayLike, num_classes: int | None = None) -> Tensor:
    """Return ``labels`` as a validated 1-D int64 CPU tensor."""
    try:
        lab = torch.as_tensor(labels.detach().cpu() if isinstance(labels, Tensor) else labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"labels must be a 1-D sequence of integer class indices ({exc}).") from exc
    if lab.ndim != 1:
        raise InputError(f"labels must be 1-D (one label per image); got shape {tuple(lab.shape)}.")
    if lab.numel() == 0:
        raise InputError("labels is empty; a sampler needs at least one image.")
    if lab.dtype == torch.bool or lab.is_floating_point() or lab.is_complex():
        raise InputError(
            f"labels must have an integer dtype (got {lab.dtype}); convert with labels.long()."
        )
    lab = lab.to(torch.int64)
    if num_classes is not None:
        outside = (lab < 0) | (lab >= num_classes)
        if outside.any():
            pos = int(torch.nonzero(outside)[0])
            raise InputError(
                f"labels must lie in [0, C) = [0, {num_classes}); found label {int(lab[pos])} "
                f"at position {pos}. Check that class_counts has one entry per class "
                "and that labels are 0-based."
            )
    return lab


def _as_probabilities(class_probs: ArrayLike, name: str = "class_probs") -> Tensor:
    probs = torch.as_tensor(
        class_probs.detach().cpu() if isinstance(class_probs, Tensor) else class_probs
    ).to(torch.float64)
    if probs.ndim != 1 or probs.numel() < 1:
        raise InputError(f"{name} must be a non-empty 1-D tensor; got shape {tuple(probs.shape)}.")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise InputError(f"{name} must be finite and non-negative; got {probs.tolist()}.")
    total = float(probs.sum())
    if abs(total - 1.0) > 1e-6:
        raise InputError(
            f"{name} must sum to 1 (got {total:.8g}); normalise with p / p.sum()."
        )
    return probs


def _check_weights(weights: ArrayLike) -> Tensor:
    w = torch.as_tensor(weights.detach().cpu() if isinstance(weights, Tensor) else weights)
    w = w.to(torch.float64)
    if w.ndim != 1 or w.numel() == 0:
        raise InputError(f"weights must be a non-empty 1-D tensor; got shape {tuple(w.shape)}.")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise InputError("weights must be finite and non-negative.")
    if float(w.sum()) <= 0:
        raise InputError("weights sum to 0; at least one sample must have a positive weight.")
    if w.numel() > _MULTINOMIAL_MAX_CATEGORIES:
        raise InputError(
            f"weights has {w.numel()} entries; torch.multinomial supports at most 2**24."
        )
    return w


def _normalise_log(log_mass: Tensor) -> Tensor:
    """Normalise unnormalised log-probabilities (stable for large |r log n|)."""
    return torch.softmax(log_mass.to(torch.float64), dim=0)


# --------------------------------------------------------------------------
# Class-level probabilities and per-sample weights
# --------------------------------------------------------------------------
def class_probabilities(class_counts: ArrayLike, r: float) -> Tensor:
    r"""Paper view of CMO's q(r, k): class probability ``∝ n_k^{-r}``.

    ``q(r, k) = n_k^{-r} / sum_j n_j^{-r}`` (Park et al., CVPR 2022, Eq. (2)).
    ``r = 0`` gives uniform class probabilities, ``r = 1`` inverse frequency.
    Computed in log space so that large counts and large ``r`` do not underflow.

    Args:
        class_counts: per-class image counts ``n_k > 0``, shape ``(C,)``.
        r: sharpness, ``r >= 0``.

    Returns:
        float64 tensor of shape ``(C,)`` summing to 1.
    """
    counts = counts_tensor(class_counts)
    r = checks.real("r", r, low=0, hint=_R_HINT)
    return _normalise_log(-r * torch.log(counts))


def implied_class_probabilities(class_counts: ArrayLike, r: float) -> Tensor:
    r"""Code view of CMO's sampler at the class level: ``∝ n_k^{1-r}``.

    Giving every image of class ``k`` weight ``n_k^{-r}`` puts total mass
    ``n_k * n_k^{-r}`` on the class. ``r = 0`` is instance-balanced
    (``n_k / N``), ``r = 1/2`` square-root, ``r = 1`` class-balanced (uniform).
    For ``r >= 1`` this equals ``class_probabilities(class_counts, r - 1)``.

    Returns:
        float64 tensor of shape ``(C,)`` summing to 1.
    """
    counts = counts_tensor(class_counts)
    r = checks.real("r", r, low=0, hint=_R_HINT)
    return _normalise_log((1.0 - r) * torch.log(counts))


def sample_weights(labels: ArrayLike, class_counts: ArrayLike, r: float) -> Tensor:
    r"""Code view of CMO's sampler: per-sample weight ``w_i = n_{y_i}^{-r}``.

    This is what the reference code passes to ``WeightedRandomSampler``
    (up to a constant factor, which does not change the draw). The weights
    are not normalised.

    Args:
        labels: integer labels in ``[0, C)``, shape ``(N,)``.
        class_counts: per-class counts ``n_k > 0``, shape ``(C,)``.
        r: sharpness, ``r >= 0``.

    Returns:
        float64 tensor of shape ``(N,)``.
    """
    counts = counts_tensor(class_counts)
    r = checks.real("r", r, low=0, hint=_R_HINT)
    lab = _as_labels(labels, counts.numel())
    return torch.exp(-r * torch.log(counts))[lab]


def effective_number(class_counts: ArrayLike, beta: float) -> Tensor:
    r"""Effective number of samples ``E(n) = (1 - beta^n) / (1 - beta)`` (Cui et al. 2019).

    Evaluated as ``-expm1(n log beta) / (1 - beta)``, which stays accurate for
    ``beta`` close to 1. ``beta = 0`` gives ``E(n) = 1``; ``beta -> 1`` gives ``n``.

    Returns:
        float64 tensor of shape ``(C,)``.
    """
    counts = counts_tensor(class_counts)
    beta = checks.real("beta", beta, low=0, high=1, high_open=True, hint=_BETA_HINT)
    if beta == 0.0:
        return torch.ones_like(counts)
    log_beta = math.log1p(beta - 1.0) if beta > 0.5 else math.log(beta)
    return -torch.expm1(counts * log_beta) / (1.0 - beta)


def effective_number_probabilities(class_counts: ArrayLike, beta: float) -> Tensor:
    r"""Class-level probabilities ``p_k ∝ 1 / E(n_k)`` (Cui et al. 2019).

    ``beta = 0`` gives uniform (class-balanced) probabilities; as
    ``beta -> 1`` they tend to inverse frequency ``∝ 1 / n_k``.

    Returns:
        float64 tensor of shape ``(C,)`` summing to 1.
    """
    inv = 1.0 / effective_number(class_counts, beta)
    return inv / inv.sum()


def progressive_probabilities(class_counts: ArrayLike, epoch: int, total_epochs: int) -> Tensor:
    r"""Progressively-balanced class probabilities (Kang et al., ICLR 2020).

    ``p_k(t) = (1 - t/T) n_k / N + (t/T) / C`` with ``t = epoch`` and
    ``T = total_epochs``: instance-balanced at ``t = 0``, class-balanced at
    ``t = T``. With 0-based epochs ``0 .. T-1`` the last epoch is
    ``(T-1)/T`` of the way to class-balanced.

    Args:
        class_counts: per-class counts ``n_k > 0``.
        epoch: current epoch ``t``, ``0 <= t <= T``.
        total_epochs: ``T >= 1``.

    Returns:
        float64 tensor of shape ``(C,)`` summing to 1.
    """
    counts = counts_tensor(class_counts)
    total_epochs = checks.integer("total_epochs", total_epochs, low=1)
    epoch = checks.integer("epoch", epoch, low=0, high=total_epochs,
                           hint="0 <= epoch <= total_epochs: pass the current epoch and the length "
                                "of the schedule")
    frac = epoch / total_epochs
    instance = counts / counts.sum()
    uniform = torch.full_like(counts, 1.0 / counts.numel())
    return (1.0 - frac) * instance + frac * uniform


def per_sample_weights_from_class_probabilities(
    labels: ArrayLike, class_probs: ArrayLike
) -> Tensor:
    r"""Per-sample weights ``w_i = p_{y_i} / m_{y_i}`` that realise class-level ``p``.

    ``m_k`` is the number of entries of ``labels`` equal to ``k``, so the
    weights of class ``k`` sum to exactly ``p_k`` and a weighted draw lands in
    class ``k`` with probability ``p_k`` (uniformly over its images).

    Args:
        labels: integer labels in ``[0, C)``, shape ``(N,)``.
        class_probs: class-level probabilities, shape ``(C,)``, summing to 1.

    Returns:
        float64 tensor of shape ``(N,)`` summing to 1.
    """
    probs = _as_probabilities(class_probs)
    lab = _as_labels(labels, probs.numel())
    counts = torch.bincount(lab, minlength=probs.numel()).to(torch.float64)
    missing = (counts == 0) & (probs > 0)
    if missing.any():
        k = int(torch.nonzero(missing)[0])
        raise InputError(
            f"class {k} has probability {probs[k].item():.3g} but no images in labels: "
            "a class with no images cannot be sampled. Give it probability 0 or drop the class."
        )
    per_class = torch.where(counts > 0, probs / counts.clamp_min(1.0), torch.zeros_like(probs))
    return per_class[lab]


def expected_samples_per_class(class_probs: ArrayLike, num_draws: int) -> Tensor:
    """Expected number of draws per class, ``num_draws * p_k`` (float64, shape ``(C,)``)."""
    probs = _as_probabilities(class_probs)
    num_draws = checks.integer("num_draws", num_draws, low=0)
    return probs * num_draws


# --------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------
def _generator(seed: int) -> torch.Generator:
    seed = checks.integer("seed", seed, low=0)
    return torch.Generator().manual_seed(seed)


def weighted_sampler(weights: ArrayLike, num_samples: int, seed: int) -> WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` drawing ``num_samples`` indices with replacement.

    The generator is created once, so successive epochs (iterations over the
    sampler) give different but reproducible draws.
    """
    w = _check_weights(weights)
    num_samples = checks.integer("num_samples", num_samples, low=1)
    return WeightedRandomSampler(w, num_samples, replacement=True, generator=_generator(seed))


def make_sampler(
    labels: ArrayLike,
    class_counts: ArrayLike | None,
    kind: str,
    *,
    epoch: int = 0,
    total_epochs: int = 1,
    seed: int = 0,
    num_samples: int | None = None,
    **params: float,
) -> Sampler[int]:
    """Build a seeded sampler over ``range(len(labels))``; ``params`` are the kind's own (:data:`SAMPLER_PARAMS`).

    Kinds (class-level probability ``p_k`` in brackets):

    - ``"instance"``: plain shuffle, ``RandomSampler`` without replacement [``n_k / N``].
    - ``"q-class"``: paper view of CMO [``∝ n_k^{-r}``].
    - ``"q-sample"``: code view of CMO, per-sample weight ``n_{y_i}^{-r}`` [``∝ n_k^{1-r}``];
      ``r=1`` reproduces the reference code (class-balanced).
    - ``"class-balanced"``: [``1 / C``].
    - ``"sqrt"``: square-root sampling (Mahajan et al. 2018, Kang et al. 2020)
      [``∝ n_k^{1/2}``]: per-sample weight ``n_{y_i}^{-1/2}``, the same weights as
      ``"q-sample"`` with ``r=0.5``. (The paper view ``∝ n_k^{-1/2}``, what
      ``"sqrt"`` meant before, is ``"q-class"`` with ``r=0.5``.)
    - ``"effective-number"``: [``∝ 1 / E(n_k)``] with ``beta``.
    - ``"progressive"``: [``(1 - t/T) n_k/N + (t/T)/C``] with ``epoch``, ``total_epochs``.

    Args:
        labels: integer labels in ``[0, C)``, shape ``(N,)``.
        class_counts: per-class counts; must equal ``bincount(labels)`` (the
            theory above assumes it). ``None`` counts them from ``labels``.
        kind: one of :data:`SAMPLER_KINDS`.
        num_samples: draws per epoch; default ``N`` (as in the CMO code).

    Returns:
        a :class:`torch.utils.data.Sampler` of dataset indices.
    """
    checks.choice("sampler kind", kind, SAMPLER_KINDS)
    unknown = sorted(set(params) - set(SAMPLER_PARAMS[kind]))
    if unknown:
        raise InputError(f"sampler {kind!r} takes no parameter(s) {unknown}; it accepts: "
                         f"{', '.join(SAMPLER_PARAMS[kind]) or 'none'} (and epoch, total_epochs, seed, num_samples).")
    r, beta = params.get("r", 1.0), params.get("beta", 0.999)
    if class_counts is None:
        lab = _as_labels(labels)
        counts = counts_tensor(torch.bincount(lab))
    else:
        counts = counts_tensor(class_counts)
        lab = _as_labels(labels, counts.numel())
        observed = torch.bincount(lab, minlength=counts.numel()).to(torch.float64)
        if not torch.equal(observed, counts):
            diff = int(torch.nonzero(observed != counts)[0])
            raise InputError(
                f"class_counts does not match the labels: class {diff} has "
                f"{int(observed[diff])} labels but class_counts[{diff}] = {counts[diff].item():g}. "
                "Pass class_counts=None to count them from labels."
            )
    n = lab.numel()
    num_samples = n if num_samples is None else checks.integer("num_samples", num_samples, low=1)

    if kind == "instance":
        return RandomSampler(
            range(n), replacement=False, num_samples=num_samples, generator=_generator(seed)
        )
    if kind == "q-sample":
        return weighted_sampler(sample_weights(lab, counts, r), num_samples, seed)
    if kind == "sqrt":  # p_k ∝ n_k^{1/2}: the code view at r = 1/2
        return weighted_sampler(sample_weights(lab, counts, 0.5), num_samples, seed)

    if kind == "q-class":
        probs = class_probabilities(counts, r)
    elif kind == "class-balanced":
        probs = torch.full_like(counts, 1.0 / counts.numel())
    elif kind == "effective-number":
        probs = effective_number_probabilities(counts, beta)
    else:  # "progressive"
        probs = progressive_probabilities(counts, epoch, total_epochs)
    return weighted_sampler(
        per_sample_weights_from_class_probabilities(lab, probs), num_samples, seed
    )


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, sharded across distributed ranks.

    Each epoch, every rank makes the *same* global draw of
    ``total = ceil(num_samples / num_replicas) * num_replicas`` indices with
    ``torch.multinomial(weights, total, replacement=True)`` from a generator
    seeded with ``seed + epoch``; rank ``r`` yields positions
    ``r, r + R, r + 2R, ...`` of that draw. The shards are disjoint by position,
    have equal length ``total // R``, and interleaved they are the global draw,
    so the union follows the weighted distribution exactly as a single-process
    sampler would. The padding up to ``total`` consists of extra independent
    draws (not repeated indices), so it does not bias the class frequencies.
    Call :meth:`set_epoch` on every rank before each epoch.

    Args:
        weights: non-negative per-sample weights, shape ``(N,)``.
        num_samples: global number of draws per epoch (before padding).
        num_replicas: world size; default from ``torch.distributed`` if
            initialised, else 1.
        rank: this process's rank; default from ``torch.distributed`` if
            initialised, else 0.
        seed: base seed, identical on all ranks.
    """

    def __init__(
        self,
        weights: ArrayLike,
        num_samples: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        self.weights = _check_weights(weights)
        self.num_samples = checks.integer("num_samples", num_samples, low=1)
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if dist_ready else 1
        if rank is None:
            rank = torch.distributed.get_rank() if dist_ready else 0
        num_replicas = checks.integer("num_replicas", num_replicas, low=1, hint="the world size")
        rank = checks.integer("rank", rank, low=0, high=num_replicas - 1,
                              hint=f"this process's rank among num_replicas={num_replicas}")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = checks.integer("seed", seed, low=0)
        self.epoch = 0
        self.total_size = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; the draw is seeded with ``seed + epoch``."""
        self.epoch = checks.integer("epoch", epoch, low=0)

    def global_draw(self) -> Tensor:
        """The full draw of ``total_size`` indices for the current epoch (int64)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_draw()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total_size // self.num_replicas


def epoch_indices(sampler: Sampler[int]) -> Tensor:
    """Materialise one epoch of ``sampler`` as a 1-D int64 tensor.

    Iterating advances a stateful sampler's generator, so consecutive calls
    return consecutive epochs (for :class:`DistributedWeightedSampler`, call
    ``set_epoch`` instead).
    """
    indices = list(iter(sampler))
    if not indices:
        return torch.empty(0, dtype=torch.int64)
    try:
        out = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            "sampler must yield integer indices; pass the index sampler, not a BatchSampler "
            f"({exc})."
        ) from exc
    if out.ndim != 1 or out.is_floating_point() or out.is_complex() or out.dtype == torch.bool:
        raise InputError(
            f"sampler must yield integer indices (got dtype {out.dtype}, shape {tuple(out.shape)}); "
            "pass the index sampler, not a BatchSampler."
        )
    return out.to(torch.int64)
