r"""Entropic optimal transport between feature clouds (POT, torch backend, differentiable).

The distribution-matching term of Syn-LT (:mod:`ltkit.methods.synlt`) measures how far
a cloud of synthetic features :math:`\{x_i\}_{i\le n}` lies from the cloud of
real features of a class :math:`\{y_j\}_{j\le m}`.  With marginals
:math:`a \in \Delta_n`, :math:`b \in \Delta_m` (uniform unless given) and a
cost matrix :math:`C_{ij} = c(x_i, y_j)`, the entropic problem is

.. math::
    P_\gamma = \arg\min_{P \ge 0,\ P\mathbf 1 = a,\ P^\top \mathbf 1 = b}
               \langle P, C\rangle - \gamma H(P), \qquad H(P) = -\sum_{ij} P_{ij}\log P_{ij},

solved by Sinkhorn's iterations (Cuturi, NeurIPS 2013).  In the log domain
(``f, g`` the dual potentials)

.. math::
    g_j \leftarrow \log b_j - \operatorname{LSE}_i\big(-C_{ij}/\gamma + f_i\big),\qquad
    f_i \leftarrow \log a_i - \operatorname{LSE}_j\big(-C_{ij}/\gamma + g_j\big),

which never forms :math:`e^{-C/\gamma}` and therefore stays finite for small
:math:`\gamma` (the plain kernel :math:`e^{-C/\gamma}` underflows to 0 once
:math:`C/\gamma \gtrsim 100` in float32).  The **Sinkhorn cost** returned here is
:math:`\mathrm{OT}_\gamma = \langle P_\gamma, C\rangle` (what ``ot.sinkhorn2``
returns); as :math:`\gamma \to 0` it tends to the exact cost ``ot.emd2``.

Everything is POT's: ``ot.sinkhorn2`` / ``ot.bregman.sinkhorn_log`` for one pair
of clouds (gradients by automatic differentiation through the iterations), and
``ot.batch.solve_batch(method="log_sinkhorn")`` to solve one problem per class
in a single batched Sinkhorn (:func:`grouped_sinkhorn_cost`, used by the
synthesizer).  Costs: ``"sqeuclidean"`` :math:`\|x-y\|^2` (``ot.dist``) or
``"cosine"`` :math:`1 - \cos(x, y)`.

Gradients.  ``grad="autodiff"`` differentiates :math:`\langle P_\gamma, C\rangle`
through the unrolled iterations (exact for the iterate computed, memory
:math:`\propto` iterations).  ``grad="envelope"`` treats the plan as a constant:
:math:`\nabla_C = P_\gamma`, which at convergence is the exact gradient of the
*regularised* value :math:`\langle P_\gamma, C\rangle - \gamma H(P_\gamma)`
(Danskin's theorem) and costs no backward pass through the iterations.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import ot as pot
from ot.batch import dist_batch, solve_batch
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COSTS", "GRADS", "GroupedOT", "cost_matrix", "exact_cost", "grouped_sinkhorn_cost",
           "sinkhorn_cost", "sinkhorn_plan"]

COSTS = ("sqeuclidean", "cosine")
GRADS = ("autodiff", "envelope")


# --------------------------------------------------------------------------- validation
def check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma={gamma!r}: the entropic regulariser must be a number > 0 "
                         "(small values approach exact OT; use exact_cost for gamma = 0).")
    return float(gamma)


def check_solver(max_iter: int, tol: float) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} must be an integer >= 1 (the Sinkhorn iteration cap).")
    if not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f"tol={tol!r} must be >= 0 (0 runs all max_iter iterations).")


def check_features(name: str, x: Tensor, ndim: int = 2) -> Tensor:
    """A non-empty, finite float feature tensor of ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of features, got {type(x).__name__}.")
    if x.ndim != ndim:
        shape = "(n, d)" if ndim == 2 else "(groups, n, d)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}.")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): an OT cloud needs at least one point "
                         "(an empty class has no feature cloud to match).")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    finite = torch.isfinite(x).flatten(0, -2).all(dim=-1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name} has NaN/Inf features in {bad} of {finite.numel()} rows: check the model and "
                         "its inputs (a diverged network, or images outside [0, 1]).")
    return x


