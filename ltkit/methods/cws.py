"""Classwise splitting (CWS): dynamic sub-class prototypes and group mapping.

Yuan, Wang, Xu, Li, Zhu, Wan, Li and Liu, *Alleviating Long-Tailed Image
Classification via Dynamical Classwise Splitting*, Mathematics 11(13), 2996
(2023).  No code is public and only the abstract could be read, which states:
split majority classes into sub-classes; class-wise prototypes from a dynamic
clustering updated by a moving average; intra-class pseudo labels from the
feature-to-prototype distance; a group-mapping module that recovers the
ground-truth class; a plug-in for any long-tailed method.  Everything below
that the abstract does not fix is **ltkit's choice**, exposed as a parameter.

The method, for class counts ``n_c`` and penultimate features ``f(x)``:

1. **Sub-class counts** (``subclass_counts``)::

       K_c = clamp(round(n_c / n_ref), 1, min(K_max, n_c))

   rounding half up; ``n_ref`` is the median class size by default (or
   ``"min"``, ``"mean"`` or a number), ``K_max`` = ``max_splits`` (default 4).
   Head classes become ``K_c`` sub-classes of about ``n_ref`` images, classes
   smaller than ``1.5 n_ref`` stay whole.  ``S = sum_c K_c`` sub-classes in all.
   With an even split the sub-class sizes are ``n_c / K_c`` and the imbalance
   factor falls from ``max n / min n`` to ``max(n_c/K_c) / min(n_c/K_c)``
   (digits-lt: 15.6 -> 4.7).

2. **Prototypes** ``mu_{c,j}`` (``j = 1..K_c``) live in feature space (L2
   normalised features by default, ``normalize=True``).  Until
   ``start_epoch`` (a warm-up, default 10 % of the epochs) the network trains
   on the class loss only; at ``start_epoch`` each class's prototypes are
   initialised by k-means (k-means++ seeding, Lloyd iterations, seeded by the
   run seed) on the eval-mode features of its un-augmented training images.

3. **Pseudo sub-labels**: the nearest prototype *of the sample's own class*::

       j(x, y) = argmin_{j : class(j) = y} || f(x) - mu_j ||_2

   recomputed on every batch with the current features (dynamic), so a
   pseudo label never crosses classes.

4. **Moving-average update** after each batch, for every prototype with at
   least one assigned sample (sums and counts all-reduced over DDP ranks, so
   every rank holds the same prototypes)::

       mu_j <- m mu_j + (1 - m) mean{ f(x_i) : j(x_i, y_i) = j }

   i.e. online k-means with momentum ``m = momentum`` (default 0.9).

5. **Sub-class head and group mapping**: a head with ``S`` outputs ``s_j``
   replaces the model's head (each sub-class row starts as a copy of its
   class's row, so before the split the network is the ordinary classifier
   up to a per-class constant), and the class logits are::

       logsumexp:  z_c = (1/T) log sum_{j in c} exp(T s_j)
       prob-sum:   z_c = (1/T) log sum_{j in c} softmax(T s)_j
       logmeanexp: z_c = (1/T) [log sum_{j in c} exp(T s_j) - log K_c]

   ``prob-sum`` (the class probability is the sum of its sub-class
   probabilities) equals ``logsumexp`` minus a per-sample constant, so every
   ltkit loss and every argmax treats them identically.  ``logmeanexp`` is
   the consistent mapping when the sub-class loss makes the sub-logits
   *balanced* (Balanced Softmax / logit adjustment on the sub-class counts:
   ``s_j ~ log p(x|j)``, and ``p(x|c)`` is the *mean* of ``p(x|j)`` over an even
   split); ``logsumexp`` is the consistent one for posterior-like sub-logits
   (CE: ``p(c|x) = sum_j p(j|x)``).  ``mapping="auto"`` (default) picks
   ``logmeanexp`` for ``bs`` / ``la`` sub-losses and ``logsumexp`` otherwise.
   ``T`` is 1 for a linear head and the loss's scale ``s`` for a cosine head
   (LDAM's ``s = 30``: the mapping is then taken at the scale the loss uses).

6. **Loss**, a convex combination with ``lambda = sub_weight`` (default 0.5)::

       L = (1 - lambda) L_class(z, y) + lambda L_sub(s, j(x, y))

   ``L_class`` is the run's loss (``ctx.loss_fn``: CE, BS, LDAM-DRW, ...),
   ``L_sub`` is the same loss family built from the nominal sub-class sizes
   ``n_c / K_c`` (``sub_loss="same"``, default) or any ltkit loss by name
   (e.g. ``"ce"``).  Before ``start_epoch`` only ``L_class`` is used.  The
   convex weights keep the gradient scale of the base method: with
   ``max_splits=1`` (no class split) ``L_sub = L_class`` and CWS trains
   *exactly* the base method (a test checks this bit for bit), so any
   difference comes from the split, not from a larger effective step size.

``static-split`` is the baseline: k-means once at ``start_epoch``; every
training image keeps its k-means sub-label for the rest of training and the
prototypes never move (tensor data sets only: it needs image indices).

Smaller choices: k-means runs on rank 0 and is broadcast; a batch mixed by
another method (``y2``, ``lam``) gets the mixed sub-class loss and does not move
the prototypes; ``L_sub`` uses the *nominal* sub-class sizes ``n_c / K_c``,
while real clusters are uneven (k-means++ often isolates a few outliers —
notebook 05 shows the sizes over training), a known limitation; ``dump_dir``
(a debugging aid) makes every rank save its prototypes after each epoch.

Everything lives in the model (:class:`SplitModel`: prototypes, static
labels and the "initialised" flag are buffers), so a checkpoint holds it and a
resumed run continues exactly.  Usage::

    from ltkit import train
    train.fit("digits-lt", loss="bs", method="cws", method_params={"momentum": 0.9})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks, losses, models, sampling, train
from ..checks import param

__all__ = [
    "MAPPINGS",
    "ClasswiseSplitting",
    "SplitHead",
    "SplitModel",
    "StaticSplit",
    "classwise_kmeans",
    "ema_update",
    "group_map",
    "kmeans",
    "pseudo_labels",
    "split_sizes",
    "subclass_counts",
    "training_assignments",
]

MAPPINGS = ("auto", "logsumexp", "prob-sum", "logmeanexp")
_BALANCED_SUB_LOSSES = ("bs", "la")  # losses whose logits estimate log p(x|j): use logmeanexp


# =========================================================================== splitting the profile
def _reference_size(counts: Sequence[float], n_ref: str | float) -> float:
    if isinstance(n_ref, str):
        rules = {"median": median, "min": min, "mean": lambda c: sum(c) / len(c)}
        return float(rules[checks.choice("n_ref", n_ref, rules, "or a class size > 0")](counts))
    return checks.real("n_ref", n_ref, low=0, low_open=True, hint="'median', 'min', 'mean' or a class size > 0")


def _check_cap(max_splits: Any) -> int:
    return checks.integer("max_splits", max_splits, low=1, hint="1 = no class is split")


def subclass_counts(class_counts: Sequence[int], n_ref: str | float = "median", max_splits: int = 4) -> list[int]:
    """``K_c = clamp(round(n_c / n_ref), 1, min(max_splits, n_c))`` (round half up).

    >>> subclass_counts([140, 103, 76, 56, 42, 31, 23, 17, 12, 9])
    [4, 3, 2, 2, 1, 1, 1, 1, 1, 1]
    """
    counts = sampling.counts_tensor(class_counts).tolist()
    cap = _check_cap(max_splits)
    ref = _reference_size(counts, n_ref)
    return [int(max(1, min(cap, n, math.floor(n / ref + 0.5)))) for n in counts]


def split_sizes(class_counts: Sequence[int], sub_counts: Sequence[int]) -> list[float]:
    """Nominal sub-class sizes of an even split: ``n_c / K_c`` repeated ``K_c`` times, class by class."""
    if len(class_counts) != len(sub_counts):
        raise ValueError(f"{len(class_counts)} class counts but {len(sub_counts)} sub-class counts.")
    return [n / k for n, k in zip(class_counts, sub_counts) for _ in range(k)]


# =========================================================================== group mapping
def group_index(sub_counts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(C, K_max)`` indices of each class's sub-classes (padded with 0) and the mask of real entries."""
    k_max, offsets = max(sub_counts), torch.tensor([0, *sub_counts]).cumsum(0)
    slots = torch.arange(k_max)
    mask = slots[None, :] < torch.tensor(sub_counts)[:, None]
    return torch.where(mask, offsets[:-1, None] + slots[None, :], 0), mask


