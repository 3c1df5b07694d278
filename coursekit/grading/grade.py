"""The autograder: run a student's submission against the instructor's solution notebook, cell by cell.

What gets executed is rebuilt from the *solution's* structure: every instructor cell (setup, text,
visible checks, tests with their hidden part put back) comes from the solution, and only the answer
cells come from the submission, matched by the nbgrader ``grade_id`` in their metadata (Jupyter,
JupyterLab, VS Code and Colab keep cell metadata). So a student who edits or deletes a test cell gets
the original back, a deleted answer cell counts as unanswered, and cells a student adds are not run.

The rebuilt notebook runs in a fresh IPython kernel of *this* Python environment, offline, one cell at
a time, inside resource limits and, on Linux with bubblewrap, a sandbox (``sandbox.py``): a cell that
raises is recorded and the next cell runs; a cell that runs past its time limit is interrupted (and when
that does not stop it, the kernel is restarted and the cells that had worked are run again), so a broken
or endless answer costs only the tests that depend on it.

A test cell is worth its ``points`` when all of this holds, and nothing otherwise:

* it ran without an exception and reached its last line (an end marker only the grader knows);
* the canary cells around it behaved as planted (``integrity.py``): otherwise the kernel was tampered
  with, the submission is flagged and every test from there on scores 0;
* no answer cell it covers uses a forbidden API or reaches for the kernel's machinery (``static.py``,
  and a run-time guard on the forbidden APIs);
* every value its hidden part publishes with ``expect`` equals the value the *solution* published, in a
  separate clean kernel (``expect.py``; the reference values are cached, never shipped to students).
"""

from __future__ import annotations

import copy
import hashlib
import json
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
from coursekit.grading.expect import EXPECT_MIME, values_match
from coursekit.grading.integrity import Canary, canary_evidence, end_marker, guard_source, make_canary
from coursekit.grading.sandbox import Limits, Sandbox, SandboxMode, resolve_sandbox
from coursekit.grading.static import Finding, check_answer, instructor_imports, protected_names, transform_cell
from coursekit.headless import guard_lost_wakeups

__all__ = [
    "CellResult",
    "GradeReport",
    "TestResult",
    "assemble_notebook",
    "find_solution",
    "forbidden_apis",
    "grade_folder",
    "grade_notebook",
    "invalid_report",
    "reference_values",
    "submissions_in",
]

DEFAULT_CELL_TIMEOUT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0
PROBE_TIMEOUT_S = 3.0  # after interrupting a cell: how long the kernel may take to answer again
MAX_RESTARTS = 3  # kernel restarts per submission before the remaining cells are given up
MAX_ERROR_CHARS = 300  # the message shown to a student is the exception's last line, kept short
MAX_STDOUT_TAIL = 8192  # characters of a cell's output the grader keeps (its end marker is at the end)
MAX_EXPECT_BYTES = 64 * 2**20  # values a test cell may publish with expect
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
    hidden: bool = False  # has hidden checks (Gradescope shows it after the due date)


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
    status: Literal["graded", "invalid", "flagged"] = "graded"  # "invalid": not graded; "flagged": see flags
    duration_s: float = 0.0
    flags: list[str] = field(default_factory=list)  # for the instructor: tampering, with the evidence
    isolation: str = ""  # "bwrap", or why grading was not isolated


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
    """Starts ipykernel with this very interpreter, whichever "python3" kernelspec is installed elsewhere,
    inside the submission's limits and sandbox (``sandbox.py``) when the runner set one."""

    _ck_launch = None  # set on a per-runner subclass: (Sandbox, workdir, socket_dir)

    @property
    def kernel_spec(self) -> KernelSpec:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        interrupt = "signal"
        if self._ck_launch is not None:
            sandbox, workdir, socket_dir = self._ck_launch
            argv = sandbox.command(argv, workdir, socket_dir)
            interrupt = "message"  # the kernel is in its own session: a signal to the launcher would not reach it
        return KernelSpec(argv=argv, display_name="Python 3 (coursekit grader)", language="python",
                          interrupt_mode=interrupt)


@dataclass
class _Captured:
    """What one cell printed (the tail) and the values it published for the grader."""

    stdout: str = ""
    expected: list[dict] = field(default_factory=list)
    expected_bytes: int = 0


