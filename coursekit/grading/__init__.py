"""Assignments and their autograder (the ``coursekit`` command).

``build``: instructor solution notebook -> student assignment notebook (and checks that the students'
copies are current and leak nothing); ``grade``: run a submission against the solution, test cell by
test cell; ``report``: the per-student JSON and the class CSV.
"""

try:  # the light install (`pip install coursekit`, Colab) leaves the grader's tools out
    import nbclient  # noqa: F401
    import nbformat  # noqa: F401
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(f"coursekit.grading needs {err.name}, part of the grading extra: "
                              "pip install 'coursekit[grading]'", name=err.name) from err

from coursekit.grading.build import (
    COURSE_REPO,
    build_assignments,
    build_student_notebook,
    check_up_to_date,
    leaked_lines,
    read_notebook,
    validate_solution,
)
from coursekit.grading.grade import (
    CellResult,
    GradeReport,
    TestResult,
    assemble_notebook,
    find_solution,
    grade_folder,
    grade_notebook,
)
from coursekit.grading.report import read_report, report_dict, write_csv, write_json, write_reports

__all__ = [
    "COURSE_REPO",
    "CellResult",
    "GradeReport",
    "TestResult",
    "assemble_notebook",
    "build_assignments",
    "build_student_notebook",
    "check_up_to_date",
    "find_solution",
    "grade_folder",
    "grade_notebook",
    "leaked_lines",
    "read_notebook",
    "read_report",
    "report_dict",
    "validate_solution",
    "write_csv",
    "write_json",
    "write_reports",
]