def group_map(sub_logits: Tensor, index: Tensor, mask: Tensor, mapping: str = "logsumexp",
              scale: float = 1.0) -> Tensor:
    """Sub-class logits ``(B, S)`` -> class logits ``(B, C)`` (see the module docstring)."""
    if mapping not in MAPPINGS[1:]:
        raise ValueError(f"mapping={mapping!r}: use one of {', '.join(MAPPINGS[1:])}.")
    scaled = scale * sub_logits
    grouped = scaled[:, index].masked_fill(~mask, float("-inf"))  # B, C, K_max
    z = torch.logsumexp(grouped, dim=2)
    if mapping == "prob-sum":
        z = z - torch.logsumexp(scaled, dim=1, keepdim=True)
    elif mapping == "logmeanexp":
        z = z - mask.sum(1).to(z.dtype).log()
    return z / scale


# =========================================================================== prototypes
def pseudo_labels(features: Tensor, labels: Tensor, prototypes: Tensor, sub_to_class: Tensor) -> Tensor:
    """The nearest prototype among those of each sample's own class (global sub-class indices)."""
    distances = torch.cdist(features.float(), prototypes.float())
    foreign = sub_to_class[None, :] != labels[:, None]
    return distances.masked_fill(foreign, float("inf")).argmin(1)


