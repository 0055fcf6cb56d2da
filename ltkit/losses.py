"""Losses for long-tailed classification, all built from the training class counts.

The family, from plain to re-balanced (n_k = training count of class k,
N = sum_k n_k, pi_k = n_k / N, C = number of classes, z = logits, y = label,
B = number of samples in the batch, w_k = (1 - beta) / (1 - beta^{n_k})
normalised to sum to C, i.e. w_k ~ 1 / effective number):

=================  ==========================================================
``ce``             cross-entropy  -log softmax(z)_y
``weighted-ce``    class-weighted CE; batch mean  sum_i w_{y_i} l_i / sum_i w_{y_i}
``focal``          (1 - p_y)^gamma * CE                    (Lin et al., ICCV 2017)
``cb``             class-balanced loss as Cui et al. release it: sum_i w_{y_i} L_i / B,
                   L = softmax CE, one-vs-all sigmoid CE or sigmoid focal
                   (``loss_type``)                      (Cui et al., CVPR 2019)
``cb-reweight``    LDAM-DRW's "Reweight" rule: CE weighted by the same w_k,
                   sum_i w_{y_i} l_i / sum_i w_{y_i}       (Cao et al., 2019)
``ldam``           CE on s * (z - m_y e_y), m_k ~ n_k^(-1/4)
                                                   (Cao et al., NeurIPS 2019)
``ce-drw``         CE, then the weights w_k from epoch ``drw_epoch`` (DRW)
``focal-drw``      LDAM-DRW's focal loss with DRW weights: c = w_y CE,
                   (1 - e^{-c})^gamma c, mean over the B samples
``ldam-drw``       LDAM with the same deferred re-weighting (Cao et al., 2019)
``bs``             Balanced Softmax: CE(z + log pi)   (Ren et al., NeurIPS 2020)
``la``             logit-adjusted loss: CE(z + tau log pi)
                                                    (Menon et al., ICLR 2021)
``la-posthoc``     plain CE; predict with z - tau log pi  (Menon et al., 2021)
=================  ==========================================================

One calling convention::

    loss = make_loss("ldam-drw", class_counts)     # -> LTLoss (an nn.Module)
    loss.set_epoch(epoch)                          # at the start of every epoch
    value = loss(logits, targets)                  # scalar batch mean
    num, den = loss.reduction_parts(logits, targets)   # value == num / den
    preds = loss.predict_logits(logits).argmax(1)  # at evaluation time
    loss.needs_cosine_head                         # True for LDAM variants

Targets are hard labels (int64 class indices). Mixing methods (CutMix, CMO)
call the loss twice: ``lam * loss(z, y_a) + (1 - lam) * loss(z, y_b)``.

Two ways to average a weighted batch
------------------------------------
Every loss is a ratio ``numerator / denominator`` with
``numerator = sum_i per_sample_i`` (:meth:`LTLoss.per_sample`). The
denominator is one of two things, and the released codes differ here:

* **sum of the batch's weights** ``sum_i w_{y_i}``, exactly as
  ``F.cross_entropy(weight=...)`` computes it: ``weighted-ce``,
  ``cb-reweight``, and ``ce-drw`` / ``ldam-drw`` once the weights are on
  (kaidic/LDAM-DRW, ``cifar_train.py``: ``nn.CrossEntropyLoss(weight=...)``
  and ``LDAMLoss`` pass the weights to ``F.cross_entropy``).
* **number of samples** ``B``: every unweighted loss, and ``cb`` (Cui et al.,
  richardaecn/class-balanced-loss ``src/cifar_main.py``: TF's
  ``softmax_cross_entropy(weights=...)`` divides by the number of non-zero
  weights, the sigmoid and focal branches by ``sum(one_hot) = B``) and
  ``focal-drw`` (kaidic/LDAM-DRW ``losses.py``: ``focal_loss`` ends in
  ``.mean()``).

On CIFAR-100-LT (IF 100) the weights of a typical training batch average
about 0.2, so the two conventions differ by a factor of about 5 that changes
from batch to batch. :meth:`LTLoss.reduction_parts` returns both parts, so
that a distributed engine can add up the denominators of all ranks (one
all-reduce) and divide every rank's numerator by the global denominator; the
denominator never depends on the logits (no gradient flows through it).

Departures from the released code (what and why)
------------------------------------------------
* departure from richardaecn/class-balanced-loss (``src/cifar_main.py``,
  ``focal_loss``): the sigmoid focal modulator (1 - p_t)^gamma is computed as
  ``exp(gamma * logsigmoid(-s z))`` with s = +1 for the true class and -1
  otherwise, instead of ``exp(-gamma y z - gamma log1p(exp(-z)))``. The value
  is the same; theirs overflows to a modulator of 0 (a zero loss and
  gradient) for a true-class logit below about -88 in float32.
* departure from richardaecn/class-balanced-loss (``src/model_base.py``,
  ``_fully_connected``): with the sigmoid and focal loss types their
  classifier bias starts at -log(C - 1) and is excluded from weight decay.
  That is the model's and the optimiser's business, not the loss's; ltkit's
  models do not do it.
* departure from kaidic/LDAM-DRW (``losses.py``, ``focal_loss``) and from the
  unweighted focal loss: 1 - p is clamped at 1e-12 so that the gradient stays
  finite for gamma < 1 when p rounds to 1. Values differ only where
  1 - p < 1e-12.
* ``cb-reweight`` with ``focal_gamma > 0`` (the softmax focal loss under the
  sum-of-weights mean) is ltkit's own combination, kept because it is what
  ``cb`` meant in ltkit before; LDAM-DRW's focal with re-weighting is
  ``focal-drw`` (``drw_epoch=0`` re-weights from the start, as their
  ``Reweight`` rule does).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checks, sampling
from .checks import InputError, InputTypeError

__all__ = [
    "LOSS_NAMES",
    "POST_HOC",
    "trains_as",
    "deferred",
    "Switch",
    "is_post_hoc",
    "CB_LOSS_TYPES",
    "LTLoss",
    "CELoss",
    "WeightedCELoss",
    "FocalLoss",
    "ClassBalancedLoss",
    "ClassBalancedReweightLoss",
    "LDAMLoss",
    "CEDRWLoss",
    "FocalDRWLoss",
    "LDAMDRWLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "PostHocLogitAdjustedLoss",
    "drw_weights",
    "effective_number",
    "ldam_margins",
    "make_loss",
]

Counts = Sequence[int] | Tensor

#: Loss types of ``cb`` (Cui et al.'s ``--loss-type``).
CB_LOSS_TYPES: tuple[str, ...] = ("softmax", "sigmoid", "focal")


# --------------------------------------------------------------------------- #
# Input checks and closed-form helpers
# --------------------------------------------------------------------------- #
def _as_counts(class_counts: Counts, *, positive: bool, loss_name: str = "") -> Tensor:
    """Validate class counts (``ltkit.checks``) and return them as a float64 CPU tensor.

    Nominal fractional sizes are accepted (CWS builds a loss over the even split
    ``n_c / K_c`` of a class); whole-number counts get :func:`ltkit.checks.class_counts`.
    """
    counts = sampling.counts_tensor(class_counts, positive=False)
    if counts.sum() <= 0:
        raise InputError("class_counts sums to 0: pass the training counts of each class.")
    zero = (counts == 0).nonzero().flatten()
    if positive and zero.numel():
        who = f"loss {loss_name!r}" if loss_name else "this computation"
        raise InputError(
            f"class_counts[{int(zero[0])}] is 0 but {who} takes logs or powers of the counts: "
            f"every class needs at least one training example (drop empty classes and relabel, "
            f"or use 'ce' / 'focal')."
        )
    return counts


_BETA_HINT = "typical: 0.999 or 0.9999"


def effective_number(n: Counts, beta: float) -> Tensor:
    """Effective number of samples E(n) = (1 - beta^n) / (1 - beta) (Cui et al., CVPR 2019).

    E(n) grows like n for small n and saturates at 1 / (1 - beta): extra
    examples of a large class add less and less new information.
    :func:`ltkit.sampling.effective_number` in the default dtype.
    """
    return sampling.effective_number(n, beta).to(torch.get_default_dtype())


def drw_weights(class_counts: Counts, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights w_k = (1 - beta) / (1 - beta^{n_k}), normalised to sum to C.

    w_k is proportional to 1 / E(n_k) (Cui et al., CVPR 2019); these are the
    weights of ``cb``, ``cb-reweight`` and the DRW losses (Cao et al., NeurIPS 2019).
    """
    beta = checks.real("beta", beta, low=0, high=1, high_open=True, hint=_BETA_HINT)
    counts = _as_counts(class_counts, positive=True, loss_name="drw_weights")
    w = (1.0 - beta) / (1.0 - beta**counts)
    return (w / w.sum() * len(w)).to(torch.get_default_dtype())


