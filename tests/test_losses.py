"""Tests for ltkit.losses: each loss against a closed form written out by hand.

The re-weighted losses are also checked against independent float64 re-derivations of
the released code's formulas (values *and* gradients, on random and on saturated
logits); each reference cites the repository, path and commit it was read from.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltkit.checks import InputError, InputTypeError
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
def test_cb_reweight_is_the_former_cb(batch, focal_gamma):
    # what ltkit called "cb" before: the sum of the batch's weights as the divisor
    logits, targets = batch
    w = torch.from_numpy(hand_cb_weights(0.999))
    log_p = F.log_softmax(logits, 1)[torch.arange(16), targets]
    per = -((1 - log_p.exp()) ** focal_gamma) * log_p
    got = make_loss("cb-reweight", COUNTS, beta=0.999, focal_gamma=focal_gamma)(logits, targets)
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
        ("cb", COUNTS, {"focal_gamma": 2.0}, r"unknown parameter\(s\) focal_gamma.*former 'cb'.*is 'cb-reweight'"),
        ("cb", COUNTS, {"loss_type": "softmx"}, r"unknown loss_type 'softmx'; choose one of: softmax, sigmoid, focal"),
        ("ce", [], {}, r"at least 2 classes"),
        ("ce", [10], {}, r"at least 2 classes"),
        ("ce", [10, -1, 3], {}, r"class_counts\[1\]=-1.0 must be a non-negative whole number"),
        ("ce", [0, 0], {}, r"class_counts sums to 0"),
        ("bs", [10, 3, 0], {}, r"class_counts\[2\] is 0 but loss 'bs'.*or use 'ce' / 'focal'"),
        ("ldam", [0, 3], {}, r"class_counts\[0\] is 0"),
        ("weighted-ce", [4, 0], {}, r"class_counts\[1\] is 0.*pass weights="),
        ("weighted-ce", [4, 2], {"weights": [1.0, -1.0]}, r"weights must be finite, >= 0"),
        ("cb", COUNTS, {"beta": 1.0}, r"beta=1.0 must lie in \[0, 1\) \(typical: 0.999 or 0.9999\)"),
        ("cb-reweight", COUNTS, {"beta": 1.0}, r"beta=1.0 must lie in \[0, 1\)"),
        ("ce-drw", COUNTS, {"beta": -0.1}, r"beta=-0.1 must lie in \[0, 1\)"),
        ("focal", COUNTS, {"gamma": -1.0}, r"gamma=-1.0 must be >= 0 \(gamma=0 is plain CE\)"),
        ("cb", COUNTS, {"gamma": -1.0}, r"gamma=-1.0 must be >= 0"),
        ("focal-drw", COUNTS, {"gamma": float("nan")}, r"gamma=nan must be a finite number"),
        ("cb-reweight", COUNTS, {"focal_gamma": -1.0}, r"focal_gamma=-1.0 must be >= 0"),
        ("la", COUNTS, {"tau": -0.5}, r"tau=-0.5 must be >= 0"),
        ("la-posthoc", COUNTS, {"tau": -1.0}, r"tau=-1.0 must be >= 0"),
        ("ldam", COUNTS, {"scale": 0.0}, r"scale=0.0 must be > 0 \(LDAM uses s=30"),
        ("ce-drw", COUNTS, {"drw_epoch": -1}, r"drw_epoch=-1 must be >= 0"),
        ("focal-drw", COUNTS, {"drw_epoch": -1}, r"drw_epoch=-1 must be >= 0"),
    ],
)
def test_bad_construction_raises(name, counts, params, match):
    with pytest.raises(InputError, match=match):
        make_loss(name, counts, **params)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("cb", {"beta": "0.9"}, r"beta must be a real number, got str"),
        ("focal", {"gamma": True}, r"gamma must be a real number, got bool"),
        ("ce-drw", {"drw_epoch": 1.5}, r"drw_epoch must be an integer, got float 1.5"),
    ],
)
def test_wrong_parameter_types_raise_type_error(name, params, match):
    with pytest.raises(InputTypeError, match=match):
        make_loss(name, COUNTS, **params)


def test_fractional_nominal_counts_are_accepted():
    # CWS builds its sub-class loss over nominal sizes n_c / K_c
    loss = make_loss("ldam-drw", [46.5, 20, 5], drw_epoch=0)
    assert torch.isfinite(loss(torch.zeros(2, 3), torch.tensor([0, 2])))
    with pytest.raises(InputError, match=r"class_counts\[2\] is 0 but loss 'bs'"):
        make_loss("bs", [10.5, 3, 0])


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
    with pytest.raises(InputError, match="epoch=-1 must be >= 0"):
        make_loss("ce-drw", COUNTS).set_epoch(-1)


# =========================================================================== #
# Against the released code, re-derived here in float64 (values and gradients)
# =========================================================================== #
# Sources read (formulas re-written here, not copied):
#   CUI = richardaecn/class-balanced-loss @ 302f8afe16e5f7430e9a4e705b65b3c0d4ee0bd1, src/cifar_main.py
#         (main(): the class weights; _tower_fn(): the softmax / sigmoid branches; focal_loss())
#   LDAM = kaidic/LDAM-DRW @ 3193f05c1e6e8c4798c5419e97c5a479d991e3e9, losses.py (FocalLoss, LDAMLoss)
#          and @ 65e2597cb35ed4ea2849840e0cb605dbfe7f4cc4, cifar_train.py (Reweight / DRW weights)
F64 = torch.float64
B = 32


def _lse(z: torch.Tensor) -> torch.Tensor:
    """log sum_j exp z_j, row-wise, with the max shift."""
    m = z.max(dim=1, keepdim=True).values
    return (m + (z - m).exp().sum(dim=1, keepdim=True).log()).squeeze(1)


def _ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _lse(z) - z[torch.arange(len(y)), y]


def ref_class_weights(counts, beta: float) -> torch.Tensor:
    # CUI main() and LDAM cifar_train.py alike: (1 - beta) / (1 - beta^n), normalised to sum to C
    n = torch.tensor(counts, dtype=F64)
    w = (1.0 - beta) / (1.0 - beta**n)
    return w / w.sum() * len(counts)


def ref_cui(z, y, counts, beta, loss_type, gamma):
    """CUI _tower_fn: every sample weighted by w_{y_i}; the sum divided by the number of samples."""
    wy = ref_class_weights(counts, beta)[y]
    if loss_type == "softmax":
        # tf.losses.softmax_cross_entropy(onehot, z, weights=w_y): default reduction
        # SUM_BY_NONZERO_WEIGHTS = sum_i w_i l_i / #{i: w_i != 0}
        return (wy * _ce(z, y)).sum() / (wy != 0).sum()
    labels = F.one_hot(y, z.shape[1]).to(F64)
    # tf.nn.sigmoid_cross_entropy_with_logits as documented: max(x, 0) - x z + log(1 + exp(-|x|))
    bce = z.clamp_min(0) - z * labels + torch.log1p(torch.exp(-z.abs()))
    if loss_type == "sigmoid" or gamma == 0.0:
        modulator = torch.ones_like(bce)
    else:  # focal_loss(): their "numerically stable" modulator
        modulator = torch.exp(-gamma * labels * z - gamma * torch.log1p(torch.exp(-z)))
    # sum over samples and classes, "normalize by the total number of positive samples"
    return (wy[:, None] * modulator * bce).sum() / labels.sum()


def ref_weighted_ce(z, y, w):
    """F.cross_entropy(weight=w) as LDAM-DRW calls it: sum_i w_{y_i} l_i / sum_i w_{y_i}."""
    return (w[y] * _ce(z, y)).sum() / w[y].sum()


def ref_ldam(z, y, counts, w, s=30.0, max_m=0.5):
    """LDAM LDAMLoss: m = n^-1/4 scaled to max_m, subtracted from the true logit, times s."""
    n = torch.tensor(counts, dtype=F64)
    m = 1.0 / torch.sqrt(torch.sqrt(n))
    m = m * (max_m / m.max())
    z_m = z - F.one_hot(y, z.shape[1]).to(F64) * m[y][:, None]
    return ref_weighted_ce(s * z_m, y, w)


def ref_ldam_focal(z, y, w, gamma):
    """LDAM FocalLoss(weight=w): x = w_y CE (reduction='none'), p = exp(-x), mean of (1 - p)^gamma x."""
    x = w[y] * _ce(z, y)
    p = torch.exp(-x)
    return ((1 - p) ** gamma * x).mean()


def _targets() -> torch.Tensor:
    return torch.arange(B) % C  # every class present, head and tail


def _logits(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    y = _targets()
    if kind == "random":
        return 3.0 * torch.randn(B, C, generator=g, dtype=F64)
    if kind == "saturated":  # half confidently right, half confidently wrong, |z| up to 45
        z = 2.0 * torch.randn(B, C, generator=g, dtype=F64)
        right = torch.arange(B) % 2 == 0
        z[torch.arange(B), y] = torch.where(right, 40.0, -45.0).to(F64)
        z[~right, (y[~right] + 1) % C] = 42.0
        return z
    if kind == "cosine":  # LDAM's cosine logits, in [-1, 1]
        return torch.tanh(torch.randn(B, C, generator=g, dtype=F64))
    if kind == "cosine-saturated":  # cos = +-1: logits +-30 after scaling
        z = -torch.ones(B, C, dtype=F64)
        right = torch.arange(B) % 2 == 0
        z[right, y[right]] = 1.0
        z[~right, (y[~right] + 1) % C] = 1.0
        return z
    raise AssertionError(kind)


def _value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_()
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


def assert_matches_reference(loss, reference, z, y, rtol=1e-10, atol=1e-12):
    got, got_grad = _value_and_grad(lambda t: loss(t, y), z)
    want, want_grad = _value_and_grad(lambda t: reference(t, y), z)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)


@pytest.fixture
def float64_default():
    """Build the losses' buffers (weights, margins) in float64 for the tight comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


