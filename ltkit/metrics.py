"""Evaluation metrics for long-tailed classification.

Everything starts from the *confusion matrix* ``M`` (rows = true class,
columns = predicted class) of a model on a **balanced** test set:

* **overall** top-1 accuracy ``trace(M) / sum(M)``;
* **per-class** accuracy (recall) ``M[k, k] / sum_j M[k, j]``; a class with no
  test images gets ``nan``;
* **balanced** accuracy: the mean per-class accuracy (``nan`` classes left
  out, as ``sklearn.metrics.balanced_accuracy_score`` does).  On a balanced
  test set it equals the overall accuracy;
* **many / medium / few**: the mean per-class accuracy over the classes of
  each group, the groups taken by *training* count (many ``n > 100``,
  medium ``20 <= n <= 100``, few ``n < 20``; Liu et al., CVPR 2019 "OLTR";
  see :func:`ltkit.profiles.class_groups`), and **worst**: the lowest
  per-class accuracy.

The confusion matrix is built with one ``torch.bincount`` on whatever device
the labels live on, so a distributed training engine can all-reduce it (sum)
across processes before computing anything else.

Results over several seeds are reduced with :func:`summarize_seeds` (mean,
sample standard deviation, number of seeds) and laid out with
:func:`results_table` as ``"43.9 ± 1.2"`` strings (percent).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from ltkit import checks, profiles
from ltkit.profiles import FEW_THRESHOLD, GROUPS, MANY_THRESHOLD, class_groups, group_sizes

if TYPE_CHECKING:  # pragma: no cover
    import pandas

SUMMARY_KEYS = ("overall", "many", "medium", "few", "worst")


# --------------------------------------------------------------------------- confusion matrix
def _as_label_tensor(labels: Tensor | Sequence[int] | np.ndarray, name: str) -> Tensor:
    """Labels as a 1-D integer tensor (a ValueError explains anything else)."""
    tensor = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if tensor.dim() == 2 and tensor.shape[1] > 1 and name == "predictions":
        raise ValueError(
            f"predictions has shape {tuple(tensor.shape)}: these look like logits; "
            "pass class indices instead, e.g. logits.argmax(dim=1)."
        )
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D vector of class indices, got shape {tuple(tensor.shape)}.")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(
            f"{name} has dtype {tensor.dtype}: pass integer class indices "
            "(e.g. logits.argmax(dim=1), or labels.long())."
        )
    return tensor.long()


def confusion_matrix(targets: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """The ``(C, C)`` int64 confusion matrix: ``M[t, p]`` counts images of class ``t`` predicted as ``p``.

    Computed as ``bincount(targets * C + predictions, minlength=C * C)`` on the
    device of ``targets`` and returned there, so that it can be summed across
    processes (``torch.distributed.all_reduce``) before evaluation.

    >>> confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    num_classes = checks.integer("num_classes", num_classes, low=1, whole_floats=True,
                                 hint="pass a positive integer number of classes")
    targets = _as_label_tensor(targets, "targets")
    predictions = _as_label_tensor(predictions, "predictions")
    if targets.numel() != predictions.numel():
        raise ValueError(
            f"targets has {targets.numel()} labels but predictions has {predictions.numel()}: "
            "pass one prediction per test image."
        )
    if targets.device != predictions.device:
        raise ValueError(f"targets are on {targets.device} but predictions on {predictions.device}; move both to one device.")
    for name, labels in (("targets", targets), ("predictions", predictions)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)]
            raise ValueError(
                f"{name} contains label {int(bad[0])} outside [0, {num_classes}) "
                f"({bad.numel()} such label(s)); labels must be class indices 0 .. {num_classes - 1}."
            )
    flat = torch.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _as_confusion_array(confusion: Tensor | np.ndarray) -> np.ndarray:
    """A validated square, non-negative confusion matrix as a float64 NumPy array."""
    if isinstance(confusion, Tensor):
        confusion = confusion.detach().cpu().numpy()
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"the confusion matrix must be square (C, C), got shape {matrix.shape}; "
            "build it with ltkit.metrics.confusion_matrix."
        )
    if matrix.shape[0] == 0:
        raise ValueError("the confusion matrix has no classes (shape (0, 0)).")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError("the confusion matrix must hold finite, non-negative counts.")
    return matrix


# --------------------------------------------------------------------------- accuracies
def per_class_accuracy(confusion: Tensor | np.ndarray) -> np.ndarray:
    """Accuracy (recall) of each class, ``diag / row sums`` (float64); ``nan`` for a class with no test images."""
    matrix = _as_confusion_array(confusion)
    support = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def _check_num_classes(train_counts: Sequence[int], num_classes: int, what: str) -> None:
    if len(train_counts) != num_classes:
        raise ValueError(
            f"train_counts has {len(train_counts)} entries but {what} has {num_classes} classes; "
            "pass the training-set size of every class, in class-index order."
        )


