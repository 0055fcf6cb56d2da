r"""Entropic optimal transport between feature clouds (POT and a batched Sinkhorn, torch, differentiable).

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

One pair of clouds: POT's ``ot.sinkhorn2`` / ``ot.bregman.sinkhorn_log``
(:func:`sinkhorn_cost`, :func:`sinkhorn_plan`; gradients by automatic
differentiation through the iterations) and ``ot.emd2`` (:func:`exact_cost`).
One problem per class, as the synthesizer needs them (:func:`grouped_sinkhorn_cost`):
ltkit's batched solver :func:`sinkhorn_batch`, the same Sinkhorn iterations with
the scalings absorbed into the log-potentials (finite for any :math:`C/\gamma`,
two batched matrix-vector products per iteration), stopped on the marginal error
and warm-startable; the tests check it against POT's ``ot.sinkhorn`` and
``ot.emd``.  Costs: ``"sqeuclidean"`` :math:`\|x-y\|^2` (``ot.dist``) or
``"cosine"`` :math:`1 - \cos(x, y)`.

Scale and convergence (the synthesizer's problems)
--------------------------------------------------
:math:`\gamma` only means something relative to the cost.  Squared distances
between penultimate features are ~15 on average (up to ~50) for the digits CNN
and thousands for a CIFAR ResNet-32, so an absolute :math:`\gamma = 0.1` makes
:math:`C/\gamma` reach 500 to 10\ :sup:`5`, where Sinkhorn needs thousands of
iterations: at the paper's cap of 200 the plans of a digits synthesis step
still have an L1 marginal error of 0.01-0.17 (0.28-0.56 at 50 iterations; the
more trained the features, the larger; half of it is mass in the wrong place),
those of a CIFAR-shaped step 0.64, and the "envelope" gradient below is then not
the gradient of anything.  :func:`grouped_sinkhorn_cost` therefore divides
each problem's cost matrix by a detached scale (``scale``, :func:`cost_scale`;
default ``"mean"``, :math:`s = \langle a b^\top, C\rangle`, the cost of the
independent coupling: the mean cost of a pair for uniform masses), so that
:math:`\gamma` is relative to it and the returned cost
:math:`\langle P, C\rangle / s \in [0, 1]` has no units.  At
:math:`\gamma = 0.1` the same problems converge to an L1 marginal error of
:math:`10^{-4}` in ~20-60 iterations.  (``"max"`` also converges, in a few
iterations, but its plans are close to the independent coupling, which matches
only the means; ``"none"`` keeps raw units and absolute :math:`\gamma`.)
The solver stops when every plan's L1 marginal error
:math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1` (:func:`marginal_error`:
the mass in the wrong place) is at most ``tol``, and returns the error it reached,
also when ``max_iter`` stopped it.

Gradients.  ``grad="autodiff"`` differentiates :math:`\langle P_\gamma, C\rangle`
through the unrolled iterations (exact for the iterate computed, memory
:math:`\propto` iterations).  ``grad="envelope"`` treats the plan as a constant:
:math:`\nabla_C = P_\gamma`, which at convergence is the exact gradient of the
*regularised* value :math:`\langle P_\gamma, C\rangle - \gamma H(P_\gamma)`
(Danskin's theorem) and costs no backward pass through the iterations; with a
scale it is that of the scaled value, :math:`s` held constant; away from
convergence it is off by about the marginal error.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import ot as pot
from ot.batch import dist_batch
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checks

__all__ = ["COSTS", "COST_SCALES", "GRADS", "BatchSinkhorn", "DualCache", "GroupedOT", "cost_matrix", "cost_scale",
           "exact_cost", "grouped_sinkhorn_cost", "marginal_error", "sinkhorn_batch", "sinkhorn_cost",
           "sinkhorn_plan"]

COSTS = ("sqeuclidean", "cosine")
GRADS = ("autodiff", "envelope")
COST_SCALES = ("mean", "max", "none")


# --------------------------------------------------------------------------- validation
def check_gamma(gamma: float) -> float:
    return checks.real("gamma", gamma, low=0, low_open=True,
                       hint="the entropic regulariser: small values approach exact OT; use exact_cost for gamma = 0")


def check_solver(max_iter: int, tol: float) -> None:
    checks.integer("max_iter", max_iter, low=1, hint="the Sinkhorn iteration cap")
    checks.real("tol", tol, low=0, hint="0 runs all max_iter iterations")


def check_features(name: str, x: Tensor, ndim: int = 2, finite: bool = True) -> Tensor:
    """A non-empty, finite float feature tensor of ``ndim`` dimensions (``finite=False``: not checked for NaN/Inf)."""
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
    if finite and not bool(torch.isfinite(x).all()):
        finite = torch.isfinite(x).flatten(0, -2).all(dim=-1)
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


# --------------------------------------------------------------------------- scaled costs, batched Sinkhorn
def cost_scale(c: Tensor, a: Tensor, b: Tensor, scale: str = "mean") -> Tensor:
    """The scale ``s`` (detached, ``(B,)``) of every problem of a batch: costs ``c`` ``(B, n, m)``, masses ``a``, ``b``.

    ``"mean"``: :math:`s = \\langle a b^\\top, C\\rangle`, the cost of the independent coupling (for uniform
    masses, the mean cost over all pairs); ``"max"``: the largest cost between points of positive mass;
    ``"none"``: 1 (``gamma`` in the units of the cost).  Clamped below at 1e-12 (identical clouds).
    """
    if scale not in COST_SCALES:
        raise ValueError(f"unknown cost scale {scale!r}; choose one of: {', '.join(COST_SCALES)}.")
    c = c.detach()
    if scale == "none":
        return torch.ones(c.shape[0], dtype=c.dtype, device=c.device)
    if scale == "mean":
        s = torch.einsum("bi,bij,bj->b", a.to(c.dtype), c, b.to(c.dtype))
    else:
        valid = (a > 0)[:, :, None] & (b > 0)[:, None, :]
        s = c.masked_fill(~valid, float("-inf")).amax((1, 2))
    return s.clamp_min(1e-12)


def marginal_error(plan: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """:math:`\\|P\\mathbf 1 - a\\|_1 + \\|P^\\top \\mathbf 1 - b\\|_1`: the mass a plan puts in the wrong place.

    For a plan ``(n, m)`` a scalar, for a batch ``(B, n, m)`` one value per problem.  0 for a feasible plan;
    when the rows are exact (as after a row update) half of it is the mass that sits in the wrong columns.
    This is the error the batched solver stops on.
    """
    return (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)


@dataclass
class BatchSinkhorn:
    """The result of :func:`sinkhorn_batch`."""

    plan: Tensor  # (B, n, m): rows sum to a exactly, columns to b up to marginal_error
    log_v: Tensor  # (B, m) column log-scalings (detached; -inf on zero-mass columns): a warm start for the next solve
    marginal_error: Tensor  # (B,) ||P^T 1 - b||_1 of the returned plan (its rows are exact): see marginal_error()
    n_iter: int  # row updates performed (the same for every problem of the batch)
    absorptions: int = 0  # times the scalings were absorbed into the log-potentials (kernel recomputed)


def sinkhorn_batch(c: Tensor, a: Tensor, b: Tensor, gamma: float, *, max_iter: int = 200, tol: float = 1e-4,
                   init: Tensor | None = None, grad: str = "envelope", check_every: int | None = None,
                   absorb_at: float = 20.0, absorb_every: int = 5) -> BatchSinkhorn:
    r"""Sinkhorn for a batch of problems: log-stabilised, stopped on the marginal error, optionally warm-started.

    ``c`` ``(B, n, m)``, masses ``a`` ``(B, n)`` and ``b`` ``(B, m)`` (zeros allowed: padding points get
    no mass).  The iterations are Sinkhorn's (Cuturi 2013), :math:`u \leftarrow a \oslash Kv`,
    :math:`v \leftarrow b \oslash K^\top u`, on the kernel of the *current* log-potentials
    (Schmitzer 2019's absorption; POT's ``sinkhorn_stabilized`` does the same)

    .. math::
        \tilde K = \exp\big(-C/\gamma + \log u_0 \oplus \log v_0\big),\qquad
        \log u_0 = \log a - \operatorname{LSE}_j(-C/\gamma + \log v_0),

    so every iteration is two batched matrix-vector products (no ``exp`` over the whole
    matrix, unlike the log-domain iteration, which needs two ``logsumexp`` per iteration);
    when a scaling has left :math:`[e^{-20}, e^{20}]` (``absorb_at``, looked at every
    ``absorb_every`` = 5 iterations) the scalings are absorbed into the log-potentials,
    that iteration is a log-domain one (two ``logsumexp``: exact also where entries of
    the kernel underflowed to 0) and :math:`\tilde K` is recomputed.  Entries of
    :math:`\tilde K` are plan entries (at most 1), so everything stays finite for any
    :math:`C/\gamma`, and where :math:`C/\gamma` is so large that the kernel underflows
    the iterations are the log-domain ones.

    After each row update the rows of the plan are exact and its column error
    :math:`e = \|P^\top\mathbf 1 - b\|_1` comes for free from the product the next column
    update needs.  It stops when ``max(e) <= tol`` over the batch (checked every
    ``check_every`` iterations: default 1 on the CPU, 5 elsewhere, where reading ``e`` waits
    for the device) or after ``max_iter`` row updates, and returns that plan with its error:
    the error *reached*, also when the cap stopped it.  ``init``: column log-scalings
    ``(B, m)`` of an earlier solve (:attr:`BatchSinkhorn.log_v`) to start from; potentials are
    defined up to a constant, so the number of rows may differ.  ``grad="envelope"`` solves
    on a detached cost (the plan is a constant; no graph through the iterations),
    ``"autodiff"`` keeps the graph.

    POT's ``ot.batch.solve_batch(method="log_sinkhorn")`` runs log-domain iterations that
    neither take a starting point nor stop on a mass error (it checks the L2 norm of the row
    error every 10 iterations); the tests check this solver against ``ot.sinkhorn`` and ``ot.emd``.
    """
    check_gamma(gamma)
    check_solver(max_iter, tol)
    if grad not in GRADS:
        raise ValueError(f"unknown grad {grad!r}; choose one of: {', '.join(GRADS)}.")
    if check_every is None:
        check_every = 1 if c.device.type == "cpu" else 5
    a, b = a.to(c.dtype), b.to(c.dtype)
    k = -(c.detach() if grad == "envelope" else c) / gamma
    log_a, log_b = a.log(), b.log()  # -inf on zero-mass points
    if init is None:
        v = torch.zeros_like(b)
    else:
        if init.shape != b.shape:
            raise ValueError(f"init must have the shape of b {tuple(b.shape)}, got {tuple(init.shape)}.")
        v = init.detach().to(c.dtype).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    v = v.masked_fill(b <= 0, float("-inf"))
    tiny = torch.finfo(c.dtype).tiny
    absorptions = 0
    # scalings and masses as row vectors (B, 1, n) / (B, 1, m): every product is one bmm, no reshaping
    a_row, b_row, minus_b = a[:, None, :], b[:, None, :], -b[:, None, :]
    # zero-mass points have zero scalings: +1 there keeps them out of the range check below
    pad_a, pad_b = (a_row <= 0).to(c.dtype), (b_row <= 0).to(c.dtype)
    bounds = (math.exp(-absorb_at), math.exp(absorb_at))
    with _small_problem_threads(k):
        # rows exact: u = log a - LSE_j(k + v), and the kernel from the same exponentials
        z = k + v[:, None, :]
        top = z.detach().amax(2, keepdim=True)  # finite: every row has a column of positive mass
        e = torch.exp(z - top)
        row = e.sum(2)
        u = log_a - row.log() - top[:, :, 0]
        kernel = e * (a / row)[:, :, None]
        kernel_t = kernel.transpose(1, 2)
        su, sv = torch.ones_like(a_row), torch.ones_like(b_row)
        for it in range(1, max_iter + 1):
            # every absorb_every iterations: if a scaling left [e^-absorb_at, e^absorb_at], absorb the scalings into
            # the potentials and make this iteration a log-domain one (exact where the kernel underflowed)
            absorb = it % absorb_every == 0 and not (_within(su + pad_a, bounds) and _within(sv + pad_b, bounds))
            if absorb:
                u, v = u + _log_pos(su[:, 0]), v + _log_pos(sv[:, 0])
                su, sv = torch.ones_like(a_row), torch.ones_like(b_row)
                log_col = torch.logsumexp(k + u[:, :, None], dim=1)
                absorptions += 1
            else:  # the plan diag(su) kernel diag(sv): rows exact; its column sums sv * (su kernel)
                col = torch.bmm(su, kernel)
            if it == max_iter or (tol > 0 and it % check_every == 0):
                if absorb:
                    err = torch.linalg.vector_norm(torch.exp(v + log_col) - b, 1, dim=1)
                else:
                    err = torch.linalg.vector_norm(torch.addcmul(minus_b, sv, col), 1, dim=2)[:, 0]
                if it == max_iter or float(err.detach().max()) <= tol:
                    break
            if absorb:
                v = log_b - log_col
                u = log_a - torch.logsumexp(k + v[:, None, :], dim=2)
                kernel = torch.exp(k + u[:, :, None] + v[:, None, :])
                kernel_t = kernel.transpose(1, 2)
            else:
                sv = b_row / col.clamp_min(tiny)
                su = a_row / torch.bmm(sv, kernel_t).clamp_min(tiny)
        if absorb:  # stopped right after absorbing: the kernel predates the new potentials
            plan = torch.exp(k + u[:, :, None] + v[:, None, :])
        else:
            plan = su.transpose(1, 2) * kernel * sv
        log_v = (v + _log_pos(sv[:, 0])).detach()
    return BatchSinkhorn(plan=plan, log_v=log_v, marginal_error=err.detach(), n_iter=it, absorptions=absorptions)


def _within(t: Tensor, bounds: tuple[float, float]) -> bool:
    low, high = torch.aminmax(t.detach())
    return bounds[0] <= float(low) and float(high) <= bounds[1]


def _log_pos(t: Tensor) -> Tensor:
    """``log t`` where ``t > 0``, 0 elsewhere (zero scalings belong to zero-mass points, whose potentials are
    already -inf): no infinite values, and no infinite gradients in ``grad="autodiff"``."""
    return torch.where(t > 0, t, torch.ones_like(t)).log()


class DualCache:
    """Warm starts for :func:`grouped_sinkhorn_cost`: the last column log-scalings of every target cloud.

    Cloud ``k``'s real points do not move between the synthesizer's steps and the synthetic
    points move a little, so the last potentials against cloud ``k`` are a good start for the
    next problem against it.  ``log_v`` ``(K, m)``, ``known`` ``(K,)``.
    """

    def __init__(self, num_clouds: int, width: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.log_v = torch.zeros(num_clouds, width, dtype=dtype, device=device)
        self.known = torch.zeros(num_clouds, dtype=torch.bool, device=device)

    def get(self, clouds: Tensor) -> Tensor | None:
        """Starting points for the problems against ``clouds`` (indices); ``None`` when none is known."""
        if not bool(self.known[clouds].any()):
            return None
        return torch.where(self.known[clouds, None], self.log_v[clouds], 0.0)

    def put(self, clouds: Tensor, log_v: Tensor, keep: Tensor | None = None) -> None:
        """Store the potentials of the problems against ``clouds``; ``keep`` (bool per problem): only those
        (the others are forgotten: the next problem against them starts cold)."""
        keep = torch.ones(len(clouds), dtype=torch.bool, device=log_v.device) if keep is None else keep
        finite = torch.isfinite(log_v)
        self.log_v[clouds] = torch.where(finite & keep[:, None], log_v, 0.0).to(self.log_v.dtype)
        self.known[clouds] = keep.to(self.known.device)



# --------------------------------------------------------------------------- one problem per group
@dataclass
class GroupedOT:
    """Per-group Sinkhorn costs: ``groups[k]`` (a cloud index), its ``sizes[k]`` points, ``costs[k]``.

    ``costs`` are :math:`\\langle P_k, C_k\\rangle / s_k` (``scales`` = :math:`s_k`, 1 for
    ``scale="none"``); ``marginal_error[k]`` is the L1 mass error of plan :math:`P_k`
    (:func:`marginal_error`) and ``n_iter`` the Sinkhorn iterations of the batched solve.
    """

    groups: Tensor
    sizes: Tensor
    costs: Tensor
    n_iter: int
    marginal_error: Tensor | None = None
    scales: Tensor | None = None
    plans: Tensor | None = None  # (G, n_max, m): padded rows and columns carry no mass

    def weighted_mean(self) -> Tensor:
        """:math:`\\sum_k (n_k / n)\\,\\mathrm{OT}_k`: every point weighs the same, whichever group it is in."""
        weights = self.sizes.to(self.costs.dtype) / self.sizes.sum()
        return (weights * self.costs).sum()

    @property
    def max_marginal_error(self) -> float:
        return float(self.marginal_error.max()) if self.marginal_error is not None else math.nan


def grouped_sinkhorn_cost(x: Tensor, groups: Tensor, clouds: Tensor, cloud_mass: Tensor, *, gamma: float = 0.1,
                          cost: str = "sqeuclidean", max_iter: int = 200, tol: float = 1e-4,
                          grad: str = "envelope", scale: str = "mean", warm: DualCache | None = None,
                          keep_plans: bool = False) -> GroupedOT:
    """One OT problem per group, solved together by :func:`sinkhorn_batch`.

    The points ``x[i]`` with ``groups[i] == k`` (uniform mass) are matched to
    cloud ``k``: ``clouds[k]`` (``(K, m, d)``, padded) with masses
    ``cloud_mass[k]`` (``(K, m)``: zero on padding rows, summing to 1).  Groups
    are padded to a common size with zero-mass points, which carry no plan
    mass and get no gradient.  Every cost matrix is divided by its detached
    scale :math:`s_k` (``scale``, :func:`cost_scale`; ``"mean"``: the cost of the
    independent coupling), so ``gamma`` is relative to it, and the returned cost
    :math:`\\langle P_k, C_k\\rangle / s_k` is in those units (``"none"``: raw units,
    absolute ``gamma``).  Sinkhorn stops when the L1 marginal error of every plan is
    at most ``tol`` (or after ``max_iter`` iterations); the error reached is
    returned.  ``warm``: a :class:`DualCache` to start from and update (with the
    potentials of the problems that reached ``tol``).
    """
    check_gamma(gamma)
    check_solver(max_iter, tol)
    if grad not in GRADS:
        raise ValueError(f"unknown grad {grad!r}; choose one of: {', '.join(GRADS)}.")
    if scale not in COST_SCALES:
        raise ValueError(f"unknown cost scale {scale!r}; choose one of: {', '.join(COST_SCALES)}.")
    check_features("x", x, finite=False)  # NaN/Inf: checked on the cost matrices (smaller), named below
    check_features("clouds", clouds, ndim=3, finite=False)
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
    targets = clouds[present].to(x.dtype)
    envelope = grad == "envelope"
    with torch.no_grad() if envelope else nullcontext():  # envelope: the plan is a constant, solved without a graph
        padded = x.new_zeros(len(present), int(sizes.max()), x.shape[1])
        padded = padded.index_put((inverse, rank), x)
        a = x.new_zeros(padded.shape[:2]).index_put((inverse, rank), 1.0 / sizes[inverse].to(x.dtype))
        b = mass / mass.sum(1, keepdim=True)
        c = cost_matrix(padded, targets, cost)
        c = c * ((a > 0)[:, :, None] & (b > 0)[:, None, :])  # finite, zero-mass entries cost 0
        if not bool(torch.isfinite(c).all()):  # NaN or Inf in x or in a cloud in use: say which
            check_features("x", x)
            check_features("clouds", clouds[present], ndim=3)
        scales = cost_scale(c, a, b, scale)
        c = c / scales[:, None, None]
        init = warm.get(present) if warm is not None else None
        solved = sinkhorn_batch(c, a, b, gamma, max_iter=max_iter, tol=tol, init=init, grad=grad)
    if warm is not None:  # only converged potentials are a good start (an unconverged one can be worse than none)
        warm.put(present, solved.log_v, keep=solved.marginal_error <= tol)
    if envelope:
        costs = _linear_cost(x, inverse, rank, targets, solved.plan, cost) / scales
    else:
        costs = (solved.plan * c).sum((1, 2))
    return GroupedOT(groups=present, sizes=sizes, costs=costs, n_iter=solved.n_iter,
                     marginal_error=solved.marginal_error, scales=scales,
                     plans=solved.plan.detach() if keep_plans else None)


def _linear_cost(x: Tensor, inverse: Tensor, rank: Tensor, y: Tensor, plan: Tensor, cost: str) -> Tensor:
    r""":math:`\langle P_k, C_k\rangle` per group for a constant plan, written with ``O(n d)`` terms of ``x``.

    Squared Euclidean: :math:`\sum_i (P\mathbf 1)_i\|x_i\|^2 - 2\sum_i x_i\cdot(PY)_i
    + \sum_j (P^\top\mathbf 1)_j\|y_j\|^2`; cosine: :math:`\sum_i (P\mathbf 1)_i -
    \sum_i \hat x_i\cdot(P\hat Y)_i`.  The same value as summing :math:`P \odot C`, but
    its backward pass touches ``(n, d)`` tensors only, not the ``(G, n, m)`` cost matrix.
    """
    plan = plan.detach()
    xs, ys = (F.normalize(x, dim=-1), F.normalize(y, dim=-1)) if cost == "cosine" else (x, y)
    cross = (xs * torch.bmm(plan, ys)[inverse, rank]).sum(1)
    row_mass = plan.sum(2)[inverse, rank]
    if cost == "cosine":
        per_point, per_group = row_mass - cross, 0.0
    else:
        per_point = row_mass * (x * x).sum(1) - 2 * cross
        per_group = (plan.sum(1) * (y * y).sum(2)).sum(1)
    return x.new_zeros(len(plan)).index_add(0, inverse, per_point) + per_group


def _rank_within_group(inverse: Tensor) -> Tensor:
    """``r[i]`` = how many earlier entries share ``inverse[i]`` (0, 1, 2, ... within each group)."""
    order = torch.argsort(inverse, stable=True)
    sorted_groups = inverse[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(len(inverse), device=inverse.device) - starts
    return rank
