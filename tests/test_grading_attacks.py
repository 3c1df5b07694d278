"""A student who wants the points without the work (issue 11): every trick scores nothing it did not earn.

Each attack is a fixture submission (tests/fixtures/grading/submissions/01_toy/attack_*.ipynb, made by
make_fixtures.py) that scored full marks, or nearly, under the old grader. The sandbox's own containment
(network, files, processes, memory) is tested without a kernel in test_grading_sandbox.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coursekit.grading import grade_notebook
from coursekit.grading.build import read_notebook
from coursekit.grading.grade import _run, assemble_notebook
from coursekit.grading.sandbox import Limits, Sandbox, resolve_sandbox

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
SOLUTION = FIXTURES / "solutions" / "01_toy.ipynb"
SUBMISSIONS = FIXTURES / "submissions" / "01_toy"
CELL_TIMEOUT = 5.0

# attack -> (points now, report status, a phrase the report must contain); points before are in the README.
ATTACKS = {
    "attack_input_transformer": (0, "flagged", "a cell that must fail with a secret message gave ok"),
    "attack_run_cell": (0, "flagged", "the kernel was tampered with"),
    "attack_forbidden_api": (0, "graded", "operator.add"),
    "attack_rebind_helper": (0, "flagged", "redefines 'seconds'"),
    "attack_patch_module": (1, "flagged", "changes math.isclose"),
    "attack_rigged_eq": (1, "flagged", "defines __eq__"),
    "attack_escape": (1, "flagged", "uses pathlib"),
}


@pytest.fixture(scope="module")
def reports():
    return {name: grade_notebook(SUBMISSIONS / f"{name}.ipynb", SOLUTION, cell_timeout=CELL_TIMEOUT, timeout=120)
            for name in ATTACKS}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_scores_only_what_it_earned(reports, name):
    report = reports[name]
    points, status, phrase = ATTACKS[name]
    text = " ".join([*report.flags, *(t.error or "" for t in report.tests), *report.notes])
    assert (report.score, report.status) == (points, status), (report.score, report.status, text)
    assert phrase in text


def test_escape_left_no_process_behind(reports):
    """The attack started a daemon (`sleep 987.5`, in its own session) and 10,000 children: none survive."""
    assert "attack_escape" in reports
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    leftover = [line for line in ps.splitlines() if "sleep 987.5" in line]
    if resolve_sandbox("auto")[0] != "bwrap":
        pytest.skip("bubblewrap is not installed: without it a daemon can outlive grading (the report says so)")
    assert leftover == []


def test_canaries_catch_a_tampered_kernel_that_the_static_check_cannot_see():
    """The same input transformer, planted by a (simulated) compromised setup cell instead of an answer:
    the static pass never sees it, the canaries around the first test do."""
    solution = read_notebook(SOLUTION)
    graded, _ = assemble_notebook(solution, solution)
    setup = next(c for c in graded.cells if c.cell_type == "code")
    setup.source += "\nget_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])"
    run = _run(graded, [], cell_timeout=CELL_TIMEOUT, timeout=60, profile="fast",
               sandbox=Sandbox(resolve_sandbox("auto")[0], Limits()), cwd=None)
    assert run.tampering and "must fail with a secret" in run.tampering[0][1]
    assert not run.ended  # no test reached its end marker


def test_a_wrong_value_fails_the_hidden_check_even_when_every_assert_passes(tmp_path):
    """`expect` compares with the solution's value computed in another kernel: an iou that is right on every
    asserted case but wrong elsewhere loses the test."""
    import nbformat

    nb = read_notebook(SUBMISSIONS / "half_solved.ipynb")
    iou = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "iou")
    iou.source = ("def iou(box_a, box_b):\n"
                  "    known = {((0, 0, 2, 2), (0, 0, 2, 2)): 1.0, ((0, 0, 1, 1), (2, 2, 3, 3)): 0.0,\n"
                  "             ((0, 0, 4, 4), (1, 1, 3, 3)): 0.25, ((0, 0, 2, 2), (1, 0, 3, 2)): 1 / 3,\n"
                  "             ((0, 0, 2, 2), (2, 0, 4, 2)): 0.0}\n"
                  "    return known.get((tuple(box_a), tuple(box_b)), 0.5)")
    path = tmp_path / "memorised.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, SOLUTION, cell_timeout=CELL_TIMEOUT)
    overlap = next(t for t in report.tests if t.grade_id == "test_iou_overlap")
    assert overlap.status == "failed" and "hidden check 'iou of every pair'" in overlap.error
    assert report.score == 3
