"""Imbalance profiles: how many training images each class gets.

A long-tailed training set is described by its *profile*: the class sizes
``n_0 >= n_1 >= ... >= n_{C-1}`` sorted from head to tail.

* **Exponential** (Cao et al., NeurIPS 2019, "LDAM"; the CIFAR-LT convention
  used by CMO, Park et al., CVPR 2022)::

      n_i = int(n_max * (1 / IF) ** (i / (C - 1)))      i = 0 .. C-1

* **Step** (Buda et al., 2018): the first ``C * (1 - minority_fraction)``
  classes keep ``n_max`` images, the others ``int(n_max / IF)``.
* **Anchored** (log-linear between published anchor points): the shape of a
  real data set whose split files we do not ship (ImageNet-LT, Places-LT,
  iNaturalist 2018), pinned at its published largest / smallest class and at
  its published many / medium / few class counts, with one knee in the head
  fitted so that the total matches the published total.  This is *our*
  approximation of the shape, not the real per-class list: load the real
  split files with :func:`ltkit.data.load_split_file_lt` for that.
* **From counts**: any list of class sizes, validated.

Statistics: imbalance factor ``IF = max n / min n``; the Gini coefficient of
the class sizes (0 = balanced, → 1 = all images in one class); the share of
images held by the head / tail fraction of classes; and the many / medium /
few groups by *training* count (many ``n > 100``, medium ``20 <= n <= 100``,
few ``n < 20``; Liu et al., CVPR 2019 "OLTR"), thresholds configurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .checks import InputError, class_counts, integer, real

MANY_THRESHOLD = 100
FEW_THRESHOLD = 20
GROUPS = ("many", "medium", "few")


# --------------------------------------------------------------------------- validation
def _check_profile_args(num_classes: int, n_max: int, imbalance_factor: float) -> None:
    """One-line errors (:mod:`ltkit.checks`) naming the argument and the fix."""
    integer("num_classes", num_classes, low=2, hint="a long-tailed problem needs at least 2 classes")
    integer("n_max", n_max, low=1, whole_floats=True, hint="the images of the largest class")
    real("imbalance_factor", imbalance_factor, low=1,
         hint="n_max / n_min: 1 is a balanced data set; CIFAR-LT uses 10, 50, 100 or 200")


def check_counts(counts: Sequence[int] | np.ndarray, name: str = "class sizes") -> list[int]:
    """Validate a vector of class sizes and return it as a list of ints.

    :func:`ltkit.checks.class_counts` with at least 2 classes, and every class
    has an image (the error names all the empty classes): an
    :class:`ltkit.checks.InputError` (a ``ValueError``) or, for something that
    is not a flat sequence of numbers, an :class:`ltkit.checks.InputTypeError`
    (a ``TypeError``).  ``name`` is the argument named in the messages.
    """
    values = class_counts(counts, name, min_classes=2)
    empty = [k for k, n in enumerate(values) if n == 0]
    if empty:
        raise InputError(
            f"class {empty[0]} has no images (classes with no images: {empty[:20]}); every class needs "
            "at least one training image: lower the imbalance factor, raise n_max, or drop the empty classes."
        )
    return values


# --------------------------------------------------------------------------- profiles
def exponential_profile(num_classes: int, n_max: int, imbalance_factor: float) -> list[int]:
    """``n_i = int(n_max * (1/IF)^(i/(C-1)))``: the CIFAR-LT profile (LDAM / CMO code).

    >>> exponential_profile(10, 5000, 100)[:3], exponential_profile(10, 5000, 100)[-1]
    ([5000, 2997, 1796], 50)
    """
    _check_profile_args(num_classes, n_max, imbalance_factor)
    # Same float expression as the reference code, so int() truncates identically.
    counts = [int(n_max * ((1.0 / imbalance_factor) ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    return check_counts(counts)


def step_profile(num_classes: int, n_max: int, imbalance_factor: float, minority_fraction: float = 0.5) -> list[int]:
    """Step imbalance: the last ``minority_fraction`` of classes get ``int(n_max / IF)`` images."""
    _check_profile_args(num_classes, n_max, imbalance_factor)
    real("minority_fraction", minority_fraction, low=0, high=1, low_open=True, high_open=True,
         hint="0.5 = half the classes")
    num_major = num_classes - int(round(num_classes * minority_fraction))
    num_major = min(max(num_major, 1), num_classes - 1)
    counts = [n_max] * num_major + [int(n_max / imbalance_factor)] * (num_classes - num_major)
    return check_counts(counts)


def anchored_profile(num_classes: int, anchors: Sequence[tuple[int, float]]) -> list[int]:
    """Class sizes interpolated log-linearly between ``(rank, size)`` anchors.

    Ranks run from 0 (largest class) to ``num_classes - 1``; sizes are rounded.
    """
    ranks, sizes = zip(*sorted(anchors))
    if ranks[0] != 0 or ranks[-1] != num_classes - 1:
        raise InputError(f"anchors must start at rank 0 and end at rank {num_classes - 1}, got ranks {list(ranks)}.")
    for rank, size in zip(ranks, sizes):
        real(f"anchors: the size at rank {rank}", size, low=0, low_open=True, hint="a number of images > 0")
    log_sizes = np.interp(np.arange(num_classes), ranks, np.log(sizes))
    return check_counts(np.round(np.exp(log_sizes)).astype(int))


def from_counts(counts: Sequence[int]) -> list[int]:
    """A profile from explicit class sizes (validated, order kept)."""
    return check_counts(counts)


# --------------------------------------------------------------------------- statistics
def imbalance_factor(counts: Sequence[int]) -> float:
    """``IF = max_k n_k / min_k n_k``."""
    values = check_counts(counts)
    return max(values) / min(values)


def gini(counts: Sequence[int]) -> float:
    """Gini coefficient of the class sizes: ``sum_ij |n_i - n_j| / (2 C^2 mean(n))``."""
    values = np.asarray(check_counts(counts), dtype=float)
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * values.size**2 * values.mean()))


def head_share(counts: Sequence[int], fraction: float = 0.2) -> float:
    """Share of all images held by the largest ``fraction`` of classes (at least one class)."""
    values = np.sort(np.asarray(check_counts(counts)))[::-1]
    real("fraction", fraction, low=0, high=1, low_open=True, hint="the share of the classes, e.g. 0.2")
    k = max(1, int(round(fraction * values.size)))
    return float(values[:k].sum() / values.sum())


def tail_share(counts: Sequence[int], fraction: float = 0.2) -> float:
    """Share of all images held by the smallest ``fraction`` of classes (at least one class)."""
    values = np.sort(np.asarray(check_counts(counts)))
    real("fraction", fraction, low=0, high=1, low_open=True, hint="the share of the classes, e.g. 0.2")
    k = max(1, int(round(fraction * values.size)))
    return float(values[:k].sum() / values.sum())


def _check_thresholds(many: int, few: int) -> None:
    real("many", many, low=0, hint="classes with more training images are 'many'; the papers use 100")
    real("few", few, low=0, hint="classes with fewer training images are 'few'; the papers use 20")
    if few > many + 1:
        raise InputError(f"few threshold ({few}) must not exceed the many threshold ({many}); e.g. many=100, few=20.")


def group_of(count: int, many: int = MANY_THRESHOLD, few: int = FEW_THRESHOLD) -> str:
    """'many' if ``n > many``, 'few' if ``n < few``, else 'medium'."""
    return "many" if count > many else "few" if count < few else "medium"


def class_groups(counts: Sequence[int], many: int = MANY_THRESHOLD, few: int = FEW_THRESHOLD) -> list[str]:
    """The group of each class by its *training* count."""
    _check_thresholds(many, few)
    return [group_of(n, many, few) for n in check_counts(counts)]


def group_sizes(counts: Sequence[int], many: int = MANY_THRESHOLD, few: int = FEW_THRESHOLD) -> dict[str, int]:
    """How many classes fall in each group."""
    groups = class_groups(counts, many, few)
    return {g: groups.count(g) for g in GROUPS}


@dataclass(frozen=True)
class ProfileSummary:
    num_classes: int
    total: int
    n_max: int
    n_min: int
    imbalance_factor: float
    gini: float
    head_share: float
    tail_share: float
    groups: dict[str, int]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(counts: Sequence[int], many: int = MANY_THRESHOLD, few: int = FEW_THRESHOLD) -> ProfileSummary:
    """All the statistics above in one record (head/tail share over 20 % of the classes)."""
    values = check_counts(counts)
    return ProfileSummary(
        num_classes=len(values),
        total=sum(values),
        n_max=max(values),
        n_min=min(values),
        imbalance_factor=round(imbalance_factor(values), 4),
        gini=round(gini(values), 4),
        head_share=round(head_share(values), 4),
        tail_share=round(tail_share(values), 4),
        groups=group_sizes(values, many, few),
    )


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class ProfilePreset:
    """A named profile with the published facts it was built to match."""

    name: str
    kind: str  # "exponential" or "anchored"
    num_classes: int
    n_max: int
    imbalance_factor: float = 1.0
    anchors: tuple[tuple[int, float], ...] = ()
    published_total: int | None = None
    source: str = ""

    def counts(self, imbalance_factor: float | None = None) -> list[int]:
        if self.kind == "exponential":
            factor = self.imbalance_factor if imbalance_factor is None else imbalance_factor  # 0 is refused, not 100
            return exponential_profile(self.num_classes, self.n_max, factor)
        if imbalance_factor is not None:
            raise InputError(f"{self.name} has a fixed published profile; its imbalance factor cannot be changed.")
        return anchored_profile(self.num_classes, self.anchors)


PRESETS: dict[str, ProfilePreset] = {
    "cifar10-lt": ProfilePreset(
        "cifar10-lt", "exponential", 10, 5000, 100, published_total=12406,
        source="Cao et al. 2019 / Park et al. 2022: exponential, n_max 5000; IF 10, 50, 100 or 200",
    ),
    "cifar100-lt": ProfilePreset(
        "cifar100-lt", "exponential", 100, 500, 100, published_total=10847,
        source="Cao et al. 2019 / Park et al. 2022: exponential, n_max 500; IF=100 -> 10,847 images (seed 002)",
    ),
    # Anchors: published largest / smallest class, the class ranks where the
    # many/medium/few boundaries fall in the published splits, and one "knee"
    # in the head fitted (by bisection on its size) so that the total matches
    # the published total to within 0.05 %.
    "imagenet-lt": ProfilePreset(
        "imagenet-lt", "anchored", 1000, 1280, anchors=((0, 1280), (20, 369), (384, 101), (385, 100), (863, 20), (864, 19), (999, 5)),
        published_total=115846,
        source="Liu et al. 2019 (OLTR): 1000 classes, 1280 -> 5 images, 115,846 in all; 385 many / 479 medium / 136 few",
    ),
    "places-lt": ProfilePreset(
        "places-lt", "anchored", 365, 4980, anchors=((0, 4980), (10, 532), (130, 101), (131, 100), (293, 20), (294, 19), (364, 5)),
        published_total=62500,
        source="Liu et al. 2019 (OLTR): 365 classes, 4980 -> 5 images, 62,500 in all; 131 many / 163 medium / 71 few",
    ),
    "inat2018": ProfilePreset(
        "inat2018", "anchored", 8142, 1000, anchors=((0, 1000), (60, 404), (841, 101), (842, 100), (4917, 20), (4918, 19), (8141, 2)),
        published_total=437513,
        source="Van Horn et al. 2018: 8142 classes, 1000 -> 2 images, 437,513 in all; 842 many / 4076 medium / 3224 few",
    ),
}


def preset_counts(name: str, imbalance_factor: float | None = None) -> list[int]:
    """Class sizes of a named preset (``cifar10-lt``, ``cifar100-lt``, ``imagenet-lt``, ``places-lt``, ``inat2018``)."""
    if name not in PRESETS:
        raise InputError(f"unknown profile preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name].counts(imbalance_factor)


def make_profile(kind: str, num_classes: int, n_max: int, imbalance_factor: float, **kwargs) -> list[int]:
    """Dispatch on ``kind`` in {'exponential', 'step'} (for widgets and configs)."""
    builders = {"exponential": exponential_profile, "step": step_profile}
    if kind not in builders:
        raise InputError(f"unknown profile kind {kind!r}; choose one of: {', '.join(builders)}.")
    return builders[kind](num_classes, n_max, imbalance_factor, **kwargs)
