"""Syn-LT: entropic OT (ltkit.methods.ot) against POT's exact solver and finite differences; the M2m/Syn-LT
synthesizer's sampling rules, range and acceptance bookkeeping; joint training (resume, DDP, bad input)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from ltkit import data, launch, losses, models, train
from ltkit.methods import ot as lot
from ltkit.methods import synlt


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _clouds(n=7, m=11, d=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype) + 1


# =========================================================================== OT
def test_cost_matrices_match_pot_and_the_closed_forms():
    x, y = _clouds()
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(lot.cost_matrix(x, y), sq)
    torch.testing.assert_close(lot.cost_matrix(x, y), ot.dist(x, y))
    xn, yn = x.numpy(), y.numpy()
    cosine = 1 - (xn @ yn.T) / np.linalg.norm(xn, axis=1)[:, None] / np.linalg.norm(yn, axis=1)[None, :]
    np.testing.assert_allclose(lot.cost_matrix(x, y, "cosine").numpy(), cosine, rtol=1e-12, atol=1e-12)
    batch = torch.stack([x, x + 2]), torch.stack([y, -y])
    for cost in lot.COSTS:
        batched = lot.cost_matrix(*batch, cost)
        for k in range(2):
            torch.testing.assert_close(batched[k], lot.cost_matrix(batch[0][k], batch[1][k], cost))


@pytest.mark.parametrize("cost", lot.COSTS)
def test_sinkhorn_plan_has_the_requested_marginals(cost):
    x, y = _clouds()
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.dirichlet(np.ones(7))), torch.tensor(rng.dirichlet(np.ones(11)))
    plan = lot.sinkhorn_plan(x, y, a, b, gamma=0.2, cost=cost, max_iter=5000, tol=1e-11)
    torch.testing.assert_close(plan.sum(1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(0), b, atol=1e-10, rtol=0)
    assert bool((plan >= 0).all())


def test_sinkhorn_cost_tends_to_the_exact_cost_of_emd2():
    x, y = _clouds()
    exact = float(ot.emd2(torch.full((7,), 1 / 7, dtype=torch.float64), torch.full((11,), 1 / 11, dtype=torch.float64),
                          ot.dist(x, y)))
    assert float(lot.exact_cost(x, y)) == pytest.approx(exact)
    gaps = [abs(float(lot.sinkhorn_cost(x, y, gamma=g, max_iter=20_000, tol=1e-12)) - exact) for g in (1.0, 0.1, 0.01)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6 * exact


def test_log_domain_stays_finite_where_the_plain_kernel_underflows():
    """C/γ up to ~4000 in float32: exp(-C/γ) is 0, plain Sinkhorn returns nonsense; the log domain does not."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 2, generator=g) * 3, torch.randn(30, 2, generator=g) * 3 + 4
    exact = float(lot.exact_cost(x, y))
    with pytest.warns(UserWarning):
        plain = float(ot.sinkhorn2(torch.full((20,), 0.05), torch.full((30,), 1 / 30), lot.cost_matrix(x, y), 0.1,
                                   method="sinkhorn", numItermax=2000))
    ours = float(lot.sinkhorn_cost(x, y, gamma=0.1, max_iter=2000))
    assert abs(plain - exact) > 0.5 * exact
    assert math.isfinite(ours) and ours == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("cost", lot.COSTS)
def test_gradient_through_sinkhorn_matches_finite_differences(cost):
    """autodiff through a fixed number of log-domain iterations: torch.autograd.gradcheck (central differences)."""
    x, y = _clouds(n=5, m=6)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: lot.sinkhorn_cost(z, y, gamma=0.5, cost=cost, max_iter=30, tol=0), (x,))


