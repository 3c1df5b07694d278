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
from coursekit.grading.expect import expect
from coursekit.grading.grade import (
    CellResult,
    GradeReport,
    TestResult,
    assemble_notebook,
    find_solution,
    forbidden_apis,
    grade_folder,
    grade_notebook,
    reference_values,
)
from coursekit.grading.report import read_report, report_dict, write_csv, write_gradebook, write_json, write_reports
from coursekit.grading.sandbox import Limits, resolve_sandbox

__all__ = [
    "COURSE_REPO",
    "CellResult",
    "GradeReport",
    "TestResult",
    "assemble_notebook",
    "build_assignments",
    "build_student_notebook",
    "check_up_to_date",
    "expect",
    "find_solution",
    "forbidden_apis",
    "grade_folder",
    "grade_notebook",
    "Limits",
    "leaked_lines",
    "read_notebook",
    "read_report",
    "reference_values",
    "resolve_sandbox",
    "report_dict",
    "validate_solution",
    "write_csv",
    "write_gradebook",
    "write_json",
    "write_reports",
]