def ldam_margins(class_counts: Counts, max_margin: float = 0.5) -> Tensor:
    """LDAM margins m_k = max_margin * n_k^(-1/4) / max_j n_j^(-1/4) (Cao et al., 2019).

    The rarest class gets the largest margin, ``max_margin``.
    """
    counts = _as_counts(class_counts, positive=True, loss_name="ldam")
    max_margin = checks.real("max_margin", max_margin, low=0, hint="LDAM uses 0.5")
    m = counts ** -0.25
    return (max_margin * m / m.max()).to(torch.get_default_dtype())


def _inverse_frequency(counts: Tensor) -> Tensor:
    w = 1.0 / counts
    return (w / w.sum() * len(w)).to(torch.get_default_dtype())


def _log_prior(counts: Tensor) -> Tensor:
    return torch.log(counts / counts.sum()).to(torch.get_default_dtype())


# --------------------------------------------------------------------------- #
# Base class
# --------------------------------------------------------------------------- #
class LTLoss(nn.Module):
    """Base class: a loss built from the training class counts.

    Subclasses implement :meth:`_loss` (unweighted per-sample loss l_i) and,
    when they weight classes, override :attr:`class_weight`. The batch value is
    ``numerator / denominator`` (:meth:`reduction_parts`); ``divide_by`` says
    what the denominator is while class weights are in effect: ``"weights"``
    (sum_i w_{y_i}, as ``F.cross_entropy(weight=...)``) or ``"samples"`` (B).
    Unweighted, it is always B.
    """

    name: str = ""
    needs_cosine_head: bool = False
    needs_positive_counts: bool = True
    check_targets: bool = True
    divide_by: str = "weights"

    def __init__(self, class_counts: Counts) -> None:
        super().__init__()
        counts = _as_counts(
            class_counts, positive=self.needs_positive_counts, loss_name=self.name
        )
        self.register_buffer("class_counts", counts.to(torch.get_default_dtype()))
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    @property
    def class_weight(self) -> Tensor | None:
        """Per-class weights in effect now, or None when unweighted."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the current (0-based) epoch. Only DRW losses use it."""
        self.epoch = checks.integer("epoch", epoch, low=0, hint="the 0-based epoch number")

    def predict_logits(self, logits: Tensor) -> Tensor:
        """Scores whose argmax is the prediction; identity unless post-hoc adjusted."""
        self._check_logits(logits)
        return logits

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The numerator's terms, shape (B,): ``w_{y_i} * l_i`` (``l_i`` when unweighted).

        Their sum is the numerator of :meth:`reduction_parts`.
        """
        return self._per_sample(logits, self._check_inputs(logits, targets))

    def reduction_parts(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(numerator, denominator)``, two 0-d tensors with ``forward == numerator / denominator``.

        numerator = ``per_sample(logits, targets).sum()`` (carries the gradient);
        denominator = the number of samples B (as a float tensor) for unweighted
        losses, ``cb`` and ``focal-drw``, or ``sum_i w_{y_i}`` over the batch
        for ``weighted-ce``, ``cb-reweight`` and ``ce-drw`` / ``ldam-drw`` once
        their weights are on. The denominator never depends on the logits.

        Data-parallel use: with the global batch split over R ranks, the
        global-batch loss is ``sum_r num_r / sum_r den_r``; each rank
        back-propagates ``R * num_r / all_reduce_sum(den_r)`` and DDP's gradient
        average restores it exactly.
        """
        targets = self._check_inputs(logits, targets)
        losses = self._per_sample(logits, targets)
        return losses.sum(), self._denominator(targets, losses)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Batch value ``numerator / denominator`` (see :meth:`reduction_parts`)."""
        numerator, denominator = self.reduction_parts(logits, targets)
        return numerator / denominator

    def _per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        losses = self._loss(logits, targets)
        w = self.class_weight
        return losses if w is None else w[targets] * losses

    def _denominator(self, targets: Tensor, losses: Tensor) -> Tensor:
        w = self.class_weight
        if w is None or self.divide_by == "samples":
            # a fill kernel, not a host-to-device copy: no synchronisation on a GPU
            return torch.full((), targets.numel(), dtype=losses.dtype, device=losses.device)
        return w[targets].sum()

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    # -- checks ------------------------------------------------------------ #
    def _check_logits(self, logits: Tensor) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
            raise InputError(f"logits must be a 2-D tensor (batch, classes), got {shape}")
        if logits.shape[1] != self.num_classes:
            raise InputError(
                f"class_counts has {self.num_classes} entries but logits have "
                f"{logits.shape[1]} columns: pass the training counts of this data set"
            )

    def _check_inputs(self, logits: Tensor, targets: Tensor) -> Tensor:
        self._check_logits(logits)
        if not isinstance(targets, Tensor) or targets.dim() != 1:
            raise InputError("targets must be a 1-D tensor of class indices, shape (N,)")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise InputError(
                f"targets must be integer class indices, got dtype {targets.dtype}: "
                f"for mixed labels call the loss once per label set and combine "
                f"lam * loss(z, y_a) + (1 - lam) * loss(z, y_b)"
            )
        if targets.shape[0] != logits.shape[0]:
            raise InputError(
                f"logits have {logits.shape[0]} rows but targets have {targets.shape[0]}"
            )
        if targets.numel() == 0:
            raise InputError("got an empty batch: the batch mean is undefined")
        # The range check reads two numbers back from the device (a sync per
        # step on a GPU); the training engine validates its labels once and
        # switches it off with ``check_targets = False``.
        if self.check_targets and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise InputError(
                f"targets must lie in [0, {self.num_classes - 1}], got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        return targets.long()

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        for p in _accepted_params(type(self)):
            value = getattr(self, p, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"{p}={value}")
            elif isinstance(value, str):
                parts.append(f"{p}={value!r}")
        return ", ".join(parts)


# --------------------------------------------------------------------------- #
# Cross-entropy family
# --------------------------------------------------------------------------- #
class CELoss(LTLoss):
    """Cross-entropy: l = -log softmax(z)_y = -z_y + log sum_j exp(z_j)."""

    name = "ce"
    needs_positive_counts = False

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


class WeightedCELoss(CELoss):
    """Weighted cross-entropy: L = sum_i w_{y_i} l_i / sum_i w_{y_i}, l_i = CE.

    Default weights are inverse frequency, w_k = (1/n_k) / sum_j (1/n_j) * C.
    """

    name = "weighted-ce"

    def __init__(self, class_counts: Counts, weights: Counts | None = None) -> None:
        super().__init__(class_counts)
        if weights is None:
            zero = (self.class_counts == 0).nonzero().flatten()
            if zero.numel():
                raise InputError(
                    f"class_counts[{int(zero[0])}] is 0, so the default inverse-frequency "
                    f"weights are infinite: pass weights=... explicitly"
                )
            w = _inverse_frequency(self.class_counts.double())
        else:
            w = self._check_weights(weights)
        self.register_buffer("weights", w)

    def _check_weights(self, weights: Counts) -> Tensor:
        try:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputTypeError(
                f"weights must be a sequence of numbers, one per class, got {weights!r}"
            ) from err
        if w.shape != (self.num_classes,):
            raise InputError(
                f"weights must have one entry per class ({self.num_classes}), "
                f"got shape {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError("weights must be finite, >= 0 and not all zero")
        return w.to(torch.get_default_dtype())

    @property
    def class_weight(self) -> Tensor:
        return self.weights


class FocalLoss(LTLoss):
    """Focal loss (Lin et al., ICCV 2017): l = -(1 - p_y)^gamma log p_y, p = softmax(z).

    gamma = 0 is plain CE; larger gamma down-weights easy (well-classified) examples.
    Equal to kaidic/LDAM-DRW's ``FocalLoss`` without weights (their ``gamma=1``
    is the default here too).
    """

    name = "focal"
    needs_positive_counts = False

    def __init__(self, class_counts: Counts, gamma: float = 1.0) -> None:
        super().__init__(class_counts)
        self.gamma = checks.real("gamma", gamma, low=0, hint="gamma=0 is plain CE")

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        # 1 - p_y computed as -expm1(log p_y) for accuracy; the clamp keeps the
        # gradient finite when p_y rounds to exactly 1 and gamma < 1.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
        return -(one_minus_p**self.gamma) * log_p


class ClassBalancedLoss(LTLoss):
    """Class-balanced loss (Cui et al., CVPR 2019), as in their released code.

    L = sum_i w_{y_i} L_i / B  (B = number of samples), with
    w_k = (1 - beta) / (1 - beta^{n_k}) normalised to sum to C, and L_i by
    ``loss_type`` (richardaecn/class-balanced-loss, ``src/cifar_main.py``):

    * ``"softmax"``: L_i = -log softmax(z_i)_{y_i};
    * ``"sigmoid"``: one-vs-all binary CE on the one-hot target, summed over
      the classes, L_i = sum_c BCE(z_ic, [c = y_i]);
    * ``"focal"``: their sigmoid focal loss, L_i = sum_c (1 - p_t)^gamma BCE(z_ic, [c = y_i]),
      p_t = sigmoid(z_ic) for the true class and 1 - sigmoid(z_ic) otherwise.

    ``gamma`` is used by ``"focal"`` only (their default 1.0). Predictions
    are the argmax of z for every type. The LDAM-DRW convention (divide by the
    batch's sum of weights) is ``cb-reweight``.
    """

    name = "cb"
    divide_by = "samples"

    def __init__(
        self,
        class_counts: Counts,
        beta: float = 0.9999,
        loss_type: str = "softmax",
        gamma: float = 1.0,
    ) -> None:
        super().__init__(class_counts)
        self.beta = checks.real("beta", beta, low=0, high=1, high_open=True, hint=_BETA_HINT)
        self.loss_type = checks.choice(
            "loss_type", loss_type, CB_LOSS_TYPES,
            hint="Cui et al.'s --loss-type; 'softmax' is CE, 'focal' is the sigmoid focal loss",
        )
        self.gamma = checks.real(
            "gamma", gamma, low=0, hint="the focal exponent of loss_type='focal'; 0 is the sigmoid loss"
        )
        self.register_buffer("weights", drw_weights(class_counts, self.beta))

    @property
    def class_weight(self) -> Tensor:
        return self.weights

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.loss_type == "softmax":
            return F.cross_entropy(logits, targets, reduction="none")
        if logits.dtype in (torch.float16, torch.bfloat16):  # as autocast runs cross-entropy: in float32
            logits = logits.float()
        one_hot = F.one_hot(targets, self.num_classes).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
        if self.loss_type == "focal" and self.gamma != 0.0:
            # (1 - p_t)^gamma = sigmoid(-s z)^gamma, s = +1 on the true class, -1 elsewhere
            signed = (2.0 * one_hot - 1.0) * logits
            bce = torch.exp(self.gamma * F.logsigmoid(-signed)) * bce
        return bce.sum(dim=1)


class ClassBalancedReweightLoss(FocalLoss):
    """Class-balanced re-weighting as LDAM-DRW's ``Reweight`` rule (Cao et al., NeurIPS 2019).

    L = sum_i w_{y_i} l_i / sum_i w_{y_i} (``F.cross_entropy(weight=...)``),
    w_k = (1 - beta) / (1 - beta^{n_k}) normalised to sum to C, l_i the CE
    (``focal_gamma=0``, kaidic/LDAM-DRW ``cifar_train.py`` with
    ``--train_rule Reweight --loss_type CE``). This is ``ce-drw`` with
    ``drw_epoch=0``. ``focal_gamma > 0`` uses the softmax focal loss under the
    same mean (ltkit's own; LDAM-DRW's focal re-weighting is ``focal-drw``).
    Up to this release this was ltkit's ``cb``.
    """

    name = "cb-reweight"
    needs_positive_counts = True

    def __init__(
        self, class_counts: Counts, beta: float = 0.9999, focal_gamma: float = 0.0
    ) -> None:
        focal_gamma = checks.real("focal_gamma", focal_gamma, low=0, hint="0 is class-balanced CE")
        super().__init__(class_counts, gamma=focal_gamma)
        self.beta = checks.real("beta", beta, low=0, high=1, high_open=True, hint=_BETA_HINT)
        self.focal_gamma = focal_gamma
        self.register_buffer("weights", drw_weights(class_counts, self.beta))

    @property
    def class_weight(self) -> Tensor:
        return self.weights


class LDAMLoss(LTLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    l = CE(s * (z - m_y e_y), y),  m_k = max_margin * n_k^(-1/4) / max_j n_j^(-1/4),

    i.e. the true-class logit is lowered by its class margin (rare classes get
    larger margins) before scaling by s. Expects cosine logits in [-1, 1],
    so the model must use a cosine ("normed") linear head.
    """

    name = "ldam"
    needs_cosine_head = True

    def __init__(
        self, class_counts: Counts, max_margin: float = 0.5, scale: float = 30.0
    ) -> None:
        super().__init__(class_counts)
        self.max_margin = checks.real("max_margin", max_margin, low=0, hint="LDAM uses 0.5")
        self.scale = checks.real(
            "scale", scale, low=0, low_open=True, hint="LDAM uses s=30 with a cosine head"
        )
        self.register_buffer("margins", ldam_margins(class_counts, self.max_margin))

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        is_target = torch.zeros_like(logits, dtype=torch.bool)
        is_target.scatter_(1, targets[:, None], True)
        shifted = torch.where(is_target, logits - self.margins[targets][:, None], logits)
        return F.cross_entropy(self.scale * shifted, targets, reduction="none")


# --------------------------------------------------------------------------- #
# Deferred re-weighting (DRW)
# --------------------------------------------------------------------------- #
class _DRW:
    """Mixin: class-balanced weights w_k ~ 1/E(n_k) switched on at ``drw_epoch``.

    Before ``drw_epoch`` LDAM-DRW's code uses beta = 0, i.e. weights that are
    all exactly 1 after normalisation; ltkit uses no weights (the same values).
    """

    epoch: int

    def _setup_drw(self, class_counts: Counts, drw_epoch: int, beta: float) -> None:
        self.drw_epoch = checks.integer(
            "drw_epoch", drw_epoch, low=0,
            hint="the epoch the class weights switch on; LDAM-DRW uses 160 of 200, 0 re-weights from the start",
        )
        self.beta = checks.real("beta", beta, low=0, high=1, high_open=True, hint=_BETA_HINT)
        self.register_buffer("drw_weight", drw_weights(class_counts, self.beta))

    @property
    def class_weight(self) -> Tensor | None:
        return self.drw_weight if self.epoch >= self.drw_epoch else None


class CEDRWLoss(_DRW, CELoss):
    """CE with deferred re-weighting (Cao et al., NeurIPS 2019).

    Plain CE while epoch < drw_epoch; afterwards weighted CE
    sum_i w_{y_i} l_i / sum_i w_{y_i} with w_k = (1 - beta)/(1 - beta^{n_k}),
    normalised to sum to C. Call ``set_epoch`` every epoch.
    """

    name = "ce-drw"
    before_switch = "ce"
    needs_positive_counts = True

    def __init__(self, class_counts: Counts, drw_epoch: int = 160, beta: float = 0.9999) -> None:
        super().__init__(class_counts)
        self._setup_drw(class_counts, drw_epoch, beta)


class FocalDRWLoss(_DRW, FocalLoss):
    """Focal loss with deferred re-weighting, as kaidic/LDAM-DRW's ``FocalLoss(weight=...)``.

    The weight enters *inside* the focal term (LDAM-DRW ``losses.py``):
    c_i = w_{y_i} * CE_i, p_i = exp(-c_i), l_i = (1 - p_i)^gamma * c_i, and the
    batch value is the mean over the B samples (not over the weights).
    Plain focal loss while epoch < drw_epoch (their weights are all 1 then);
    ``drw_epoch=0`` is their ``--train_rule Reweight --loss_type Focal``.
    Their default ``gamma=1`` is the default here too.
    """

    name = "focal-drw"
    before_switch = "focal"
    needs_positive_counts = True
    divide_by = "samples"

    def __init__(
        self,
        class_counts: Counts,
        gamma: float = 1.0,
        drw_epoch: int = 160,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts, gamma=gamma)
        self._setup_drw(class_counts, drw_epoch, beta)

    def _per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        w = self.class_weight
        if w is None:
            return self._loss(logits, targets)
        weighted_ce = w[targets] * F.cross_entropy(logits, targets, reduction="none")
        one_minus_p = (-torch.expm1(-weighted_ce)).clamp_min(1e-12)  # as FocalLoss
        return one_minus_p**self.gamma * weighted_ce


class LDAMDRWLoss(_DRW, LDAMLoss):
    """LDAM with deferred re-weighting (Cao et al., NeurIPS 2019).

    LDAM loss l_i (see :class:`LDAMLoss`), unweighted while epoch < drw_epoch,
    then weighted by w_k = (1 - beta)/(1 - beta^{n_k}) normalised to sum to C.
    With drw_epoch=0 it is LDAM with class-balanced re-weighting throughout.
    """

    name = "ldam-drw"
    before_switch = "ldam"

    def __init__(
        self,
        class_counts: Counts,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int = 160,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts, max_margin=max_margin, scale=scale)
        self._setup_drw(class_counts, drw_epoch, beta)


# --------------------------------------------------------------------------- #
# Logit adjustment family
# --------------------------------------------------------------------------- #
class LogitAdjustedLoss(LTLoss):
    """Logit-adjusted loss (Menon et al., ICLR 2021): l = CE(z + tau log pi, y), pi_k = n_k/N.

    The adjustment is used in training only; predictions use the plain logits.
    tau = 1 gives the balanced-error-optimal classifier; tau = 0 is plain CE.
    """

    name = "la"

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = checks.real("tau", tau, low=0, hint="tau=1 is the standard adjustment")
        self.register_buffer("log_prior", _log_prior(self.class_counts.double()))

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, targets, reduction="none")


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced Softmax (Ren et al., NeurIPS 2020): l = CE(z + log(n_k / N), y).

    Identical to the logit-adjusted loss with tau = 1; predictions use plain logits.
    """

    name = "bs"

    def __init__(self, class_counts: Counts) -> None:
        super().__init__(class_counts, tau=1.0)


class PostHocLogitAdjustedLoss(CELoss):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021).

    Train with plain CE; predict with argmax_k (z_k - tau log pi_k), which
    raises the scores of rare classes.  It trains as ``ce`` does (``trains_as``),
    so a run can evaluate a CE run's weights instead of training them again
    (``TrainConfig.weights_from``).
    """

    trains_as = "ce"

    name = "la-posthoc"
    needs_positive_counts = True

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = checks.real("tau", tau, low=0, hint="tau=1 is the standard adjustment")
        self.register_buffer("log_prior", _log_prior(self.class_counts.double()))

    def predict_logits(self, logits: Tensor) -> Tensor:
        self._check_logits(logits)
        return logits - self.tau * self.log_prior