def ema_update(prototypes: Tensor, features: Tensor, sub_labels: Tensor, momentum: float,
               reduce=train.all_reduce_sum) -> Tensor:
    """``mu_j <- m mu_j + (1-m) mean of the features assigned to j`` (prototypes with no sample keep theirs).

    ``reduce`` sums the per-prototype feature sums and counts over DDP ranks
    (a no-op in one process), so every rank computes the same update.
    """
    num, dim = prototypes.shape
    stats = torch.zeros(num, dim + 1, dtype=torch.float32, device=prototypes.device)
    stats.index_add_(0, sub_labels, torch.cat([features.float(), features.new_ones(len(features), 1).float()], 1))
    stats = reduce(stats)
    sums, counts = stats[:, :dim], stats[:, dim:]
    seen = counts > 0
    means = sums / counts.clamp_min(1)
    return torch.where(seen, momentum * prototypes + (1 - momentum) * means, prototypes)


def kmeans(x: Tensor, k: int, iters: int = 50, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, deterministic given ``generator``: (centres, labels)."""
    x = x.detach().float().cpu()
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {len(x)} points.")
    generator = generator or torch.Generator().manual_seed(0)
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    while len(centres) < k:
        d2 = torch.cdist(x, centres).pow(2).min(1).values
        pick = (torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0
                else torch.randint(len(x), (1,), generator=generator))
        centres = torch.cat([centres, x[pick]])
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty cluster keeps its centre
        new_labels = torch.cdist(x, centres).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centres, labels


def classwise_kmeans(features: Tensor, labels: Tensor, sub_counts: Sequence[int], iters: int = 50,
                     seed: int = 0) -> tuple[Tensor, Tensor]:
    """k-means within every class: prototypes ``(S, D)`` and each sample's global sub-class index.

    Class ``c``'s k-means++ seeding draws from the random stream ``(seed, "kmeans", c)``.
    """
    features, labels = features.detach().float().cpu(), labels.cpu()
    offsets = [0, *torch.tensor(sub_counts).cumsum(0).tolist()]
    prototypes = torch.zeros(offsets[-1], features.shape[1])
    assigned = torch.zeros(len(labels), dtype=torch.long)
    for c, k in enumerate(sub_counts):
        rows = (labels == c).nonzero().flatten()
        if len(rows) == 0:
            raise ValueError(f"class {c} has no training image: k-means cannot place its prototypes.")
        centres, local = kmeans(features[rows], k, iters, torch.Generator().manual_seed(train.stream_seed(seed, "kmeans", c)))
        prototypes[offsets[c]:offsets[c + 1]] = centres
        assigned[rows] = offsets[c] + local
    return prototypes, assigned


# =========================================================================== the model
class SplitHead(nn.Module):
    """A head over all sub-classes, the group mapping, and the prototypes (buffers)."""

    def __init__(self, head: nn.Module, sub_counts: Sequence[int], feature_dim: int, mapping: str,
                 scale: float, num_train: int = 0) -> None:
        super().__init__()
        self.sub_counts, self.mapping, self.scale = list(sub_counts), mapping, float(scale)
        sub_to_class = torch.repeat_interleave(torch.arange(len(sub_counts)), torch.tensor(sub_counts))
        self.sub_head = _expanded_head(head, sub_to_class, feature_dim)
        index, mask = group_index(sub_counts)
        self.register_buffer("sub_to_class", sub_to_class)
        self.register_buffer("group_index", index)
        self.register_buffer("group_mask", mask)
        self.register_buffer("prototypes", torch.zeros(len(sub_to_class), feature_dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("static_labels", torch.zeros(num_train, dtype=torch.long))  # static-split only

    @property
    def num_subclasses(self) -> int:
        return len(self.sub_to_class)

    def sub_logits(self, features: Tensor) -> Tensor:
        return self.sub_head(features)

    def map(self, sub_logits: Tensor) -> Tensor:
        return group_map(sub_logits, self.group_index, self.group_mask, self.mapping, self.scale)

    def forward(self, features: Tensor) -> Tensor:
        return self.map(self.sub_logits(features))


def _expanded_head(head: nn.Module, sub_to_class: Tensor, feature_dim: int) -> nn.Module:
    """A linear / cosine head with one row per sub-class, each a copy of its class's row."""
    with torch.no_grad():
        if isinstance(head, models.CosineLinear):
            new = models.CosineLinear(feature_dim, len(sub_to_class))
            new.weight.copy_(head.weight[:, sub_to_class])
        elif isinstance(head, nn.Linear):
            new = nn.Linear(feature_dim, len(sub_to_class), bias=head.bias is not None)
            new.weight.copy_(head.weight[sub_to_class])
            if head.bias is not None:
                new.bias.copy_(head.bias[sub_to_class])
        else:
            raise TypeError(f"CWS splits an nn.Linear or CosineLinear head, got {type(head).__name__}.")
    return new


class SplitModel(nn.Module):
    """The engine's model with its head replaced by a :class:`SplitHead`.

    ``model(x)`` returns class logits (so evaluation is unchanged);
    ``model(x, parts=True)`` returns ``(class_logits, sub_logits, features)``
    in one forward pass (what the training loss needs, also under DDP).
    """

    def __init__(self, net: nn.Module, head: SplitHead) -> None:
        super().__init__()
        self.net = net
        self.net.head = nn.Identity()  # the class head lives on as the sub-class head
        self.head = head
        self.feature_dim = net.feature_dim

    def features(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def forward(self, x: Tensor, parts: bool = False):
        features = self.features(x)
        sub = self.head.sub_logits(features)
        logits = self.head.map(sub)
        return (logits, sub, features) if parts else logits


# =========================================================================== the method
@dataclass(frozen=True)
class CWSParams:
    """CWS's parameters (``config.method_params``); see the module docstring for each."""

    n_ref: str | float = param("median", hint="the reference class size: 'median', 'min', 'mean' or a size > 0")
    max_splits: int = param(4, low=1, hint="1 = no class is split")
    momentum: float = param(0.9, low=0, high=1, high_open=True, hint="0.9-0.99 is typical; 0 = batch means")
    start_epoch: int | None = param(None, low=0, hint="None: 10 % of the epochs")
    mapping: str = param("auto", choices=MAPPINGS)
    sub_loss: str = param("same", hint="'same' (the run's loss) or a loss name")
    sub_weight: float = param(0.5, low=0, high=1, hint="loss = (1 - w) class loss + w sub-class loss")
    normalize: bool = True
    kmeans_iters: int = param(50, low=1)
    dump_dir: str | None = None

    def check(self) -> None:
        _reference_size([1.0], self.n_ref)
        if self.sub_loss != "same":
            checks.choice("method 'cws': sub_loss", self.sub_loss, ("same", *losses.LOSS_NAMES))


@train.register_method
class ClasswiseSplitting(train.Method):
    """CWS (see the module docstring): ``method="cws"``, parameters in ``method_params``."""

    name = "cws"
    Params = CWSParams
    dynamic = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.start_epoch = self.params.start_epoch
        self.sub_loss_fn: losses.LTLoss | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: train.Context) -> None:
        config, model = ctx.config, ctx.model
        if not (hasattr(model, "features") and hasattr(model, "head") and hasattr(model, "feature_dim")):
            raise TypeError("CWS needs a model with features(x), head and feature_dim (every ltkit model has them).")
        if self.start_epoch is None:
            self.start_epoch = min(config.epochs - 1, max(1, round(0.1 * config.epochs)))
        if self.start_epoch >= config.epochs:
            raise ValueError(f"start_epoch={self.start_epoch} >= epochs={config.epochs}: the split would never start.")
        if not self.dynamic and ctx.train_x is None:
            raise ValueError("static-split keeps one sub-label per training image and needs a tensor data set "
                             "(digits-lt, CIFAR-LT); use method='cws' for split-file data sets.")
        sub_counts = subclass_counts(ctx.class_counts, self.params.n_ref, self.params.max_splits)
        self.sub_loss_fn = self._make_sub_loss(config, ctx.class_counts, sub_counts).to(ctx.device)
        cosine = isinstance(model.head, models.CosineLinear)
        if cosine != ctx.loss_fn.needs_cosine_head:
            raise ValueError(f"loss {config.loss!r} {'needs' if ctx.loss_fn.needs_cosine_head else 'does not use'} "
                             "a cosine head but the model's head is "
                             f"{type(model.head).__name__}: leave model_params['cosine_head'] unset.")
        scale = float(getattr(ctx.loss_fn, "scale", 1.0)) if cosine else 1.0
        head = SplitHead(model.head, sub_counts, model.feature_dim, self._resolve_mapping(config),
                         scale, 0 if self.dynamic else len(ctx.train_y))
        ctx.model = SplitModel(model, head).to(ctx.device)

    def _make_sub_loss(self, config: train.TrainConfig, counts: Sequence[int],
                       sub_counts: Sequence[int]) -> losses.LTLoss:
        name = config.loss if self.params.sub_loss == "same" else self.params.sub_loss
        params = dict(config.loss_params) if self.params.sub_loss == "same" else {}
        try:
            loss = losses.make_loss(name, split_sizes(counts, sub_counts), **params)
        except ValueError as err:
            raise ValueError(f"CWS could not build the sub-class loss {name!r} from the sub-class sizes ({err}); "
                             "pass method_params={'sub_loss': 'ce'}.") from err
        loss.check_targets = False
        return loss

    def _resolve_mapping(self, config: train.TrainConfig) -> str:
        if self.params.mapping != "auto":
            return self.params.mapping
        name = config.loss if self.params.sub_loss == "same" else self.params.sub_loss
        return "logmeanexp" if name in _BALANCED_SUB_LOSSES else "logsumexp"

    # ------------------------------------------------------------------ epochs
    def epoch_start(self, ctx: train.Context, epoch: int) -> None:
        self.sub_loss_fn.set_epoch(epoch)
        head = ctx.base_model.head
        if epoch >= self.start_epoch and not bool(head.initialised):
            self._initialise(ctx, head)

    @torch.no_grad()
    def _initialise(self, ctx: train.Context, head: SplitHead) -> None:
        """k-means within every class on rank 0, broadcast to all ranks."""
        if ctx.rank == 0:
            features, labels = ctx.features()
            prototypes, assigned = classwise_kmeans(self.prototype_space(features), labels, head.sub_counts,
                                                    self.params.kmeans_iters, seed=ctx.config.seed)
            head.prototypes.copy_(prototypes)
            if head.static_labels.numel():
                head.static_labels.copy_(assigned)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(head.prototypes, src=0)
            if head.static_labels.numel():
                dist.broadcast(head.static_labels, src=0)
        head.initialised.fill_(True)

    def epoch_end(self, ctx: train.Context, epoch: int) -> None:
        if self.params.dump_dir is not None:
            path = Path(self.params.dump_dir) / f"prototypes-rank{ctx.rank}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(epoch=epoch, prototypes=ctx.base_model.head.prototypes.cpu().clone()), path)

    # ------------------------------------------------------------------ loss
    def prototype_space(self, features: Tensor) -> Tensor:
        """Detached float features, L2-normalised when ``normalize`` (the space prototypes live in)."""
        features = features.detach().float()
        return F.normalize(features, dim=1) if self.params.normalize else features

    def loss(self, ctx: train.Context, batch: train.Batch) -> Tensor:
        logits, sub_logits, features = ctx.model(batch.x, parts=True)
        value = ctx.mixed_loss(logits, batch)
        head = ctx.base_model.head
        if ctx.epoch < self.start_epoch or self.params.sub_weight == 0:
            return value
        sub_y = self.sub_labels(head, self.prototype_space(features), batch.y, batch.index)
        sub_value = ctx.loss(self.sub_loss_fn, sub_logits, sub_y)  # the mean over the global batch
        if batch.y2 is not None and batch.lam < 1:  # a mixing method's second label set
            sub_y2 = self.sub_labels(head, self.prototype_space(features), batch.y2, None)
            sub_value = batch.lam * sub_value + (1 - batch.lam) * ctx.loss(self.sub_loss_fn, sub_logits, sub_y2)
        elif self.dynamic:  # prototypes move with un-mixed batches only
            with torch.no_grad():
                head.prototypes.copy_(ema_update(head.prototypes, self.prototype_space(features), sub_y, self.params.momentum))
        return (1 - self.params.sub_weight) * value + self.params.sub_weight * sub_value

    def sub_labels(self, head: SplitHead, features: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        """Dynamic: nearest own-class prototype now.  Static: the image's k-means label."""
        if not self.dynamic and index is not None:
            return head.static_labels[index]
        return pseudo_labels(features, labels, head.prototypes, head.sub_to_class)


@train.register_method
class StaticSplit(ClasswiseSplitting):
    """Baseline: k-means once at ``start_epoch``; fixed sub-labels per image, prototypes never move."""

    name = "static-split"
    dynamic = False


def training_assignments(run_dir: str | Path, data: Any = None) -> dict[str, Tensor]:
    """Rebuild a finished CWS / static-split run from its folder and split its training images.

    Returns ``features`` (in the prototypes' space), ``labels``, ``sub_labels``
    (the nearest own-class prototype; the frozen k-means labels for
    static-split), ``sub_to_class`` and ``prototypes``, all on the CPU.
    ``data`` replaces the data set the run's config names (pass the one you
    trained on when you trained with ``fit(..., data=...)``).
    """
    trained = train.load_trained(run_dir, data)
    method, ctx = trained.method, trained.context
    if not isinstance(method, ClasswiseSplitting):
        raise ValueError(f"{run_dir} was trained with method {trained.config.method!r}, not a classwise split.")
    features, labels = ctx.features()
    features, head = method.prototype_space(features), ctx.model.head
    sub_labels = (head.static_labels.clone() if head.static_labels.numel()
                  else pseudo_labels(features, labels, head.prototypes, head.sub_to_class))
    return dict(features=features, labels=labels, sub_labels=sub_labels, sub_to_class=head.sub_to_class.clone(),
                prototypes=head.prototypes.clone())
