"""How a model does on each (class, background) pair of ``context-digits-lt``: CMO's effect, measured.

:mod:`ltkit.context_digits` builds the data set (digits pasted on backgrounds, the
tail classes seen on only one or two of them); this module sits above the
engine and evaluates trained runs on it: accuracy by (class, background) group,
on the backgrounds a class was seen on in training and on the unseen ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import train
from .context_digits import TensorData, load_context_digits_lt
from .metrics import results_table
from .profiles import class_groups
from .runs import read_json

__all__ = ["group_accuracy_by_background", "context_table"]


def _check_context_data(data: Any) -> None:
    info = getattr(data, "info", None) or {}
    if "test_backgrounds" not in info or "contexts" not in info:
        raise ValueError("data must be a context-digits-lt TensorData (its info needs 'contexts' and "
                         "'test_backgrounds'); build it with load_context_digits_lt(...).")


def _model_from_record(record: dict, data: TensorData) -> tuple[nn.Module, Any]:
    """A finished run's model and loss (for ``predict_logits``), rebuilt from its folder."""
    trained = train.load_trained(record["dir"], data)
    return trained.model, trained.loss_fn


_LOADER_KEYS = ("imbalance_factor", "n_max", "seed", "image_size", "num_backgrounds", "min_contexts", "glyph_size",
                "contrast", "profile")


def _loader_kwargs(record: dict) -> dict:
    """The loader arguments of a run's data set, from the ``data_info`` stored in its ``config.json``."""
    if record["config"].get("dataset") != "context-digits-lt":
        raise ValueError(f"run {record.get('name')!r} trained on {record['config'].get('dataset')!r}, not "
                         "context-digits-lt: pass data= explicitly.")
    info = read_json(Path(record["dir"]) / "config.json").get("data_info", {})
    return {key: info[key] for key in _LOADER_KEYS if key in info}


def _data_from_record(record: dict) -> TensorData:
    return load_context_digits_lt(**_loader_kwargs(record))


@torch.no_grad()
def _predictions(model: nn.Module, loss_fn: Any, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        logits = model(x[start:start + batch].float() / 255).float()
        out.append((loss_fn.predict_logits(logits) if loss_fn is not None else logits).argmax(1))
    return torch.cat(out)


def group_accuracy_by_background(record_or_model: dict | nn.Module, data: TensorData | None = None,
                                 loss_fn: Any = None) -> dict:
    """Accuracy of every (class, background) group of the test set, and what it says about context.

    Args:
        record_or_model: a finished run record (``ltkit.train.fit`` / ``runs.load_run``; its
            ``checkpoint.pt`` is reloaded, and its loss's ``predict_logits`` is used), or a model
            taking images in [0, 1].
        data: the ``context-digits-lt`` data; default: rebuilt from the record's config.
        loss_fn: with a bare model, an optional :class:`ltkit.losses.LTLoss` for ``predict_logits``.

    Returns:
        ``matrix`` (classes × backgrounds, fractions), ``seen`` (same shape, bool: the pair occurs in
        training), ``worst_group``, ``seen_context`` / ``unseen_context`` (mean accuracy over the seen /
        unseen pairs), ``few_unseen`` (unseen pairs of the few-shot classes, ``nan`` if none),
        ``context_gap`` (``seen_context - unseen_context``).
    """
    if isinstance(record_or_model, dict):
        if record_or_model.get("result") is None:
            raise ValueError(f"run {record_or_model.get('name')!r} has not finished (no result.json).")
        data = _data_from_record(record_or_model) if data is None else data
        _check_context_data(data)
        model, loss_fn = _model_from_record(record_or_model, data)
    elif isinstance(record_or_model, nn.Module):
        if data is None:
            raise ValueError("with a model, pass data= (a context-digits-lt TensorData).")
        _check_context_data(data)
        model = record_or_model
    else:
        raise TypeError(f"expected a run record (dict) or an nn.Module, got {type(record_or_model).__name__}.")
    device = next(model.parameters()).device
    predicted = _predictions(model, loss_fn, data.x_test.to(device)).cpu().numpy()
    y, bg = data.y_test.numpy(), np.asarray(data.info["test_backgrounds"])
    num_bg = data.info["num_backgrounds"]
    correct = np.zeros((data.num_classes, num_bg))
    total = np.zeros_like(correct)
    np.add.at(total, (y, bg), 1)
    np.add.at(correct, (y, bg), predicted == y)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = correct / total
    seen = np.zeros_like(matrix, dtype=bool)
    for k, kinds in enumerate(data.info["contexts"]):
        seen[k, kinds] = True
    few = np.asarray(class_groups(data.class_counts)) == "few"
    mean = lambda values: float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan  # noqa: E731
    result = dict(matrix=matrix.tolist(), seen=seen.tolist(), worst_group=float(np.nanmin(matrix)),
                  seen_context=mean(matrix[seen]), unseen_context=mean(matrix[~seen]),
                  few_unseen=mean(matrix[few][~seen[few]]) if few.any() else math.nan)
    result["context_gap"] = result["seen_context"] - result["unseen_context"]
    return result


def context_table(records: dict[str, list[dict]], keys: Sequence[str] = ("worst_group", "seen_context",
                                                                         "unseen_context", "few_unseen")):
    """One row per label: the context metrics of :func:`group_accuracy_by_background`, mean ± std over seeds (%).

    ``records`` is what :func:`ltkit.launch.run_grid` returns for ``context-digits-lt`` runs.
    """
    groups = {label: [group_accuracy_by_background(record) for record in rs] for label, rs in records.items()}
    return results_table(groups, keys)
