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

__all__ = ["CSV_NAME", "read_report", "report_dict", "report_path", "write_csv", "write_json", "write_reports"]

CSV_NAME = "grades.csv"
REPORT_VERSION = 1  # bump when the JSON layout changes


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
    """One row per student: ``student, assignment, status, <one column per test id>, total, max_total``.

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
        writer.writerow(["student", "assignment", "status", *test_ids, "total", "max_total"])
        for r in reports:
            points = {t.grade_id: _points(t.points) for t in r.tests}
            writer.writerow([r.student, r.assignment, r.status, *(points.get(t, "") for t in test_ids),
                             _points(r.score), _points(r.max_score)])
    return path


def write_reports(reports: list[GradeReport], out_dir: str | Path, *, csv_name: str | None = CSV_NAME,
                  ) -> list[Path]:
    """Write every student's JSON into ``out_dir`` and, unless ``csv_name`` is None, the class CSV; return the files."""
    paths = [write_json(r, report_path(out_dir, r)) for r in reports]
    if csv_name:
        paths.append(write_csv(reports, Path(out_dir) / csv_name))
    return paths