class _GradingClient(NotebookClient):
    """nbclient that keeps no cell outputs (a student's endless print loop must not fill the grader's
    memory): only the tail of what a cell prints and the values it publishes with ``expect``."""

    captured: dict[int, _Captured]

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> None:
        box = self.captured.setdefault(cell_index, _Captured())
        content = msg.get("content", {})
        if msg.get("msg_type") == "stream":
            box.stdout = (box.stdout + str(content.get("text", "")))[-MAX_STDOUT_TAIL:]
        elif msg.get("msg_type") in ("display_data", "execute_result"):
            payload = (content.get("data") or {}).get(EXPECT_MIME)
            if isinstance(payload, dict) and box.expected_bytes < MAX_EXPECT_BYTES:
                box.expected_bytes += len(json.dumps(payload))
                box.expected.append(payload)
        return None


def _transport_config(socket_dir: Path) -> Config:
    """Talk to the kernel over Unix sockets in a private folder where possible: no TCP port is opened."""
    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(socket_dir / "kernel"),
                                     "connection_file": str(socket_dir / "kernel.json")}})


def _kernel_env(profile: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k)}
    # Grading never needs the network, never opens a window, and uses the notebooks' fast profile; one
    # thread per kernel, so that parallel jobs do not fight over the cores. Always the CPU: a grade must not
    # depend on whether the grading host has a GPU (cuDNN's sums vary from run to run), and a host's own
    # COURSEKIT_DEVICE=cuda must not reach a sandbox that hides the GPU (ck.device() would raise in every cell).
    env.update(COURSEKIT_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               COURSEKIT_PROFILE=profile, PYDEVD_DISABLE_FILE_VALIDATION="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1", COURSEKIT_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def _sandbox_env(env: dict[str, str], workdir: Path) -> dict[str, str]:
    """Inside the sandbox: home and caches in the kernel's own writable folders."""
    env = dict(env)
    env.update(HOME=str(workdir), TMPDIR="/tmp", MPLCONFIGDIR="/tmp/matplotlib", IPYTHONDIR="/tmp/ipython",
               JUPYTER_RUNTIME_DIR="/tmp/jupyter", XDG_CACHE_HOME="/tmp/cache", TORCH_HOME="/tmp/torch")
    return env


def _last_line(ename: str, evalue: str) -> str:
    line = f"{ename}: {evalue}" if evalue else ename
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class _Runner:
    """Executes code cells one by one in one kernel, surviving errors, endless loops and kernel deaths."""

    def __init__(self, nb: NotebookNode, cell_timeout: float, timeout: float, socket_dir: Path,
                 launch: tuple | None = None):
        self.nb, self.cell_timeout, self.timeout = nb, cell_timeout, timeout
        self.probe = nbformat.v4.new_code_cell("pass")
        manager = _ThisPythonKernelManager
        if launch is not None:
            manager = type("_SandboxedKernelManager", (_ThisPythonKernelManager,), {"_ck_launch": launch})
        # A lost ZeroMQ wakeup would time out a correct cell and cost the student its points (coursekit/headless.py).
        guard_lost_wakeups()
        # The client's own notebook has one extra cell: a probe that asks "are you responsive again?".
        self.client = _GradingClient(
            nbformat.v4.new_notebook(cells=[*nb.cells, self.probe]), kernel_name="python3",
            kernel_manager_class=manager, allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
            timeout_func=lambda cell: self._limit, iopub_timeout=1, record_timing=False,
            on_cell_executed=self._record_reply, config=_transport_config(socket_dir))
        self.client.captured = {}
        self._limit, self._reply, self.restarts, self.deadline = cell_timeout, None, 0, float("inf")
        self.succeeded: list[int] = []

    def _record_reply(self, cell: NotebookNode, cell_index: int, execute_reply: dict) -> None:
        self._reply = execute_reply.get("content", {})

    def _execute(self, index: int, limit: float) -> _Outcome:
        """Run one cell within ``limit`` seconds; the kernel may be left busy (timeout) or dead."""
        self._limit, self._reply = limit, None
        self.client.captured.pop(index, None)
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
        return _Outcome("error", _last_line(str(reply.get("ename", "Error")), str(reply.get("evalue", ""))))

    def captured(self, index: int) -> _Captured:
        return self.client.captured.get(index, _Captured())

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


# --------------------------------------------------------------------------- the run with its integrity checks


@dataclass
class _Plan:
    """The notebook that actually runs: the graded notebook plus the grader's own cells, and where each is."""

    nb: NotebookNode  # cells to execute
    origin: list[int | None]  # graded-notebook index of each executed cell (None: a grader cell)
    canaries: dict[int, Canary]  # executed index -> canary
    end_markers: dict[int, str]  # executed index of a test cell -> the secret it prints at its end


_EXPECT_SOURCE = (Path(__file__).with_name("expect.py")).read_text(encoding="utf-8")
# The grader's first cell: ``expect`` without importing coursekit (which imports torch: seconds of a cell's
# time limit). Hidden tests may call it directly; ``from coursekit.grading import expect`` gives the same.
_PRELUDE = ("def _ck_expect():\n    namespace = {'__name__': 'coursekit_grader_expect'}\n"
            f"    exec({_EXPECT_SOURCE!r}, namespace)\n    return namespace['expect']\n\n\n"
            "expect = _ck_expect()\ndel _ck_expect")


def _plan(graded: NotebookNode, forbidden: list[str]) -> _Plan:
    cells, origin, canaries, markers = [], [], {}, {}
    answers = [c.source for c in graded.cells if cell_role(c) == "answer"]
    cells.append(nbformat.v4.new_code_cell(_PRELUDE))
    origin.append(None)

    def add(cell: NotebookNode, where: int | None) -> int:
        cells.append(cell)
        origin.append(where)
        return len(cells) - 1

    def add_canaries() -> None:
        for kind in ("raise", "print"):
            canary = make_canary(kind)
            canaries[add(nbformat.v4.new_code_cell(canary.source), None)] = canary

    guard = guard_source(forbidden, answers + [transform_cell(a) for a in answers]) if forbidden else None
    for i, cell in enumerate(graded.cells):
        role = cell_role(cell)
        if role in ("answer", "test") and guard:
            add(nbformat.v4.new_code_cell(guard), None)
        if role == "test":
            add_canaries()
            secret, line = end_marker()
            test = copy.deepcopy(cell)
            test.source = cell.source + line
            markers[add(test, i)] = secret
            add_canaries()
        else:
            add(cell, i)
    return _Plan(nbformat.v4.new_notebook(cells=cells, metadata=graded.metadata), origin, canaries, markers)


@dataclass
class _RunResult:
    outcomes: list[_Outcome | None]  # per graded-notebook cell
    published: dict[int, list[dict]]  # graded index of a test cell -> values it published with expect
    ended: set[int]  # graded indexes of test cells that printed their end marker
    tampering: list[tuple[int, str]]  # (graded index of the next test cell, evidence) per deviating canary
    notes: list[str]


def _run(graded: NotebookNode, forbidden: list[str], *, cell_timeout: float, timeout: float, profile: str,
         sandbox: Sandbox, cwd: str | Path | None) -> _RunResult:
    plan = _plan(graded, forbidden)
    with tempfile.TemporaryDirectory(prefix="coursekit-grade-") as tmp:
        workdir, socket_dir = Path(tmp) / "work", Path(tmp) / "sockets"
        workdir.mkdir()
        socket_dir.mkdir()
        env = _kernel_env(profile)
        launch = None
        if sandbox.mode == "bwrap" or os.name == "posix":
            launch = (sandbox, Path(cwd or workdir), socket_dir)
            if sandbox.mode == "bwrap":
                env = _sandbox_env(env, Path(cwd or workdir))
        runner = _Runner(plan.nb, cell_timeout, timeout, socket_dir, launch)
        outcomes, notes = runner.run(str(cwd or workdir), env)
    result = _RunResult([None] * len(graded.cells), {}, set(), [], notes)
    next_test = _next_test_index(plan)
    for k, outcome in enumerate(outcomes):
        where, box = plan.origin[k], runner.captured(k)
        if k in plan.canaries:
            if outcome is None:
                continue  # not run: grading stopped before it
            evidence = canary_evidence(plan.canaries[k], outcome.status, outcome.error, box.stdout)
            if evidence:
                result.tampering.append((next_test[k], evidence))
            continue
        if where is None:
            continue
        result.outcomes[where] = outcome
        if k in plan.end_markers:
            result.published[where] = box.expected
            if outcome is not None and outcome.status == "ok" and plan.end_markers[k] in box.stdout:
                result.ended.add(where)
    return result


def _next_test_index(plan: _Plan) -> dict[int, int]:
    """For each executed cell, the graded index of the first test cell at or after it (or past the end)."""
    nxt, following = {}, len(plan.origin) + 10**6
    for k in range(len(plan.origin) - 1, -1, -1):
        if k in plan.end_markers:
            following = plan.origin[k]
        nxt[k] = following
    return nxt


# --------------------------------------------------------------------------- scoring


def _covers(nb: NotebookNode) -> dict[str, list[str]]:
    """Test grade_id -> the answer grade_ids it covers (metadata ``coursekit.covers``, else all answers above)."""
    covers, above = {}, []
    for cell in nb.cells:
        role = cell_role(cell)
        if role == "answer":
            above.append(grade_id(cell))
        elif role == "test":
            declared = cell.metadata.get("coursekit", {}).get("covers")
            covers[grade_id(cell)] = list(declared) if declared else list(above)
    return covers


def forbidden_apis(solution: NotebookNode) -> list[str]:
    """The APIs the assignment forbids, from the solution's notebook metadata ``coursekit.forbidden``."""
    forbidden = solution.metadata.get("coursekit", {}).get("forbidden", [])
    if not isinstance(forbidden, list) or not all(isinstance(f, str) and f for f in forbidden):
        raise ValueError("the solution's metadata coursekit.forbidden must be a list of dotted names, "
                         f"got {forbidden!r}")
    return list(forbidden)


def _static_findings(graded: NotebookNode, forbidden: list[str]) -> dict[str, list[Finding]]:
    """Answer grade_id -> what its source breaks (empty lists left out)."""
    instructor = [c.source for c in graded.cells if c.cell_type == "code" and cell_role(c) != "answer"]
    tests = [c.source for c in graded.cells if cell_role(c) == "test"]
    protected, imports = protected_names(instructor, tests) | {"expect"}, instructor_imports(instructor)
    findings = {}
    for cell in graded.cells:
        if cell_role(cell) == "answer" and cell.cell_type == "code" and not cell.metadata.get("coursekit_missing"):
            found = check_answer(cell.source, forbidden, protected, imports)
            if found:
                findings[grade_id(cell)] = found
    return findings


def _compare(published: list[dict], reference: dict[str, dict]) -> str | None:
    """None when every value the solution published was published alike by the submission."""
    got: dict[str, list] = {}
    for item in published:
        if isinstance(item.get("key"), str):
            got.setdefault(item["key"], []).append(item.get("value"))
    for key, want in reference.items():
        if key not in got:
            return f"hidden check {key!r}: no value (the test stopped before it)"
        for value in got[key]:
            why = values_match(value, want["value"], want["atol"], want["rtol"])
            if why:
                return f"hidden check {key!r}: {why}"
    return None


@dataclass
class _Verdict:
    tests: list[TestResult]
    flags: list[str]


def _verdict(graded: NotebookNode, run: _RunResult, findings: dict[str, list[Finding]],
             references: dict[str, dict[str, dict]]) -> _Verdict:
    covers, flags = _covers(graded), []
    answer_pos = {grade_id(c): i for i, c in enumerate(graded.cells) if cell_role(c) == "answer"}
    tamper_from = min((i for i, _ in run.tampering), default=None)
    for i, evidence in run.tampering[:3]:
        flags.append(f"the kernel was tampered with (before test {_gid_at(graded, i)}): {evidence}")
    for gid, found in findings.items():
        tampering = [f for f in found if f.kind == "tampering"]
        if tampering:
            more = f" (and {len(tampering) - 1} more)" if len(tampering) > 1 else ""
            flags.append(f"answer {gid!r} {tampering[0]}{more}")
            tamper_from = min(answer_pos[gid], tamper_from if tamper_from is not None else answer_pos[gid])
    tests = []
    for i, cell in enumerate(graded.cells):
        if cell_role(cell) != "test":
            continue
        gid, max_points = grade_id(cell), float(cell.metadata["nbgrader"]["points"])
        outcome = run.outcomes[i] or _Outcome("not_run", "not run: grading stopped before this test (see the notes)")
        status: TestStatus = {"ok": "passed", "error": "failed"}.get(outcome.status, outcome.status)
        error = outcome.error
        if status == "passed":
            error = _why_not(gid, i, covers, findings, run, references, tamper_from)
            status = "failed" if error else "passed"
        hidden = BEGIN_HIDDEN in cell.source or bool(references.get(gid))
        tests.append(TestResult(gid, max_points if status == "passed" else 0.0, max_points, status, error, hidden))
    return _Verdict(tests, flags)


def _gid_at(graded: NotebookNode, index: int) -> str:
    return repr(grade_id(graded.cells[index])) if index < len(graded.cells) else "(after the last test)"


def _why_not(gid: str, index: int, covers: dict[str, list[str]], findings: dict[str, list[Finding]],
             run: _RunResult, references: dict[str, dict[str, dict]], tamper_from: int | None) -> str | None:
    """Why a test whose cell ran without an exception still earns nothing (None: it passes)."""
    if tamper_from is not None and index >= tamper_from:
        return "flagged: the kernel was tampered with before this test (see the flags)"
    for answer in covers.get(gid, []):
        for f in findings.get(answer, []):
            return f"answer {answer!r} {f}"
    if index not in run.ended:
        return "the test did not run to its end (its last line never ran)"
    return _compare(run.published.get(index, []), references.get(gid, {}))


def _cell_results(nb: NotebookNode, outcomes: list[_Outcome | None]) -> list[CellResult]:
    results = []
    for i, (cell, outcome) in enumerate(zip(nb.cells, outcomes, strict=True)):
        if cell.cell_type != "code":
            continue
        outcome = outcome or _Outcome("ok" if not cell.source.strip() else "not_run")
        status = "missing" if cell.metadata.get("coursekit_missing") else outcome.status
        results.append(CellResult(i, cell_role(cell), grade_id(cell), status, outcome.error))
    return results


def _max_score(solution: NotebookNode) -> float:
    return float(sum(c.metadata["nbgrader"]["points"] for c in solution.cells if cell_role(c) == "test"))


# --------------------------------------------------------------------------- reference values


def _uses_expect(solution: NotebookNode) -> bool:
    return any(cell_role(c) == "test" and "expect(" in c.source for c in solution.cells)


def _reference_key(solution_path: Path, profile: str) -> str:
    import coursekit

    digest = hashlib.sha256(solution_path.read_bytes())
    digest.update(f"{profile}|{coursekit.__version__}|{sys.version_info[:2]}".encode())
    try:
        import torch

        digest.update(torch.__version__.encode())
    except ModuleNotFoundError:  # pragma: no cover - torch is a core dependency
        pass
    return digest.hexdigest()[:24]


def _course_weights() -> list[Path]:
    """The offline backbone's folder, which a kernel may read (the rest of the cache holds the references)."""
    root = os.environ.get("COURSEKIT_CACHE") or Path.home() / ".cache" / "coursekit"
    return [Path(root) / "weights"] if (Path(root) / "weights").is_dir() else []


def _references_dir() -> Path:
    """The course's cache folder (as ``coursekit.weights.cache_dir``), never the repository."""
    root = os.environ.get("COURSEKIT_CACHE") or Path.home() / ".cache" / "coursekit"
    return Path(root) / "grading-references"


def _references_from(graded: NotebookNode, run: _RunResult, where: str) -> dict[str, dict[str, dict]]:
    """Test grade_id -> key -> {"value", "atol", "rtol"}; raises if the solution itself fails a test."""
    failed = [f"{grade_id(c)} ({(run.outcomes[i] or _Outcome('not_run')).error})"
              for i, c in enumerate(graded.cells) if cell_role(c) == "test"
              and (run.outcomes[i] is None or run.outcomes[i].status != "ok" or i not in run.ended)]
    if failed or run.tampering:
        raise ValueError(f"{where}: the solution itself does not pass its tests, so it gives no reference values: "
                         + "; ".join(failed or [e for _, e in run.tampering]))
    refs: dict[str, dict[str, dict]] = {}
    for i, cell in enumerate(graded.cells):
        for item in run.published.get(i, []):
            if isinstance(item.get("key"), str):
                refs.setdefault(grade_id(cell), {})[item["key"]] = {
                    "value": item.get("value"), "atol": float(item.get("atol", 1e-6)),
                    "rtol": float(item.get("rtol", 1e-5))}
    return refs


def reference_values(solution: str | Path, *, profile: Literal["fast", "lecture"] = "fast",
                     cell_timeout: float = DEFAULT_CELL_TIMEOUT_S, timeout: float = DEFAULT_TIMEOUT_S,
                     sandbox: SandboxMode = "auto", cache: str | Path | None = None) -> dict[str, dict[str, dict]]:
    """The values the solution publishes with ``expect``, per test and key, from a clean run of the solution.

    Cached on disk (``cache``, default ``$COURSEKIT_CACHE/grading-references``), keyed on the solution's
    bytes, the profile and the versions of coursekit, Python and torch; never written next to the
    student notebooks. ``{}`` when the solution's tests publish nothing.
    """
    solution = Path(solution)
    solution_nb = read_notebook(solution)
    if not _uses_expect(solution_nb):
        return {}
    path = _reference_path(solution, profile, cache)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a torn write: compute it again
    graded, _ = assemble_notebook(solution_nb, solution_nb)
    mode, _ = resolve_sandbox(sandbox)
    run = _run(graded, forbidden_apis(solution_nb), cell_timeout=cell_timeout, timeout=timeout, profile=profile,
               sandbox=Sandbox(mode, Limits(), private=[solution.parent], readable=_course_weights()), cwd=None)
    refs = _references_from(graded, run, str(solution))
    _write_references(path, refs)
    return refs


def _reference_path(solution: Path, profile: str, cache: str | Path | None) -> Path:
    return Path(cache or _references_dir()) / f"{solution.stem}-{_reference_key(solution, profile)}.json"


def _write_references(path: Path, refs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(refs), encoding="utf-8")
    tmp.replace(path)


def _same_answers(solution: NotebookNode, submission: NotebookNode) -> bool:
    ours = {grade_id(c): c.source for c in solution.cells if cell_role(c) == "answer"}
    theirs = {grade_id(c): c.source for c in submission.cells if grade_id(c) in ours}
    return ours == theirs


# --------------------------------------------------------------------------- grading one submission


def grade_notebook(submission: str | Path, solution: str | Path, *, student: str | None = None,
                   cell_timeout: float = DEFAULT_CELL_TIMEOUT_S, timeout: float = DEFAULT_TIMEOUT_S,
                   profile: Literal["fast", "lecture"] = "fast", cwd: str | Path | None = None,
                   sandbox: SandboxMode = "auto", limits: Limits | None = None, slot: int = 0,
                   references: dict[str, dict[str, dict]] | None = None,
                   references_cache: str | Path | None = None) -> GradeReport:
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
        sandbox: "auto" (bubblewrap when installed), "bwrap" or "none" (limits only; the report says so).
        limits: the kernel's resource limits (default ``Limits()``).
        slot: which parallel job this is (as root, job k's kernel runs as its own user id).
        references: the solution's published values (``reference_values``); default computed and cached.
        references_cache: where ``reference_values`` caches them.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a
    notebook or a solution whose grading metadata is inconsistent.
    """
    if cell_timeout <= 0 or timeout <= 0:
        raise ValueError(f"time limits must be positive, got cell_timeout={cell_timeout}, timeout={timeout}")
    if profile not in ("fast", "lecture"):
        raise ValueError(f"profile must be 'fast' or 'lecture', got {profile!r}")
    start = time.perf_counter()
    solution_nb, submission_nb = read_notebook(solution), read_notebook(submission)
    forbidden = forbidden_apis(solution_nb)
    mode, isolation_note = resolve_sandbox(sandbox)
    nb, notes = assemble_notebook(solution_nb, submission_nb)
    self_reference = references is None and _uses_expect(solution_nb) and _same_answers(solution_nb, submission_nb)
    if references is None and not self_reference:
        references = reference_values(solution, profile=profile, cell_timeout=cell_timeout, timeout=timeout,
                                      sandbox=sandbox, cache=references_cache)
    private = [Path(solution).resolve().parent, Path(submission).resolve().parent]
    box = Sandbox(mode, limits or Limits(), slot=slot, private=private, readable=_course_weights())
    run = _run(nb, forbidden, cell_timeout=cell_timeout, timeout=timeout, profile=profile, sandbox=box, cwd=cwd)
    if self_reference:  # the solution graded against itself: its own run is the reference (and is cached)
        try:
            references = _references_from(nb, run, str(solution))
            _write_references(_reference_path(Path(solution), profile, references_cache), references)
        except ValueError:
            references = {}
    verdict = _verdict(nb, run, _static_findings(nb, forbidden), references or {})
    status = "flagged" if verdict.flags else "graded"
    extra = [isolation_note] if isolation_note else []
    return GradeReport(
        student=student or Path(submission).stem, assignment=Path(solution).stem, submission=str(submission),
        solution=str(solution), score=sum(t.points for t in verdict.tests), max_score=_max_score(solution_nb),
        tests=verdict.tests, cells=_cell_results(nb, run.outcomes), notes=notes + run.notes + extra,
        status=status, duration_s=round(time.perf_counter() - start, 2), flags=verdict.flags,
        isolation=mode if mode == "bwrap" else (isolation_note or "none"))


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


def _student_name(folder: Path, path: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _matches_student(name: str, wanted: str) -> bool:
    """``--student alice`` picks ``alice``, ``01_boxes/alice`` and ``alice_01_boxes``-style names."""
    return name == wanted or name.split("/")[-1] == wanted or name.split("/")[0] == wanted


def _plan_folder(folder: Path, solution: str | Path | None, solutions_dir: str | Path,
                 student: str | None) -> list[tuple[Path, str, Path | None, str | None]]:
    """(submission, student, solution or None, why it cannot be graded) for every notebook to grade."""
    jobs, checked = [], set()
    for path in submissions_in(folder):
        name = _student_name(folder, path)
        if student is not None and not _matches_student(name, student):
            continue
        try:
            sol = Path(solution or find_solution(path, solutions_dir))
        except ValueError as err:
            jobs.append((path, name, None, str(err)))
            continue
        if sol not in checked:  # the instructor's mistake: raise, do not blame the students
            validate_solution(read_notebook(sol), str(sol))
            checked.add(sol)
        jobs.append((path, name, sol, None))
    if student is not None and not jobs:
        raise ValueError(f"no submission of student {student!r} under {folder}")
    return jobs


def _grade_one(path: Path, name: str, sol: Path | None, why: str | None, kwargs: dict) -> GradeReport:
    if sol is None:
        return invalid_report(path, None, name, why or "no solution")
    try:
        return grade_notebook(path, sol, student=name, **kwargs)
    except ValueError as err:  # the solution is valid, so the submission is not a notebook
        return invalid_report(path, sol, name, str(err))


_SLOT: int = 0


def _init_worker(slots) -> None:
    global _SLOT
    _SLOT = slots.get()


def _grade_in_worker(args: tuple) -> GradeReport:
    path, name, sol, why, kwargs = args
    return _grade_one(path, name, sol, why, {**kwargs, "slot": _SLOT})


def grade_folder(folder: str | Path, solution: str | Path | None = None, *, solutions_dir: str | Path = "solutions",
                 jobs: int = 1, student: str | None = None, progress: bool = False, **kwargs) -> list[GradeReport]:
    """Grade every notebook under ``folder``; a student's name is the path below ``folder`` without ``.ipynb``.

    ``solution`` applies to all; without it each submission's solution is found by name (``find_solution``).
    A submission that cannot be graded (invalid notebook, no matching solution) gets an ``"invalid"``
    report with 0 points instead of stopping the class; a broken solution stops everything (``ValueError``).
    ``jobs`` submissions are graded at once, each in its own kernel and sandbox, with the same results as
    one at a time (reports come back in the folder's order); ``student`` grades only that student (a regrade);
    ``progress`` shows a progress bar. ``kwargs`` go to ``grade_notebook``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    planned = _plan_folder(folder, solution, solutions_dir, student)
    ref_kwargs = {k: kwargs[k] for k in ("profile", "cell_timeout", "timeout", "sandbox") if k in kwargs}
    if "references_cache" in kwargs:
        ref_kwargs["cache"] = kwargs["references_cache"]
    # Once per assignment, before the class: the solution's values, from its own clean kernel.
    refs = {sol: reference_values(sol, **ref_kwargs) for sol in sorted({p[2] for p in planned if p[2] is not None})}
    work = [(p, n, s, w, {**kwargs, "references": refs.get(s)}) for p, n, s, w in planned]
    bar = _progress(len(work), progress)
    if jobs == 1 or len(work) <= 1:
        reports = []
        for item in work:
            reports.append(_grade_one(*item))
            bar.update(1)
        bar.close()
        return reports
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("spawn")  # no fork of a process that may hold threads and kernels
    slots = context.Manager().Queue()
    for k in range(jobs):
        slots.put(k)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(slots,)) as pool:
        futures = [pool.submit(_grade_in_worker, item) for item in work]
        for future in futures:
            future.add_done_callback(lambda _: bar.update(1))
        reports = [f.result() for f in futures]
    bar.close()
    return reports


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grading", unit="submission", disable=not show)
