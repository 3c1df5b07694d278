"""From the instructor's solution notebook to the student's assignment notebook.

A solution notebook (``solutions/NN_name.ipynb``) marks its cells the way nbgrader does, in the
cell metadata ``{"nbgrader": {...}}``:

* an **answer cell** (``"solution": true``, a unique ``"grade_id"``) holds the student's work; the
  code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is replaced by ``# YOUR CODE HERE`` /
  ``raise NotImplementedError`` (a cell without markers is replaced whole);
* a **test cell** (``"grade": true``, ``"grade_id"``, ``"points"``) is graded all or nothing; the part
  between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` is removed from the student's copy
  and put back by the autograder;
* every other cell (text, setup, visible sanity checks) is copied as is.

``build_assignments`` writes ``assignments/`` from ``solutions/``; ``check_up_to_date`` and
``leaked_lines`` are what the repository's tests call to make sure the student copies are current and
give nothing away.
"""

from __future__ import annotations

import copy
import json
import keyword
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import nbformat
from nbformat import NotebookNode

from coursekit.course import COURSE_REPO, colab_url

__all__ = [
    "COURSE_REPO",
    "CellRole",
    "build_assignments",
    "build_student_notebook",
    "cell_role",
    "check_up_to_date",
    "grade_id",
    "leaked_lines",
    "read_notebook",
    "student_stub",
    "validate_solution",
]

BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
MARKDOWN_STUB = "YOUR ANSWER HERE"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Any "Open in Colab" address that points at the instructor's folder; the student copy must never do that.
_SOLUTION_COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"'<>]*?/solutions/[^\s)\"'<>]+")
# Cell metadata that records a past run; nbstripout removes it too, so the built file passes --verify.
_RUN_METADATA = ("collapsed", "scrolled", "ExecuteTime", "execution", "heading_collapsed", "hidden")

CellRole = Literal["answer", "test", "other"]


def read_notebook(path: str | Path) -> NotebookNode:
    """Read a notebook (as nbformat 4), with errors that say which file is missing or not a notebook."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a Jupyter notebook: invalid JSON ({err})") from None
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # nbformat raises many kinds on a malformed file; all mean the same here
        raise ValueError(f"{path} is not a Jupyter notebook: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(nb.get("cells"), list) or not all(
            isinstance(c, dict) and isinstance(c.get("source"), str) and "cell_type" in c for c in nb.cells):
        raise ValueError(f"{path} is not a Jupyter notebook: it has no list of cells with sources")
    return nb


def _nbgrader(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def grade_id(cell: NotebookNode) -> str | None:
    """The stable id that matches a cell across solution, assignment and submission (nbgrader's ``grade_id``)."""
    return _nbgrader(cell).get("grade_id")


def cell_role(cell: NotebookNode) -> CellRole:
    """``"answer"`` (nbgrader ``solution``), ``"test"`` (nbgrader ``grade``) or ``"other"``."""
    meta = _nbgrader(cell)
    if meta.get("solution"):
        return "answer"
    if meta.get("grade"):
        return "test"
    return "other"


def _where(cell: NotebookNode, index: int) -> str:
    gid = grade_id(cell)
    return f"cell {index}" + (f" ({gid!r})" if gid else "")


def validate_solution(nb: NotebookNode, name: str = "solution") -> None:
    """Raise ``ValueError`` naming the cell if a solution notebook's nbgrader metadata or markers are inconsistent.

    Checked: answer and test cells have unique ``grade_id`` strings, test cells are code cells with
    ``points >= 0``, no cell is both, markers pair up and sit only in cells of the role that removes them.
    """
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        meta, role, where = _nbgrader(cell), cell_role(cell), f"{name}: {_where(cell, i)}"
        if meta.get("solution") and meta.get("grade"):
            raise ValueError(f"{where} is both an answer (solution) and a test (grade) cell; split it in two")
        if role != "other":
            gid = meta.get("grade_id")
            if not gid or not isinstance(gid, str):
                raise ValueError(f"{where} is an nbgrader {role} cell without a 'grade_id' string")
            if gid in seen:
                raise ValueError(f"{where}: grade_id {gid!r} is used twice; grade ids must be unique")
            seen.add(gid)
        if role == "test":
            points = meta.get("points")
            if isinstance(points, bool) or not isinstance(points, int | float) or points < 0:
                raise ValueError(f"{where}: a test cell needs 'points' >= 0 in its nbgrader metadata, got {points!r}")
            if cell.cell_type != "code":
                raise ValueError(f"{where}: a test cell must be a code cell")
        # Markers outside the cell type that understands them would be copied verbatim to the students.
        if role != "answer" and _has_marker(cell.source, BEGIN_SOLUTION, END_SOLUTION):
            raise ValueError(f"{where} has solution markers but is not an answer cell: add nbgrader "
                             "metadata {'solution': true, 'grade_id': ...}")
        if role != "test" and _has_marker(cell.source, BEGIN_HIDDEN, END_HIDDEN):
            raise ValueError(f"{where} has hidden-test markers but is not a test cell: add nbgrader "
                             "metadata {'grade': true, 'grade_id': ..., 'points': ...}")
        list(_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, where))  # balanced markers
        list(_regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, where))