def trains_as(name: str) -> str:
    """The loss whose training ``name`` repeats exactly (itself, except for post-hoc rules: ``la-posthoc`` -> ``ce``)."""
    return getattr(_REGISTRY.get(name), "trains_as", None) or name


@dataclasses.dataclass(frozen=True)
class Switch:
    """A loss that is another loss until an epoch: ``before`` with ``before_params`` until ``epoch``."""

    before: str
    before_params: dict
    epoch: int


def deferred(name: str, class_counts: Counts, params: dict | None = None) -> Switch | None:
    """The loss ``name`` (with ``params``) is before its deferred re-weighting switches on, and the epoch it
    does (``ce-drw`` -> ``ce``, ``focal-drw`` -> ``focal``, ``ldam-drw`` -> ``ldam`` until ``drw_epoch``:
    their weights are off until then, the very same computation); None for a loss without a switch."""
    loss = make_loss(name, class_counts, **(params or {}))
    before = getattr(loss, "before_switch", None)
    if before is None:
        return None
    kept = {k: v for k, v in (params or {}).items() if k not in ("drw_epoch", "beta")}
    return Switch(before, kept, loss.drw_epoch)


def is_post_hoc(name: str) -> bool:
    """Whether ``name`` only changes the prediction rule of another loss's training."""
    return trains_as(name) != name