def check_marginal(name: str, w: Tensor | None, n: int, like: Tensor) -> Tensor:
    """``w`` as a probability vector of length ``n`` (uniform when ``None``)."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.shape != (n,):
        raise ValueError(f"marginal {name} must have shape ({n},) to match its cloud, got {tuple(w.shape)}.")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"marginal {name} must be finite and >= 0.")
    if abs(float(w.sum()) - 1.0) > 1e-5:
        raise ValueError(f"marginal {name} must sum to 1, sums to {float(w.sum()):.6g}.")
    return w


@contextmanager
def _small_problem_threads(tensor: Tensor, max_elements: int = 1 << 20) -> Iterator[None]:
    """One intra-op thread while a small problem is solved on the CPU, then the previous count.

    ``torch.logsumexp`` (two per Sinkhorn iteration) opens an OpenMP parallel
    region even for a few thousand elements; for OT problems of this size the
    fork/join costs more than the arithmetic, and on a CPU shared with other
    processes each region can wait a scheduler time slice (measured here: 24 ms
    per call with 2 threads on a busy 2-core machine, 23 µs with one).
    """
    threads = torch.get_num_threads()
    if tensor.device.type != "cpu" or tensor.numel() > max_elements or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- costs
def cost_matrix(x: Tensor, y: Tensor, cost: str = "sqeuclidean") -> Tensor:
    """``C[..., i, j] = c(x_i, y_j)`` for clouds of shape ``(n, d)`` or batches ``(B, n, d)``.

    ``"sqeuclidean"``: ``ot.dist`` (``ot.batch.dist_batch`` for batches, clamped at 0);
    ``"cosine"``: ``1 - <x, y> / (|x| |y|)``, in ``[0, 2]``.
    """
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; choose one of: {', '.join(COSTS)}.")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"the clouds have different feature dimensions: {x.shape[-1]} and {y.shape[-1]}.")
    if cost == "cosine":
        return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)
    if x.ndim == 2:
        return pot.dist(x, y, metric="sqeuclidean")
    return dist_batch(x, y, metric="sqeuclidean").clamp_min(0)


# --------------------------------------------------------------------------- one pair of clouds
def _pair(x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None, gamma: float, cost: str,
          max_iter: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    check_gamma(gamma)
    check_solver(max_iter, tol)
    check_features("x", x)
    check_features("y", y)
    return check_marginal("a", a, len(x), x), check_marginal("b", b, len(y), x), cost_matrix(x, y, cost)


def sinkhorn_plan(x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None, *, gamma: float = 0.1,
                  cost: str = "sqeuclidean", max_iter: int = 200, tol: float = 1e-9,
                  log: bool = False) -> Tensor | tuple[Tensor, dict]:
    """The entropic plan :math:`P_\\gamma` (n, m) by ``ot.bregman.sinkhorn_log``.

    With ``log=True`` also POT's log: ``err`` (marginal error every 10
    iterations), ``niter``, ``log_u``, ``log_v``.
    """
    a, b, c = _pair(x, y, a, b, gamma, cost, max_iter, tol)
    with _small_problem_threads(c):
        return pot.bregman.sinkhorn_log(a, b, c, gamma, numItermax=max_iter, stopThr=tol, log=log, warn=False)


def sinkhorn_cost(x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None, *, gamma: float = 0.1,
                  cost: str = "sqeuclidean", max_iter: int = 200, tol: float = 1e-9) -> Tensor:
    """The Sinkhorn cost :math:`\\langle P_\\gamma, C\\rangle` (a scalar tensor), differentiable in ``x``, ``y``.

    ``ot.sinkhorn2(a, b, C, gamma, method="sinkhorn_log")``: log-domain, so
    small ``gamma`` stays finite; ``max_iter`` caps the iterations and ``tol``
    stops early on the marginal error.  Gradients flow through the iterations.
    """
    a, b, c = _pair(x, y, a, b, gamma, cost, max_iter, tol)
    with _small_problem_threads(c):
        return pot.sinkhorn2(a, b, c, gamma, method="sinkhorn_log", numItermax=max_iter, stopThr=tol, warn=False)


def exact_cost(x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None, *,
               cost: str = "sqeuclidean") -> Tensor:
    """The unregularised OT cost (network simplex, ``ot.emd2``); differentiable in the cost matrix."""
    check_features("x", x)
    check_features("y", y)
    a, b = check_marginal("a", a, len(x), x), check_marginal("b", b, len(y), x)
    return pot.emd2(a, b, cost_matrix(x, y, cost))


# --------------------------------------------------------------------------- one problem per group
@dataclass
class GroupedOT:
    """Per-group Sinkhorn costs: ``groups[k]`` (a cloud index), its ``sizes[k]`` points, ``costs[k]``."""

    groups: Tensor
    sizes: Tensor
    costs: Tensor
    n_iter: int

    def weighted_mean(self) -> Tensor:
        """:math:`\\sum_k (n_k / n)\\,\\mathrm{OT}_k`: every point weighs the same, whichever group it is in."""
        weights = self.sizes.to(self.costs.dtype) / self.sizes.sum()
        return (weights * self.costs).sum()


def grouped_sinkhorn_cost(x: Tensor, groups: Tensor, clouds: Tensor, cloud_mass: Tensor, *, gamma: float = 0.1,
                          cost: str = "sqeuclidean", max_iter: int = 200, tol: float = 1e-6,
                          grad: str = "envelope", normalize: bool = False) -> GroupedOT:
    """One OT problem per group, solved together by ``ot.batch.solve_batch(method="log_sinkhorn")``.

    The points ``x[i]`` with ``groups[i] == k`` (uniform mass) are matched to
    cloud ``k``: ``clouds[k]`` (``(K, m, d)``, padded) with masses
    ``cloud_mass[k]`` (``(K, m)``: zero on padding rows, summing to 1).  Groups
    are padded to a common size with zero-mass points, which carry no plan
    mass and get no gradient.  Returns the cost :math:`\\langle P_k, C_k\\rangle`
    of every group present in ``groups``.  ``normalize=True`` divides the costs
    by their (detached) maximum first, so that ``gamma`` is relative to the
    largest cost (the returned costs are then in those units too).
    """
    check_gamma(gamma)
    check_solver(max_iter, tol)
    if grad not in GRADS:
        raise ValueError(f"unknown grad {grad!r}; choose one of: {', '.join(GRADS)}.")
    check_features("x", x)
    check_features("clouds", clouds, ndim=3)
    if groups.shape != (len(x),) or groups.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"groups must be an integer tensor of shape ({len(x)},), got {groups.dtype} {tuple(groups.shape)}.")
    if cloud_mass.shape != clouds.shape[:2]:
        raise ValueError(f"cloud_mass must have shape {tuple(clouds.shape[:2])}, got {tuple(cloud_mass.shape)}.")
    present, inverse, sizes = torch.unique(groups, return_inverse=True, return_counts=True)
    if int(present.min()) < 0 or int(present.max()) >= len(clouds):
        raise ValueError(f"groups must index the {len(clouds)} clouds, got values in [{int(present.min())}, {int(present.max())}].")
    mass = cloud_mass[present].to(x.dtype)
    if bool((mass.sum(1) <= 0).any()):
        empty = present[mass.sum(1) <= 0].tolist()
        raise ValueError(f"cloud(s) {empty} are empty (no real points): there is nothing to match them to.")
    # scatter the points into (G, n_max, d), rank within group = position among equals
    rank = _rank_within_group(inverse)
    padded = x.new_zeros(len(present), int(sizes.max()), x.shape[1])
    padded = padded.index_put((inverse, rank), x)
    a = x.new_zeros(padded.shape[:2]).index_put((inverse, rank), 1.0 / sizes[inverse].to(x.dtype))
    c = cost_matrix(padded, clouds[present].to(x.dtype), cost)
    c = c * ((a > 0)[:, :, None] & (mass > 0)[:, None, :])  # finite, zero-mass entries cost 0
    if normalize:
        c = c / c.detach().max().clamp_min(1e-12)
    with _small_problem_threads(c):
        result = solve_batch(c, gamma, a, mass / mass.sum(1, keepdim=True), max_iter=max_iter, tol=tol,
                             method="log_sinkhorn", grad=grad)
    return GroupedOT(groups=present, sizes=sizes, costs=result.value_linear, n_iter=int(result.log["n_iter"]))


def _rank_within_group(inverse: Tensor) -> Tensor:
    """``r[i]`` = how many earlier entries share ``inverse[i]`` (0, 1, 2, ... within each group)."""
    order = torch.argsort(inverse, stable=True)
    sorted_groups = inverse[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(len(inverse), device=inverse.device) - starts
    return rank
