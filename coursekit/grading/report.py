"""Grades on disk: one JSON report per student (what they get back) and one CSV for the class.

The JSON holds, per test cell, the points, whether it passed and the error shown to the student (the
exception's last line, never the traceback, so hidden tests stay hidden). The CSV has one row per
student and one column per test, then the total.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

from coursekit.grading.grade import CellResult, GradeReport, TestResult

__all__ = ["CSV_NAME", "GRADEBOOK_NAME", "read_report", "report_dict", "report_path", "write_csv", "write_gradebook",
           "write_json", "write_reports"]

CSV_NAME = "grades.csv"
GRADEBOOK_NAME = "gradebook_canvas.csv"
REPORT_VERSION = 2  # bump when the JSON layout changes (2: flags, isolation, hidden tests)


def report_dict(report: GradeReport) -> dict:
    """The report as plain JSON-ready data, with the layout version."""
    return {"version": REPORT_VERSION, **asdict(report)}


def write_json(report: GradeReport, path: str | Path) -> Path:
    """Write one student's report to ``path`` (folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_dict(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_report(path: str | Path) -> GradeReport:
    """Read a report written by ``write_json`` (e.g. to rebuild the class CSV without grading again)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.pop("version", None) != REPORT_VERSION:
        raise ValueError(f"{path} is not a coursekit grade report of version {REPORT_VERSION}")
    data["tests"] = [TestResult(**t) for t in data["tests"]]
    data["cells"] = [CellResult(**c) for c in data["cells"]]
    return GradeReport(**data)


def report_path(out_dir: str | Path, report: GradeReport) -> Path:
    """Where a student's JSON goes: ``out_dir/<student>.json``, sub-folders flattened with ``__``."""
    name = re.sub(r"[^\w.-]+", "_", report.student.replace("/", "__")) or "submission"
    return Path(out_dir) / f"{name}.json"


def _points(value: float) -> str:
    return f"{value:g}"


def write_csv(reports: list[GradeReport], path: str | Path) -> Path:
    """One row per student: ``student, assignment, status, <one column per test id>, total, max_total, flags``.

    ``status`` is ``graded``, ``invalid`` (not graded, see the notes) or ``flagged`` (the ``flags`` column
    says what the grader saw: a tampered kernel, an answer reaching into the kernel's machinery).

    Test columns follow the solution's order (first appearance across reports); a test that does not
    belong to a row's assignment is left empty.
    """
    test_ids: list[str] = []
    for report in reports:
        test_ids += [t.grade_id for t in report.tests if t.grade_id not in test_ids]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "assignment", "status", *test_ids, "total", "max_total", "flags"])
        for r in reports:
            points = {t.grade_id: _points(t.points) for t in r.tests}
            writer.writerow([r.student, r.assignment, r.status, *(points.get(t, "") for t in test_ids),
                             _points(r.score), _points(r.max_score), " | ".join(r.flags)])
    return path


def write_gradebook(reports: list[GradeReport], path: str | Path) -> Path:
    """A gradebook Canvas imports (Grades -> Import): one row per student, one column per assignment total.

    Canvas matches rows on ``SIS Login ID`` (here the student's name as graded: use login names for the
    submission files) and columns on the assignment name; a student with several submissions to one
    assignment keeps the last one graded.
    """
    assignments = sorted({r.assignment for r in reports if r.assignment})
    students: dict[str, dict[str, str]] = {}
    for r in reports:
        login = r.student.split("/")[-1]
        if r.assignment:
            students.setdefault(login, {})[r.assignment] = _points(r.score)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *assignments])
        points = ["Points Possible", "", "", "", "", *(_points(max((r.max_score for r in reports
                                                                   if r.assignment == a), default=0))
                                                       for a in assignments)]
        writer.writerow(points)
        for login in sorted(students):
            writer.writerow([login, "", "", login, "", *(students[login].get(a, "") for a in assignments)])
    return path


def write_reports(reports: list[GradeReport], out_dir: str | Path, *, csv_name: str | None = CSV_NAME,
                  ) -> list[Path]:
    """Write every student's JSON into ``out_dir`` and, unless ``csv_name`` is None, the class CSV; return the files."""
    paths = [write_json(r, report_path(out_dir, r)) for r in reports]
    if csv_name:
        paths.append(write_csv(reports, Path(out_dir) / csv_name))
        paths.append(write_gradebook(reports, Path(out_dir) / GRADEBOOK_NAME))
    return paths
