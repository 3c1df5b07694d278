"""The autograder: run a student's submission against the instructor's solution notebook, cell by cell.

What gets executed is rebuilt from the *solution's* structure: every instructor cell (setup, text,
visible checks, tests with their hidden part put back) comes from the solution, and only the answer
cells come from the submission, matched by the nbgrader ``grade_id`` in their metadata (Jupyter,
JupyterLab, VS Code and Colab keep cell metadata). So a student who edits or deletes a test cell gets
the original back, a deleted answer cell counts as unanswered, and cells a student adds are not run.

The rebuilt notebook runs in a fresh IPython kernel of *this* Python environment, offline, one cell at
a time: a cell that raises is recorded and the next cell runs; a cell that runs past its time limit is
interrupted (and when that does not stop it, the kernel is restarted and the cells that had worked are
run again), so a broken or endless answer costs only the tests that depend on it. Each test cell is
worth its ``points`` if it runs without an exception, and nothing otherwise.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nbformat
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode
from traitlets.config import Config

from coursekit.grading.build import (
    BEGIN_HIDDEN,
    END_HIDDEN,
    cell_role,
    grade_id,
    read_notebook,
    student_stub,
    validate_solution,
)

__all__ = [
    "CellResult",
    "GradeReport",
    "TestResult",
    "assemble_notebook",
    "find_solution",
    "grade_folder",
    "grade_notebook",
    "invalid_report",
    "submissions_in",
]

DEFAULT_CELL_TIMEOUT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0
PROBE_TIMEOUT_S = 3.0  # after interrupting a cell: how long the kernel may take to answer again
MAX_RESTARTS = 3  # kernel restarts per submission before the remaining cells are given up
MAX_ERROR_CHARS = 300  # the message shown to a student is the exception's last line, kept short
_NOT_GRADED = "not run: the submission could not be graded (see the notes)"
_TIMEOUT_ENAME = "CellTimeout"  # marks nbclient's stand-in reply for a cell that ran out of time
# Environment variables that look like credentials are not handed to student code.
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE", re.IGNORECASE)

CellStatus = Literal["ok", "error", "timeout", "missing", "not_run"]
TestStatus = Literal["passed", "failed", "timeout", "not_run"]


@dataclass
class TestResult:
    """One test cell's outcome: all of ``max_points`` when it ran without an exception, else 0."""

    __test__ = False  # not a pytest test class, despite the name

    grade_id: str
    points: float
    max_points: float
    status: TestStatus
    error: str | None = None  # the exception's last line, e.g. "AssertionError: disjoint boxes: IoU 0"


@dataclass
class CellResult:
    """How one code cell of the graded notebook ran (answers, tests, setup, sanity checks)."""

    index: int  # position in the graded notebook (the solution's layout)
    role: Literal["answer", "test", "other"]
    grade_id: str | None
    status: CellStatus  # "missing": an answer cell the submission does not have (run as the empty stub)
    error: str | None = None


@dataclass
class GradeReport:
    """The grade of one submission; ``coursekit.grading.report`` writes it as JSON and as a CSV row."""

    student: str
    assignment: str  # the solution notebook's name, e.g. "02_iou"
    submission: str
    solution: str
    score: float
    max_score: float
    tests: list[TestResult]
    cells: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the student should know beyond the tests
    status: Literal["graded", "invalid"] = "graded"  # "invalid": could not be graded (see notes)
    duration_s: float = 0.0


@dataclass
class _Outcome:
    status: CellStatus
    error: str | None = None
    kernel_in_doubt: bool = False  # timed out or died: the kernel may be busy or gone


# --------------------------------------------------------------------------- the notebook that is graded


def _instructor_source(cell: NotebookNode) -> str:
    """A solution cell as graded: hidden tests kept, their marker lines dropped."""
    return "\n".join(line for line in cell.source.splitlines() if BEGIN_HIDDEN not in line and END_HIDDEN not in line)


def _answers_by_id(submission: NotebookNode) -> dict[str, NotebookNode]:
    answers: dict[str, NotebookNode] = {}
    for cell in submission.cells:
        if grade_id(cell):
            answers.setdefault(grade_id(cell), cell)  # a duplicated answer cell: the first one counts
    return answers


def _count_unknown_cells(solution: NotebookNode, submission: NotebookNode) -> int:
    """Code cells of the submission that are neither graded cells nor the assignment's own (added or edited)."""
    known_ids = {grade_id(c) for c in solution.cells if grade_id(c)}
    given = {c.source.strip() for c in solution.cells if c.cell_type == "code" and cell_role(c) == "other"}
    return sum(1 for c in submission.cells if c.cell_type == "code" and c.source.strip()
               and grade_id(c) not in known_ids and c.source.strip() not in given)


