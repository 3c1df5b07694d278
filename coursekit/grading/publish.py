"""The student-facing course, without the instructor's files: ``coursekit publish OUT``.

The instructor's repository holds ``solutions/`` (answers and hidden tests) and the tests that grade
them; the course students clone must not. ``publish`` copies what students use (the notebooks, the
generated assignments, the package, the install files) into ``OUT``, ready to be pushed to the public
repository, and refuses when any published file shows a solution line or a hidden test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from coursekit.grading.build import BEGIN_HIDDEN, BEGIN_SOLUTION, check_up_to_date, leaked_lines, read_notebook

__all__ = ["PUBLISHED", "publish_course"]

# What students get. Everything else (solutions/, tests/, CI, the grader's caches) stays private.
PUBLISHED = ("README.md", "LICENSE", "pyproject.toml", "environment.yml", "Makefile", "requirements.lock",
             "coursekit", "notebooks", "assignments", "benchmarks")
_NEVER = ("solutions", "grading_out", "__pycache__", ".ipynb_checkpoints")


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in _NEVER or n.endswith((".pyc", ".pt", ".pth"))]


def publish_course(out: str | Path, *, root: str | Path = ".") -> list[Path]:
    """Copy the student-facing course from ``root`` into ``out`` (which must not exist); return the top entries.

    Raises ``ValueError`` when the assignments are stale or any published notebook shows solution text.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    if out.exists():
        raise ValueError(f"{out} exists: publish into a new folder")
    if root in out.parents or out == root:
        raise ValueError(f"publish into a folder outside the course ({root}), not {out}")
    problems = check_up_to_date(root / "solutions", root / "assignments")
    if problems:
        raise ValueError("the assignments are stale: " + "; ".join(problems))
    written = []
    out.mkdir(parents=True)
    for name in PUBLISHED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=_ignore)
        elif src.is_file():
            shutil.copy2(src, out / name)
        else:
            continue
        written.append(out / name)
    # Assignments must show no line of a solution region or hidden test; lecture notebooks may teach the
    # same code, but no published notebook may carry the markers.
    leaks = [f"{nb.relative_to(out)}: {line!r}"
             for solution in sorted((root / "solutions").glob("*.ipynb"))
             for nb in [out / "assignments" / solution.name] if nb.is_file()
             for line in leaked_lines(read_notebook(solution), read_notebook(nb))]
    leaks += [f"{nb.relative_to(out)}: {marker!r}" for nb in sorted(out.rglob("*.ipynb"))
              for marker in (BEGIN_SOLUTION, BEGIN_HIDDEN) if marker in nb.read_text(encoding="utf-8")]
    if leaks:
        shutil.rmtree(out)
        raise ValueError("published notebooks would show solution text: " + "; ".join(leaks[:5]))
    return written
