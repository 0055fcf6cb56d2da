"""Exercises of notebook 01 (imbalance profiles): from "predict, then run" to "change the code".

Every right answer is computed from :mod:`ltkit.profiles` / :mod:`ltkit.data`, so the checks follow
the kit if a profile ever changes.
"""

from __future__ import annotations

import numbers
from typing import Any

from .. import data, profiles
from . import Feedback, close_to, exercise, right, same_numbers, wrong

__all__: list[str] = []


def _whole_number(answer: Any, what: str) -> int | Feedback:
    """``answer`` as an int, or the feedback that explains why it is not a count."""
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return wrong(f"{what} is a whole number of classes or images; you gave {answer!r} "
                     f"({type(answer).__name__}). Write it as a number, e.g. answer = 7.")
    if answer < 0 or float(answer) != int(answer):
        return wrong(f"{what} is a count: a whole number >= 0, not {answer!r}.")
    return int(answer)


# --------------------------------------------------------------------------- 01.1
def _few_at_if50() -> int:
    counts = data.load_digits_lt(imbalance_factor=50).class_counts
    return profiles.group_sizes(counts)["few"]


@exercise(
    id="01.1",
    kind="compute",
    question=("`digits-lt` has 3 few-shot classes (fewer than 20 training images) at its default IF 15. "
              "Build it at IF 50 instead (`data.load_digits_lt(imbalance_factor=50)`, n_max stays 140) and count "
              "its few-shot classes with `profiles.group_sizes` (thresholds 100 / 20)."),
    solution=("5 few-shot classes:\n\n```python\nd50 = data.load_digits_lt(imbalance_factor=50)\n"
              "print(d50.class_counts)                     # [140, 90, 58, 38, 24, 15, 10, 6, 4, 2]\n"
              "answer = profiles.group_sizes(d50.class_counts)[\"few\"]   # 5\n```\n\n"
              "With n_max fixed, a larger IF lowers every class but the first, so classes cross the "
              "few threshold one after another: class i is few when 140 · 50^(-i/9) < 20, i.e. i > 9 · ln 7 / ln 50 "
              "≈ 4.5, the classes 5-9. The groups are defined by *training* counts: the same digit is 'medium' "
              "in one data set and 'few' in the other."),
    answer=_few_at_if50,
)
def check_few_at_if50(answer: Any) -> Feedback:
    value = _whole_number(answer, "the number of few-shot classes")
    if isinstance(value, Feedback):
        return value
    truth = _few_at_if50()
    if value == truth:
        return right(f"{truth} few-shot classes at IF 50 (3 at IF 15): a larger IF pushes classes into *few*.")
    if value == 3:
        return wrong("3 is the count at the default IF 15; load the data set with imbalance_factor=50 and count again.")
    if value > 10:
        return wrong(f"digits-lt has 10 classes, so at most 10 can be few-shot; {value} looks like a number of "
                     "images. Count the classes with fewer than 20 training images.")
    return close_to(value, truth, rel=0, abs_tol=0.5, what="the number of few-shot classes",
                    hint="Print d50.class_counts and count the entries below 20, or use "
                         "profiles.group_sizes(d50.class_counts)['few'].")


# --------------------------------------------------------------------------- 01.2
def _n_min() -> int:
    return min(profiles.exponential_profile(100, 500, 100))


@exercise(
    id="01.2",
    kind="predict, then run",
    question=("Predict, before running anything: an exponential profile with C = 100 classes, "
              "n_max = 500 and IF = 100 (CIFAR-100-LT). How many training images has its smallest class, n_min? "
              "Then check with `min(profiles.exponential_profile(100, 500, 100))`."),
    solution=("n_min = 5. The imbalance factor is defined as IF = n_max / n_min, and the exponential profile "
              "n_i = int(n_max · IF^(-i/(C-1))) reaches exactly n_max / IF at the last class i = C-1: "
              "500 / 100 = 5 (`int` truncates, but 500 · 0.01 is 5.0 here). The middle class sits at the "
              "geometric mean, n_max / √IF = 50: half the classes of CIFAR-100-LT have fewer than 50 images."),
    answer=_n_min,
)
def check_n_min(answer: Any) -> Feedback:
    value = _whole_number(answer, "n_min")
    if isinstance(value, Feedback):
        return value
    truth = _n_min()
    if value == 500 * 100:
        return wrong("50,000 is n_max × IF; the imbalance factor *divides*: IF = n_max / n_min.")
    if value == 500:
        return wrong("500 is the largest class, n_max; n_min is the smallest one, at the tail.")
    return close_to(value, truth, rel=0, abs_tol=0.5, what="n_min",
                    hint="Use the definition of the imbalance factor: IF = n_max / n_min.")