def assemble_notebook(solution: NotebookNode, submission: NotebookNode) -> tuple[NotebookNode, list[str]]:
    """The notebook to grade: the solution's cells, with the student's answers in the answer cells.

    Returns the notebook and notes for the student (deleted answer cells, cells they added that are
    not run). Neither input is modified.
    """
    validate_solution(solution)
    answers = _answers_by_id(submission)
    cells, notes = [], []
    for sol_cell in solution.cells:
        role, cell = cell_role(sol_cell), copy.deepcopy(sol_cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if role == "answer":
            answer = answers.get(grade_id(sol_cell))
            if answer is None:
                notes.append(f"answer cell {grade_id(sol_cell)!r} is missing from the submission: graded as unanswered")
                cell.metadata["coursekit_missing"] = True
            cell.source = student_stub(sol_cell) if answer is None else answer.source
        elif role == "test":
            cell.source = _instructor_source(sol_cell)
        cells.append(cell)
    unknown = _count_unknown_cells(solution, submission)
    if unknown:
        notes.append(f"{unknown} code cell(s) outside the answer cells were added or edited by you and were not "
                     "run: only the answer cells are graded, so put all your code in them")
    return nbformat.v4.new_notebook(cells=cells, metadata=dict(solution.metadata)), notes


# --------------------------------------------------------------------------- running it


class _ThisPythonKernelManager(AsyncKernelManager):
    """Starts ipykernel with this very interpreter, whichever "python3" kernelspec is installed elsewhere."""

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name="Python 3 (coursekit grader)", language="python")


class _GradingClient(NotebookClient):
    """nbclient that keeps no cell outputs: grading reads each cell's reply, and a student's endless print
    loop must not fill the grader's memory."""

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> None:
        return None


def _transport_config(socket_dir: Path) -> Config:
    """Talk to the kernel over Unix sockets in a private folder where possible: no TCP port is opened."""
    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(socket_dir / "kernel")}})


def _kernel_env(profile: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k)}
    # Grading never needs the network, never opens a window, and uses the notebooks' fast profile.
    env.update(COURSEKIT_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               COURSEKIT_PROFILE=profile, PYDEVD_DISABLE_FILE_VALIDATION="1")
    return env


