"""Losses for long-tailed classification, all built from the training class counts.

The family, from plain to re-balanced (n_k = training count of class k,
N = sum_k n_k, pi_k = n_k / N, C = number of classes, z = logits, y = label):

=================  ==========================================================
``ce``             cross-entropy  -log softmax(z)_y
``weighted-ce``    class-weighted CE; batch mean  sum_i w_{y_i} l_i / sum_i w_{y_i}
``focal``          (1 - p_y)^gamma * CE                    (Lin et al., ICCV 2017)
``cb``             CE (or focal) weighted by 1 / effective number
                                                       (Cui et al., CVPR 2019)
``ldam``           CE on s * (z - m_y e_y), m_k ~ n_k^(-1/4)
                                                   (Cao et al., NeurIPS 2019)
``ce-drw``         CE, then class-balanced weights from epoch ``drw_epoch`` (DRW)
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
    preds = loss.predict_logits(logits).argmax(1)  # at evaluation time
    loss.needs_cosine_head                         # True for LDAM variants

Targets are hard labels (int64 class indices). Mixing methods (CutMix, CMO)
call the loss twice: ``lam * loss(z, y_a) + (1 - lam) * loss(z, y_b)``.

For weighted losses the batch mean is ``sum_i w_{y_i} l_i / sum_i w_{y_i}``,
exactly as ``F.cross_entropy(weight=...)`` computes it; ``per_sample`` returns
the numerators ``w_{y_i} l_i`` (just ``l_i`` when unweighted).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sampling

__all__ = [
    "LOSS_NAMES",
    "LTLoss",
    "CELoss",
    "WeightedCELoss",
    "FocalLoss",
    "ClassBalancedLoss",
    "LDAMLoss",
    "CEDRWLoss",
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


# --------------------------------------------------------------------------- #
# Input checks and closed-form helpers
# --------------------------------------------------------------------------- #
def _as_counts(class_counts: Counts, *, positive: bool, loss_name: str = "") -> Tensor:
    """Validate class counts and return them as a float64 CPU tensor."""
    try:
        counts = torch.as_tensor(class_counts).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"class_counts must be a 1-D sequence of numbers (one training count "
            f"per class), got {class_counts!r}"
        ) from err
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(
            f"class_counts must be a 1-D sequence with at least 2 classes, got shape "
            f"{tuple(counts.shape)}: pass the number of training examples of each class"
        )
    if not torch.isfinite(counts).all():
        raise ValueError("class_counts contains NaN or inf: pass finite training counts")
    negative = (counts < 0).nonzero().flatten()
    if negative.numel():
        i = int(negative[0])
        raise ValueError(
            f"class_counts[{i}] = {counts[i].item():g} is negative: counts must be >= 0"
        )
    if counts.sum() <= 0:
        raise ValueError("class_counts sums to 0: pass the training counts of each class")
    zero = (counts == 0).nonzero().flatten()
    if positive and zero.numel():
        i = int(zero[0])
        who = f"loss {loss_name!r}" if loss_name else "this computation"
        raise ValueError(
            f"class_counts[{i}] is 0 but {who} takes logs or powers of the counts: "
            f"every class needs at least one training example (drop empty classes, "
            f"or use 'ce' / 'focal')"
        )
    return counts


def _check_beta(beta: float) -> float:
    if not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1) (typical: 0.999 or 0.9999), got {beta!r}")
    return float(beta)


def _check_nonneg(name: str, value: float, hint: str) -> float:
    if not isinstance(value, numbers.Real) or not value >= 0:  # `not >=` also catches NaN
        raise ValueError(f"{name} must be >= 0 ({hint}), got {value!r}")
    return float(value)


def _check_epoch(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


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
    weights DRW switches on (Cao et al., NeurIPS 2019).
    """
    beta = _check_beta(beta)
    counts = _as_counts(class_counts, positive=True, loss_name="drw_weights")
    w = (1.0 - beta) / (1.0 - beta**counts)
    return (w / w.sum() * len(w)).to(torch.get_default_dtype())


