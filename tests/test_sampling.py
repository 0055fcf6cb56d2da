"""Tests for ltkit.sampling: closed forms, the two views of q(r,k), and
goodness-of-fit of every sampler against its theory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler

from ltkit import sampling as S

COUNTS = [500, 200, 80, 30, 10]
NUM_DRAWS = 200_000


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    # Shuffled so that sampler indices are not trivially ordered by class.
    lab = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    return lab[torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(123))]


def _n() -> np.ndarray:
    return np.asarray(COUNTS, dtype=np.float64)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum()


def _class_frequencies(labels: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    return torch.bincount(labels[indices], minlength=len(COUNTS)).numpy().astype(np.float64)


def _chi2_p(observed: np.ndarray, probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    return float(chisquare(observed, probs * observed.sum()).pvalue)


# --------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------
@pytest.mark.parametrize("r", [0.0, 0.5, 1.0, 2.0])
def test_class_probabilities_closed_form(r):
    n = _n()
    expected = n**-r / np.sum(n**-r)
    got = S.class_probabilities(COUNTS, r)
    assert got.dtype == torch.float64 and got.shape == (len(COUNTS),)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_class_probabilities_r0_is_uniform_and_input_types():
    for counts in (COUNTS, np.array(COUNTS), torch.tensor(COUNTS), torch.tensor(COUNTS).float()):
        np.testing.assert_allclose(S.class_probabilities(counts, 0.0).numpy(), 0.2, rtol=1e-12)


def test_class_probabilities_stable_for_extreme_counts():
    p = S.class_probabilities([10**9, 1], r=2.0)  # n^-2 = 1e-18 vs 1: no underflow to nan
    assert torch.isfinite(p).all()
    assert p[0].item() == pytest.approx(1e-18, rel=1e-9)


def test_implied_class_probabilities_limits():
    n = _n()
    np.testing.assert_allclose(S.implied_class_probabilities(COUNTS, 1.0).numpy(), 0.2, rtol=1e-12)
    np.testing.assert_allclose(S.implied_class_probabilities(COUNTS, 0.0).numpy(), n / n.sum(), rtol=1e-12)
    np.testing.assert_allclose(
        S.implied_class_probabilities(COUNTS, 0.5).numpy(), _normalise(np.sqrt(n)), rtol=1e-12
    )


def test_paper_and_code_views_differ():
    paper = S.class_probabilities(COUNTS, 1.0).numpy()
    code = S.implied_class_probabilities(COUNTS, 1.0).numpy()
    # Paper view r=1 is inverse frequency: the tail class is 50x the head class.
    assert paper[-1] / paper[0] == pytest.approx(50.0)
    # Code view r=1 is class-balanced.
    assert code[-1] / code[0] == pytest.approx(1.0)
    assert np.abs(paper - code).max() > 0.3


@pytest.mark.parametrize("r", [1.0, 1.5, 2.0, 3.0])
def test_code_view_at_r_equals_paper_view_at_r_minus_1(r):
    np.testing.assert_allclose(
        S.implied_class_probabilities(COUNTS, r).numpy(),
        S.class_probabilities(COUNTS, r - 1.0).numpy(),
        rtol=1e-12,
    )


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0, 2.0])
def test_sample_weights_sum_to_implied_class_probabilities(labels, r):
    w = S.sample_weights(labels, COUNTS, r)
    assert w.dtype == torch.float64 and w.shape == labels.shape
    n = _n()
    np.testing.assert_allclose(w.numpy(), n[labels.numpy()] ** -r, rtol=1e-12)
    class_mass = torch.zeros(len(COUNTS), dtype=torch.float64).index_add_(0, labels, w)
    np.testing.assert_allclose(
        (class_mass / class_mass.sum()).numpy(),
        S.implied_class_probabilities(COUNTS, r).numpy(),
        rtol=1e-12,
    )


def test_sample_weights_proportional_to_cmo_reference_formula(labels):
    # naver-ai/cmo, imbalance_data/imbalance_cifar.py, get_weighted_sampler (commit
    # 46eab7a209f55bde5d55622257f3b53a3bce1887), re-derived: cls_weight = 1/n^alpha, normalised to sum
    # to C, indexed by target (alpha = 1 here: CMO's default weighting).
    n = _n()
    cls_weight = 1.0 / n**1.0
    cls_weight = cls_weight / cls_weight.sum() * len(n)
    ref = cls_weight[labels.numpy()]
    ours = S.sample_weights(labels, COUNTS, 1.0).numpy()
    np.testing.assert_allclose(ours / ours.sum(), ref / ref.sum(), rtol=1e-12)


def test_effective_number_closed_form_and_limits():
    n = _n()
    for beta in (0.9, 0.99, 0.999, 0.9999):
        expected = (1.0 - beta**n) / (1.0 - beta)
        np.testing.assert_allclose(S.effective_number(COUNTS, beta).numpy(), expected, rtol=1e-9)
    np.testing.assert_array_equal(S.effective_number(COUNTS, 0.0).numpy(), np.ones(5))
    np.testing.assert_allclose(S.effective_number(COUNTS, 1e-12).numpy(), np.ones(5), rtol=1e-9)
    small = [1, 2, 5, 10]
    np.testing.assert_allclose(S.effective_number(small, 0.999999).numpy(), small, rtol=1e-4)
    # E(n) is increasing in n and never exceeds n.
    e = S.effective_number(COUNTS, 0.999).numpy()
    assert np.all(e <= n) and np.all(np.diff(e) < 0)


def test_effective_number_probabilities():
    n = _n()
    beta = 0.999
    expected = _normalise((1.0 - beta) / (1.0 - beta**n))
    got = S.effective_number_probabilities(COUNTS, beta)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(S.effective_number_probabilities(COUNTS, 0.0).numpy(), 0.2)
    # beta -> 1 tends to inverse frequency (= paper view r=1).
    np.testing.assert_allclose(
        S.effective_number_probabilities(COUNTS, 1 - 1e-9).numpy(),
        S.class_probabilities(COUNTS, 1.0).numpy(),
        rtol=1e-5,
    )


def test_progressive_probabilities():
    n = _n()
    T = 10
    np.testing.assert_allclose(S.progressive_probabilities(COUNTS, 0, T).numpy(), n / n.sum(), rtol=1e-12)
    np.testing.assert_allclose(S.progressive_probabilities(COUNTS, T, T).numpy(), 0.2, rtol=1e-12)
    mid = S.progressive_probabilities(COUNTS, 3, T)
    assert mid.dtype == torch.float64
    np.testing.assert_allclose(mid.numpy(), 0.7 * n / n.sum() + 0.3 / 5, rtol=1e-12)


def test_per_sample_weights_realise_class_probabilities(labels):
    p = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3], dtype=torch.float64)
    w = S.per_sample_weights_from_class_probabilities(labels, p)
    assert w.dtype == torch.float64 and w.shape == labels.shape
    class_mass = torch.zeros(5, dtype=torch.float64).index_add_(0, labels, w)
    np.testing.assert_allclose(class_mass.numpy(), p.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.numpy(), p.numpy()[labels.numpy()] / _n()[labels.numpy()], rtol=1e-12)


def test_expected_samples_per_class():
    p = S.class_probabilities(COUNTS, 0.5)
    e = S.expected_samples_per_class(p, 1000)
    assert e.dtype == torch.float64
    np.testing.assert_allclose(e.numpy(), 1000 * p.numpy())
    assert e.sum().item() == pytest.approx(1000.0)


# --------------------------------------------------------------------------
# Samplers: goodness of fit
# --------------------------------------------------------------------------
def _theory(kind: str, kwargs: dict) -> np.ndarray:
    """Independent numpy closed forms for the class-level probability of each kind."""
    n = _n()
    C = len(n)
    if kind == "instance":
        return n / n.sum()
    if kind == "q-class":
        return _normalise(n ** -kwargs["r"])
    if kind == "q-sample":
        return _normalise(n * n ** -kwargs["r"])
    if kind == "class-balanced":
        return np.full(C, 1.0 / C)
    if kind == "sqrt":
        # square-root sampling: p_k = n_k^q / sum_j n_j^q with q = 1/2 (Mahajan et al., ECCV 2018;
        # Kang et al., ICLR 2020, "Decoupling Representation and Classifier", Sec. 3)
        return _normalise(n**0.5)
    if kind == "effective-number":
        b = kwargs["beta"]
        return _normalise((1 - b) / (1 - b**n))
    if kind == "progressive":
        f = kwargs["epoch"] / kwargs["total_epochs"]
        return (1 - f) * n / n.sum() + f / C
    raise AssertionError(kind)


SAMPLER_CASES = [
    ("instance", {}),
    ("q-class", {"r": 1.0}),
    ("q-class", {"r": 2.0}),
    ("q-sample", {"r": 1.0}),
    ("q-sample", {"r": 0.5}),
    ("class-balanced", {}),
    ("sqrt", {}),
    ("effective-number", {"beta": 0.99}),
    ("progressive", {"epoch": 3, "total_epochs": 10}),
]


def test_sampler_cases_cover_all_kinds():
    assert {k for k, _ in SAMPLER_CASES} == set(S.SAMPLER_KINDS)


@pytest.mark.parametrize("kind,kwargs", SAMPLER_CASES, ids=[f"{k}-{v}" for k, v in SAMPLER_CASES])
def test_sampler_class_frequencies_match_theory(labels, kind, kwargs):
    sampler = S.make_sampler(labels, COUNTS, kind, seed=7, num_samples=NUM_DRAWS, **kwargs)
    idx = S.epoch_indices(sampler)
    assert idx.dtype == torch.int64 and idx.shape == (NUM_DRAWS,)
    assert idx.min() >= 0 and idx.max() < labels.numel()
    observed = _class_frequencies(labels, idx)
    assert _chi2_p(observed, _theory(kind, kwargs)) > 1e-3


def test_chi_square_has_power_against_wrong_view(labels):
    # Code view r=1 (class-balanced) must be rejected against the paper view r=1.
    idx = S.epoch_indices(S.make_sampler(labels, COUNTS, "q-sample", r=1.0, seed=7, num_samples=NUM_DRAWS))
    observed = _class_frequencies(labels, idx)
    assert _chi2_p(observed, _theory("q-class", {"r": 1.0})) < 1e-6
    # ...and the paper view against the code view.
    idx = S.epoch_indices(S.make_sampler(labels, COUNTS, "q-class", r=1.0, seed=7, num_samples=NUM_DRAWS))
    observed = _class_frequencies(labels, idx)
    assert _chi2_p(observed, _theory("q-sample", {"r": 1.0})) < 1e-6
    # A subtle error is caught too: sqrt (class probability ∝ n^0.5) against ∝ n^0.4 ...
    idx = S.epoch_indices(S.make_sampler(labels, COUNTS, "sqrt", seed=7, num_samples=NUM_DRAWS))
    observed = _class_frequencies(labels, idx)
    assert _chi2_p(observed, _theory("q-sample", {"r": 0.6})) < 1e-6
    # ... and, overwhelmingly, against what "sqrt" meant before (the paper view q(1/2, k) ∝ n^-0.5).
    assert _chi2_p(observed, _theory("q-class", {"r": 0.5})) < 1e-100


def test_sqrt_sampler_is_square_root_sampling(labels):
    """Class probability ∝ sqrt(n_k), exactly, and the same draws as the code view at r = 1/2."""
    n = _n()
    sampler = S.make_sampler(labels, COUNTS, "sqrt", seed=5)
    w = sampler.weights.double()
    np.testing.assert_allclose(w.numpy(), n[labels.numpy()] ** -0.5, rtol=1e-12)  # per-sample n_y^-1/2
    class_mass = torch.zeros(len(COUNTS), dtype=torch.float64).index_add_(0, labels, w).numpy()
    np.testing.assert_allclose(class_mass / class_mass.sum(), np.sqrt(n) / np.sqrt(n).sum(), rtol=1e-12)
    np.testing.assert_allclose(S.implied_class_probabilities(COUNTS, 0.5).numpy(),
                               np.sqrt(n) / np.sqrt(n).sum(), rtol=1e-12)
    # head classes are still drawn more often than tail classes, but less than in proportion to size
    p = class_mass / class_mass.sum()
    assert np.all(np.diff(p) < 0) and p[0] / p[-1] == pytest.approx(np.sqrt(n[0] / n[-1]))
    same = S.make_sampler(labels, COUNTS, "q-sample", r=0.5, seed=5)
    assert torch.equal(sampler.weights, same.weights)
    assert torch.equal(S.epoch_indices(sampler), S.epoch_indices(same))


def test_images_within_a_class_are_drawn_uniformly(labels):
    idx = S.epoch_indices(S.make_sampler(labels, COUNTS, "class-balanced", seed=3, num_samples=NUM_DRAWS))
    tail_images = torch.nonzero(labels == 4).flatten()  # 10 images
    hits = torch.bincount(idx, minlength=labels.numel())[tail_images].numpy().astype(np.float64)
    assert _chi2_p(hits, np.full(10, 0.1)) > 1e-3


def test_instance_sampler_is_a_permutation(labels):
    sampler = S.make_sampler(labels, COUNTS, "instance", seed=0)
    assert isinstance(sampler, RandomSampler)
    idx = S.epoch_indices(sampler)
    assert torch.equal(torch.sort(idx).values, torch.arange(labels.numel()))


def test_make_sampler_defaults_and_reproducibility(labels):
    s1 = S.make_sampler(labels, COUNTS, "q-sample", seed=11)
    assert isinstance(s1, WeightedRandomSampler) and s1.replacement
    assert len(s1) == labels.numel()  # N draws per epoch, as in the CMO code
    e1, e2 = S.epoch_indices(s1), S.epoch_indices(s1)
    assert not torch.equal(e1, e2)  # successive epochs differ
    s2 = S.make_sampler(labels, None, "q-sample", seed=11)  # counts from labels
    assert torch.equal(S.epoch_indices(s2), e1)
    assert torch.equal(S.epoch_indices(s2), e2)
    s3 = S.make_sampler(labels, COUNTS, "q-sample", seed=12)
    assert not torch.equal(S.epoch_indices(s3), e1)


def test_weighted_sampler_seeded():
    w = torch.tensor([1.0, 2.0, 3.0])
    a = S.epoch_indices(S.weighted_sampler(w, 50, seed=5))
    b = S.epoch_indices(S.weighted_sampler(w, 50, seed=5))
    assert torch.equal(a, b) and a.shape == (50,)


def test_epoch_indices_rejects_batch_sampler():
    batches = BatchSampler(RandomSampler(range(10)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="BatchSampler"):
        S.epoch_indices(batches)


# --------------------------------------------------------------------------
# DistributedWeightedSampler
# --------------------------------------------------------------------------
def test_distributed_shards_partition_the_global_draw(labels):
    w = S.sample_weights(labels, COUNTS, 1.0)
    R, total = 3, 60_000
    shards = []
    for rank in range(R):
        s = S.DistributedWeightedSampler(w, total, num_replicas=R, rank=rank, seed=4)
        s.set_epoch(2)
        shards.append(S.epoch_indices(s))
    assert all(len(sh) == total // R for sh in shards)

    single = S.DistributedWeightedSampler(w, total, num_replicas=1, rank=0, seed=4)
    single.set_epoch(2)
    global_draw = S.epoch_indices(single)
    interleaved = torch.stack(shards, dim=1).reshape(-1)  # positions r, r+R, r+2R, ...
    assert torch.equal(interleaved, global_draw)
    # Disjoint by position: rank r owns exactly the positions p with p % R == r.
    positions = [set(range(rank, total, R)) for rank in range(R)]
    assert set().union(*positions) == set(range(total))
    assert sum(len(p) for p in positions) == total
    for rank in range(R):
        assert torch.equal(shards[rank], global_draw[rank::R])

    observed = _class_frequencies(labels, interleaved)
    assert _chi2_p(observed, S.implied_class_probabilities(COUNTS, 1.0).numpy()) > 1e-3
    assert _chi2_p(observed, S.class_probabilities(COUNTS, 1.0).numpy()) < 1e-6


def test_distributed_epochs_and_seeds(labels):
    w = S.sample_weights(labels, COUNTS, 1.0)
    s = S.DistributedWeightedSampler(w, 999, num_replicas=3, rank=1, seed=0)
    s.set_epoch(0)
    a = S.epoch_indices(s)
    assert torch.equal(S.epoch_indices(s), a)  # same epoch -> same draw
    other = S.DistributedWeightedSampler(w, 999, num_replicas=3, rank=1, seed=0)
    assert torch.equal(S.epoch_indices(other), a)  # independent instance, same seed+epoch
    s.set_epoch(1)
    assert not torch.equal(S.epoch_indices(s), a)  # different epoch -> different draw


def test_distributed_uneven_num_samples_pads_to_equal_lengths(labels):
    w = S.sample_weights(labels, COUNTS, 1.0)
    lengths = [len(S.DistributedWeightedSampler(w, 10, num_replicas=3, rank=k)) for k in range(3)]
    assert lengths == [4, 4, 4]
    assert [len(S.epoch_indices(S.DistributedWeightedSampler(w, 10, num_replicas=3, rank=k))) for k in range(3)] == [4, 4, 4]


def test_distributed_defaults_without_process_group(labels):
    assert not torch.distributed.is_initialized()
    s = S.DistributedWeightedSampler(S.sample_weights(labels, COUNTS, 1.0), 100)
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 100)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: S.class_probabilities(COUNTS, -0.5), r"r=-0.5 must be >= 0 \(r=0: no rebalancing"),
        (lambda: S.implied_class_probabilities(COUNTS, float("nan")), r"r=nan must be a finite number"),
        (lambda: S.sample_weights([0, 1], COUNTS, -1.0), r"r=-1.0 must be >= 0"),
        (lambda: S.effective_number(COUNTS, 1.0), r"beta=1.0 must lie in \[0, 1\) \(Cui et al. use 0.999"),
        (lambda: S.effective_number(COUNTS, -0.1), r"beta=-0.1 must lie in \[0, 1\)"),
        (lambda: S.effective_number_probabilities(COUNTS, 1.5), r"beta=1.5 must lie"),
        (lambda: S.class_probabilities([500, 0, 10], 1.0), r"class_counts\[1\] is 0: every class needs at least one"),
        (lambda: S.class_probabilities([500, 20, -3], 1.0), r"class_counts\[2\]=-3.0 must be a non-negative whole"),
        (lambda: S.class_probabilities([10.5, 3, 0], 1.0), r"class_counts\[2\]=0.0 must be > 0"),
        (lambda: S.class_probabilities([500], 1.0), r"at least 2 classes"),
        (lambda: S.class_probabilities([[1, 2], [3, 4]], 1.0), r"1-D"),
        (lambda: S.sample_weights([0, 1, 5], COUNTS, 1.0), r"\[0, 5\).*label 5 at position 2"),
        (lambda: S.sample_weights([0, -1], COUNTS, 1.0), r"\[0, 5\).*label -1"),
        (lambda: S.sample_weights(torch.tensor([0.0, 1.0]), COUNTS, 1.0), r"integer dtype"),
        (lambda: S.per_sample_weights_from_class_probabilities([0, 7], [0.5, 0.5]), r"\[0, 2\)"),
        (lambda: S.per_sample_weights_from_class_probabilities([0, 0], [0.5, 0.5]), r"class 1 .*no images"),
        (lambda: S.per_sample_weights_from_class_probabilities([0, 1], [0.5, 0.6]), r"sum to 1"),
        (lambda: S.progressive_probabilities(COUNTS, 11, 10), r"epoch=11 must lie in \[0, 10\] \(0 <= epoch <= total"),
        (lambda: S.progressive_probabilities(COUNTS, -1, 10), r"epoch=-1 must lie in \[0, 10\]"),
        (lambda: S.progressive_probabilities(COUNTS, 0, 0), r"total_epochs=0 must be >= 1"),
        (lambda: S.make_sampler([0, 1], None, "balanced"), r"unknown sampler kind 'balanced'; choose one of: instance.*progressive"),
        (lambda: S.make_sampler([0, 1, 1], [2, 1], "q-sample"), r"class_counts does not match"),
        (lambda: S.make_sampler([0, 2], None, "q-sample"), r"class_counts\[1\] is 0"),
        (lambda: S.make_sampler([0, 1], [1, 1], "q-class", r=-1), r"r=-1 must be >= 0"),
        (lambda: S.make_sampler([0, 1], [1, 1], "effective-number", beta=1.0), r"beta=1.0 must lie"),
        (lambda: S.make_sampler([0, 1], [1, 1], "progressive", epoch=3, total_epochs=2), r"epoch=3 must lie"),
        (lambda: S.make_sampler([0, 1], [1, 1], "instance", num_samples=0), r"num_samples=0 must be >= 1"),
        (lambda: S.weighted_sampler(torch.tensor([0.0, 0.0]), 5, 0), r"sum to 0"),
        (lambda: S.weighted_sampler(torch.tensor([1.0, -1.0]), 5, 0), r"non-negative"),
        (lambda: S.DistributedWeightedSampler(torch.ones(4), 8, num_replicas=0, rank=0), r"num_replicas=0 must be >= 1"),
        (lambda: S.DistributedWeightedSampler(torch.ones(4), 8, num_replicas=3, rank=3), r"rank=3 must lie in \[0, 2\]"),
        (lambda: S.DistributedWeightedSampler(torch.ones(4), 8, num_replicas=3, rank=-1), r"rank=-1 must lie"),
        (lambda: S.DistributedWeightedSampler(torch.ones(4), 8).set_epoch(-1), r"epoch=-1 must be >= 0"),
        (lambda: S.expected_samples_per_class([0.5, 0.5], -1), r"num_draws=-1 must be >= 0"),
    ],
)
def test_bad_input_raises_helpful_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: S.progressive_probabilities(COUNTS, 1.5, 10), r"epoch must be an integer, got float 1.5"),
        (lambda: S.class_probabilities(COUNTS, "1"), r"r must be a real number, got str"),
        (lambda: S.effective_number(COUNTS, True), r"beta must be a real number, got bool"),
        (lambda: S.class_probabilities("abc", 1.0), r"class_counts must be a 1-D sequence"),
        (lambda: S.make_sampler([0, 1], [1, 1], "q-sample", seed=1.0), r"seed must be an integer"),
    ],
)
def test_wrong_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_errors_are_ltkit_input_errors():
    from ltkit.checks import InputError, LtkitError

    with pytest.raises(InputError):
        S.class_probabilities(COUNTS, -1.0)
    with pytest.raises(LtkitError):
        S.progressive_probabilities(COUNTS, 1.5, 10)


def test_fractional_nominal_counts_are_accepted():
    # nominal class sizes (e.g. an even split n_c / K_c) are valid where the formulas only need n > 0
    np.testing.assert_allclose(S.class_probabilities([46.5, 20, 5], 1.0).numpy(),
                               _normalise(1 / np.array([46.5, 20, 5])), rtol=1e-12)