def test_envelope_gradient_is_the_gradient_of_the_regularised_cost():
    """At convergence ∇_x [<P,C> - γH(P)] = <P*, ∇_x C> (Danskin): compare with central differences."""
    x, y = _clouds(n=5, m=6)
    gamma = 0.5

    def regularised(z):
        plan = lot.sinkhorn_plan(z, y, gamma=gamma, max_iter=5000, tol=1e-14)
        return float((plan * lot.cost_matrix(z, y)).sum() + gamma * (plan * plan.log()).sum())

    xg = x.clone().requires_grad_(True)
    groups = torch.zeros(5, dtype=torch.long)
    result = lot.grouped_sinkhorn_cost(xg, groups, y[None], torch.full((1, 6), 1 / 6, dtype=torch.float64),
                                       gamma=gamma, max_iter=5000, tol=1e-14, grad="envelope", scale="none")
    (grad,) = torch.autograd.grad(result.costs.sum(), xg)
    numeric = torch.zeros_like(x)
    for i in range(5):
        for j in range(3):
            e = torch.zeros_like(x)
            e[i, j] = 1e-5
            numeric[i, j] = (regularised(x + e) - regularised(x - e)) / 2e-5
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cost", lot.COSTS)
@pytest.mark.parametrize("grad", lot.GRADS)
def test_grouped_sinkhorn_equals_one_sinkhorn2_per_group(grad, cost):
    gen = torch.Generator().manual_seed(1)
    clouds = torch.randn(3, 9, 4, generator=gen, dtype=torch.float64)
    sizes = [9, 5, 7]
    mass = torch.zeros(3, 9, dtype=torch.float64)
    for k, s in enumerate(sizes):
        mass[k, :s] = 1 / s
    points = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    groups = torch.tensor([0, 2, 2, 0, 0, 2, 2, 0, 0, 2])  # group 1 absent
    points.requires_grad_(True)
    result = lot.grouped_sinkhorn_cost(points, groups, clouds, mass, gamma=0.3, max_iter=5000, tol=1e-12, grad=grad,
                                       scale="none", cost=cost)
    assert result.groups.tolist() == [0, 2] and result.sizes.tolist() == [5, 5]
    assert float(result.marginal_error.max()) <= 1e-12
    for k, value in zip((0, 2), result.costs):
        pair = lot.sinkhorn_cost(points[groups == k].detach(), clouds[k, :sizes[k]], gamma=0.3, max_iter=5000,
                                 tol=1e-12, cost=cost)
        assert float(value.detach()) == pytest.approx(float(pair), rel=1e-8)
    assert float(result.weighted_mean().detach()) == pytest.approx(float(result.costs.detach().mean()))
    # the gradient: with the plan held constant (envelope) it is <P, dC/dx>, the same through either way of summing
    (grad_x,) = torch.autograd.grad(result.costs.sum(), points)
    if grad == "envelope":
        plans = [lot.sinkhorn_plan(points[groups == k].detach(), clouds[k, :sizes[k]], gamma=0.3, max_iter=5000,
                                   tol=1e-12, cost=cost) for k in (0, 2)]
        z = points.detach().requires_grad_(True)
        by_hand = sum((plan * lot.cost_matrix(z[groups == k], clouds[k, :sizes[k]], cost)).sum()
                      for k, plan in zip((0, 2), plans))
        torch.testing.assert_close(grad_x, torch.autograd.grad(by_hand, z)[0], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- the batched solver, scaled costs, convergence
def _problems(seed=0, sizes=(4, 7, 1), width=9, d=3, spread=1.0):
    """Padded batch: problem k has sizes[k] random source points (uniform mass) against width - k target points."""
    g = torch.Generator().manual_seed(seed)
    n = max(sizes)
    a = torch.zeros(len(sizes), n, dtype=torch.float64)
    b = torch.zeros(len(sizes), width, dtype=torch.float64)
    for k, size in enumerate(sizes):
        a[k, :size] = 1 / size
        b[k, :width - k] = torch.rand(width - k, generator=g, dtype=torch.float64) + 0.5
    b = b / b.sum(1, keepdim=True)
    x = torch.randn(len(sizes), n, d, generator=g, dtype=torch.float64) * spread
    y = torch.randn(len(sizes), width, d, generator=g, dtype=torch.float64) * spread + 1
    c = lot.cost_matrix(x, y) * ((a > 0)[:, :, None] & (b > 0)[:, None, :])
    return c, a, b


def _pot_plan(c, a, b, gamma):
    """POT's own log-domain Sinkhorn on the real (unpadded) part of one problem, run to float64 precision."""
    rows, cols = a > 0, b > 0
    plan = ot.sinkhorn(a[rows], b[cols], c[rows][:, cols], gamma, method="sinkhorn_log", numItermax=100_000,
                       stopThr=1e-14, warn=False)
    full = torch.zeros(len(a), len(b), dtype=c.dtype)
    full[torch.nonzero(rows)[:, :1], torch.nonzero(cols)[:, 0]] = plan
    return full


def _independent_scale(c, a, b):
    """The "mean" scale re-derived: the cost of the independent coupling, sum_ij a_i b_j C_ij."""
    return (a[:, :, None] * b[:, None, :] * c).sum((1, 2))


@pytest.mark.parametrize("scale", lot.COST_SCALES)
def test_batched_sinkhorn_agrees_with_pot_on_the_same_scaled_cost(scale):
    """float64, padding rows and columns, non-uniform b: every plan equals POT's ot.sinkhorn on C / s."""
    c, a, b = _problems()
    s = lot.cost_scale(c, a, b, scale)
    valid = (a > 0)[:, :, None] & (b > 0)[:, None, :]
    expected_s = {"mean": _independent_scale(c, a, b), "max": c.masked_fill(~valid, -1).flatten(1).max(1).values,
                  "none": torch.ones(3, dtype=torch.float64)}[scale]
    torch.testing.assert_close(s, expected_s)
    scaled = c / s[:, None, None]
    gamma = 0.1 if scale != "none" else 0.5
    solved = lot.sinkhorn_batch(scaled, a, b, gamma, max_iter=20_000, tol=1e-13)
    assert float(solved.marginal_error.max()) <= 1e-13 and solved.n_iter < 20_000
    torch.testing.assert_close(lot.marginal_error(solved.plan, a, b), solved.marginal_error, atol=1e-15, rtol=0)
    for k in range(3):
        torch.testing.assert_close(solved.plan[k], _pot_plan(scaled[k], a[k], b[k], gamma), atol=1e-11, rtol=0)
    assert bool((solved.plan[~valid] == 0).all())  # padding carries no mass


def test_entropic_plan_brackets_the_exact_cost_of_ot_emd():
    """0 <= <P_γ, C> - emd <= γ (H(P_γ) - max(H(a), H(b))): P_γ minimises <P,C> - γH(P) and every coupling has
    H(P) >= max(H(a), H(b)).  On the scaled cost of the default γ = 0.1, against ot.emd."""
    c, a, b = _problems(sizes=(6, 6, 6), width=12)
    scaled = c / lot.cost_scale(c, a, b, "mean")[:, None, None]
    solved = lot.sinkhorn_batch(scaled, a, b, 0.1, max_iter=20_000, tol=1e-13)
    for k in range(3):
        rows, cols = a[k] > 0, b[k] > 0
        ck = scaled[k][rows][:, cols]
        exact = float((ot.emd(a[k][rows], b[k][cols], ck) * ck).sum())
        plan = solved.plan[k][rows][:, cols]
        entropy = lambda p: float(-(p[p > 0] * p[p > 0].log()).sum())  # noqa: E731
        gap = float((plan * ck).sum()) - exact
        assert 0 <= gap <= 0.1 * (entropy(plan) - max(entropy(a[k][rows]), entropy(b[k][cols]))) + 1e-12


def test_the_stabilised_iterations_stay_finite_where_the_kernel_underflows():
    """C/γ up to ~1900: 15 % of e^{-C/γ} is 0 even in float64; the absorbed scalings still give POT's plan."""
    c, a, b = _problems(spread=2.0)
    gamma = 0.05
    assert float((torch.exp(-c / gamma) == 0).double().mean()) > 0.1
    solved = lot.sinkhorn_batch(c, a, b, gamma, max_iter=50_000, tol=1e-11)
    assert solved.absorptions > 0 and bool(torch.isfinite(solved.plan).all())
    assert float(solved.marginal_error.max()) <= 1e-11
    for k in range(3):
        torch.testing.assert_close(solved.plan[k], _pot_plan(c[k], a[k], b[k], gamma), atol=1e-9, rtol=0)


def test_the_solver_reports_the_error_it_reached_when_the_cap_stops_it():
    c, a, b = _problems()
    capped = lot.sinkhorn_batch(c, a, b, 0.05, max_iter=3, tol=1e-9)
    assert capped.n_iter == 3
    torch.testing.assert_close(capped.marginal_error, lot.marginal_error(capped.plan, a, b), atol=1e-15, rtol=0)
    assert float(capped.marginal_error.max()) > 1e-3
    torch.testing.assert_close(capped.plan.sum(2), a, atol=1e-15, rtol=0)  # the rows are exact


def test_a_warm_start_reaches_the_same_plan_in_fewer_iterations():
    c, a, b = _problems()
    first = lot.sinkhorn_batch(c, a, b, 0.1, max_iter=5000, tol=1e-10)
    moved = c * (1 + 0.02 * torch.rand(c.shape, generator=torch.Generator().manual_seed(5), dtype=c.dtype))
    cold = lot.sinkhorn_batch(moved, a, b, 0.1, max_iter=5000, tol=1e-10)
    warm = lot.sinkhorn_batch(moved, a, b, 0.1, max_iter=5000, tol=1e-10, init=first.log_v)
    assert warm.n_iter < 0.8 * cold.n_iter
    again = lot.sinkhorn_batch(c, a, b, 0.1, max_iter=5000, tol=1e-10, init=first.log_v)
    assert again.n_iter == 1  # started at the solution: converged after one row update
    torch.testing.assert_close(warm.plan, cold.plan, atol=1e-9, rtol=0)
    cache = lot.DualCache(5, c.shape[2], dtype=torch.float64)
    assert cache.get(torch.tensor([1, 3])) is None
    cache.put(torch.tensor([1, 3]), first.log_v[:2])
    start = cache.get(torch.tensor([3, 4]))
    torch.testing.assert_close(start[0], first.log_v[1].nan_to_num(0.0, neginf=0.0))
    assert bool((start[1] == 0).all())  # unknown cloud: a cold start
    # grouped_sinkhorn_cost keeps only converged potentials: an unconverged one can be a worse start than none
    x, y = _clouds()
    groups, mass, warm = torch.zeros(7, dtype=torch.long), torch.full((1, 11), 1 / 11, dtype=torch.float64), \
        lot.DualCache(1, 11, dtype=torch.float64)
    lot.grouped_sinkhorn_cost(x, groups, y[None], mass, gamma=0.01, max_iter=2, tol=1e-9, scale="none", warm=warm)
    assert not bool(warm.known[0])
    lot.grouped_sinkhorn_cost(x, groups, y[None], mass, gamma=0.01, max_iter=5000, tol=1e-9, scale="none", warm=warm)
    assert bool(warm.known[0])


def test_autodiff_through_the_batched_solver_matches_finite_differences():
    """grad="autodiff" through a fixed number of stabilised iterations, padding included: gradcheck."""
    gen = torch.Generator().manual_seed(3)
    clouds = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    mass = torch.tensor([[0.2] * 5, [0.25] * 4 + [0.0]], dtype=torch.float64)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda z: lot.grouped_sinkhorn_cost(
        z, groups, clouds, mass, gamma=0.5, max_iter=25, tol=0, grad="autodiff", scale="none").costs, (x,))
    # scale="mean" holds the scale s_k constant (detached): the plan of C/s_k at γ is the plan of C at γ s_k,
    # so the gradient is that of the unscaled problem at γ s_k, divided by s_k
    scaled = lot.grouped_sinkhorn_cost(x, groups, clouds, mass, gamma=0.5, max_iter=25, tol=0, grad="autodiff")
    (grad,) = torch.autograd.grad(scaled.costs.sum(), x)
    expected = torch.zeros_like(x)
    for k, s_k in zip(scaled.groups.tolist(), scaled.scales.tolist()):
        rows = groups == k
        z = x.detach()[rows].requires_grad_(True)
        raw = lot.grouped_sinkhorn_cost(z, torch.zeros(len(z), dtype=torch.long), clouds[k:k + 1], mass[k:k + 1],
                                        gamma=0.5 * s_k, max_iter=25, tol=0, grad="autodiff", scale="none")
        (expected[rows],) = torch.autograd.grad(raw.costs.sum() / s_k, z)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("setting", ["trained digits g", "untrained CIFAR-shaped ResNet-32"])