# ------------------------------------------------------------------------- cb = Cui et al.
@pytest.mark.parametrize("kind", ["random", "saturated"])
@pytest.mark.parametrize("beta", [0.999, 0.9999])
@pytest.mark.parametrize("loss_type, gamma", [("softmax", 1.0), ("sigmoid", 1.0), ("focal", 0.5),
                                              ("focal", 1.0), ("focal", 2.0), ("focal", 0.0)])
def test_cb_matches_cui_released_code(float64_default, kind, beta, loss_type, gamma):
    y = _targets()
    loss = make_loss("cb", COUNTS, beta=beta, loss_type=loss_type, gamma=gamma)
    assert_matches_reference(loss, lambda z, t: ref_cui(z, t, COUNTS, beta, loss_type, gamma), _logits(kind), y)


@pytest.mark.parametrize("loss_type", ["softmax", "sigmoid", "focal"])
def test_cb_in_float32_is_close_to_the_float64_reference(loss_type):
    y = _targets()
    for kind in ("random", "saturated"):
        z = _logits(kind)
        loss = make_loss("cb", COUNTS, loss_type=loss_type, gamma=2.0)  # float32 buffers
        got, got_grad = _value_and_grad(lambda t: loss(t, y), z.float())
        want, want_grad = _value_and_grad(lambda t: ref_cui(t, y, COUNTS, 0.9999, loss_type, 2.0), z)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)