def _last_line(ename: str, evalue: str) -> str:
    line = f"{ename}: {evalue}" if evalue else ename
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class _Runner:
    """Executes code cells one by one in one kernel, surviving errors, endless loops and kernel deaths."""

    def __init__(self, nb: NotebookNode, cell_timeout: float, timeout: float, socket_dir: Path):
        self.nb, self.cell_timeout, self.timeout = nb, cell_timeout, timeout
        self.probe = nbformat.v4.new_code_cell("pass")
        # The client's own notebook has one extra cell: a probe that asks "are you responsive again?".
        self.client = _GradingClient(
            nbformat.v4.new_notebook(cells=[*nb.cells, self.probe]), kernel_name="python3",
            kernel_manager_class=_ThisPythonKernelManager, allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
            timeout_func=lambda cell: self._limit, iopub_timeout=1, record_timing=False,
            on_cell_executed=self._record_reply, config=_transport_config(socket_dir))
        self._limit, self._reply, self.restarts, self.deadline = cell_timeout, None, 0, float("inf")
        self.succeeded: list[int] = []

    def _record_reply(self, cell: NotebookNode, cell_index: int, execute_reply: dict) -> None:
        self._reply = execute_reply.get("content", {})

    def _execute(self, index: int, limit: float) -> _Outcome:
        """Run one cell within ``limit`` seconds; the kernel may be left busy (timeout) or dead."""
        self._limit, self._reply = limit, None
        cell = self.client.nb.cells[index]
        try:
            self.client.execute_cell(cell, index)
        except DeadKernelError:
            return _Outcome("error", "DeadKernelError: the kernel died (crash, exit or out of memory)", True)
        reply = self._reply or {}
        if reply.get("status") != "error":
            return _Outcome("ok")
        if reply.get("ename") == _TIMEOUT_ENAME:
            return _Outcome("timeout", f"TimeoutError: the cell ran longer than {limit:g} s and was stopped", True)
        return _Outcome("error", _last_line(reply.get("ename", "Error"), reply.get("evalue", "")))

    def _time_left(self) -> float:
        return min(self.cell_timeout, self.deadline - time.monotonic())

    def _restart(self) -> None:
        """Start the kernel afresh and re-run the cells that had worked, so later cells find their state."""
        self.restarts += 1
        run_sync(self.client.km.restart_kernel)(now=True)
        self.client.kc.stop_channels()
        self.client.start_new_kernel_client()
        for index in list(self.succeeded):
            if self._time_left() <= 0:
                raise _GiveUp(f"the total time limit of {self.timeout:g} s was reached; later cells were not run")
            outcome = self._execute(index, self._time_left())
            if outcome.kernel_in_doubt:
                raise _GiveUp("a cell that had worked hung or crashed when re-run after a kernel restart; "
                              "the remaining cells were not run")
            if outcome.status != "ok":
                self.succeeded.remove(index)  # flaky the second time: later cells do without it

    def _recover(self) -> None:
        """After a timeout or a crash: continue if the kernel answers, otherwise restart it."""
        alive = self.client.km is not None and run_sync(self.client.km.is_alive)()
        if alive and not self._execute(len(self.nb.cells), PROBE_TIMEOUT_S).kernel_in_doubt:
            return
        if self.restarts >= MAX_RESTARTS:
            raise _GiveUp(f"the kernel had to be restarted {MAX_RESTARTS} times; the remaining cells were not run")
        self._restart()

    def run(self, cwd: str, env: dict[str, str]) -> tuple[list[_Outcome | None], list[str]]:
        """Outcome per cell of ``nb`` (``None`` for markdown and empty cells) and notes for the report."""
        outcomes: list[_Outcome | None] = [None] * len(self.nb.cells)
        notes: list[str] = []
        with self.client.setup_kernel(cwd=cwd, env=env):
            self.deadline = time.monotonic() + self.timeout
            for i, cell in enumerate(self.nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                if self._time_left() <= 0:
                    notes.append(f"the total time limit of {self.timeout:g} s was reached; later cells were not run")
                    break
                outcomes[i] = self._execute(i, self._time_left())
                if outcomes[i].status == "ok":
                    self.succeeded.append(i)
                elif outcomes[i].kernel_in_doubt:
                    try:
                        self._recover()
                    except _GiveUp as stop:
                        notes.append(str(stop))
                        break
        if self.restarts:
            notes.append(f"the kernel was restarted {self.restarts} time(s) after a cell hung or crashed")
        return outcomes, notes


class _GiveUp(Exception):
    """Too many kernel restarts: stop grading this submission."""


# --------------------------------------------------------------------------- scoring


def _cell_results(nb: NotebookNode, outcomes: list[_Outcome | None]) -> list[CellResult]:
    results = []
    for i, (cell, outcome) in enumerate(zip(nb.cells, outcomes, strict=True)):
        if cell.cell_type != "code":
            continue
        outcome = outcome or _Outcome("ok" if not cell.source.strip() else "not_run")
        status = "missing" if cell.metadata.get("coursekit_missing") else outcome.status
        results.append(CellResult(i, cell_role(cell), grade_id(cell), status, outcome.error))
    return results


def _test_results(nb: NotebookNode, outcomes: list[_Outcome | None]) -> list[TestResult]:
    tests = []
    for cell, outcome in zip(nb.cells, outcomes, strict=True):
        if cell_role(cell) != "test":
            continue
        max_points = float(cell.metadata["nbgrader"]["points"])
        outcome = outcome or _Outcome("not_run", "not run: grading stopped before this test (see the notes)")
        status: TestStatus = {"ok": "passed", "error": "failed"}.get(outcome.status, outcome.status)
        tests.append(TestResult(grade_id(cell), max_points if status == "passed" else 0.0, max_points, status,
                                outcome.error))
    return tests


def _max_score(solution: NotebookNode) -> float:
    return float(sum(c.metadata["nbgrader"]["points"] for c in solution.cells if cell_role(c) == "test"))


def grade_notebook(submission: str | Path, solution: str | Path, *, student: str | None = None,
                   cell_timeout: float = DEFAULT_CELL_TIMEOUT_S, timeout: float = DEFAULT_TIMEOUT_S,
                   profile: Literal["fast", "lecture"] = "fast", cwd: str | Path | None = None) -> GradeReport:
    """Grade one submitted notebook against the solution notebook it answers.

    Args:
        submission: the student's ``.ipynb``.
        solution: the instructor's ``solutions/NN_name.ipynb``.
        student: the name in the report; default the submission's file name without ``.ipynb``.
        cell_timeout: seconds one cell may run before it is interrupted.
        timeout: seconds the whole submission may run; cells after that are not run (0 points).
        profile: ``COURSEKIT_PROFILE`` in the kernel ("fast": tiny data, few steps).
        cwd: the kernel's working directory; default a fresh empty temporary folder, so one
            submission's files never reach the next one.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a
    notebook or a solution whose grading metadata is inconsistent.
    """
    if cell_timeout <= 0 or timeout <= 0:
        raise ValueError(f"time limits must be positive, got cell_timeout={cell_timeout}, timeout={timeout}")
    if profile not in ("fast", "lecture"):
        raise ValueError(f"profile must be 'fast' or 'lecture', got {profile!r}")
    start = time.perf_counter()
    solution_nb, submission_nb = read_notebook(solution), read_notebook(submission)
    nb, notes = assemble_notebook(solution_nb, submission_nb)
    with tempfile.TemporaryDirectory(prefix="coursekit-grade-") as tmp:
        workdir, socket_dir = Path(tmp) / "work", Path(tmp) / "sockets"
        workdir.mkdir()
        socket_dir.mkdir()
        runner = _Runner(nb, cell_timeout, timeout, socket_dir)
        outcomes, run_notes = runner.run(str(cwd or workdir), _kernel_env(profile))
    tests = _test_results(nb, outcomes)
    return GradeReport(
        student=student or Path(submission).stem, assignment=Path(solution).stem, submission=str(submission),
        solution=str(solution), score=sum(t.points for t in tests), max_score=_max_score(solution_nb),
        tests=tests, cells=_cell_results(nb, outcomes), notes=notes + run_notes,
        duration_s=round(time.perf_counter() - start, 2))


def invalid_report(submission: str | Path, solution: str | Path | None, student: str, reason: str) -> GradeReport:
    """The report of a submission that could not be graded at all (not a notebook, no solution): 0 points.

    ``solution``, when known, must be a valid solution notebook: its tests are listed as not run.
    """
    tests = []
    if solution is not None:
        tests = [TestResult(grade_id(c), 0.0, float(c.metadata["nbgrader"]["points"]), "not_run", _NOT_GRADED)
                 for c in read_notebook(solution).cells if cell_role(c) == "test"]
    return GradeReport(student=student, assignment=Path(solution).stem if solution else "",
                       submission=str(submission), solution=str(solution or ""), score=0.0,
                       max_score=sum(t.max_points for t in tests), tests=tests, notes=[reason], status="invalid")


# --------------------------------------------------------------------------- finding solutions, folders


def find_solution(submission: str | Path, solutions_dir: str | Path = "solutions") -> Path:
    """The solution a submission answers, from its name: ``solutions/02_iou.ipynb`` matches any submission
    whose file or folder name contains ``02_iou`` (``02_iou.ipynb``, ``alice_02_iou.ipynb``, ``02_iou/alice.ipynb``).
    """
    solutions_dir = Path(solutions_dir)
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"no solutions folder at {solutions_dir}: pass --solution or --solutions")
    names = [Path(part).stem for part in Path(submission).parts[-3:]]  # the file and the two folders above
    matches = [p for p in sorted(solutions_dir.glob("*.ipynb")) if any(p.stem in n for n in names)]
    if not matches:
        raise ValueError(f"no solution in {solutions_dir} matches {submission}: name the file after the "
                         "assignment (e.g. 02_iou.ipynb) or pass --solution")
    if len(matches) > 1:
        longest = max(matches, key=lambda p: len(p.stem))
        if sum(len(p.stem) == len(longest.stem) for p in matches) > 1:
            raise ValueError(f"{submission} matches several solutions ({', '.join(p.name for p in matches)}): "
                             "pass --solution")
        return longest
    return matches[0]