def test_the_synthesizers_sinkhorn_converges_at_its_defaults(setting, digits_setup):
    """The OT problems of a real synthesis step (seed features against the real class clouds) at the
    SynthesisConfig defaults: the L1 marginal error is below ot_tol well before the cap, the plan is
    POT's ot.sinkhorn on the same scaled cost (float64), and the envelope gradient is that of the converged
    plan.  The old reading (raw squared distances, absolute γ = 0.1, the paper's 200 iterations) is not converged."""
    params = synlt.SynthesisConfig()
    if setting == "trained digits g":
        s = digits_setup
        g, clouds, x, y, counts = s["g"], s["clouds"], s["x"], s["y"], s["digits"].class_counts
    else:
        counts = [500, 300, 150, 80, 40]
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        g = synlt._freeze(models.make_model("resnet32", 5, in_channels=3, image_size=32))
        labels = torch.arange(5).repeat_interleave(torch.tensor([60, 60, 60, 60, 40]))
        images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8, generator=gen)
        clouds = synlt.class_clouds(g.features, images, labels, 5)
        x, y = images[:: 5].float() / 255, labels[:: 5]
    gen = torch.Generator().manual_seed(1)
    slots = synlt.generation_slots(y, counts, gen)
    keep, seed_pos, _ = synlt.choose_seeds(y, y[slots], counts, params.beta, gen)
    targets = y[slots][keep]
    with torch.no_grad():
        feats = g.features((x[seed_pos] + synlt.initial_noise(x[seed_pos].shape, 0.5, gen)).clamp(0, 1))
    assert len(targets.unique()) >= 3
    feats = feats.double().requires_grad_(True)
    fclouds, fmass = clouds.features.double(), clouds.mass.double()
    result = lot.grouped_sinkhorn_cost(feats, targets, fclouds, fmass, gamma=params.gamma, cost=params.cost,
                                       max_iter=params.ot_iters, tol=params.ot_tol, scale=params.cost_scale,
                                       keep_plans=True)
    assert float(result.marginal_error.max()) <= params.ot_tol and result.n_iter < params.ot_iters / 2
    (grad,) = torch.autograd.grad(result.weighted_mean(), feats)
    # re-derived: the same problems one by one, scale = sum_ij a_i b_j C_ij, POT's solver to float64 precision
    reference_grad = torch.zeros_like(feats)
    for k, cls in enumerate(result.groups.tolist()):
        rows = torch.nonzero(targets == cls).flatten()
        cols = torch.nonzero(fmass[cls] > 0).flatten()
        a = torch.full((len(rows),), 1 / len(rows), dtype=torch.float64)
        b = fmass[cls, cols] / fmass[cls, cols].sum()
        z = feats[rows].detach().requires_grad_(True)
        cost = ((z[:, None, :] - fclouds[cls, cols][None]) ** 2).sum(-1)
        scale = float((a[:, None] * b[None, :] * cost.detach()).sum())
        plan = ot.sinkhorn(a, b, cost.detach() / scale, params.gamma, method="sinkhorn_log", numItermax=100_000,
                           stopThr=1e-14, warn=False)
        ours = result.plans[k, :len(rows), :][:, cols]
        assert float((ours - plan).abs().sum()) < 10 * params.ot_tol
        assert float((plan.sum(0) - b).abs().sum()) < 1e-12
        weight = len(rows) / len(targets)
        (reference_grad[rows],) = torch.autograd.grad(weight * (plan * cost).sum() / scale, z)
    relative = float((grad - reference_grad).norm() / reference_grad.norm())
    assert relative < 10 * params.ot_tol
    old = lot.grouped_sinkhorn_cost(feats.detach(), targets, fclouds, fmass, gamma=0.1, max_iter=200, tol=params.ot_tol,
                                    scale="none")
    assert float(old.marginal_error.max()) > 10 * params.ot_tol and old.n_iter == 200


