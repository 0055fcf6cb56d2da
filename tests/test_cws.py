"""Classwise splitting: sub-class counts, prototypes, pseudo-labels, group mapping, the engine, DDP."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltkit import launch, losses, train
from ltkit.methods import cws

DIGITS = [140, 103, 76, 56, 42, 31, 23, 17, 12, 9]
QUICK = dict(epochs=3, progress=False, method_params={"start_epoch": 1})


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _state(run_dir) -> dict:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["model"]


# --------------------------------------------------------------------------- sub-class counts
def test_subclass_counts_from_class_sizes():
    # digits-lt, n_ref = median = 36.5: 140/36.5 = 3.8 -> 4, 103/36.5 = 2.8 -> 3, 76 -> 2.1 -> 2,
    # 56 -> 1.5 -> 2 (half up), 42 -> 1.2 -> 1
    assert cws.subclass_counts(DIGITS) == [4, 3, 2, 2, 1, 1, 1, 1, 1, 1]
    # n_ref = 10: 10 -> capped at 4; 2.5 rounds half up to 3; 1.4 -> 1; 0.5 -> 1 (never below one)
    assert cws.subclass_counts([100, 25, 14, 5], n_ref=10) == [4, 3, 1, 1]
    assert cws.subclass_counts([100, 25, 14, 5], n_ref=10, max_splits=1) == [1, 1, 1, 1]
    assert cws.subclass_counts([3, 1], n_ref=0.5, max_splits=10) == [3, 1]  # never more sub-classes than images
    assert cws.subclass_counts(DIGITS, n_ref="min", max_splits=8) == [8, 8, 8, 6, 5, 3, 3, 2, 1, 1]
    assert cws.subclass_counts(DIGITS, n_ref="mean") == [3, 2, 1, 1, 1, 1, 1, 1, 1, 1]  # mean = 50.9


def test_splitting_lowers_the_imbalance_factor():
    sizes = cws.split_sizes(DIGITS, cws.subclass_counts(DIGITS))
    assert len(sizes) == 17 and sum(sizes) == pytest.approx(sum(DIGITS))
    assert sizes[:4] == [35.0] * 4 and max(sizes) == 42 and min(sizes) == 9
    assert max(DIGITS) / min(DIGITS) == pytest.approx(15.56, abs=0.01)
    assert max(sizes) / min(sizes) == pytest.approx(4.67, abs=0.01)


# --------------------------------------------------------------------------- prototypes
def test_prototype_ema_matches_a_hand_computation():
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    f = torch.tensor([[2.0, 0.0], [4.0, 2.0], [3.0, 3.0]])
    j = torch.tensor([0, 0, 1])  # prototype 2 gets no sample
    new = cws.ema_update(mu, f, j, momentum=0.75)
    # mu_0: 0.75*(0,0) + 0.25*mean((2,0),(4,2)) = 0.25*(3,1);  mu_1: 0.75*(1,1) + 0.25*(3,3);  mu_2 unchanged
    expected = torch.tensor([[0.75, 0.25], [1.5, 1.5], [5.0, 5.0]])
    torch.testing.assert_close(new, expected)
    torch.testing.assert_close(cws.ema_update(mu, f, j, momentum=0.0)[:2], torch.tensor([[3.0, 1.0], [3.0, 3.0]]))


def test_ema_of_all_reduced_statistics_equals_the_global_batch():
    """Two ranks holding halves of a batch, sums and counts all-reduced == one process with the whole batch."""
    torch.manual_seed(0)
    mu, f, j = torch.randn(5, 3), torch.randn(40, 3), torch.randint(0, 5, (40,))
    whole = cws.ema_update(mu, f, j, 0.9)
    halves = []
    for part in (slice(0, 20), slice(20, 40)):
        other = slice(20, 40) if part.start == 0 else slice(0, 20)

        def reduce(stats, other=other):  # what all_reduce_sum returns on this rank: its stats + the other's
            partner = torch.zeros_like(stats).index_add_(0, j[other], torch.cat([f[other], torch.ones(20, 1)], 1))
            return stats + partner

        halves.append(cws.ema_update(mu, f[part], j[part], 0.9, reduce=reduce))
    torch.testing.assert_close(halves[0], whole)
    torch.testing.assert_close(halves[1], whole)


def test_pseudo_labels_never_cross_classes():
    torch.manual_seed(0)
    sub_to_class = torch.tensor([0, 0, 0, 1, 2, 2])
    prototypes = torch.randn(6, 4)
    y = torch.randint(0, 3, (200,))
    f = torch.randn(200, 4) * 3
    labels = cws.pseudo_labels(f, y, prototypes, sub_to_class)
    assert torch.equal(sub_to_class[labels], y)
    globally_nearest = torch.cdist(f, prototypes).argmin(1)
    assert (sub_to_class[globally_nearest] != y).sum() > 50  # the global nearest often *is* another class's
    for i in range(200):  # brute force: the nearest among the own class's prototypes
        own = (sub_to_class == y[i]).nonzero().flatten()
        assert labels[i] == own[torch.linalg.norm(prototypes[own] - f[i], dim=1).argmin()]


def test_kmeans_finds_the_same_partition_as_scikit_learn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], dtype=np.float32)
    x = np.concatenate([c + rng.normal(size=(30, 2)).astype(np.float32) for c in centres])
    ours, labels = cws.kmeans(torch.from_numpy(x), 4, generator=torch.Generator().manual_seed(1))
    theirs = KMeans(4, n_init=10, random_state=0).fit(x)
    pairs = set(zip(labels.tolist(), theirs.labels_.tolist()))
    assert len(pairs) == 4  # the same partition up to a renaming of the clusters
    inertia = float(((torch.from_numpy(x) - ours[labels]) ** 2).sum())
    assert inertia == pytest.approx(theirs.inertia_, rel=1e-4)


def test_classwise_kmeans_keeps_every_cluster_inside_its_class():
    torch.manual_seed(0)
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    f = torch.randn(45, 3)
    prototypes, assigned = cws.classwise_kmeans(f, y, [3, 2, 1])
    sub_to_class = torch.tensor([0, 0, 0, 1, 1, 2])
    assert prototypes.shape == (6, 3) and torch.equal(sub_to_class[assigned], y)
    torch.testing.assert_close(prototypes[5], f[y == 2].mean(0))  # one sub-class = the class mean
    for j in range(6):  # each prototype is the mean of its cluster (Lloyd's fixed point)
        torch.testing.assert_close(prototypes[j], f[assigned == j].mean(0))


# --------------------------------------------------------------------------- group mapping
def _map(s, counts, mapping, scale=1.0):
    index, mask = cws.group_index(counts)
    return cws.group_map(s, index, mask, mapping, scale)


def test_group_mapping_with_one_subclass_per_class_is_the_identity():
    torch.manual_seed(0)
    s = torch.randn(8, 5)
    for mapping in ("logsumexp", "logmeanexp"):
        torch.testing.assert_close(_map(s, [1] * 5, mapping), s)
    assert torch.equal(_map(s, [1] * 5, "prob-sum").argmax(1), s.argmax(1))
    # mixed: class 1 has one sub-class (column 2) -> its class logit is that sub-logit, untouched
    z = _map(s, [2, 1, 2], "logsumexp")
    torch.testing.assert_close(z[:, 1], s[:, 2])


def test_group_mapping_sums_probability_mass():
    s = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0]])
    counts = [2, 1, 2]
    p = torch.exp(s) / torch.exp(s).sum()
    by_hand = torch.tensor([[p[0, 0] + p[0, 1], p[0, 2], p[0, 3] + p[0, 4]]])
    torch.testing.assert_close(F.softmax(_map(s, counts, "logsumexp"), 1), by_hand)
    torch.testing.assert_close(torch.exp(_map(s, counts, "prob-sum")), by_hand)  # already log-probabilities
    # logmeanexp = logsumexp - log K_c: the class probability is the *mean* of its sub-class masses, renormalised
    mean_mass = by_hand / torch.tensor([2.0, 1.0, 2.0])
    torch.testing.assert_close(F.softmax(_map(s, counts, "logmeanexp"), 1), mean_mass / mean_mass.sum())
    # with a temperature (cosine heads): the mass of softmax(T s)
    pt = F.softmax(30 * s, 1)
    by_hand_t = torch.stack([pt[0, :2].sum(), pt[0, 2], pt[0, 3:].sum()])[None]
    torch.testing.assert_close(F.softmax(30 * _map(s, counts, "logsumexp", scale=30.0), 1), by_hand_t)


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_prob_sum_and_logsumexp_give_every_ltkit_loss_the_same_value(name):
    torch.manual_seed(0)
    counts = [2, 1, 3]
    s, y = torch.randn(16, 6).tanh(), torch.randint(0, 3, (16,))  # tanh: valid cosine logits for LDAM too
    loss = losses.make_loss(name, [50, 20, 5], **({"drw_epoch": 0} if "drw" in name else {}))
    scale = getattr(loss, "scale", 1.0)
    a, b = _map(s, counts, "logsumexp", scale), _map(s, counts, "prob-sum", scale)
    torch.testing.assert_close(loss(a, y), loss(b, y))
    assert torch.equal(loss.predict_logits(a).argmax(1), loss.predict_logits(b).argmax(1))


# --------------------------------------------------------------------------- in the engine
def test_cws_in_the_engine_keeps_pseudo_labels_inside_classes(tmp_path):
    record = train.fit("digits-lt", method="cws", out_dir=str(tmp_path), **QUICK)
    state = _state(record["dir"])
    assert bool(state["head.initialised"]) and state["head.prototypes"].shape == (17, 64)
    assert state["head.sub_head.weight"].shape == (17, 64)
    assert torch.equal(state["head.sub_to_class"], torch.repeat_interleave(torch.arange(10), torch.tensor(
        [4, 3, 2, 2, 1, 1, 1, 1, 1, 1])))
    assert sum(map(sum, record["result"]["confusion"])) == 300
    # the saved prototypes are unit-scale (normalised features) and distinct within a split class
    assert 0.5 < state["head.prototypes"].norm(dim=1).min() <= state["head.prototypes"].norm(dim=1).max() <= 1.0 + 1e-5
    assert torch.cdist(state["head.prototypes"][:4], state["head.prototypes"][:4]).triu(1).max() > 1e-3
    rebuilt = cws.training_assignments(record["dir"])
    assert torch.equal(rebuilt["sub_to_class"][rebuilt["sub_labels"]], rebuilt["labels"])
    assert torch.equal(rebuilt["prototypes"], state["head.prototypes"])


def test_static_split_labels_stay_fixed_and_inside_classes(tmp_path):
    record = train.fit("digits-lt", method="static-split", out_dir=str(tmp_path), **QUICK)
    state = _state(record["dir"])
    from ltkit.data import load_digits_lt

    y = load_digits_lt().y_train
    assert torch.equal(state["head.sub_to_class"][state["head.static_labels"]], y)
    # sub-class sizes: every split class really is split
    sizes = torch.bincount(state["head.static_labels"], minlength=17)
    assert (sizes > 0).all() and sizes.sum() == len(y)
    rebuilt = cws.training_assignments(record["dir"])  # the run rebuilt from its folder
    assert torch.equal(rebuilt["sub_labels"], state["head.static_labels"]) and torch.equal(rebuilt["labels"], y)


@pytest.mark.parametrize("loss", ["ce", "bs"])
def test_without_a_split_cws_trains_exactly_the_base_method(tmp_path, loss):
    """max_splits=1: one sub-class per class, L_sub = L_class, convex weights -> the plain run, bit for bit."""
    plain = train.fit("digits-lt", loss=loss, out_dir=str(tmp_path), name="plain", **{**QUICK, "method_params": {}})
    unsplit = train.fit("digits-lt", loss=loss, method="cws", out_dir=str(tmp_path), name="unsplit",
                        **{**QUICK, "method_params": {"start_epoch": 1, "max_splits": 1}})
    assert [r["train_loss"] for r in unsplit["history"]] == [r["train_loss"] for r in plain["history"]]
    assert unsplit["result"]["confusion"] == plain["result"]["confusion"]
    split_state = _state(unsplit["dir"])
    for key, value in _state(plain["dir"]).items():
        moved = key.replace("head.", "head.sub_head.") if key.startswith("head.") else f"net.{key}"
        assert torch.equal(split_state[moved], value), key


def test_mapping_auto_follows_the_sub_loss():
    config = train.preset("digits-lt", loss="bs")
    assert cws.ClasswiseSplitting()._resolve_mapping(config) == "logmeanexp"
    assert cws.ClasswiseSplitting(sub_loss="ce")._resolve_mapping(config) == "logsumexp"
    assert cws.ClasswiseSplitting()._resolve_mapping(train.preset("digits-lt", loss="ce")) == "logsumexp"


def test_ldam_drw_uses_a_cosine_sub_head(tmp_path):
    record = train.fit("digits-lt", loss="ldam-drw", loss_params={"drw_epoch": 2}, method="cws",
                       out_dir=str(tmp_path), **QUICK)
    state = _state(record["dir"])
    assert state["head.sub_head.weight"].shape == (64, 17)  # CosineLinear stores (in, out)
    assert math.isfinite(record["history"][-1]["train_loss"])


def test_resume_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    whole = train.fit("digits-lt", method="cws", out_dir=str(tmp_path), name="whole", **QUICK)
    original = cws.ClasswiseSplitting.epoch_start

    def crash_at_epoch_2(self, ctx, epoch):  # the checkpoint of epoch 1 holds prototypes already moved by the EMA
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        original(self, ctx, epoch)

    monkeypatch.setattr(cws.ClasswiseSplitting, "epoch_start", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.fit("digits-lt", method="cws", out_dir=str(tmp_path), name="resumed", **QUICK)
    monkeypatch.undo()
    resumed = train.fit("digits-lt", method="cws", out_dir=str(tmp_path), name="resumed", if_exists="resume", **QUICK)
    assert resumed["result"]["confusion"] == whole["result"]["confusion"]
    for key, value in _state(whole["dir"]).items():
        assert torch.equal(value, _state(resumed["dir"])[key]), key


# --------------------------------------------------------------------------- DDP
def test_every_rank_holds_the_same_prototypes_under_ddp(tmp_path, monkeypatch):
    """torchrun, 2 CPU processes (gloo): each rank dumps its prototypes; they equal each other and the checkpoint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dump = tmp_path / "dump"
    record = launch.run("digits-lt", nproc=2, method="cws", epochs=2, out_dir=str(tmp_path / "runs"), progress=False,
                        method_params={"start_epoch": 1, "dump_dir": str(dump)})
    assert record["env"]["world_size"] == 2
    rank0, rank1 = (torch.load(dump / f"prototypes-rank{r}.pt") for r in (0, 1))
    assert rank0["epoch"] == rank1["epoch"] == 1
    assert rank0["prototypes"].abs().sum() > 0  # initialised, then moved by the all-reduced EMA
    assert torch.equal(rank0["prototypes"], rank1["prototypes"])
    assert torch.equal(_state(record["dir"])["head.prototypes"], rank0["prototypes"])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "params, message",
    [
        ({"momentum": 1.0}, r"momentum=1.0 must lie in \[0, 1\)"),
        ({"momentum": -0.1}, r"momentum=-0.1 must lie in \[0, 1\)"),
        ({"max_splits": 0}, "max_splits=0 must be >= 1"),
        ({"max_splits": 2.0}, r"max_splits expects int, got float 2.0; it must be >= 1 \(1 = no class is split\)"),
        ({"n_ref": "biggest"}, "unknown n_ref 'biggest'; choose one of: median, min, mean"),
        ({"n_ref": 0}, r"n_ref=0 must be > 0 \('median', 'min', 'mean' or a class size > 0\)"),
        ({"mapping": "sum"}, "mapping 'sum'; choose one of: auto, logsumexp, prob-sum, logmeanexp"),
        ({"sub_loss": "xent"}, "sub_loss 'xent'; choose one of: same, "),
        ({"start_epoch": -1}, "start_epoch=-1 must be >= 0"),
        ({"sub_weight": 1.5}, r"sub_weight=1.5 must lie in \[0, 1\]"),
        ({"normalize": 1}, r"normalize expects bool, got int"),
        ({"cap": 3}, r"unknown parameter\(s\) \['cap'\]; valid: n_ref, max_splits"),
    ],
)
def test_bad_parameters_get_clear_errors(params, message):
    with pytest.raises((ValueError, TypeError), match=message):
        train.make_method("cws", params)


def test_bad_configurations_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="max_splits=0 must be >= 1"):
        cws.subclass_counts(DIGITS, max_splits=0)
    with pytest.raises(ValueError, match="start_epoch=4 >= epochs=4: the split would never start"):
        train.fit("digits-lt", method="cws", epochs=4, method_params={"start_epoch": 4}, out_dir=str(tmp_path),
                  progress=False)
    with pytest.raises(ValueError, match="needs a cosine head"):
        train.fit("digits-lt", method="cws", loss="ldam", model_params={"cosine_head": False}, epochs=1,
                  out_dir=str(tmp_path), name="ldam-linear", progress=False)