def submissions_in(folder: str | Path) -> list[Path]:
    """Every ``.ipynb`` under ``folder``, Jupyter's checkpoints and hidden folders left out, sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*.ipynb")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def grade_folder(folder: str | Path, solution: str | Path | None = None, *, solutions_dir: str | Path = "solutions",
                 **kwargs) -> list[GradeReport]:
    """Grade every notebook under ``folder``; a student's name is the path below ``folder`` without ``.ipynb``.

    ``solution`` applies to all; without it each submission's solution is found by name (``find_solution``).
    A submission that cannot be graded (invalid notebook, no matching solution) gets an ``"invalid"``
    report with 0 points instead of stopping the class; a broken solution stops everything (``ValueError``).
    ``kwargs`` go to ``grade_notebook``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    reports, checked = [], set()
    for path in submissions_in(folder):
        student = path.relative_to(folder).with_suffix("").as_posix()
        try:
            sol = Path(solution or find_solution(path, solutions_dir))
        except ValueError as err:
            reports.append(invalid_report(path, None, student, str(err)))
            continue
        if sol not in checked:  # the instructor's mistake: raise, do not blame the students
            validate_solution(read_notebook(sol), str(sol))
            checked.add(sol)
        try:
            reports.append(grade_notebook(path, sol, student=student, **kwargs))
        except ValueError as err:  # the solution is valid, so the submission is not a notebook
            reports.append(invalid_report(path, sol, student, str(err)))
    return reports