@pytest.mark.parametrize("call, message", [
    (lambda x, y: lot.sinkhorn_cost(x, y, gamma=0.0), "gamma=0.0"),
    (lambda x, y: lot.sinkhorn_cost(x, y, gamma=-1), "gamma=-1 must be > 0"),
    (lambda x, y: lot.sinkhorn_cost(x.index_fill(0, torch.tensor([2]), float("nan")), y), "NaN/Inf features in 1 of 7"),
    (lambda x, y: lot.sinkhorn_cost(x, y.index_fill(0, torch.tensor([0]), float("inf"))), "NaN/Inf"),
    (lambda x, y: lot.sinkhorn_cost(x[:0], y), "empty"),
    (lambda x, y: lot.exact_cost(x, y[:0]), "empty"),
    (lambda x, y: lot.sinkhorn_cost(x, y, cost="l1"), "unknown cost"),
    (lambda x, y: lot.sinkhorn_cost(x, y, a=torch.ones(7)), "must sum to 1"),
    (lambda x, y: lot.sinkhorn_cost(x, y, b=torch.ones(3) / 3), r"shape \(11,\)"),
    (lambda x, y: lot.sinkhorn_cost(x, y, max_iter=0), "max_iter"),
    (lambda x, y: lot.grouped_sinkhorn_cost(x, torch.zeros(7, dtype=torch.long), y[None], torch.zeros(1, 11)),
     r"cloud\(s\) \[0\] are empty"),
    (lambda x, y: lot.grouped_sinkhorn_cost(x, torch.zeros(7, dtype=torch.long), y[None], torch.ones(1, 11) / 11,
                                            grad="implicit"), "unknown grad"),
    (lambda x, y: lot.grouped_sinkhorn_cost(x, torch.zeros(7, dtype=torch.long), y[None], torch.ones(1, 11) / 11,
                                            scale="median"), "unknown cost scale 'median'"),
    (lambda x, y: lot.grouped_sinkhorn_cost(x.index_fill(0, torch.tensor([3]), float("nan")), torch.zeros(7, dtype=torch.long),
                                            y[None], torch.ones(1, 11) / 11), "x has NaN/Inf features in 1 of 7"),
    (lambda x, y: lot.grouped_sinkhorn_cost(x, torch.zeros(7, dtype=torch.long), y[None].index_fill(1, torch.tensor([2]), float("inf")),
                                            torch.ones(1, 11) / 11), "clouds has NaN/Inf features in 1 of 11"),
    (lambda x, y: lot.sinkhorn_batch(lot.cost_matrix(x, y)[None], torch.ones(1, 7) / 7, torch.ones(1, 11) / 11, 0.1,
                                     init=torch.zeros(1, 7)), r"init must have the shape of b \(1, 11\)"),
])
def test_bad_ot_input_gets_a_clear_error(call, message):
    x, y = _clouds()
    with pytest.raises(ValueError, match=message):
        call(x, y)


