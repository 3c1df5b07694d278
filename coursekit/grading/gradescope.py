"""Grading on Gradescope: an autograder zip per assignment, and the script that runs inside it.

``coursekit assignments export --gradescope 01_boxes`` writes ``gradescope_01_boxes.zip`` with

* ``setup.sh``: installs Python, bubblewrap (best effort: Gradescope's container is itself the isolation
  when bubblewrap cannot create namespaces there) and the course package bundled in ``source/``;
* ``run_autograder``: grades ``/autograder/submission/*.ipynb`` and writes
  ``/autograder/results/results.json`` in Gradescope's format;
* the grader's copy of the assignment: the solution notebook with its hidden tests and the reference
  values computed from it here (``references.json``). None of it is ever in ``assignments/``.

Tests with hidden checks are shown to students after the due date (``"visibility": "after_due_date"``),
the others at once; each test's ``output`` is the one-line message of ``coursekit grade``.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

from coursekit.grading.build import read_notebook, validate_solution
from coursekit.grading.grade import GradeReport, grade_notebook, reference_values

__all__ = ["export_gradescope", "gradescope_results", "run_autograder"]

_SETUP = """#!/usr/bin/env bash
# Gradescope runs this once when the autograder image is built.
set -euo pipefail
apt-get update -qq
apt-get install -y -qq python3 python3-pip python3-venv bubblewrap \\
    || apt-get install -y -qq python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --quiet "/autograder/source/package[grading]"
"""

_RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission; results go to $ROOT/results/results.json.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
export COURSEKIT_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg COURSEKIT_CACHE="$ROOT/cache"
"$PYTHON" -m coursekit.grading.gradescope --root "$ROOT" --solution "$ROOT/source/solution/{name}.ipynb" \\
    --references "$ROOT/source/references.json"
"""

_PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE")


def _add_executable(zf: zipfile.ZipFile, name: str, text: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    zf.writestr(info, text)


def export_gradescope(solution: str | Path, out: str | Path, *, repo_root: str | Path = ".",
                      profile: str = "fast", sandbox: str = "auto") -> Path:
    """Write the Gradescope autograder zip for one ``solutions/NN_name.ipynb``; return its path."""
    solution, repo_root = Path(solution), Path(repo_root)
    validate_solution(read_notebook(solution), str(solution))
    refs = reference_values(solution, profile=profile, sandbox=sandbox)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        _add_executable(zf, "setup.sh", _SETUP)
        _add_executable(zf, "run_autograder", _RUN.replace("{name}", solution.stem))
        zf.write(solution, f"solution/{solution.name}")
        zf.writestr("references.json", json.dumps(refs))
        for name in _PACKAGE_FILES:
            if (repo_root / name).is_file():
                zf.write(repo_root / name, f"package/{name}")
        package = repo_root / "coursekit"
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, f"package/{path.relative_to(repo_root).as_posix()}")
    return out


def gradescope_results(report: GradeReport) -> dict:
    """A grade report in Gradescope's ``results.json`` format."""
    tests = [{"name": t.grade_id, "score": t.points, "max_score": t.max_points,
              "status": "passed" if t.status == "passed" else "failed",
              "visibility": "after_due_date" if t.hidden else "visible",
              "output": t.error or "passed"} for t in report.tests]
    output = "\n".join([*report.notes, *(f"FLAGGED: {f}" for f in report.flags)])
    return {"score": report.score, "tests": tests, "output": output, "visibility": "visible",
            "stdout_visibility": "hidden"}


def _find_submission(folder: Path, name: str) -> Path | None:
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    named = [p for p in notebooks if name in p.stem]
    return (named or notebooks or [None])[0]


def run_autograder(root: str | Path, solution: str | Path, references: str | Path | None = None,
                   sandbox: str = "auto") -> Path:
    """Grade ``root/submission``'s notebook and write ``root/results/results.json``; return that path."""
    root, solution = Path(root), Path(solution)
    results = root / "results" / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    refs = json.loads(Path(references).read_text()) if references and Path(references).is_file() else None
    submission = _find_submission(root / "submission", solution.stem)
    if submission is None:
        data = {"score": 0, "output": f"no notebook (.ipynb) in the submission: upload {solution.stem}.ipynb",
                "tests": []}
    else:
        try:
            report = grade_notebook(submission, solution, references=refs, sandbox=sandbox)  # type: ignore[arg-type]
            data = gradescope_results(report)
        except ValueError as err:  # not a notebook
            data = {"score": 0, "output": f"could not grade {submission.name}: {err}", "tests": []}
    results.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gradescope's run_autograder: grade one submission.")
    parser.add_argument("--root", default=os.environ.get("AUTOGRADER_ROOT", "/autograder"))
    parser.add_argument("--solution", required=True)
    parser.add_argument("--references")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"))
    args = parser.parse_args(argv)
    print(run_autograder(args.root, args.solution, args.references, args.sandbox))
    return 0


if __name__ == "__main__":
    sys.exit(main())
