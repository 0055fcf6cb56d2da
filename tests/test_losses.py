"""Tests for ltkit.losses: each loss against a closed form written out by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltkit.losses import LOSS_NAMES, drw_weights, effective_number, make_loss

COUNTS = [500, 200, 80, 30, 5]  # long-tailed, class 0 largest
C = len(COUNTS)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    logits = torch.randn(16, C, dtype=torch.float64)
    targets = torch.arange(16) % C  # every class present
    return logits, targets


def log_prior() -> torch.Tensor:
    n = np.array(COUNTS, dtype=np.float64)
    return torch.from_numpy(np.log(n / n.sum()))


def hand_cb_weights(beta: float = 0.9999) -> np.ndarray:
    n = np.array(COUNTS, dtype=np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w / w.sum() * C


def weighted_mean(per_sample: torch.Tensor, w: torch.Tensor, targets: torch.Tensor):
    return (w[targets] * per_sample).sum() / w[targets].sum()


# ----------------------------------------------------------------- every loss
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_runs_forward_and_backward(name):
    torch.manual_seed(0)
    loss = make_loss(name, COUNTS)
    loss.set_epoch(200)  # DRW weights active
    logits = torch.randn(8, C).tanh().requires_grad_()  # cosine-like, fine for LDAM
    targets = torch.randint(0, C, (8,))
    value = loss(logits, targets)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert loss.per_sample(logits, targets).shape == (8,)
    assert loss.needs_cosine_head == name.startswith("ldam")
    assert loss.class_counts.dtype == torch.float32


def test_buffers_follow_dtype_moves(batch):
    logits, targets = batch
    loss = make_loss("ldam-drw", COUNTS, drw_epoch=0).to(torch.float64)
    assert loss.class_counts.dtype == torch.float64 and loss.margins.dtype == torch.float64
    assert loss(logits, targets).dtype == torch.float64


# ---------------------------------------------------------------- CE family
def test_ce_equals_torch_cross_entropy(batch):
    logits, targets = batch
    assert torch.allclose(make_loss("ce", COUNTS)(logits, targets), F.cross_entropy(logits, targets))


def test_weighted_ce_is_weighted_batch_mean(batch):
    logits, targets = batch
    n = np.array(COUNTS, dtype=np.float64)
    w = torch.from_numpy((1 / n) / (1 / n).sum() * C)  # inverse frequency, sum C
    ce = -F.log_softmax(logits, 1)[torch.arange(16), targets]
    expected = (w[targets] * ce).sum() / w[targets].sum()
    loss = make_loss("weighted-ce", COUNTS)
    assert torch.allclose(loss(logits, targets), expected)
    assert torch.allclose(loss.per_sample(logits, targets), w[targets] * ce)
    custom = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    got = make_loss("weighted-ce", COUNTS, weights=custom)(logits, targets)
    assert torch.allclose(got, weighted_mean(ce, custom, targets))


def test_focal_gamma_zero_is_ce(batch):
    logits, targets = batch
    assert torch.allclose(make_loss("focal", COUNTS, gamma=0.0)(logits, targets),
                          F.cross_entropy(logits, targets))


def test_focal_tiny_example_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 3])
    p0 = np.exp(2) / (np.exp(2) + 4)  # softmax prob of the true class, sample 1
    p1 = 1 / 5
    gamma = 2.0
    expected = np.mean([-(1 - p0) ** gamma * np.log(p0), -(1 - p1) ** gamma * np.log(p1)])
    got = make_loss("focal", COUNTS, gamma=gamma)(logits, targets)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_effective_number_and_drw_weights_closed_form():
    n = np.array(COUNTS, dtype=np.float64)
    assert np.allclose(effective_number(torch.tensor(COUNTS), 0.999).numpy(),
                       (1 - 0.999**n) / (1 - 0.999), rtol=1e-5)
    w = drw_weights(COUNTS, 0.9999)
    assert np.allclose(w.numpy(), hand_cb_weights(0.9999), rtol=1e-5)
    assert w.sum().item() == pytest.approx(C, rel=1e-6)
    assert (w[1:] > w[:-1]).all()  # smaller class -> larger weight


@pytest.mark.parametrize("focal_gamma", [0.0, 2.0])
def test_class_balanced_loss(batch, focal_gamma):
    logits, targets = batch
    w = torch.from_numpy(hand_cb_weights(0.999))
    log_p = F.log_softmax(logits, 1)[torch.arange(16), targets]
    per = -((1 - log_p.exp()) ** focal_gamma) * log_p
    got = make_loss("cb", COUNTS, beta=0.999, focal_gamma=focal_gamma)(logits, targets)
    assert torch.allclose(got, weighted_mean(per, w, targets), rtol=1e-5)


# -------------------------------------------------------------------- LDAM
def hand_margins() -> np.ndarray:
    q = np.array(COUNTS, dtype=np.float64) ** -0.25
    return 0.5 * q / q.max()


def test_ldam_margins_by_hand():
    loss = make_loss("ldam", COUNTS)
    assert np.allclose(loss.margins.numpy(), hand_margins(), rtol=1e-6)
    assert loss.margins.max().item() == pytest.approx(0.5)
    assert loss.margins.argmax().item() == int(np.argmin(COUNTS))  # rarest class


def test_ldam_loss_by_hand(batch):
    logits, targets = batch
    cos = logits.tanh()
    onehot = F.one_hot(targets, C).double()
    m_y = torch.from_numpy(hand_margins())[targets][:, None]
    expected = F.cross_entropy(30.0 * (cos - m_y * onehot), targets)
    assert torch.allclose(make_loss("ldam", COUNTS)(cos, targets), expected)


# --------------------------------------------------------------------- DRW
@pytest.mark.parametrize("name", ["ce-drw", "ldam-drw"])
def test_drw_switches_weights_at_drw_epoch(batch, name):
    logits, targets = batch
    cos = logits.tanh()
    loss = make_loss(name, COUNTS, drw_epoch=3)
    if name == "ce-drw":
        per = F.cross_entropy(cos, targets, reduction="none")
    else:
        m_y = torch.from_numpy(hand_margins())[targets][:, None]
        per = F.cross_entropy(30.0 * (cos - m_y * F.one_hot(targets, C)), targets, reduction="none")
    w = torch.from_numpy(hand_cb_weights(0.9999))
    for epoch in (0, 2):
        loss.set_epoch(epoch)
        assert loss.class_weight is None
        assert torch.allclose(loss(cos, targets), per.mean())
    for epoch in (3, 10):
        loss.set_epoch(epoch)
        assert torch.allclose(loss(cos, targets), weighted_mean(per, w, targets), rtol=1e-5)


def test_ce_drw_before_switch_is_exactly_ce(batch):
    logits, targets = batch
    loss = make_loss("ce-drw", COUNTS)  # drw_epoch=160
    loss.set_epoch(159)
    assert torch.equal(loss(logits, targets), F.cross_entropy(logits, targets))


# ---------------------------------------------------------- logit adjustment
def test_balanced_softmax_equals_adjusted_ce_and_la_tau_1(batch):
    logits, targets = batch
    expected = F.cross_entropy(logits + log_prior(), targets)
    bs = make_loss("bs", COUNTS)
    assert torch.allclose(bs(logits, targets), expected)
    assert torch.allclose(make_loss("la", COUNTS, tau=1.0)(logits, targets), expected)
    assert torch.equal(bs.predict_logits(logits), logits)


def test_la_tau(batch):
    logits, targets = batch
    got = make_loss("la", COUNTS, tau=0.5)(logits, targets)
    assert torch.allclose(got, F.cross_entropy(logits + 0.5 * log_prior(), targets))
    assert torch.allclose(make_loss("la", COUNTS, tau=0.0)(logits, targets),
                          F.cross_entropy(logits, targets))


def test_la_posthoc_trains_with_ce_and_shifts_predictions(batch):
    logits, targets = batch
    loss = make_loss("la-posthoc", COUNTS, tau=1.0)
    assert torch.allclose(loss(logits, targets), F.cross_entropy(logits, targets))
    assert torch.allclose(loss.predict_logits(logits), logits - log_prior())
    # head class 0 barely wins on raw logits; the adjustment favours the tail class 4
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.5]])
    assert z.argmax(1).item() == 0
    assert loss.predict_logits(z).argmax(1).item() == 4


# --------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "name, counts, params, match",
    [
        ("xyz", COUNTS, {}, r"unknown loss 'xyz'; choose one of: ce, weighted-ce"),
        ("ce", COUNTS, {"gamma": 2}, r"'ce' got unknown parameter\(s\) gamma.*accepts: none"),
        ("focal", COUNTS, {"tau": 1}, r"unknown parameter\(s\) tau.*accepts: gamma=1.0"),
        ("ce", [], {}, r"at least 2 classes"),
        ("ce", [10], {}, r"at least 2 classes"),
        ("ce", [10, -1, 3], {}, r"class_counts\[1\] = -1 is negative"),
        ("bs", [10, 3, 0], {}, r"class_counts\[2\] is 0 but loss 'bs'"),
        ("ldam", [0, 3], {}, r"class_counts\[0\] is 0"),
        ("weighted-ce", [4, 0], {}, r"class_counts\[1\] is 0.*pass weights="),
        ("cb", COUNTS, {"beta": 1.0}, r"beta must be in \[0, 1\)"),
        ("ce-drw", COUNTS, {"beta": -0.1}, r"beta must be in \[0, 1\)"),
        ("focal", COUNTS, {"gamma": -1.0}, r"gamma must be >= 0"),
        ("cb", COUNTS, {"focal_gamma": -1.0}, r"focal_gamma must be >= 0"),
        ("la", COUNTS, {"tau": -0.5}, r"tau must be >= 0"),
        ("la-posthoc", COUNTS, {"tau": -1.0}, r"tau must be >= 0"),
        ("ldam", COUNTS, {"scale": 0.0}, r"scale must be > 0"),
        ("ce-drw", COUNTS, {"drw_epoch": -1}, r"drw_epoch must be an integer >= 0"),
    ],
)
def test_bad_construction_raises(name, counts, params, match):
    with pytest.raises(ValueError, match=match):
        make_loss(name, counts, **params)


def test_zero_counts_allowed_where_counts_unused():
    logits, targets = torch.zeros(2, 3), torch.tensor([0, 1])
    assert torch.isfinite(make_loss("ce", [5, 0, 2])(logits, targets))
    assert torch.isfinite(make_loss("weighted-ce", [5, 0, 2], weights=[1, 1, 1])(logits, targets))


def test_wrong_number_of_classes_at_call_time():
    loss = make_loss("ce", [10] * 10)
    with pytest.raises(ValueError, match="class_counts has 10 entries but logits have 100 columns: "
                                         "pass the training counts of this data set"):
        loss(torch.randn(4, 100), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits have 100 columns"):
        make_loss("la-posthoc", [10] * 10).predict_logits(torch.randn(4, 100))


@pytest.mark.parametrize(
    "targets, match",
    [
        (torch.tensor([0.3, 0.7]), "integer class indices.*lam \\* loss"),
        (torch.tensor([0, 5]), r"targets must lie in \[0, 4\]"),
        (torch.tensor([0, 1, 2]), "2 rows but targets have 3"),
    ],
)
def test_bad_targets_raise(targets, match):
    with pytest.raises(ValueError, match=match):
        make_loss("ldam", COUNTS)(torch.zeros(2, C), targets)


def test_bad_epoch_raises():
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        make_loss("ce-drw", COUNTS).set_epoch(-1)
