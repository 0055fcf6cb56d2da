"""Every exercise's own solution passes its check; wrong answers get an explanation, never a bare 'wrong'."""

import pytest

from ltkit import exercises

EXERCISES = exercises.all_exercises()


def test_every_exercise_a_notebook_checks_is_registered_and_every_module_has_two_or_more():
    import json
    import re
    from pathlib import Path

    ids = {ex.id for ex in EXERCISES}
    per_notebook: dict[str, int] = {}
    for ex in EXERCISES:
        per_notebook[ex.id.split(".")[0]] = per_notebook.get(ex.id.split(".")[0], 0) + 1
    assert all(n >= 2 for n in per_notebook.values()), per_notebook
    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        used = {m for c in cells for m in re.findall(r"exercises\.check\(\"([0-9.]+)\"", "".join(c["source"]))}
        assert used <= ids, f"{path.name} checks unknown exercises {sorted(used - ids)}"


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