def test_wrong_ot_parameter_types_get_a_clear_error():
    x, y = _clouds()
    with pytest.raises(TypeError, match="gamma must be a real number, got bool True"):
        lot.sinkhorn_plan(x, y, gamma=True)
    with pytest.raises(TypeError, match=r"max_iter must be an integer, got float 2.0 \(the Sinkhorn iteration cap"):
        lot.sinkhorn_cost(x, y, max_iter=2.0)


# =========================================================================== synthesizer
COUNTS = [100, 50, 10]


def test_slots_are_drawn_with_probability_one_minus_n_over_nmax():
    y = torch.arange(3).repeat_interleave(2000)
    chosen = synlt.generation_slots(y, COUNTS, torch.Generator().manual_seed(0))
    freq = torch.bincount(y[chosen], minlength=3).double() / 2000
    expected = torch.tensor([0.0, 0.5, 0.9], dtype=torch.float64)
    assert freq[0] == 0 and torch.allclose(freq, expected, atol=4 * math.sqrt(0.25 / 2000))


def test_seeds_come_from_larger_classes_with_m2m_probabilities():
    beta = 0.99
    y = torch.tensor([0, 1, 2, 2])
    p = synlt.acceptance_probabilities(y, torch.tensor([0, 1, 2]), COUNTS, beta)
    expected = torch.tensor([[0, 0, 0, 0], [1 - beta**50, 0, 0, 0], [1 - beta**90, 1 - beta**40, 0, 0]],
                            dtype=torch.float64)
    torch.testing.assert_close(p, expected)
    targets = torch.tensor([0, 1, 2]).repeat(4000)
    keep, seed_pos, p_accept = synlt.choose_seeds(y, targets, COUNTS, beta, torch.Generator().manual_seed(0))
    assert keep.tolist() == [False, True, True] * 4000  # the largest class has no larger seed: dropped
    kept_targets = targets[keep]
    assert bool((y[seed_pos] < kept_targets).all())  # seeds of class 0 or 1 only, never the target's own class
    share = (seed_pos[kept_targets == 2] == 0).double().mean()
    assert float(share) == pytest.approx(float(expected[2, 0] / expected[2].sum()), abs=0.03)
    torch.testing.assert_close(p_accept, p[kept_targets, seed_pos])