def test_cb_focal_departure_stays_exact_where_the_released_modulator_overflows():
    # A true-class logit of -100 in float32: exp(100) overflows, and the released modulator
    # exp(-g y z - g log1p(exp(-z))) becomes exp(-inf) = 0, i.e. no loss and no gradient for the
    # worst-classified sample. ltkit's form exp(g logsigmoid(-s z)) gives the exact value.
    y = torch.tensor([0, 1])
    z = torch.tensor([[-100.0, 0.5, -1.0, 0.2, -0.3], [0.4, 3.0, -0.5, 1.0, -2.0]])  # no exact 0:
    # the reference's max(x, 0) and |x| have one-sided derivatives there
    labels = F.one_hot(y, C).float()
    released_f32 = torch.exp(-1.0 * labels * z - 1.0 * torch.log1p(torch.exp(-z)))
    assert released_f32[0, 0] == 0.0  # the overflow
    got, got_grad = _value_and_grad(lambda t: make_loss("cb", COUNTS, loss_type="focal")(t, y), z)
    want, want_grad = _value_and_grad(lambda t: ref_cui(t, y, COUNTS, 0.9999, "focal", 1.0), z.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    # the released form in float32 loses sample 0's true-class term, about 100 * w_0 / 2
    w = ref_class_weights(COUNTS, 0.9999).float()
    bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
    released_value = (w[y][:, None] * released_f32 * bce).sum() / 2
    assert (want - released_value).item() == pytest.approx(100 * w[0].item() / 2, rel=1e-3)


def test_cb_divides_by_samples_cb_reweight_by_weights(batch):
    # The gradient ratio cb-reweight / cb is N / sum_i w_{y_i} for every batch, exactly.
    logits, targets = batch
    w = torch.from_numpy(hand_cb_weights(0.9999))
    cb, reweight = make_loss("cb", COUNTS), make_loss("cb-reweight", COUNTS)
    z = logits.clone().requires_grad_()
    (g_cb,) = torch.autograd.grad(cb(z, targets), z)
    (g_rw,) = torch.autograd.grad(reweight(z, targets), z)
    ratio = len(targets) / w[targets].sum()
    torch.testing.assert_close(g_rw, g_cb * ratio, rtol=1e-6, atol=1e-12)
    # beta = 0: every weight is 1 and both are plain CE
    torch.testing.assert_close(make_loss("cb", COUNTS, beta=0.0)(logits, targets), F.cross_entropy(logits, targets))


def test_cb_predicts_with_the_plain_logits(batch):
    logits, _ = batch
    for loss_type in ("softmax", "sigmoid", "focal"):
        assert torch.equal(make_loss("cb", COUNTS, loss_type=loss_type).predict_logits(logits), logits)


# ------------------------------------------------------------------- LDAM-DRW conventions
# not (saturated, gamma < 1): there the released (1 - p)^gamma has an infinite derivative at p = 1
@pytest.mark.parametrize("kind, gamma", [("random", 0.5), ("random", 1.0), ("random", 2.0),
                                         ("saturated", 1.0), ("saturated", 2.0)])
def test_focal_drw_matches_ldam_drw_focal(float64_default, kind, gamma):
    y, z = _targets(), _logits(kind)
    w = ref_class_weights(COUNTS, 0.9999)
    loss = make_loss("focal-drw", COUNTS, gamma=gamma, drw_epoch=3)
    loss.set_epoch(2)  # before DRW: their weights are all 1 (beta = 0)
    ones = torch.ones(C, dtype=F64)
    assert_matches_reference(loss, lambda t, yy: ref_ldam_focal(t, yy, ones, gamma), z, y)
    assert_matches_reference(make_loss("focal", COUNTS, gamma=gamma), lambda t, yy: ref_ldam_focal(t, yy, ones, gamma), z, y)
    loss.set_epoch(3)
    assert_matches_reference(loss, lambda t, yy: ref_ldam_focal(t, yy, w, gamma), z, y)


def test_focal_drw_is_not_a_weighted_mean_of_focal(batch):
    logits, targets = batch
    loss = make_loss("focal-drw", COUNTS, drw_epoch=0)
    w = torch.from_numpy(hand_cb_weights(0.9999))
    focal = make_loss("focal", COUNTS).per_sample(logits, targets)
    assert not torch.allclose(loss(logits, targets), weighted_mean(focal, w, targets), rtol=1e-3)


@pytest.mark.parametrize("kind", ["random", "saturated"])
@pytest.mark.parametrize("name", ["ce-drw", "cb-reweight", "weighted-ce"])
def test_weighted_ce_family_matches_f_cross_entropy_with_weight(float64_default, kind, name):
    y, z = _targets(), _logits(kind)
    if name == "weighted-ce":
        n = torch.tensor(COUNTS, dtype=F64)
        w = (1 / n) / (1 / n).sum() * C
        loss = make_loss(name, COUNTS)
    else:
        w = ref_class_weights(COUNTS, 0.9999)
        loss = make_loss(name, COUNTS, **({"drw_epoch": 0} if name == "ce-drw" else {}))
    assert_matches_reference(loss, lambda t, yy: ref_weighted_ce(t, yy, w), z, y)
    # and against torch's own weighted cross-entropy
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y, weight=w), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["cosine", "cosine-saturated"])
def test_ldam_drw_matches_ldam_drw_released_code(float64_default, kind):
    y, z = _targets(), _logits(kind)
    loss = make_loss("ldam-drw", COUNTS, drw_epoch=160)
    loss.set_epoch(159)
    ones = torch.ones(C, dtype=F64)
    assert_matches_reference(loss, lambda t, yy: ref_ldam(t, yy, COUNTS, ones), z, y)
    loss.set_epoch(160)
    w = ref_class_weights(COUNTS, 0.9999)
    assert_matches_reference(loss, lambda t, yy: ref_ldam(t, yy, COUNTS, w), z, y)