def _nan_mean(values: np.ndarray) -> float:
    """Mean of the non-nan values; ``nan`` (without a warning) when there is none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def group_accuracy(
    per_class: Sequence[float] | np.ndarray,
    train_counts: Sequence[int],
    many: int = MANY_THRESHOLD,
    few: int = FEW_THRESHOLD,
) -> dict[str, float]:
    """Mean per-class accuracy of the many / medium / few groups (by *training* count), and the worst class.

    Returns ``{"many", "medium", "few", "worst"}``.  A group with no class (or
    only classes with no test images) gets ``nan``; ``nan`` classes are left
    out of the means and of the minimum.
    """
    accuracies = np.asarray(per_class, dtype=np.float64).reshape(-1)
    train_counts = profiles.check_counts(np.asarray(train_counts).reshape(-1), "train_counts")
    _check_num_classes(train_counts, accuracies.size, "per_class")
    groups = np.asarray(class_groups(train_counts, many, few))
    result = {group: _nan_mean(accuracies[groups == group]) for group in GROUPS}
    known = accuracies[~np.isnan(accuracies)]
    result["worst"] = float(known.min()) if known.size else math.nan
    return result


def evaluate(
    confusion: Tensor | np.ndarray,
    train_counts: Sequence[int],
    many: int = MANY_THRESHOLD,
    few: int = FEW_THRESHOLD,
) -> dict:
    """All the accuracies of one model, as fractions in [0, 1] (plain floats, JSON-serialisable).

    Keys: ``overall`` (top-1 on the test set), ``balanced`` (mean per-class),
    ``many``, ``medium``, ``few``, ``worst``, ``per_class`` (list, ``nan`` for
    a class with no test images) and ``group_sizes`` (classes per group).
    """
    matrix = _as_confusion_array(confusion)
    train_counts = profiles.check_counts(np.asarray(train_counts).reshape(-1), "train_counts")
    _check_num_classes(train_counts, matrix.shape[0], "the confusion matrix")
    total = matrix.sum()
    if total == 0:
        raise ValueError("the confusion matrix is all zeros: there are no test images to evaluate.")
    per_class = per_class_accuracy(matrix)
    return {
        "overall": float(np.trace(matrix) / total),
        "balanced": _nan_mean(per_class),
        **group_accuracy(per_class, train_counts, many, few),
        "per_class": [float(a) for a in per_class],
        "group_sizes": group_sizes(train_counts, many, few),
    }


# --------------------------------------------------------------------------- seeds and tables
def summarize_seeds(
    results: Sequence[dict], keys: Sequence[str] = SUMMARY_KEYS
) -> dict[str, tuple[float, float, int]]:
    """``{key: (mean, std, n)}`` over several :func:`evaluate` results (one per seed).

    ``std`` is the sample standard deviation (``ddof=1``), ``0.0`` for a single
    seed; ``nan`` values are ignored and ``n`` counts the others (a key that is
    ``nan`` everywhere gives ``(nan, nan, 0)``).
    """
    if len(results) == 0:
        raise ValueError("results is empty: pass at least one evaluate() result (one per seed).")
    summary = {}
    for key in keys:
        missing = [i for i, result in enumerate(results) if key not in result]
        if missing:
            raise ValueError(f"result {missing[0]} has no key {key!r}; its keys are {sorted(results[missing[0]])}.")
        values = np.asarray([result[key] for result in results], dtype=np.float64)
        values = values[~np.isnan(values)]
        n = int(values.size)
        mean = float(values.mean()) if n else math.nan
        std = float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
        summary[key] = (mean, std, n)
    return summary


def format_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    """``"43.9 ± 1.2"``: a fraction's mean and std in percent (``"n/a"`` for a nan mean)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def results_table(groups: dict[str, Sequence[dict]], keys: Sequence[str] = SUMMARY_KEYS) -> "pandas.DataFrame":
    """One row per method (``groups`` maps a method name to its per-seed results), ``"mean ± std"`` columns.

    The last column, ``seeds``, is the number of results for the method.
    """
    import pandas

    rows = {}
    for method, results in groups.items():
        if len(results) == 0:
            raise ValueError(f"results is empty for method {method!r}: pass at least one evaluate() result per method.")
        summary = summarize_seeds(results, keys)
        rows[method] = {key: format_mean_std(*summary[key][:2]) for key in keys}
        rows[method]["seeds"] = len(results)
    table = pandas.DataFrame.from_dict(rows, orient="index", columns=[*keys, "seeds"])
    table.index.name = "method"
    return table