def ldam_margins(class_counts: Counts, max_margin: float = 0.5) -> Tensor:
    """LDAM margins m_k = max_margin * n_k^(-1/4) / max_j n_j^(-1/4) (Cao et al., 2019).

    The rarest class gets the largest margin, ``max_margin``.
    """
    counts = _as_counts(class_counts, positive=True, loss_name="ldam")
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
    when they weight classes, override :attr:`class_weight`.
    """

    name: str = ""
    needs_cosine_head: bool = False
    needs_positive_counts: bool = True
    check_targets: bool = True

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
        self.epoch = _check_epoch("epoch", epoch)

    def predict_logits(self, logits: Tensor) -> Tensor:
        """Scores whose argmax is the prediction; identity unless post-hoc adjusted."""
        self._check_logits(logits)
        return logits

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sample losses w_{y_i} * l_i, shape (N,), before batch normalisation."""
        targets = self._check_inputs(logits, targets)
        losses = self._loss(logits, targets)
        w = self.class_weight
        return losses if w is None else w[targets] * losses

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Batch mean: mean_i l_i, or sum_i w_{y_i} l_i / sum_i w_{y_i} when weighted."""
        losses = self.per_sample(logits, targets)
        w = self.class_weight
        return losses.mean() if w is None else losses.sum() / w[targets.long()].sum()

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    # -- checks ------------------------------------------------------------ #
    def _check_logits(self, logits: Tensor) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
            raise ValueError(f"logits must be a 2-D tensor (batch, classes), got {shape}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"class_counts has {self.num_classes} entries but logits have "
                f"{logits.shape[1]} columns: pass the training counts of this data set"
            )

    def _check_inputs(self, logits: Tensor, targets: Tensor) -> Tensor:
        self._check_logits(logits)
        if not isinstance(targets, Tensor) or targets.dim() != 1:
            raise ValueError("targets must be a 1-D tensor of class indices, shape (N,)")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ValueError(
                f"targets must be integer class indices, got dtype {targets.dtype}: "
                f"for mixed labels call the loss once per label set and combine "
                f"lam * loss(z, y_a) + (1 - lam) * loss(z, y_b)"
            )
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"logits have {logits.shape[0]} rows but targets have {targets.shape[0]}"
            )
        if targets.numel() == 0:
            raise ValueError("got an empty batch: the batch mean is undefined")
        # The range check reads two numbers back from the device (a sync per
        # step on a GPU); the training engine validates its labels once and
        # switches it off with ``check_targets = False``.
        if self.check_targets and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(
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
                raise ValueError(
                    f"class_counts[{int(zero[0])}] is 0, so the default inverse-frequency "
                    f"weights are infinite: pass weights=... explicitly"
                )
            w = _inverse_frequency(self.class_counts.double())
        else:
            w = self._check_weights(weights)
        self.register_buffer("weights", w)

    def _check_weights(self, weights: Counts) -> Tensor:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        if w.shape != (self.num_classes,):
            raise ValueError(
                f"weights must have one entry per class ({self.num_classes}), "
                f"got shape {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, >= 0 and not all zero")
        return w.to(torch.get_default_dtype())

    @property
    def class_weight(self) -> Tensor:
        return self.weights


class FocalLoss(LTLoss):
    """Focal loss (Lin et al., ICCV 2017): l = -(1 - p_y)^gamma log p_y, p = softmax(z).

    gamma = 0 is plain CE; larger gamma down-weights easy (well-classified) examples.
    """

    name = "focal"
    needs_positive_counts = False

    def __init__(self, class_counts: Counts, gamma: float = 1.0) -> None:
        super().__init__(class_counts)
        self.gamma = _check_nonneg("gamma", gamma, "gamma=0 is plain CE")

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        # 1 - p_y computed as -expm1(log p_y) for accuracy; the clamp keeps the
        # gradient finite when p_y rounds to exactly 1 and gamma < 1.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
        return -(one_minus_p**self.gamma) * log_p


class ClassBalancedLoss(FocalLoss):
    """Class-balanced loss (Cui et al., CVPR 2019).

    L = sum_i w_{y_i} l_i / sum_i w_{y_i}, with w_k = (1 - beta) / (1 - beta^{n_k})
    normalised to sum to C (i.e. w_k ~ 1 / effective number), and l_i the CE
    (``focal_gamma=0``) or the softmax focal loss (``focal_gamma > 0``).
    """

    name = "cb"
    needs_positive_counts = True

    def __init__(
        self, class_counts: Counts, beta: float = 0.9999, focal_gamma: float = 0.0
    ) -> None:
        focal_gamma = _check_nonneg("focal_gamma", focal_gamma, "0 is class-balanced CE")
        super().__init__(class_counts, gamma=focal_gamma)
        self.beta = _check_beta(beta)
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
        self.max_margin = _check_nonneg("max_margin", max_margin, "LDAM uses 0.5")
        if not isinstance(scale, numbers.Real) or not scale > 0:
            raise ValueError(f"scale must be > 0 (LDAM uses s=30 with a cosine head), got {scale!r}")
        self.scale = float(scale)
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
    """Mixin: class-balanced weights w_k ~ 1/E(n_k) switched on at ``drw_epoch``."""

    epoch: int

    def _setup_drw(self, class_counts: Counts, drw_epoch: int, beta: float) -> None:
        self.drw_epoch = _check_epoch("drw_epoch", drw_epoch)
        self.beta = _check_beta(beta)
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
    needs_positive_counts = True

    def __init__(self, class_counts: Counts, drw_epoch: int = 160, beta: float = 0.9999) -> None:
        super().__init__(class_counts)
        self._setup_drw(class_counts, drw_epoch, beta)


class LDAMDRWLoss(_DRW, LDAMLoss):
    """LDAM with deferred re-weighting (Cao et al., NeurIPS 2019).

    LDAM loss l_i (see :class:`LDAMLoss`), unweighted while epoch < drw_epoch,
    then weighted by w_k = (1 - beta)/(1 - beta^{n_k}) normalised to sum to C.
    With drw_epoch=0 it is LDAM with class-balanced re-weighting throughout.
    """

    name = "ldam-drw"

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
        self.tau = _check_nonneg("tau", tau, "tau=1 is the standard adjustment")
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
    raises the scores of rare classes.
    """

    name = "la-posthoc"
    needs_positive_counts = True

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = _check_nonneg("tau", tau, "tau=1 is the standard adjustment")
        self.register_buffer("log_prior", _log_prior(self.class_counts.double()))

    def predict_logits(self, logits: Tensor) -> Tensor:
        self._check_logits(logits)
        return logits - self.tau * self.log_prior


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
        LDAMLoss,
        CEDRWLoss,
        LDAMDRWLoss,
        BalancedSoftmaxLoss,
        LogitAdjustedLoss,
        PostHocLogitAdjustedLoss,
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _accepted_params(cls: type[LTLoss]) -> dict[str, Any]:
    """Keyword parameters of a loss class (besides class_counts) and their defaults."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[2:]  # skip self, class_counts
    }


def make_loss(name: str, class_counts: Counts, **params: Any) -> LTLoss:
    """Build the loss called ``name`` (one of ``LOSS_NAMES``) from the training class counts.

    >>> loss = make_loss("focal", [500, 50, 5], gamma=2.0)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSS_NAMES)}")
    cls = _REGISTRY[name]
    accepted = _accepted_params(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise ValueError(
            f"loss {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"parameters it accepts: {allowed}"
        )
    return cls(class_counts, **params)