# ------------------------------------------------------------------------ reduction parts
DENOMINATOR = {  # what each loss divides by once its weights are on
    "ce": "samples", "weighted-ce": "weights", "focal": "samples", "cb": "samples",
    "cb-reweight": "weights", "ldam": "samples", "ce-drw": "weights", "focal-drw": "samples",
    "ldam-drw": "weights", "bs": "samples", "la": "samples", "la-posthoc": "samples",
}


def test_denominator_table_covers_every_loss():
    assert set(DENOMINATOR) == set(LOSS_NAMES)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_reduction_parts_give_forward_and_name_the_denominator(name):
    torch.manual_seed(0)
    loss = make_loss(name, COUNTS)
    loss.set_epoch(200)  # past the DRW start (160)
    z = torch.randn(B, C).tanh().requires_grad_()
    y = _targets()
    num, den = loss.reduction_parts(z, y)
    assert num.dim() == 0 and den.dim() == 0 and den.dtype == num.dtype
    assert num.requires_grad and not den.requires_grad
    assert torch.equal(loss(z, y), num / den)
    torch.testing.assert_close(num, loss.per_sample(z, y).sum())
    if DENOMINATOR[name] == "samples":
        assert den.item() == B
    else:
        assert den.item() == pytest.approx(loss.class_weight[y].sum().item(), rel=1e-6)
        assert den.item() != pytest.approx(B, rel=1e-3)


