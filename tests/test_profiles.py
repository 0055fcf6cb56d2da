"""Profiles against the class sizes printed in seed 002 (the CMO study-group slides)."""

import numpy as np
import pytest

from ltkit import profiles

# Seed 002, verbatim.  The IF=10 list is printed whole.  The IF=100 list is cut
# after its 14th entry by the slides' page break; the fragment printed after the
# IF=10 list ("287, 276, ..., 10, 10, 10", 86 numbers, ending at 10 = 500/50)
# is the tail of the IF=50 list from class 14 on, not of IF=100.  The slides
# also print the totals 10,847 (IF=100) and 19,573 (IF=10); the note gives
# 12,608 for IF=50.
SEED_IF10 = [500, 488, 477, 466, 455, 445, 434, 424, 415, 405, 396, 387, 378, 369,
             361, 352, 344, 336, 328, 321, 314, 306, 299, 292, 286, 279, 273, 266,
             260, 254, 248, 243, 237, 232, 226, 221, 216, 211, 206, 201, 197, 192,
             188, 183, 179, 175, 171, 167, 163, 159, 156, 152, 149, 145, 142, 139,
             135, 132, 129, 126, 123, 121, 118, 115, 112, 110, 107, 105, 102, 100, 98,
             95, 93, 91, 89, 87, 85, 83, 81, 79, 77, 75, 74, 72, 70, 69, 67, 66, 64,
             63, 61, 60, 58, 57, 56, 54, 53, 52, 51, 50]
SEED_IF100_HEAD = [500, 477, 455, 434, 415, 396, 378, 361, 344, 328, 314, 299, 286, 273]
SEED_FRAGMENT = [287, 276, 265, 255, 245, 235, 226, 218, 209, 201, 193, 186, 178, 172,
                 165, 158, 152, 146, 141, 135, 130, 125, 120, 115, 111, 107, 102, 98, 95,
                 91, 87, 84, 81, 78, 75, 72, 69, 66, 64, 61, 59, 56, 54, 52, 50, 48, 46,
                 44, 43, 41, 39, 38, 36, 35, 34, 32, 31, 30, 29, 27, 26, 25, 24, 23, 22,
                 22, 21, 20, 19, 18, 18, 17, 16, 16, 15, 14, 14, 13, 13, 12, 12, 11, 11,
                 10, 10, 10]


def test_cifar100_if10_matches_seed_class_by_class():
    counts = profiles.exponential_profile(100, 500, 10)
    assert counts == SEED_IF10
    assert sum(counts) == 19573


def test_cifar100_if100_matches_seed_head_and_total():
    counts = profiles.preset_counts("cifar100-lt")
    assert counts[:14] == SEED_IF100_HEAD
    assert sum(counts) == 10847
    assert (counts[0], counts[-1]) == (500, 5)
    assert profiles.group_sizes(counts) == {"many": 35, "medium": 35, "few": 30}  # the note's 35/35/30


def test_seed_fragment_is_the_if50_tail():
    counts = profiles.exponential_profile(100, 500, 50)
    assert counts[14:] == SEED_FRAGMENT
    assert sum(counts) == 12608


def test_exponential_closed_form_and_monotone():
    counts = profiles.exponential_profile(7, 1000, 20)
    expected = [int(1000 * 20 ** (-i / 6)) for i in range(7)]
    assert counts == expected and counts == sorted(counts, reverse=True)
    assert profiles.imbalance_factor(counts) == pytest.approx(1000 / counts[-1])


def test_step_profile():
    assert profiles.step_profile(10, 500, 10) == [500] * 5 + [50] * 5
    assert profiles.step_profile(10, 500, 100, minority_fraction=0.2) == [500] * 8 + [5] * 2


def test_gini_closed_forms():
    assert profiles.gini([5, 5, 5, 5]) == pytest.approx(0.0)
    # two classes a, b: Gini = |a - b| / (2 (a + b))
    assert profiles.gini([90, 10]) == pytest.approx(80 / 200)
    counts = profiles.preset_counts("cifar100-lt")
    v = np.array(counts, float)
    assert profiles.gini(counts) == pytest.approx(np.abs(v[:, None] - v).mean() / (2 * v.mean()))


def test_head_tail_share():
    counts = [50, 20, 10, 10, 5, 5]
    assert profiles.head_share(counts, 1 / 3) == pytest.approx(70 / 100)
    assert profiles.tail_share(counts, 1 / 3) == pytest.approx(10 / 100)


def test_groups_boundaries_and_thresholds():
    counts = [101, 100, 20, 19]
    assert profiles.class_groups(counts) == ["many", "medium", "medium", "few"]
    assert profiles.class_groups(counts, many=50, few=30) == ["many", "many", "few", "few"]


@pytest.mark.parametrize(
    "name, classes, n_max, n_min, groups, total",
    [
        ("imagenet-lt", 1000, 1280, 5, {"many": 385, "medium": 479, "few": 136}, 115846),
        ("places-lt", 365, 4980, 5, {"many": 131, "medium": 163, "few": 71}, 62500),
        ("inat2018", 8142, 1000, 2, {"many": 842, "medium": 4076, "few": 3224}, 437513),
    ],
)
def test_real_dataset_presets_match_published_facts(name, classes, n_max, n_min, groups, total):
    counts = profiles.preset_counts(name)
    assert len(counts) == classes and max(counts) == n_max and min(counts) == n_min
    assert counts == sorted(counts, reverse=True)
    assert profiles.group_sizes(counts) == groups
    assert sum(counts) == pytest.approx(total, rel=5e-4)


def test_summary_of_cifar10_lt():
    s = profiles.summarize(profiles.preset_counts("cifar10-lt"))
    assert (s.num_classes, s.total, s.n_max, s.n_min) == (10, 12406, 5000, 50)
    assert s.imbalance_factor == 100


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: profiles.exponential_profile(10, 500, 0.5), r"imbalance_factor=0.5 must be >= 1 \(n_max / n_min"),
        (lambda: profiles.exponential_profile(1, 500, 10), "at least 2 classes"),
        (lambda: profiles.from_counts([5]), "at least 2 classes"),
        (lambda: profiles.from_counts([50, 0, 3]), "class 1 has no images"),
        (lambda: profiles.exponential_profile(10, 5, 100), "has no images"),
        (lambda: profiles.from_counts([5, -1]), "negative"),
        (lambda: profiles.preset_counts("cifar1000-lt"), "choose one of"),
        (lambda: profiles.make_profile("zipf", 10, 5, 2), "choose one of"),
        (lambda: profiles.class_groups([5, 6], many=10, few=50), "must not exceed"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