@pytest.fixture(scope="module")
def digits_setup():
    """A plain-CE g trained for 12 epochs, its real class clouds, and one class-balanced batch of digits-lt."""
    digits = data.load_digits_lt()
    config = train.preset("digits-lt")
    g = synlt.train_classifier(config, digits, epochs=12)
    clouds = synlt.class_clouds(g.features, digits.x_train, digits.y_train, 10)
    weights = 1 / torch.tensor(digits.class_counts, dtype=torch.float64)[digits.y_train]
    idx = torch.multinomial(weights, 64, replacement=True, generator=torch.Generator().manual_seed(0))
    return dict(digits=digits, config=config, g=g, clouds=clouds, x=digits.x_train[idx].float() / 255,
                y=digits.y_train[idx], index=idx)


def test_trained_g_is_frozen_deterministic_and_a_real_classifier(digits_setup):
    g, digits = digits_setup["g"], digits_setup["digits"]
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    accuracy = (g(digits.x_test.float() / 255).argmax(1) == digits.y_test).float().mean()
    assert accuracy > 0.6
    assert digits_setup["clouds"].sizes.tolist() == digits.class_counts


def test_synthesizer_stays_in_range_and_accepts_exactly_the_confident_samples(digits_setup):
    s = digits_setup
    params = synlt.SynthesisConfig(steps=6, eta=0.3, tau=0.7, beta=0.0, lambda1=0.5)  # beta=0: every p = 1
    torch.manual_seed(0)
    f = train.build_model(s["config"], s["digits"], losses.make_loss("ce", s["digits"].class_counts))
    f.train()
    result = synlt.synthesize(s["x"], s["y"], s["digits"].class_counts, s["g"], generator=torch.Generator().manual_seed(1),
                              params=params, f=f, clouds=s["clouds"])
    assert f.training and not s["g"].training  # modes restored
    assert len(result.targets) > 10 and 0 < int(result.accepted.sum()) < len(result.targets)
    assert float(result.x.min()) >= 0 and float(result.x.max()) <= 1
    assert bool((s["y"][result.slots] == result.targets).all())
    assert bool((result.seed_classes >= 0).all())
    counts = torch.tensor(s["digits"].class_counts)
    assert bool((counts[result.seed_classes] > counts[result.targets]).all())  # majority-to-minority
    # independently recomputed: softmax(g(x))_c >= tau exactly for the accepted ones
    with torch.no_grad():
        prob = torch.softmax(s["g"](result.x), 1).gather(1, result.targets[:, None]).flatten()
    assert torch.equal(result.accepted, prob >= params.tau)
    assert bool((s["g"](result.x[result.accepted]).argmax(1) == result.targets[result.accepted]).all())
    assert result.acceptance_rate == pytest.approx(float((prob >= params.tau).double().mean()))
    # replacing the slots: accepted slots take the synthetic image and the target label, nothing else changes
    x, y, index = synlt.replace_slots(s["x"], s["y"], result, s["index"])
    slots = result.slots[result.accepted]
    assert torch.equal(x[slots], result.x[result.accepted]) and torch.equal(y[slots], result.targets[result.accepted])
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(x[untouched], s["x"][untouched]) and torch.equal(y[untouched], s["y"][untouched])
    assert bool((index[slots] == -1).all()) and torch.equal(index[untouched], s["index"][untouched])
    again = synlt.synthesize(s["x"], s["y"], s["digits"].class_counts, s["g"], generator=torch.Generator().manual_seed(1),
                             params=params, f=f, clouds=s["clouds"])
    assert torch.equal(again.x, result.x) and torch.equal(again.accepted, result.accepted)


