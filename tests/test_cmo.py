"""CMO and its variants (ltkit.methods.cmo), its box against the reference rand_bbox, and the context-digits-lt data set."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ltkit import data, launch, losses, models, train
from ltkit.methods import cmo
from ltkit.context_analysis import group_accuracy_by_background
from ltkit.context_digits import (BACKGROUND_KINDS, contexts_per_class,
                                  load_context_digits_lt)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _context(tensor_data, method: str, rank: int = 0, world: int = 1, **config):
    """A training Context without a training loop: the hooks are called by hand."""
    config = train.preset("digits-lt", method=method, **{"augment": "none", **config})
    counts = tensor_data.class_counts
    channels, size, _ = tensor_data.image_shape
    model = models.make_model("mlp", tensor_data.num_classes, in_channels=channels, image_size=size)
    ctx = train.Context(config, tensor_data, counts, model, losses.make_loss(config.loss, counts), None,
                        torch.device("cpu"), rank, world)
    ctx.train_x, ctx.train_y = tensor_data.x_train, tensor_data.y_train
    method_obj = train.make_method(method, dict(config.method_params))
    method_obj.setup(ctx)
    return ctx, method_obj


def _epoch(ctx, method, epoch):
    """The (method-transformed) batches of one epoch."""
    ctx.epoch = epoch
    method.epoch_start(ctx, epoch)
    return [method.batch(ctx, b) for b in train.tensor_batches(ctx, epoch)]


def _label_coded_data(num_classes=5, per_class=(40, 20, 10, 6, 4), size=8) -> data.TensorData:
    """Every pixel of an image of class k equals 20 k + 10: a pasted pixel names its source class."""
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(per_class)])
    x = (20 * y + 10).to(torch.uint8)[:, None, None, None].expand(-1, 3, size, size).contiguous()
    classes = [str(k) for k in range(num_classes)]
    return data.TensorData("coded", x, y, x[:num_classes], torch.arange(num_classes), classes)


# =========================================================================== box geometry and λ
@pytest.mark.parametrize("lam, center, box", [
    (0.75, (16, 16), cmo.Box(8, 24, 8, 24)),   # side ⌊32·½⌋ = 16, centred
    (0.75, (0, 0), cmo.Box(0, 8, 0, 8)),       # clipped at the corner: a quarter of the box remains
    (0.75, (31, 16), cmo.Box(23, 32, 8, 24)),  # clipped at the bottom
    (0.0, (16, 16), cmo.Box(0, 32, 0, 32)),    # the whole image
    (1.0, (5, 5), cmo.Box(5, 5, 5, 5)),        # an empty box
])
def test_cut_box_by_hand(lam, center, box):
    for rule in cmo.BOX_RULES:  # even sides: both roundings agree
        assert cmo.cut_box(32, 32, lam, center, rule) == box
    assert cmo.box_lambda(box, 32, 32) == 1 - box.area / 1024


def test_odd_sides_by_rule_and_rectangles_use_both_sides():
    # H = 10, W = 20, λ0 = 0.75: sides ⌊10·½⌋ = 5 and ⌊20·½⌋ = 10
    assert cmo.cut_box(10, 20, 0.75, (5, 10), "exact") == cmo.Box(3, 8, 5, 15)
    assert cmo.cut_box(10, 20, 0.75, (5, 10), "reference") == cmo.Box(3, 7, 5, 15)  # 5 ± 2: 4 rows
    assert cmo.cut_box(10, 20, 0.75, (5, 10)) == cmo.Box(3, 7, 5, 15)  # the default
    # side 1 (8·√(1-0.97) = 1.39): the reference's box is empty, the exact one is the centre pixel
    assert cmo.cut_box(8, 8, 0.97, (4, 4), "reference").area == 0
    assert cmo.cut_box(8, 8, 0.97, (4, 4), "exact") == cmo.Box(4, 5, 4, 5)
    with pytest.raises(ValueError, match="unknown box rule 'round'"):
        cmo.cut_box(8, 8, 0.5, (4, 4), "round")


@pytest.mark.parametrize("rule", cmo.BOX_RULES)
def test_lambda_from_the_area_is_never_below_the_drawn_lambda(rule):
    """|B| <= L_h L_w <= (1-λ0) H W with L = ⌊H√(1-λ0)⌋ (exact) or 2⌊L/2⌋ (reference); equal when not clipped."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        box, lam, lam0 = cmo.sample_box(32, 32, 1.0, rng, rule)
        side = int(32 * math.sqrt(1 - lam0))
        side = side if rule == "exact" else 2 * (side // 2)
        assert box.area <= side * side and lam >= lam0 - 1e-12
        if box.top > 0 and box.left > 0 and box.bottom < 32 and box.right < 32:
            assert box.area == side * side


# The reference box, re-derived from naver-ai/cmo, cifar_train.py, rand_bbox (commit
# 46eab7a209f55bde5d55622257f3b53a3bce1887): for an input of size (N, C, H, W) it takes the side
# int(H * sqrt(1 - lam)) along dim 2 (the code calls H "W") and int(W * sqrt(1 - lam)) along dim 3, draws the
# dim-2 centre, then the dim-3 centre, uniformly over the pixels, and spans centre - side // 2 to
# centre + side // 2, each end clipped to [0, size]; the input is indexed [:, :, x1:x2, y1:y2].
def _reference_interval(size, lam, centre):
    half = int(size * np.sqrt(1.0 - lam)) // 2
    return int(np.clip(centre - half, 0, size)), int(np.clip(centre + half, 0, size))


def _reference_box(height, width, lam, row, col):
    (top, bottom), (left, right) = _reference_interval(height, lam, row), _reference_interval(width, lam, col)
    return top, bottom, left, right


@pytest.mark.parametrize("height, width", [(8, 8), (32, 32), (7, 12), (5, 3)])
def test_the_default_box_is_the_reference_rand_bbox(height, width):
    lams = np.concatenate([np.linspace(0, 1, 201), np.random.default_rng(0).random(200)])
    centres = [(row, (7 * row + 3) % width) for row in range(height)] + [((5 * col + 1) % height, col)
                                                                        for col in range(width)]
    for lam in lams:  # every side, every row centre and every column centre
        for row, col in centres:
            box = cmo.cut_box(height, width, float(lam), (row, col))
            assert (box.top, box.bottom, box.left, box.right) == _reference_box(height, width, lam, row, col)


def _box_statistics(size, rule):
    """Mean pasted area (fraction of the image) and empty-box rate for λ0 ~ U(0, 1) on a size x size image, exact.

    The side s = ⌊size √(1-λ0)⌋ is k with probability ((k+1)² - k²)/size² (k < size); given s, the rows and the
    columns of the box are independent (independent centres), each a clipped interval enumerated over its centre.
    """
    area = empty = 0.0
    for side in range(size):
        p = ((side + 1) ** 2 - side ** 2) / size ** 2
        if rule == "reference":
            lengths = [np.subtract(*_reference_interval(size, 1 - (side / size) ** 2, c)[::-1]) for c in range(size)]
        else:
            lengths = [min(max(c - side // 2 + side, 0), size) - min(max(c - side // 2, 0), size) for c in range(size)]
        lengths = np.asarray(lengths, dtype=float)
        area += p * lengths.mean() ** 2 / size ** 2
        empty += p * (1 - np.mean(lengths > 0) ** 2)
    return area, empty


def test_box_areas_and_empty_box_rates_by_rule():
    """The numbers the module docstring quotes, exactly; and the method's sampler draws them."""
    expected = {(8, "reference"): (0.2326, 0.0625), (8, "exact"): (0.2796, 0.015625),
                (32, "reference"): (0.2993, 0.00390625), (32, "exact"): (0.3102, 0.0009765625)}
    for (size, rule), (area, empty) in expected.items():
        got_area, got_empty = _box_statistics(size, rule)
        assert got_area == pytest.approx(area, abs=5e-5) and got_empty == pytest.approx(empty, rel=1e-12)
    rng = np.random.default_rng(7)
    n = 40_000
    for rule in cmo.BOX_RULES:
        boxes = [cmo.sample_box(8, 8, 1.0, rng, rule)[0] for _ in range(n)]
        area = np.mean([b.area for b in boxes]) / 64
        empty = np.mean([b.area == 0 for b in boxes])
        exact_area, exact_empty = _box_statistics(8, rule)
        assert abs(empty - exact_empty) < 4 * math.sqrt(exact_empty * (1 - exact_empty) / n)
        assert abs(area - exact_area) < 0.005


def test_the_methods_use_the_reference_box_by_default():
    """Through the batch hook on 8 x 8 images: the pasted region is rand_bbox's for the drawn λ0 and centre."""
    assert cmo.CMOParams().box == cmo.CutMixParams().box == "reference"
    white = data.TensorData("white", torch.full((64, 1, 8, 8), 255, dtype=torch.uint8), torch.arange(64) % 4,
                            torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4), list("abcd"))
    empty = {}
    for rule in cmo.BOX_RULES:
        ctx, method = _context(white, "cmo", batch_size=8, epochs=3,
                               method_params=dict(prob=1.0, off_first=0, off_last=0, box=rule))
        ctx.epoch = 1
        method.epoch_start(ctx, 1)
        areas = []
        for step in range(400):
            mixed = method.batch(ctx, train.Batch(x=torch.zeros(8, 1, 8, 8), y=torch.arange(8) % 4, step=step))
            rng = ctx.rng("cmo-mix", 1, step)  # the same stream the hook draws the coin, λ0 and centre from
            rng.random()
            lam0 = float(rng.beta(1.0, 1.0))
            row, col = int(rng.integers(8)), int(rng.integers(8))
            if rule == "reference":
                top, bottom, left, right = _reference_box(8, 8, lam0, row, col)
                expected = torch.zeros(8, 8, dtype=torch.bool)
                expected[top:bottom, left:right] = True
                assert torch.equal(mixed.x[0, 0] == 1, expected)
            areas.append(int((mixed.x[0, 0] == 1).sum()))
            assert mixed.lam == pytest.approx(1 - areas[-1] / 64)
        empty[rule] = np.mean(np.asarray(areas) == 0)
    assert empty["reference"] > empty["exact"]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_drawn_lambda_is_beta_alpha_alpha(alpha):
    rng = np.random.default_rng(1)
    lam0 = [cmo.sample_box(16, 16, alpha, rng)[2] for _ in range(3000)]
    assert stats.kstest(lam0, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_every_pixel_inside_the_box_comes_from_the_foreground_and_none_outside():
    """Through the method's batch hook: white foregrounds pasted into black backgrounds."""
    white = data.TensorData("white", torch.full((64, 3, 16, 16), 255, dtype=torch.uint8), torch.arange(64) % 4,
                            torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.arange(4), list("abcd"))
    ctx, method = _context(white, "cmo", batch_size=8, epochs=5,
                           method_params=dict(prob=1.0, off_first=0, off_last=0))
    lams = []
    for epoch in range(5):
        ctx.epoch = epoch
        method.epoch_start(ctx, epoch)
        for step in range(8):
            background = train.Batch(x=torch.zeros(8, 3, 16, 16), y=torch.arange(8) % 4, step=step)
            mixed = method.batch(ctx, background)
            inside = mixed.x == 1
            assert torch.all(inside | (mixed.x == 0))  # only foreground or background pixels
            mask = inside[0, 0]
            assert torch.equal(inside, mask.expand_as(inside))  # one box for the whole batch
            rows, cols = mask.any(1), mask.any(0)
            assert torch.equal(mask, rows[:, None] & cols[None, :])  # the pasted set is a rectangle
            assert mixed.lam == pytest.approx(1 - mask.sum().item() / 256)
            lams.append(mixed.lam)
    assert 0.3 < np.mean(lams) < 0.8 and len(set(lams)) > 10


# =========================================================================== label mixing
def test_mixed_labels_name_the_pasted_images_and_the_loss_is_the_soft_label_loss():
    coded = _label_coded_data()
    ctx, method = _context(coded, "cmo", batch_size=16, epochs=3, method_params=dict(prob=1.0, off_first=0, off_last=0))
    batches = _epoch(ctx, method, 1)
    assert all(b.y2 is not None for b in batches)
    for b in batches:
        value = torch.round(b.x * 255)
        expected_bg = (20 * b.y + 10).float()[:, None, None, None]
        expected_fg = (20 * b.y2 + 10).float()[:, None, None, None]
        inside = (value == expected_fg) & (value != expected_bg)
        outside = value == expected_bg
        assert torch.all(inside | outside)
        if not torch.equal(b.y, b.y2):  # where labels differ, the pasted area is exactly 1 - λ
            differ = b.y != b.y2
            area = inside[differ][:, 0].float().mean((1, 2))
            assert torch.allclose(area, torch.full_like(area, 1 - b.lam))
        torch.manual_seed(0)
        logits = torch.randn(len(b.y), 5)
        soft = cmo.soft_targets(b.y, b.y2, b.lam, 5)
        by_hand = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
        torch.testing.assert_close(ctx.mixed_loss(logits, b), by_hand)


def test_cutmix_pastes_a_permutation_of_its_own_batch():
    coded = _label_coded_data()
    ctx, method = _context(coded, "cutmix", batch_size=16, epochs=3,
                           method_params=dict(prob=1.0, off_first=0, off_last=0))
    for b in _epoch(ctx, method, 0):
        assert sorted(b.y2.tolist()) == sorted(b.y.tolist())


# =========================================================================== the foreground stream
def _closed_form(counts, weighting, r, beta):
    n = np.asarray(counts, dtype=float)
    if weighting == "q-sample":
        p = n * n ** -r  # per-sample weight n^-r, n_k samples in the class
    elif weighting == "q-class":
        p = n ** -r
    elif weighting == "effective-number":
        p = (1 - beta) / (1 - beta ** n)
    else:  # effective-number-sample: per-sample weight 1/E(n), n_k samples in the class
        p = n * (1 - beta) / (1 - beta ** n)
    return p / p.sum()


@pytest.mark.parametrize("weighting, r, beta", [("q-sample", 1.0, 0.999), ("q-sample", 0.5, 0.999),
                                                ("q-class", 1.0, 0.999), ("q-class", 2.0, 0.999),
                                                ("effective-number", 1.0, 0.99),
                                                ("effective-number-sample", 1.0, 0.99)])
def test_foreground_class_frequencies_follow_q(weighting, r, beta):
    digits = data.load_digits_lt()
    counts = digits.class_counts
    expected = _closed_form(counts, weighting, r, beta)
    np.testing.assert_allclose(cmo.foreground_class_probabilities(counts, weighting, r, beta).numpy(), expected)
    ctx, method = _context(digits, "cmo", epochs=40, method_params=dict(
        prob=1.0, off_first=0, off_last=0, weighting=weighting, r=r, beta=beta))
    drawn = torch.cat([b.y2 for epoch in range(0, 40, 2) for b in _epoch(ctx, method, epoch)])
    observed = np.bincount(drawn.numpy(), minlength=10)
    assert stats.chisquare(observed, expected * observed.sum()).pvalue > 1e-3


@pytest.mark.parametrize("variant, background_q, foreground_q", [
    ("cmo-minor", True, True),   # both streams from Q
    ("cmo-back", True, False),   # background from Q, foreground from the original distribution
    ("cmo", False, True),
])
def test_variants_draw_background_and_foreground_from_the_right_distribution(variant, background_q, foreground_q):
    digits = data.load_digits_lt()
    counts = np.asarray(digits.class_counts, dtype=float)
    q, original = np.full(10, 0.1), counts / counts.sum()  # Q = class-balanced (q-sample, r = 1)
    ctx, method = _context(digits, variant, epochs=30, method_params=dict(prob=1.0, off_first=0, off_last=0))
    batches = [b for epoch in range(0, 30, 2) for b in _epoch(ctx, method, epoch)]
    streams = ((torch.cat([b.y for b in batches]), background_q), (torch.cat([b.y2 for b in batches]), foreground_q))
    for labels, from_q in streams:
        observed = np.bincount(labels.numpy(), minlength=10)
        expected = (q if from_q else original) * observed.sum()
        assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("variant", ["cmo", "cmo-minor", "cmo-back"])
def test_two_ranks_mix_exactly_what_one_process_mixes(variant):
    """Every draw is keyed by global position: the ranks' shares interleave into the single-process batch."""
    digits = data.load_digits_lt()
    params = dict(method_params=dict(prob=1.0, off_first=0, off_last=0), augment="crop")
    single, _ = _context(digits, variant, **params)
    ranks = [_context(digits, variant, rank=r, world=2, **params)[0] for r in (0, 1)]
    one = _epoch(single, _setup(single, variant, params), 3)
    two = [_epoch(ctx, _setup(ctx, variant, params), 3) for ctx in ranks]
    for step, whole in enumerate(one):
        parts = [two[r][step] for r in (0, 1)]
        assert all(p.lam == whole.lam for p in parts)
        for field in ("x", "y", "y2"):
            merged = torch.empty_like(getattr(whole, field))
            for r, part in enumerate(parts):
                merged[r::2] = getattr(part, field)
            assert torch.equal(merged, getattr(whole, field))


def _setup(ctx, variant, params):
    method = train.make_method(variant, params["method_params"])
    method.setup(ctx)
    return method


# =========================================================================== off epochs
@pytest.mark.parametrize("epochs, off_first, off_last, on", [
    (200, None, None, range(4, 197)),  # the paper: 3 < epoch < 197
    (30, None, None, range(1, 29)),    # scaled: one epoch off at each end
    (10, 0, 0, range(0, 10)),
    (10, 2, 3, range(2, 7)),
])
def test_mixing_is_off_outside_the_on_epochs(epochs, off_first, off_last, on):
    digits = data.load_digits_lt()
    ctx, method = _context(digits, "cmo", epochs=epochs,
                           method_params=dict(prob=1.0, off_first=off_first, off_last=off_last))
    assert [e for e in range(epochs) if cmo.is_active(e, epochs, off_first, off_last)] == list(on)
    for epoch in sorted({0, 1, on[0], on[-1], epochs - 1, max(0, on[0] - 1), min(epochs - 1, on[-1] + 1)}):
        method.epoch_start(ctx, epoch)
        batch = next(train.tensor_batches(ctx, epoch))
        out = method.batch(ctx, batch)
        assert (out.y2 is not None) == (epoch in on)
        if epoch not in on:
            assert out is batch


# =========================================================================== bad parameters
@pytest.mark.parametrize("method, params, message", [
    ("cmo", dict(alpha=0.0), r"alpha=0.0 must be > 0"),
    ("cutmix", dict(alpha=-1), r"alpha=-1 must be > 0"),
    ("cmo", dict(prob=1.5), r"prob=1.5 must lie in \[0, 1\]"),
    ("cmo-minor", dict(prob=-0.1), r"prob=-0.1 must lie in \[0, 1\]"),
    ("cmo", dict(r=-0.5), r"r=-0.5 must be >= 0"),
    ("cmo", dict(beta=1.0), r"beta=1.0 must lie in \[0, 1\)"),
    ("cmo", dict(weighting="inverse"), r"weighting 'inverse'; choose one of: q-sample"),
    ("cmo", dict(off_first=-1), r"off_first=-1 must be >= 0"),
    ("cmo", dict(lam=0.5), r"unknown parameter\(s\) \['lam'\]"),
    ("cutmix", dict(r=1.0), r"unknown parameter\(s\) \['r'\]"),
    ("cmo", dict(bg_scope="all"), r"unknown parameter\(s\) \['bg_scope'\]"),
    ("cmo-back", dict(bg_scope="some"), r"bg_scope 'some'"),
    ("cmo", dict(alpha=float("nan")), r"alpha=nan must be a finite number"),
    ("cutmix", dict(box="round"), r"box 'round'; choose one of: reference, exact"),
])
def test_bad_parameters_give_clear_errors(method, params, message):
    with pytest.raises(ValueError, match=message):
        train.make_method(method, params)


def test_a_method_that_would_never_be_on_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"would never be on: off_first=3 \+ off_last=2 >= epochs=5"):
        train.fit("digits-lt", epochs=5, method="cmo", method_params=dict(off_first=3, off_last=2),
                  out_dir=str(tmp_path), progress=False)


def test_file_data_sets_are_refused_clearly():
    digits = data.load_digits_lt()
    ctx, _ = _context(digits, "none")
    ctx.train_x = None
    with pytest.raises(ValueError, match="works on tensor data sets"):
        train.make_method("cmo", {}).setup(ctx)


# =========================================================================== through the engine
QUICK = dict(progress=False, method_params=dict(prob=1.0, off_first=0, off_last=0))


class _Crash(Exception):
    pass


def test_resume_after_a_crash_replays_the_method_exactly(tmp_path, monkeypatch):
    common = dict(QUICK, epochs=4, method="cmo", out_dir=str(tmp_path))  # crop augmentation on: the foreground too
    whole = train.fit("digits-lt", name="whole", **common)
    original = cmo.CMO.epoch_end

    def crash_at_epoch_2(self, ctx, epoch):
        if epoch == 2:
            raise _Crash
        original(self, ctx, epoch)

    monkeypatch.setattr(cmo.CMO, "epoch_end", crash_at_epoch_2)
    with pytest.raises(_Crash):
        train.fit("digits-lt", name="crashed", **common)
    monkeypatch.setattr(cmo.CMO, "epoch_end", original)
    resumed = train.fit("digits-lt", name="crashed", if_exists="resume", **common)
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    a = torch.load(Path(whole["dir"]) / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(Path(resumed["dir"]) / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_trains_the_same_weights_as_one_process(tmp_path, monkeypatch):
    """The foreground draw is sharded like the background: the global batch pairs are those of one process,
    and the box is the same on both ranks; with an MLP (no batch norm) the weights agree."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = dict(QUICK, model="mlp", augment="none", epochs=3, imbalance_factor=14, method="cmo",
                  out_dir=str(tmp_path))
    single = launch.run("digits-lt", name="single", **common)
    ddp = launch.run("digits-lt", nproc=2, name="ddp", **common)
    assert ddp["result"]["world_size"] == 2
    for a, b in zip(single["history"], ddp["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    a = torch.load(Path(single["dir"]) / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(Path(ddp["dir"]) / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


# =========================================================================== context-digits-lt
def test_context_digits_is_deterministic_and_the_test_set_does_not_depend_on_the_seed():
    a, b, c = load_context_digits_lt(seed=0), load_context_digits_lt(seed=0), load_context_digits_lt(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test) and a.info == b.info
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_test, c.x_test)
    a.x_train[0] = 0  # the cache hands out fresh tensors
    assert not torch.equal(a.x_train, load_context_digits_lt(seed=0).x_train)


def test_context_digits_has_the_advertised_context_structure():
    cd = data.load_dataset("context-digits-lt")
    digits = data.load_digits_lt()
    info, K = cd.info, cd.info["num_backgrounds"]
    assert cd.name == "context-digits-lt" and cd.classes == [str(k) for k in range(10)]
    assert cd.x_train.dtype == torch.uint8 and cd.image_shape == (3, 8, 8)
    assert cd.class_counts == digits.class_counts
    train_bg, test_bg = np.asarray(info["train_backgrounds"]), np.asarray(info["test_backgrounds"])
    y_train, y_test = cd.y_train.numpy(), cd.y_test.numpy()
    m = [len(set(train_bg[y_train == k])) for k in range(10)]
    assert m == contexts_per_class(digits.class_counts, K) == [len(c) for c in info["contexts"]]
    for k in range(10):
        assert sorted(set(train_bg[y_train == k])) == info["contexts"][k]
        # a class's images are spread evenly over its contexts
        per_kind = np.bincount(train_bg[y_train == k], minlength=K)[info["contexts"][k]]
        assert per_kind.max() - per_kind.min() <= 1
    groups = np.asarray(["many" if n > 100 else "few" if n < 20 else "medium" for n in digits.class_counts])
    assert all(m[k] == K for k in np.flatnonzero(groups == "many"))
    assert all(m[k] <= 2 for k in np.flatnonzero(groups == "few"))
    assert m == sorted(m, reverse=True)
    # the balanced test set: every class on every background, 30 images per group
    table = np.zeros((10, K), dtype=int)
    np.add.at(table, (y_test, test_bg), 1)
    assert (table == 30).all()


def test_context_digits_images_are_the_glyphs_on_backgrounds_of_the_stated_kind():
    cd, digits = load_context_digits_lt(), data.load_digits_lt()
    glyph = digits.x_test[np.asarray(cd.info["test_glyph"])][:, 0].float() / 255  # alpha of each test image
    x = cd.x_test.float() / 255
    ink, empty = glyph[:, None].expand_as(x) >= 1, glyph[:, None].expand_as(x) == 0
    assert x[ink].min() >= 0.6 and x[empty].max() <= 0.6  # light glyphs on dark backgrounds
    # the background kind is visible: a linear classifier trained on the training images predicts it on the test set
    from sklearn.linear_model import LogisticRegression

    features = lambda t: t.float().reshape(len(t), -1).numpy() / 255  # noqa: E731
    clf = LogisticRegression(max_iter=2000).fit(features(cd.x_train), cd.info["train_backgrounds"])
    assert clf.score(features(cd.x_test), cd.info["test_backgrounds"]) > 0.9


def test_bad_context_digits_parameters():
    with pytest.raises(ValueError, match="image_size=4 must be >= 8"):
        load_context_digits_lt(image_size=4)
    with pytest.raises(ValueError, match=f"num_backgrounds=1 must lie in \\[2, {len(BACKGROUND_KINDS)}\\]"):
        load_context_digits_lt(num_backgrounds=1)
    with pytest.raises(ValueError, match=r"contrast=2 must lie in \[0, 1\]"):
        load_context_digits_lt(contrast=2)


class _AlwaysZero(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float() + 0 * self.w


def test_group_accuracy_by_background_by_hand():
    cd = load_context_digits_lt()
    g = group_accuracy_by_background(_AlwaysZero(), cd)
    matrix, seen = np.asarray(g["matrix"]), np.asarray(g["seen"])
    assert (matrix[0] == 1).all() and (matrix[1:] == 0).all() and g["worst_group"] == 0
    assert g["seen_context"] == pytest.approx(seen[0].sum() / seen.sum())  # class 0 is seen on every kind
    assert g["unseen_context"] == 0 and g["few_unseen"] == 0


def test_group_accuracy_of_a_trained_run_agrees_with_the_engine(tmp_path):
    record = train.fit("context-digits-lt", epochs=2, out_dir=str(tmp_path), progress=False)
    g = group_accuracy_by_background(record)
    # equal group sizes (30 images): the mean over groups is the overall accuracy the engine computed
    assert np.mean(g["matrix"]) == pytest.approx(record["result"]["overall"])
    assert g["worst_group"] <= record["result"]["worst"]