def _has_marker(source: str, begin: str, end: str) -> bool:
    return begin in source or end in source


def _regions(source: str, begin: str, end: str, where: str = "cell") -> Iterator[tuple[str, str]]:
    """Split ``source`` into ``("text" | "region" | "begin" | "end", line)`` pairs, checking the markers pair up.

    Like nbgrader, any line that *contains* a marker is a marker line, so ``## BEGIN SOLUTION`` with two
    hashes still hides the solution instead of leaking it.
    """
    inside = False
    for line in source.splitlines():
        if begin in line:
            if inside:
                raise ValueError(f"{where}: {begin!r} inside another {begin!r} region; close it first")
            inside = True
            yield "begin", line
        elif end in line:
            if not inside:
                raise ValueError(f"{where}: {end!r} without a matching {begin!r}")
            inside = False
            yield "end", line
        else:
            yield ("region" if inside else "text"), line
    if inside:
        raise ValueError(f"{where}: {begin!r} is never closed by {end!r}")


def student_stub(cell: NotebookNode) -> str:
    """The student's version of an answer cell: each solution region replaced by the stub, same indentation."""
    stub = CODE_STUB if cell.cell_type == "code" else (MARKDOWN_STUB,)
    if not _has_marker(cell.source, BEGIN_SOLUTION, END_SOLUTION):
        return "\n".join(stub)  # nbgrader's rule: an answer cell without markers is all solution
    lines: list[str] = []
    for kind, line in _regions(cell.source, BEGIN_SOLUTION, END_SOLUTION):
        if kind == "text":
            lines.append(line)
        elif kind == "begin":
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(indent + s for s in stub)
    return "\n".join(lines)


def _without_hidden_tests(source: str) -> str:
    return "\n".join(line for kind, line in _regions(source, BEGIN_HIDDEN, END_HIDDEN) if kind == "text")


def _clear_run_state(cell: NotebookNode) -> None:
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    for key in _RUN_METADATA:
        cell.metadata.pop(key, None)


def _badge_cell_source(url: str) -> str:
    return f"[![Open In Colab]({COLAB_BADGE})]({url})"