def test_the_ot_term_pulls_noise_seeds_onto_the_class_cloud(digits_setup):
    """Out-of-distribution seeds (uniform noise): with λ1 > 0 the synthetic features end closer (exact OT) to class c."""
    s = digits_setup
    y = torch.full((12,), 9)
    x = torch.zeros(12, 1, 8, 8)
    distances = {}
    for lambda1 in (0.0, 2.0):
        params = synlt.SynthesisConfig(seeds="noise", steps=15, eta=0.3, lambda1=lambda1, lambda2=0.0, tau=0.0)
        result = synlt.synthesize(x, y, [100] * 9 + [10], s["g"], generator=torch.Generator().manual_seed(3),
                                  params=params, clouds=s["clouds"])
        assert len(result.targets) > 0 and bool((result.seed_classes == -1).all())
        with torch.no_grad():
            distances[lambda1] = float(lot.exact_cost(s["g"].features(result.x), s["clouds"].features[9, :9]))
    assert distances[2.0] < 0.7 * distances[0.0]


def test_empty_class_cloud_is_a_clear_error(digits_setup):
    s = digits_setup
    clouds = synlt.ClassClouds(s["clouds"].features.clone(), s["clouds"].mass.clone())
    clouds.mass[9] = 0
    params = synlt.SynthesisConfig(steps=1, beta=0.0)
    y = torch.tensor([0, 9, 9, 9])
    with pytest.raises(ValueError, match=r"class\(es\) \[9\] have no real images"):
        synlt.synthesize(s["x"][:4], y, s["digits"].class_counts, s["g"], generator=torch.Generator().manual_seed(0),
                         params=params, clouds=clouds)


# =========================================================================== engine methods
@pytest.mark.parametrize("method, params, message", [
    ("synlt", dict(gamma=0), "gamma=0"),
    ("synlt", dict(lambda1=0), r"lambda1=0 must be > 0 \(the OT term; lambda1 = 0 is method='m2m'\)"),
    ("m2m", dict(lambda1=0.5), "no OT term"),
    ("synlt", dict(tau=1.5), "tau=1.5"),
    ("synlt", dict(beta=1.0), "beta=1.0"),
    ("synlt", dict(steps=0), "steps=0"),
    ("synlt", dict(cost="l1"), "cost 'l1'; choose one of"),
    ("synlt", dict(cost_scale="median"), "cost_scale 'median'; choose one of"),
    ("synlt", dict(ot_tol=-1e-4), "ot_tol=-0.0001"),
    ("synlt", dict(seeds="cifar"), "seeds 'cifar'; choose one of"),
    ("m2m", dict(resample="always"), "resample 'always'; choose one of"),
    ("m2m", dict(lamda2=0.5), r"unknown parameter\(s\) \['lamda2'\]"),
    ("m2m", dict(start_epoch=-1), "start_epoch=-1"),
])
def test_bad_method_parameters_get_a_clear_error(method, params, message):
    with pytest.raises(ValueError, match=message):
        train.make_method(method, params)