@pytest.mark.parametrize("name", ["ce-drw", "focal-drw", "ldam-drw"])
def test_drw_denominator_is_the_sample_count_before_the_switch(name):
    loss = make_loss(name, COUNTS)
    loss.set_epoch(159)
    _, den = loss.reduction_parts(torch.zeros(B, C), _targets())
    assert den.item() == B


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_sharded_reduction_parts_give_the_global_batch_loss_and_gradient(float64_default, name):
    """What a DDP engine does: all-reduce the denominators, back-propagate R * num_r / sum_r den_r.

    In float64 (buffers too) to test the algebra; in float32 the sums differ in rounding (~1e-7).
    """
    torch.manual_seed(1)
    loss = make_loss(name, COUNTS)
    loss.set_epoch(200)
    y = torch.randint(0, C, (B,))
    z = torch.randn(B, C, dtype=F64).tanh()
    full, full_grad = _value_and_grad(lambda t: loss(t, y), z)
    R = 4
    shards = [torch.arange(r, B, R) for r in range(R)]  # positions r, r + R, ... as the engine shards
    parts = [loss.reduction_parts(z[s], y[s]) for s in shards]
    global_den = sum(den for _, den in parts)
    torch.testing.assert_close(sum(num for num, _ in parts) / global_den, full, rtol=1e-12, atol=0)
    grad = torch.zeros_like(z)
    for s in shards:
        zr = z[s].clone().requires_grad_()
        num, _ = loss.reduction_parts(zr, y[s])
        (g,) = torch.autograd.grad(R * num / global_den, zr)
        grad[s] = g / R  # DDP averages the ranks' gradients
    torch.testing.assert_close(grad, full_grad, rtol=1e-10, atol=1e-14)
    if DENOMINATOR[name] == "weights":  # dividing each shard by its own weights is a different objective
        naive = sum(num / den for num, den in parts) / R
        assert not torch.allclose(naive, full, rtol=1e-3)


def test_unweighted_forward_is_bitwise_the_old_batch_mean():
    # forward is numerator / denominator now; on the CPU that is bit-identical to the old .mean()
    torch.manual_seed(3)
    for n in (1, 7, 64, 128, 1000):
        z, y = torch.randn(n, C), torch.randint(0, C, (n,))
        assert torch.equal(make_loss("ce", COUNTS)(z, y), F.cross_entropy(z, y, reduction="none").mean())


@pytest.mark.parametrize("loss_type", ["sigmoid", "focal"])  # softmax: F.cross_entropy, as every CE loss
def test_cb_on_bfloat16_logits_computes_in_float32(loss_type):
    y = _targets()
    z = _logits("random").float()
    loss = make_loss("cb", COUNTS, loss_type=loss_type)
    got = loss(z.bfloat16(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, loss(z.bfloat16().float(), y), rtol=1e-6, atol=1e-6)