def _point_badges_at(nb: NotebookNode, url: str) -> None:
    """Make every Colab link to ``solutions/`` point at the assignment; add a badge on top if there is none."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _SOLUTION_COLAB_URL.sub(url, cell.source)
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown" or url not in first.source:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_badge_cell_source(url)))


def build_student_notebook(solution: NotebookNode, assignment_path: str = "assignments/assignment.ipynb",
                           *, name: str = "solution") -> NotebookNode:
    """The student's notebook made from the instructor's ``solution`` (which is left unchanged).

    Solution regions become ``# YOUR CODE HERE`` / ``raise NotImplementedError``, hidden tests go,
    outputs are cleared, and the Colab badge points at ``assignment_path`` (the path in the repository,
    e.g. ``"assignments/02_iou.ipynb"``). Test cells are marked read-only and graded cells undeletable in
    Jupyter, a courtesy only: the autograder always runs the instructor's copy of every test cell.
    """
    validate_solution(solution, name)
    nb = copy.deepcopy(solution)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        _clear_run_state(cell)
        role = cell_role(cell)
        if role == "answer":
            cell.source = student_stub(cell)
        elif role == "test":
            cell.source = _without_hidden_tests(cell.source)
            cell.metadata["editable"] = False
        if role != "other":
            cell.metadata["deletable"] = False
    _point_badges_at(nb, colab_url(assignment_path))
    for i, cell in enumerate(nb.cells):
        if "id" in cell:
            cell.id = str(i)  # nbstripout's numbering, so the file passes `nbstripout --verify` as built
    return nb


def _render(nb: NotebookNode) -> str:
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def _expected_assignments(solutions_dir: Path, assignments_dir: Path) -> dict[Path, str]:
    """Map each assignment file to the text it must have, built from ``solutions_dir/*.ipynb``."""
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"no solutions folder at {solutions_dir}")
    expected = {}
    for src in sorted(solutions_dir.glob("*.ipynb")):
        target = assignments_dir / src.name
        repo_path = f"{assignments_dir.name}/{src.name}"  # the badge's path in the repository
        nb = build_student_notebook(read_notebook(src), repo_path, name=str(src))
        expected[target] = _render(nb)
    return expected


def build_assignments(solutions_dir: str | Path = "solutions", assignments_dir: str | Path = "assignments",
                      ) -> list[Path]:
    """Write ``assignments_dir/NN_name.ipynb`` for every ``solutions_dir/NN_name.ipynb``; return the files changed.

    A file whose content would not change is not rewritten, so building twice changes nothing.
    """
    solutions_dir, assignments_dir = Path(solutions_dir), Path(assignments_dir)
    expected = _expected_assignments(solutions_dir, assignments_dir)
    assignments_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for target, text in expected.items():
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(target)
    return changed


def check_up_to_date(solutions_dir: str | Path = "solutions", assignments_dir: str | Path = "assignments",
                     ) -> list[str]:
    """Problems that make ``assignments_dir`` differ from a fresh build of ``solutions_dir``; empty when current.

    Compares notebook content (parsed JSON), so re-indenting a file by hand is not a problem, but any
    change of a cell, of metadata, a missing file or an assignment without a solution is.
    """
    solutions_dir, assignments_dir = Path(solutions_dir), Path(assignments_dir)
    expected = _expected_assignments(solutions_dir, assignments_dir)
    problems = []
    for target, text in expected.items():
        if not target.is_file():
            problems.append(f"{target} is missing: run `coursekit assignments build`")
            continue
        try:
            same = json.loads(target.read_text(encoding="utf-8")) == json.loads(text)
        except json.JSONDecodeError:
            same = False
        if not same:
            problems.append(f"{target} is out of date with {solutions_dir / target.name}: "
                            "run `coursekit assignments build`")
    for orphan in sorted(set(assignments_dir.glob("*.ipynb")) - set(expected)):
        problems.append(f"{orphan} has no solution in {solutions_dir}: delete it or add the solution")
    return problems


def _is_generic(line: str) -> bool:
    """True for lines that carry no answer: blank, punctuation, keywords only (``else:``, ``pass``, ``)``)."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line)
    return all(keyword.iskeyword(w) for w in words) and not re.search(r"\d", line)


def _secret_lines(solution: NotebookNode) -> set[str]:
    """Stripped lines inside solution regions and hidden tests, minus lines the students may see anyway."""
    secret, public = set(), set()
    for cell in solution.cells:
        role, source = cell_role(cell), cell.source
        if role == "answer" and not _has_marker(source, BEGIN_SOLUTION, END_SOLUTION):
            secret.update(line.strip() for line in source.splitlines())
            continue
        markers = (BEGIN_SOLUTION, END_SOLUTION) if role == "answer" else (BEGIN_HIDDEN, END_HIDDEN)
        for kind, line in _regions(source, *markers):
            (secret if kind == "region" else public).add(line.strip())
    return {s for s in secret - public if s and not _is_generic(s)}


def leaked_lines(solution_nb: NotebookNode | str | Path, student_nb: NotebookNode | str | Path) -> list[str]:
    """Lines of solution code or hidden tests (or their markers) that appear in the student's notebook.

    A line counts when it appears, stripped, as a line of any cell of the student notebook (outputs
    included). Lines that carry no answer (``else:``, ``pass``) and lines the solution also shows
    outside its hidden parts are not secrets. Empty list: nothing leaked.
    """
    solution = read_notebook(solution_nb) if isinstance(solution_nb, str | Path) else solution_nb
    student = read_notebook(student_nb) if isinstance(student_nb, str | Path) else student_nb
    student_lines = {line.strip() for line in _all_text(student).splitlines()}
    leaks = sorted(_secret_lines(solution) & student_lines)
    text = _all_text(student)
    leaks += [m for m in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN) if m in text]
    return leaks


def _all_text(nb: NotebookNode) -> str:
    """Every cell's source and every text output, one string (where a leak could hide)."""
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if isinstance(out.get("text", ""), str) else "")
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)