def test_start_epoch_after_the_last_epoch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="start_epoch=4 must be < epochs=4"):
        train.fit("digits-lt", epochs=4, method="m2m", method_params=dict(start_epoch=4), out_dir=str(tmp_path),
                  progress=False)


def test_default_start_epoch_is_80_percent_of_training():
    method = train.make_method("synlt", {})

    class Ctx:  # the attributes setup reads
        config = train.preset("cifar10-lt")
        train_x, train_y = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1])
        data = type("D", (), {"num_classes": 2})()

    method.setup(Ctx)
    synthesis_fields = [f.name for f in dataclasses.fields(synlt.SynthesisConfig)]
    assert method.start_epoch == 160
    assert [getattr(method.params, n) for n in synthesis_fields] == [getattr(synlt.SynthesisConfig(), n)
                                                                     for n in synthesis_fields]


SMALL = dict(epochs=4, progress=False, batch_size=128)
SYN = dict(start_epoch=2, g_epochs=2, steps=2, eta=0.3, beta=0.96, tau=0.5)


def test_joint_training_resumes_bit_exactly_after_a_crash(tmp_path, monkeypatch):
    """Crash during epoch 3 (synthesis runs from epoch 2); resume ends where an uninterrupted run ends."""
    common = dict(SMALL, out_dir=str(tmp_path), method="synlt", method_params=SYN, loss="bs")
    whole = train.fit("digits-lt", name="whole", **common)
    original = train._train_epoch

    def crash_at_3(ctx, method, epoch):
        if epoch == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(ctx, method, epoch)

    monkeypatch.setattr(train, "_train_epoch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train.fit("digits-lt", name="crashed", **common)
    monkeypatch.setattr(train, "_train_epoch", original)
    resumed = train.fit("digits-lt", name="crashed", if_exists="resume", **common)
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    state = lambda run: torch.load(Path(run["dir"]) / "checkpoint.pt", weights_only=False)  # noqa: E731
    for key, value in state(whole)["model"].items():
        assert torch.equal(value, state(resumed)["model"][key]), key
    syn_whole = json.loads((Path(whole["dir"]) / "synthesis.json").read_text())
    syn_resumed = json.loads((Path(resumed["dir"]) / "synthesis.json").read_text())
    assert syn_whole == syn_resumed and [h["epoch"] for h in syn_whole["history"]] == [2, 3]
    assert all(h["candidates"] > 0 and h["slots"] >= h["candidates"] >= h["accepted"] for h in syn_whole["history"])
    assert sum(syn_whole["history"][-1]["accepted_per_class"]) == syn_whole["history"][-1]["accepted"]
    # the OT term's Sinkhorn, recorded per epoch: one solve per step of every batch, converged at the defaults
    for h in syn_whole["history"]:
        assert h["ot_solves"] > 0 and h["ot_solves"] % 2 == 0 and h["ot_unconverged"] == 0  # T = 2 per batch
        assert 0 < h["ot_max_marginal_error"] <= synlt.SynthesisConfig.ot_tol
        assert 1 <= h["ot_mean_iterations"] < synlt.SynthesisConfig.ot_iters


def test_m2m_with_a_g_run_and_ldam_under_two_process_ddp(tmp_path, monkeypatch):
    """g from a CE run directory; LDAM-DRW (cosine head) as the training loss; torchrun with gloo on CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ce = train.fit("digits-lt", name="ce", out_dir=str(tmp_path), **{**SMALL, "epochs": 2})
    params = dict(SYN, g_run=ce["dir"])
    params.pop("g_epochs")
    ddp = launch.run("digits-lt", nproc=2, name="m2m-ddp", out_dir=str(tmp_path), loss="ldam-drw", method="m2m",
                     method_params=params, **{**SMALL, "epochs": 3})
    assert ddp["result"]["world_size"] == 2 and all(math.isfinite(r["train_loss"]) for r in ddp["history"])
    history = json.loads((Path(ddp["dir"]) / "synthesis.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [2]
    # counts are all-reduced over both ranks: each rank re-draws ~64 slots per batch, 5 batches of 64 per rank
    assert all(h["slots"] > 250 and h["accepted"] <= h["candidates"] <= h["slots"] for h in history)