# --------------------------------------------------------------------------- #
# Factory
# --------------------------------------------------------------------------- #
_REGISTRY: dict[str, type[LTLoss]] = {
    cls.name: cls
    for cls in (
        CELoss,
        WeightedCELoss,
        FocalLoss,
        ClassBalancedLoss,
        ClassBalancedReweightLoss,
        LDAMLoss,
        CEDRWLoss,
        FocalDRWLoss,
        LDAMDRWLoss,
        BalancedSoftmaxLoss,
        LogitAdjustedLoss,
        PostHocLogitAdjustedLoss,
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)
POST_HOC: tuple[str, ...] = tuple(name for name in LOSS_NAMES if is_post_hoc(name))  # losses that only re-predict

# Parameters that moved with a change of meaning: a pointer in the error message.
_MOVED_PARAMS: dict[tuple[str, str], str] = {
    ("cb", "focal_gamma"): (
        "'cb' is now Cui et al.'s class-balanced loss (mean over the samples; "
        "loss_type='softmax' | 'sigmoid' | 'focal' with gamma); the former 'cb' "
        "(sum of weights as the divisor, softmax focal_gamma) is 'cb-reweight'"
    ),
}


def _accepted_params(cls: type[LTLoss]) -> dict[str, Any]:
    """Keyword parameters of a loss class (besides class_counts) and their defaults."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[2:]  # skip self, class_counts
    }


def loss_params(name: str) -> dict[str, Any]:
    """The keyword parameters the loss called ``name`` accepts (``loss_params``), with their defaults."""
    return _accepted_params(_REGISTRY[checks.choice("loss", name, LOSS_NAMES)])


def make_loss(name: str, class_counts: Counts, **params: Any) -> LTLoss:
    """Build the loss called ``name`` (one of ``LOSS_NAMES``) from the training class counts.

    >>> loss = make_loss("focal", [500, 50, 5], gamma=2.0)
    """
    checks.choice("loss", name, LOSS_NAMES)
    cls = _REGISTRY[name]
    accepted = _accepted_params(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        moved = [_MOVED_PARAMS[(name, p)] for p in unknown if (name, p) in _MOVED_PARAMS]
        raise InputError(
            f"loss {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"parameters it accepts: {allowed}" + "".join(f" ({m})" for m in moved)
        )
    return cls(class_counts, **params)