# --------------------------------------------------------------------------- 01.3
def _many_at_50() -> int:
    return profiles.group_sizes(profiles.exponential_profile(100, 500, 100), many=50, few=20)["many"]


@exercise(
    id="01.3",
    kind="predict, then run",
    question=("CIFAR-100-LT at IF 100 has 35 *many*-shot classes with the usual threshold (many: n > 100). "
              "A paper lowers the threshold to n > 50 (few stays n < 20). Predict how many classes are *many*-shot "
              "now, then check with `profiles.group_sizes(counts, many=50, few=20)`."),
    solution=("50 classes. The exponential profile is a straight line on a log axis: n_i > 50 when "
              "500 · 100^(-i/99) > 50, i.e. i < 99 / 2 = 49.5, the classes 0-49. Fifteen classes with 51-100 "
              "images move from *medium* to *many*: the 'many-shot accuracy' of such a paper averages over 50 "
              "classes, 15 of them much harder than the usual 35, so it is not comparable to a number computed "
              "with the standard thresholds (Liu et al., 2019). Always report the thresholds with the groups."),
    answer=_many_at_50,
)
def check_many_at_50(answer: Any) -> Feedback:
    value = _whole_number(answer, "the number of many-shot classes")
    if isinstance(value, Feedback):
        return value
    truth = _many_at_50()
    if value == 35:
        return wrong("35 is the count with the usual threshold n > 100; a lower threshold lets more classes in.")
    if value < 35:
        return wrong(f"{value} is fewer than the 35 many-shot classes at n > 100; lowering the threshold can only "
                     "add classes to *many*, never remove them.")
    if value > 100:
        return wrong(f"CIFAR-100-LT has 100 classes; {value} cannot be a number of classes.")
    return close_to(value, truth, rel=0, abs_tol=0.5, what="the number of many-shot classes",
                    hint="On a log axis the profile is a line from 500 to 5: at which rank does it cross 50, "
                         "the geometric mean of 500 and 5?")


# --------------------------------------------------------------------------- 01.4
def _step_fifth() -> list[int]:
    return profiles.step_profile(10, 500, 10, minority_fraction=0.2)


@exercise(
    id="01.4",
    kind="change the code",
    question=("Change the code: with `ltkit.profiles`, build a *step* profile of 10 classes, n_max = 500, IF = 10, "
              "in which only the last 20 % of the classes are minority classes (the default makes half of them "
              "minority). Give the list of class sizes."),
    solution=("`step_profile` takes the share of minority classes as `minority_fraction`:\n\n```python\n"
              "answer = profiles.step_profile(10, 500, 10, minority_fraction=0.2)\n"
              "# [500, 500, 500, 500, 500, 500, 500, 500, 50, 50]\n```\n\n"
              "Eight majority classes keep n_max = 500 and two get int(500 / 10) = 50. Its IF is 10 like the "
              "exponential profile's, but 4,100 images instead of the exponential's 2,040 "
              "(`sum(profiles.exponential_profile(10, 500, 10))`): the imbalance factor alone does not fix the "
              "shape of a data set."),
    answer=_step_fifth,
)
def check_step_fifth(answer: Any) -> Feedback:
    if isinstance(answer, (str, bytes)) or not hasattr(answer, "__len__"):
        return wrong(f"give the class sizes as a list of 10 numbers (what profiles.step_profile returns), "
                     f"not {answer!r}.")
    values = [float(v) for v in answer]
    truth = _step_fifth()
    if len(values) != len(truth):
        return wrong(f"the profile should list {len(truth)} class sizes (one per class), you gave {len(values)}.")
    if values == [float(v) for v in profiles.step_profile(10, 500, 10)]:
        return wrong("that is the default step profile, with half the classes (5) minority; "
                     "pass minority_fraction=0.2 so that only the last 2 are.")
    if values == [float(v) for v in profiles.exponential_profile(10, 500, 10)]:
        return wrong("that is the exponential profile; a step profile has only two class sizes "
                     "(profiles.step_profile).")
    if sorted(values, reverse=True) != values:
        return wrong("a profile lists the classes head to tail: the sizes should never increase.")
    return same_numbers(values, truth, what="the class sizes",
                        hint="n_max = 500 for the majority classes and int(n_max / IF) = 50 for the last 20 % of "
                             "them (minority_fraction=0.2).")
