"""Every exercise's own solution passes its check; wrong answers get an explanation, never a bare 'wrong'."""

import pytest

from ltkit import exercises

EXERCISES = exercises.all_exercises()


def test_there_are_exercises_for_every_notebook():
    notebooks = {ex.id.split(".")[0] for ex in EXERCISES}
    assert notebooks >= {"01", "02", "03", "04", "05", "06", "07"} or len(EXERCISES) == 0


@pytest.mark.parametrize("ex", EXERCISES, ids=[ex.id for ex in EXERCISES])
def test_the_solution_passes_its_check(ex):
    feedback = exercises.check(ex.id, ex.answer())
    assert feedback.ok, feedback.message
    assert exercises.solution(ex.id).text.startswith(f"**Solution {ex.id}.**")


@pytest.mark.parametrize("ex", EXERCISES, ids=[ex.id for ex in EXERCISES])
def test_a_wrong_answer_is_explained(ex):
    for bad in (None, "not an answer", -12345.0):
        feedback = exercises.check(ex.id, bad)
        assert not feedback.ok and len(feedback.message) > 25, (bad, feedback.message)
