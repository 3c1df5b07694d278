"""Every lecture notebook runs headless, top to bottom, in the fast profile, offline.

Also: every notebook (lecture, solution, assignment) is committed without outputs, carries a papermill
``parameters`` cell and a Colab badge that points at itself, and the table of contents
(``coursekit.course``) lists exactly the notebooks that exist. Solutions and student assignments are
executed by the autograder in ``tests/test_assignments.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import papermill
import pytest
from machine_speed import scaled

from coursekit.course import NOTEBOOKS, colab_url, language_info
from coursekit.headless import guard_lost_wakeups, lost_wakeups
from coursekit.site import inline_figures, store_executed

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "solutions", "assignments")
ALL = sorted(p.relative_to(ROOT).as_posix() for folder in FOLDERS for p in (ROOT / folder).glob("*.ipynb"))
# Fast-profile budget per notebook on a 2-core CPU (the issue asks < 60 s for lecture notebooks); the
# margin absorbs a second pytest worker sharing the CPU. Both limits stretch when the host itself runs slow
# (tests/machine_speed.py; the factor is in the summary).
LIMIT_S = scaled(150)
LECTURES = [path for path in ALL if path.startswith("notebooks/")]
CELL_TIMEOUT_S = scaled(120)


def _load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def test_table_of_contents_matches_the_notebooks_folder():
    listed = {nb.file for nb in NOTEBOOKS}
    present = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert present == listed, f"missing: {sorted(listed - present)}, not listed: {sorted(present - listed)}"


def test_every_notebook_is_executed_by_this_suite():
    # The parametrisation below is built from the folders; this guards against a folder being skipped.
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.file}" in ALL


@pytest.mark.parametrize("path", LECTURES)
def test_lecture_notebook_ends_with_the_decks_glossary(path):
    # Issue 13: a student of the Romanian and Russian decks finds each concept by the decks' own words.
    last = _load(path)["cells"][-1]
    text = "".join(last["source"])
    assert last["cell_type"] == "markdown" and "## Glossary: the decks' own words" in text, (
        f"{path}: the last cell must hold the glossary (English term | the decks' Romanian / Russian term)")
    glossary = text[text.index("## Glossary"):]
    rows = [line for line in glossary.splitlines() if line.startswith("|") and not line.startswith("|---")]
    assert len(rows) >= 6 and "Русский" in rows[0], f"{path}: the glossary table is missing or too short"
    assert any("(00" in row for row in rows[1:]), f"{path}: no term is quoted from a deck (deck number in brackets)"


@pytest.mark.parametrize("path", ALL)
def test_notebook_is_clean_and_parametrised(path):
    nb = _load(path)
    cells = nb["cells"]
    assert not [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")], (
        f"{path} has stored outputs: run nbstripout"
    )
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path} needs exactly one cell tagged 'parameters'"
    assert "PROFILE" in "".join(params[0]["source"])
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path}: set the Python 3 kernel"
    # The form JupyterLab writes (else it marks the notebook modified on open); the version is the machine's.
    stored = dict(nb["metadata"].get("language_info", {}))
    assert stored.pop("version", None) and stored == {k: v for k, v in language_info().items() if k != "version"}, (
        f"{path}: language_info is not the kernel's: run make strip")
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and colab_url(path) in first, f"{path}: Colab badge missing or wrong"


# The one exception to "committed without outputs": nbval checks the stored outputs of these cells
# (the decks' own numbers; tests/test_nbval.py). Keep the list this short.
STORED_OUTPUTS = {"tests/nbval/deck_numbers.ipynb"}


def test_only_the_nbval_notebook_is_committed_with_outputs():
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an sdist): check the files present instead
        tracked = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.ipynb") if ".venv" not in p.parts]
    with_outputs = {path for path in tracked if (ROOT / path).is_file()
                    and any(c.get("outputs") for c in _load(path)["cells"])}
    assert with_outputs <= STORED_OUTPUTS, f"notebooks with stored outputs: {sorted(with_outputs - STORED_OUTPUTS)}"


def test_notebooks_pass_nbstripout_verify():
    result = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--verify", *ALL], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


class NotebookRetryWarning(UserWarning):
    """A notebook cell timed out and the notebook was run again in a fresh kernel (never silent: listed
    in the warnings summary and, by tests/conftest.py, in a "notebook retries" section of the report)."""


class _KernelCPU:
    """Samples the CPU seconds used by this process's child processes (the notebook's kernel) every
    second, so that a timed-out cell can be told apart: a kernel that computed the whole time (too
    slow) or one that sat idle without answering (a hang)."""

    def __init__(self) -> None:
        import psutil

        self._me, self.samples, self._stop = psutil.Process(), [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu(self) -> float:
        total = 0.0
        for child in self._me.children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except Exception:  # the kernel may exit between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._cpu()))
            self._stop.wait(1.0)

    def __enter__(self) -> _KernelCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def used_since(self, start: float) -> float:
        """CPU seconds used by the kernel from wall-clock time ``start`` to the last sample."""
        before = [cpu for t, cpu in self.samples if t <= start] or [0.0]
        after = [cpu for t, cpu in self.samples if t > start] or before  # max: a killed kernel counts 0
        return max(after) - before[-1]


def _timed_out_cell(out: Path) -> tuple[str, float | None]:
    """Which cell was running when the notebook stopped (the last one papermill started), and since when."""
    from datetime import datetime

    try:
        cells = json.loads(out.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "cell unknown (no output notebook)", None
    started = [(i, c) for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if started:  # the last cell that started is the one that timed out
        index, cell = started[-1]
        first = next((line.strip() for line in cell["source"] if line.strip()), "")
        stamp = cell["metadata"]["papermill"]["start_time"].replace("Z", "+00:00")
        return f"cell {index} ({first[:60]!r})", datetime.fromisoformat(stamp).timestamp()
    return "cell unknown", None


def _run_fast(path: str, out: Path) -> float:
    """Execute one notebook in the fast profile; return the seconds it took."""
    start = time.perf_counter()
    guard_lost_wakeups()  # the widget-cell hang: see coursekit/headless.py
    # The kernel inherits this process's environment: offline, fast profile (tests/conftest.py); its figures
    # are drawn inline (headless PNGs), not under this process's Agg: the website publishes this run.
    with inline_figures():
        papermill.execute_notebook(
            str(ROOT / path),
            str(out),
            parameters={"PROFILE": "fast"},
            kernel_name="python3",
            cwd=str((ROOT / path).parent),
            execution_timeout=CELL_TIMEOUT_S,
            progress_bar=False,
        )
    return time.perf_counter() - start


@pytest.mark.notebook
@pytest.mark.parametrize("path", LECTURES)
def test_notebook_runs_in_fast_profile(path, tmp_path, record_property):
    out = tmp_path / Path(path).name
    wakeups = lost_wakeups()
    try:
        with _KernelCPU() as cpu:
            elapsed = _run_fast(path, out)
    except TimeoutError:
        # A cell that does not finish within CELL_TIMEOUT_S. Either the kernel computed all along (too
        # slow: CPU seconds close to the wall time) or it sat idle without answering (a hang: the lost
        # ZeroMQ wakeup on widget cells, which coursekit.headless now recovers, or one not yet known).
        # One fresh kernel tells a hang apart from a notebook that is really too slow or loops (that one
        # times out twice). The retry
        # is never silent: a NotebookRetryWarning, and the "notebook retries" section of the summary.
        cell, started = _timed_out_cell(out)
        used = cpu.used_since(started) if started else float("nan")
        why = "the kernel computed (too slow)" if used > CELL_TIMEOUT_S / 4 else "the kernel sat idle (a hang)"
        detail = f"{cell} timed out after {CELL_TIMEOUT_S} s using {used:.1f} CPU s: {why}"
        record_property("notebook_retry", f"{path}: {detail}")
        warnings.warn(NotebookRetryWarning(f"{path}: {detail}; retried once in a fresh kernel"), stacklevel=1)
        elapsed = _run_fast(path, out)
    record_property("notebook_seconds", round(elapsed, 1))
    record_property("lost_wakeups", lost_wakeups() - wakeups)  # recovered hangs, counted in the summary
    print(f"{path}: {elapsed:.1f} s")
    # The website (make site, coursekit.site) publishes this executed copy instead of running the notebook again.
    store_executed(ROOT / path, out, "fast")
    assert elapsed < LIMIT_S, f"{path} took {elapsed:.0f} s in the fast profile (limit {LIMIT_S:.0f} s)"


def test_readme_lists_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert f"(notebooks/{nb.file})" in readme, f"README does not link {nb.file}"
        assert colab_url(f"notebooks/{nb.file}") in readme, f"README has no Colab badge for {nb.file}"
