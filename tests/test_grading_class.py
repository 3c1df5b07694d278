"""Grading a class: parallel jobs equal serial grading, one student's regrade, Gradescope, Canvas, publishing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coursekit.cli import main
from coursekit.grading import grade_folder, write_gradebook
from coursekit.grading.gradescope import export_gradescope
from coursekit.grading.publish import publish_course

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
SOLUTIONS = FIXTURES / "solutions"
SUBMISSIONS = FIXTURES / "submissions" / "01_toy"
ROOT = Path(__file__).resolve().parents[1]
FEW = ("half_solved", "crash", "attack_rigged_eq", "tampered")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class") / "01_toy"
    folder.mkdir()
    for name in FEW:
        shutil.copy(SUBMISSIONS / f"{name}.ipynb", folder / f"{name}.ipynb")
    return folder


def _summary(reports):
    return [(r.student, r.score, r.status, [(t.grade_id, t.status, t.error) for t in r.tests], r.flags)
            for r in reports]


def test_parallel_grading_gives_the_same_reports_as_serial(class_folder):
    serial = grade_folder(class_folder, SOLUTIONS / "01_toy.ipynb", cell_timeout=10)
    parallel = grade_folder(class_folder, SOLUTIONS / "01_toy.ipynb", cell_timeout=10, jobs=2)
    assert _summary(parallel) == _summary(serial)
    assert [r.student for r in serial] == sorted(FEW)


def test_one_student_is_regraded_alone(class_folder, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["grade", str(class_folder), "--solution", str(SOLUTIONS / "01_toy.ipynb"), "--student", "crash",
                   "--out", str(out), "--cell-timeout", "10"])
    assert status == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["crash.json"]
    assert "crash: 5/6" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no submission of student 'nobody'"):
        grade_folder(class_folder, SOLUTIONS / "01_toy.ipynb", student="nobody")


def test_canvas_gradebook_has_one_row_per_student_and_a_column_per_assignment(class_folder, tmp_path):
    reports = grade_folder(class_folder, SOLUTIONS / "01_toy.ipynb", cell_timeout=10, student="half_solved")
    with write_gradebook(reports, tmp_path / "canvas.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "01_toy"]
    assert rows[1][0] == "Points Possible" and rows[1][5] == "6"
    assert rows[2] == ["half_solved", "", "", "half_solved", "", "3"]


def test_gradescope_autograder_runs_in_a_simulated_autograder_folder(tmp_path):
    """Export the zip, lay it out as Gradescope does (/autograder/source, /autograder/submission), run its
    run_autograder script and read /autograder/results/results.json."""
    zipped = export_gradescope(SOLUTIONS / "01_toy.ipynb", tmp_path / "gradescope_01_toy.zip", repo_root=ROOT)
    root = tmp_path / "autograder"
    with zipfile.ZipFile(zipped) as zf:
        names = set(zf.namelist())
        zf.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "solution/01_toy.ipynb", "references.json"} <= names
    assert "package/coursekit/grading/grade.py" in names and not any(n.startswith("package/solutions") for n in names)
    (root / "submission").mkdir()
    shutil.copy(SUBMISSIONS / "half_solved.ipynb", root / "submission" / "01_toy.ipynb")
    script = root / "source" / "run_autograder"
    script.chmod(0o755)
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": sys.executable}
    subprocess.run([str(script)], env=env, check=True, capture_output=True, timeout=600)
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 3
    by_name = {t["name"]: t for t in results["tests"]}
    assert by_name["test_add"] == {"name": "test_add", "score": 1.0, "max_score": 1.0, "status": "passed",
                                   "visibility": "visible", "output": "passed"}
    assert by_name["test_iou_overlap"]["visibility"] == "after_due_date"  # it has hidden checks
    assert by_name["test_iou_overlap"]["score"] == 0 and "IoU 1/3" in by_name["test_iou_overlap"]["output"]


def test_publish_copies_the_student_course_without_solutions_or_tests(tmp_path):
    written = publish_course(tmp_path / "public", root=ROOT)
    names = {p.name for p in written}
    assert {"notebooks", "assignments", "coursekit", "README.md"} <= names
    public = tmp_path / "public"
    assert not (public / "solutions").exists() and not (public / "tests").exists()
    assert not any("BEGIN HIDDEN TESTS" in p.read_text() for p in public.rglob("*.ipynb"))
    with pytest.raises(ValueError, match="exists"):
        publish_course(public, root=ROOT)
