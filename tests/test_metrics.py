"""Metrics against independent computations (scikit-learn, NumPy, by hand)."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ltkit import metrics

COUNTS = [150, 120, 50, 30, 10, 5]  # 2 many, 2 medium, 2 few at the default thresholds


def random_labels(num_classes=7, n=500, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes, n)
    # Predictions right about 60 % of the time, else uniform.
    predictions = np.where(rng.random(n) < 0.6, targets, rng.integers(0, num_classes, n))
    return targets, predictions


def matrix_from_diag(correct, support):
    """A confusion matrix whose class k has ``support[k]`` images, ``correct[k]`` of them right."""
    c = len(correct)
    matrix = np.zeros((c, c), dtype=np.int64)
    for k, (right, n) in enumerate(zip(correct, support)):
        matrix[k, k] = right
        matrix[k, (k + 1) % c] = n - right
    return matrix


# --------------------------------------------------------------------------- confusion matrix
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn(seed):
    targets, predictions = random_labels(seed=seed)
    ours = metrics.confusion_matrix(torch.from_numpy(targets), torch.from_numpy(predictions), 7)
    assert ours.dtype == torch.int64 and ours.shape == (7, 7)
    np.testing.assert_array_equal(ours.numpy(), skm.confusion_matrix(targets, predictions, labels=range(7)))


def test_confusion_matrix_counts_absent_classes_and_small_example():
    # Class 3 never occurs: its row and column are zero, the matrix is still (4, 4).
    cm = metrics.confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert metrics.confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3).sum() == 0


def test_confusion_matrix_accepts_int32_lists_and_column_vectors():
    expected = [[1, 0], [1, 1]]
    assert metrics.confusion_matrix(torch.tensor([0, 1, 1], dtype=torch.int32), torch.tensor([0, 0, 1]), 2).tolist() == expected
    assert metrics.confusion_matrix([0, 1, 1], np.array([0, 0, 1]), 2).tolist() == expected
    assert metrics.confusion_matrix(torch.tensor([[0], [1], [1]]), torch.tensor([0, 0, 1]), 2).tolist() == expected


def test_confusion_matrix_sums_like_an_all_reduce():
    # Under DDP each process builds its own matrix and the engine sums them.
    targets, predictions = random_labels(seed=3)
    t, p = torch.from_numpy(targets), torch.from_numpy(predictions)
    parts = [metrics.confusion_matrix(t[i::2], p[i::2], 7) for i in range(2)]
    assert torch.equal(parts[0] + parts[1], metrics.confusion_matrix(t, p, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_confusion_matrix_stays_on_the_gpu():
    targets, predictions = random_labels(seed=4)
    cm = metrics.confusion_matrix(torch.from_numpy(targets).cuda(), torch.from_numpy(predictions).cuda(), 7)
    assert cm.is_cuda and cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.cpu().numpy(), skm.confusion_matrix(targets, predictions, labels=range(7)))


# --------------------------------------------------------------------------- accuracies
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracies_match_sklearn(seed):
    targets, predictions = random_labels(num_classes=6, seed=seed)
    cm = metrics.confusion_matrix(torch.from_numpy(targets), torch.from_numpy(predictions), 6)
    per_class = metrics.per_class_accuracy(cm)
    assert per_class.dtype == np.float64
    np.testing.assert_allclose(per_class, skm.recall_score(targets, predictions, average=None, labels=range(6)))
    np.testing.assert_allclose(metrics.per_class_accuracy(cm.numpy()), per_class)  # NumPy input too
    result = metrics.evaluate(cm, COUNTS)
    assert result["overall"] == pytest.approx(skm.accuracy_score(targets, predictions))
    assert result["balanced"] == pytest.approx(skm.balanced_accuracy_score(targets, predictions))
    assert result["worst"] == pytest.approx(per_class.min())
    np.testing.assert_allclose(result["per_class"], per_class)


def test_class_without_test_images_is_nan_and_left_out():
    targets = np.array([0, 0, 1, 1, 1, 3])
    predictions = np.array([0, 1, 1, 1, 0, 3])  # class 2 has no test images
    cm = metrics.confusion_matrix(torch.from_numpy(targets), torch.from_numpy(predictions), 4)
    per_class = metrics.per_class_accuracy(cm)
    assert math.isnan(per_class[2])
    np.testing.assert_allclose(per_class[[0, 1, 3]], [0.5, 2 / 3, 1.0])
    result = metrics.evaluate(cm, [200, 50, 10, 5])
    assert result["balanced"] == pytest.approx(skm.balanced_accuracy_score(targets, predictions))
    assert result["few"] == pytest.approx(1.0)  # class 2 (nan) left out, class 3 = 1.0
    assert result["worst"] == pytest.approx(0.5)


def test_group_means_by_hand():
    per_class = [0.9, 0.8, 0.6, 0.5, 0.2, 0.1]
    groups = metrics.group_accuracy(per_class, COUNTS)
    assert groups == pytest.approx({"many": 0.85, "medium": 0.55, "few": 0.15, "worst": 0.1})
    # many > 40, few < 20: class 2 (50) moves to many, class 3 (30) stays medium.
    moved = metrics.group_accuracy(per_class, COUNTS, many=40, few=20)
    assert moved == pytest.approx({"many": (0.9 + 0.8 + 0.6) / 3, "medium": 0.5, "few": 0.15, "worst": 0.1})
    # few < 40: class 3 (30) moves to few; medium (40 <= n <= 40) is now empty.
    shifted = metrics.group_accuracy(per_class, COUNTS, many=40, few=40)
    assert math.isnan(shifted["medium"])
    assert shifted["few"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)


def test_groups_use_training_counts_not_test_counts():
    # Balanced test set (10 per class); groups follow COUNTS, not the test support.
    correct = [9, 8, 6, 5, 2, 1]
    cm = matrix_from_diag(correct, [10] * 6)
    result = metrics.evaluate(cm, COUNTS)
    assert result["group_sizes"] == {"many": 2, "medium": 2, "few": 2}
    assert result["many"] == pytest.approx(0.85) and result["medium"] == pytest.approx(0.55)
    assert result["few"] == pytest.approx(0.15) and result["worst"] == pytest.approx(0.1)
    assert result["overall"] == pytest.approx(31 / 60) == result["balanced"]
    moved = metrics.evaluate(cm, COUNTS, many=40, few=20)
    assert moved["group_sizes"] == {"many": 3, "medium": 1, "few": 2}
    assert moved["many"] == pytest.approx(23 / 30)


def test_overall_differs_from_balanced_on_an_imbalanced_test_set():
    cm = matrix_from_diag([90, 1], [100, 10])
    result = metrics.evaluate(cm, [500, 5])
    assert result["overall"] == pytest.approx(91 / 110)
    assert result["balanced"] == pytest.approx((0.9 + 0.1) / 2)


def test_evaluate_is_json_serialisable_plain_floats():
    cm = metrics.confusion_matrix(*map(torch.from_numpy, random_labels(num_classes=6)), 6)
    result = metrics.evaluate(cm, COUNTS)
    assert set(result) == {"overall", "balanced", "many", "medium", "few", "worst", "per_class", "group_sizes"}
    for key in ("overall", "balanced", "many", "medium", "few", "worst"):
        assert type(result[key]) is float and 0.0 <= result[key] <= 1.0
    assert all(type(a) is float for a in result["per_class"])
    assert json.loads(json.dumps(result)) == result


# --------------------------------------------------------------------------- seeds and tables
def fake_results(values):
    return [dict(zip(metrics.SUMMARY_KEYS, row)) for row in values]


def test_summarize_seeds_matches_numpy():
    values = np.array([[0.43, 0.70, 0.40, 0.10, 0.01], [0.45, 0.72, 0.41, 0.12, 0.00], [0.44, 0.69, 0.43, 0.13, 0.02]])
    summary = metrics.summarize_seeds(fake_results(values))
    for j, key in enumerate(metrics.SUMMARY_KEYS):
        mean, std, n = summary[key]
        assert mean == pytest.approx(values[:, j].mean())
        assert std == pytest.approx(values[:, j].std(ddof=1))
        assert n == 3


def test_summarize_seeds_single_seed_and_nan():
    single = metrics.summarize_seeds(fake_results([[0.5, 0.6, 0.5, 0.4, 0.1]]))
    assert single["overall"] == (0.5, 0.0, 1)
    results = fake_results([[0.5, 0.6, math.nan, 0.4, 0.1], [0.7, 0.8, 0.5, math.nan, 0.3], [0.6, 0.7, 0.3, math.nan, 0.2]])
    summary = metrics.summarize_seeds(results)
    assert summary["medium"] == pytest.approx((0.4, np.std([0.5, 0.3], ddof=1), 2))
    assert summary["few"] == (0.4, 0.0, 1)
    assert summary["overall"] == pytest.approx((np.nanmean([0.5, 0.7, 0.6]), np.nanstd([0.5, 0.7, 0.6], ddof=1), 3))
    none = metrics.summarize_seeds(fake_results([[0.5, 0.6, math.nan, 0.4, 0.1]] * 2), keys=("medium",))
    assert math.isnan(none["medium"][0]) and none["medium"][2] == 0


def test_summarize_seeds_on_evaluate_results():
    results = [metrics.evaluate(metrics.confusion_matrix(*map(torch.from_numpy, random_labels(6, seed=s)), 6), COUNTS)
               for s in range(3)]
    summary = metrics.summarize_seeds(results, keys=("balanced",))
    assert summary["balanced"][0] == pytest.approx(np.mean([r["balanced"] for r in results]))


def test_format_mean_std():
    assert metrics.format_mean_std(0.4389, 0.0123) == "43.9 ± 1.2"
    assert metrics.format_mean_std(0.4389, 0.0123, digits=2) == "43.89 ± 1.23"
    assert metrics.format_mean_std(43.89, 1.23, scale=1.0) == "43.9 ± 1.2"
    assert metrics.format_mean_std(0.5, 0.0) == "50.0 ± 0.0"
    assert metrics.format_mean_std(math.nan, math.nan) == "n/a"


def test_results_table():
    table = metrics.results_table({
        "CE": fake_results([[0.40, 0.70, 0.35, 0.05, 0.0], [0.42, 0.72, 0.37, 0.07, 0.0]]),
        "CMO": fake_results([[0.47, 0.70, 0.45, 0.20, 0.02]]),
    })
    assert list(table.index) == ["CE", "CMO"] and table.index.name == "method"
    assert list(table.columns) == [*metrics.SUMMARY_KEYS, "seeds"]
    assert table.loc["CE", "overall"] == f"41.0 ± {np.std([40, 42], ddof=1):.1f}" == "41.0 ± 1.4"
    assert table.loc["CE", "few"] == "6.0 ± 1.4"
    assert table.loc["CMO", "many"] == "70.0 ± 0.0"
    assert table.loc["CE", "seeds"] == 2 and table.loc["CMO", "seeds"] == 1
    assert list(metrics.results_table({"CE": fake_results([[0.4] * 5])}, keys=("few",)).columns) == ["few", "seeds"]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "targets, predictions, num_classes, match",
    [
        ([0, 1, 2], [0, 1], 3, "targets has 3 labels but predictions has 2"),
        ([0, 1, 3], [0, 1, 2], 3, r"targets contains label 3 outside \[0, 3\)"),
        ([0, 1, 2], [0, -1, 2], 3, r"predictions contains label -1 outside \[0, 3\)"),
        ([0, 1], [[0.1, 0.9], [0.8, 0.2]], 2, "look like logits"),
        ([0.0, 1.0], [0, 1], 2, "integer class indices"),
        ([0, 1], [0, 1], 0, "positive integer"),
    ],
)
def test_confusion_matrix_bad_input(targets, predictions, num_classes, match):
    with pytest.raises(ValueError, match=match):
        metrics.confusion_matrix(torch.tensor(targets), torch.tensor(predictions), num_classes)


def test_confusion_not_square():
    with pytest.raises(ValueError, match="must be square"):
        metrics.per_class_accuracy(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="must be square"):
        metrics.evaluate(torch.zeros(3, 4, dtype=torch.long), [150, 50, 5])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.per_class_accuracy(-np.eye(2))


def test_train_counts_length_mismatch():
    with pytest.raises(ValueError, match="train_counts has 10 entries but the confusion matrix has 100 classes"):
        metrics.evaluate(np.eye(100, dtype=np.int64), [100] * 10)
    with pytest.raises(ValueError, match="train_counts has 3 entries but per_class has 2 classes"):
        metrics.group_accuracy([0.5, 0.5], [100, 50, 5])


def test_empty_test_set_and_empty_results():
    with pytest.raises(ValueError, match="no test images"):
        metrics.evaluate(np.zeros((2, 2)), [100, 5])
    with pytest.raises(ValueError, match="results is empty"):
        metrics.summarize_seeds([])
    with pytest.raises(ValueError, match="results is empty for method 'CE'"):
        metrics.results_table({"CE": []})
    with pytest.raises(ValueError, match="result 0 has no key 'many'"):
        metrics.summarize_seeds([{"overall": 0.5}])
