"""The course's graded assignments: student copies current and clean, solutions full marks, stubs zero.

Each solution notebook is run by the real autograder (``coursekit.grading.grade_notebook``) in a fresh
kernel, offline, fast profile; so is the generated student copy, which must execute headless with only
``NotImplementedError`` where the answers go and score zero.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from machine_speed import scaled

from coursekit.grading import build
from coursekit.grading.grade import grade_notebook

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
NAMES = [path.name for path in SOLUTIONS]
# The issue: every assignment runs in under 2 minutes on a CPU in the fast profile.
LIMIT_S = scaled(120)  # stretched on a slow host: tests/machine_speed.py


def test_there_are_at_least_six_assignments():
    assert len(SOLUTIONS) >= 6, NAMES
    assert sorted(p.name for p in (ROOT / "assignments").glob("*.ipynb")) == NAMES


def test_student_copies_are_up_to_date_with_the_solutions():
    problems = build.check_up_to_date(ROOT / "solutions", ROOT / "assignments")
    assert problems == [], "run `make assignments`:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_student_copy_gives_nothing_away(name):
    solution = build.read_notebook(ROOT / "solutions" / name)
    student = build.read_notebook(ROOT / "assignments" / name)
    build.validate_solution(solution, name)  # raises ValueError naming the cell
    assert build.leaked_lines(solution, student) == []
    assert "/solutions/" not in "".join("".join(cell.source) for cell in student.cells)


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_solution_scores_full_marks(name):
    report = grade_notebook(ROOT / "solutions" / name, ROOT / "solutions" / name)
    failed = {t.grade_id: t.error for t in report.tests if t.points < t.max_points}
    assert report.max_score > 0 and report.score == report.max_score, failed
    assert report.duration_s < LIMIT_S, f"{name} took {report.duration_s:.0f} s (limit {LIMIT_S:.0f} s)"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_student_copy_runs_and_scores_zero(name):
    report = grade_notebook(ROOT / "assignments" / name, ROOT / "solutions" / name)
    assert report.status == "graded" and report.score == 0, [(t.grade_id, t.points) for t in report.tests]
    errors = [cell.error for cell in report.cells if cell.error]
    assert errors, "an unsolved assignment should raise NotImplementedError somewhere"
    others = [e for e in errors if not e.startswith("NotImplementedError")]
    assert others == [], f"the student copy fails with something else than NotImplementedError: {others[:3]}"
