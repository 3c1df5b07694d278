"""The ``coursekit`` command (also ``python -m coursekit.cli``).

    coursekit assignments build [--solutions solutions] [--out assignments]
    coursekit assignments check [--solutions solutions] [--out assignments]
    coursekit assignments export --gradescope NN [NN ...]   # Gradescope autograder zips
    coursekit grade PATH [--solution solutions/NN_name.ipynb] [--out grading_out]
                         [--cell-timeout 60] [--timeout 600] [--sandbox auto|bwrap|none]
                         [--jobs N] [--student NAME] [--memory-gb 6] [--max-processes 256]
    coursekit publish OUT  # the student-facing course, without solutions/ and tests/
    coursekit prepare      # compute and cache the offline backbone now, not in the first notebook
    coursekit prepare --lecture [NN ...] [--retrain]   # also run notebooks in the lecture profile: fill the model cache

Exit status: 0 done; 1 ``check`` found stale or leaking assignments, or ``grade`` met submissions it
could not grade (they still get a 0 row); 2 bad input (missing file, not a notebook, no solution).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

# The grader's defaults, repeated here so that `coursekit --help` and `coursekit prepare` work on the
# light install, which has no nbformat/nbclient (tests/test_install.py checks that they agree).
DEFAULT_CELL_TIMEOUT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0
GRADING_EXTRA = "pip install 'coursekit[grading]'"


def _grading():
    """The grading modules, imported on first use: they need the [grading] extra (nbformat, nbclient)."""
    try:
        from coursekit.grading import build, grade, report
    except ModuleNotFoundError as err:
        raise SystemExit(f"coursekit: this command needs {err.name} (the grading extra): {GRADING_EXTRA}") from None
    return build, grade, report


def _build(args: argparse.Namespace) -> int:
    build, _, _ = _grading()
    changed = build.build_assignments(args.solutions, args.out)
    for path in changed:
        print(f"wrote {path}")
    if not changed:
        print(f"{args.out} is up to date with {args.solutions}")
    return 0


def _check(args: argparse.Namespace) -> int:
    build, _, _ = _grading()
    problems = build.check_up_to_date(args.solutions, args.out)
    for solution in sorted(Path(args.solutions).glob("*.ipynb")):
        student = Path(args.out) / solution.name
        if student.is_file():
            problems += [f"{student} shows solution or hidden-test text: {line!r}"
                         for line in build.leaked_lines(build.read_notebook(solution), build.read_notebook(student))]
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.out} is up to date with {args.solutions}")
    return 1 if problems else 0


def _summary(report) -> str:  # a coursekit.grading.GradeReport
    line = f"{report.student}: {report.score:g}/{report.max_score:g}"
    if report.status == "invalid":
        return f"{line}  NOT GRADED: {report.notes[0]}"
    failed = [f"{t.grade_id} ({t.error})" for t in report.tests if t.status != "passed"]
    return line + (f"  failed: {', '.join(failed)}" if failed else "")


def _grade(args: argparse.Namespace) -> int:
    _, grading, reporting = _grading()
    from coursekit.grading.sandbox import Limits, resolve_sandbox

    path = Path(args.path)
    mode, note = resolve_sandbox(args.sandbox)
    if note:
        print(f"coursekit: {note}", file=sys.stderr)
    limits = Limits(memory_bytes=int(args.memory_gb * 2**30), processes=args.max_processes)
    options = {"cell_timeout": args.cell_timeout, "timeout": args.timeout, "profile": args.profile,
               "sandbox": args.sandbox, "limits": limits}
    if path.is_dir():
        reports = grading.grade_folder(path, args.solution, solutions_dir=args.solutions, jobs=args.jobs,
                                       student=args.student, progress=True, **options)
        if not reports:
            raise FileNotFoundError(f"no .ipynb files under {path}")
        files = reporting.write_reports(reports, args.out)
    elif path.is_file():
        solution = args.solution or grading.find_solution(path, args.solutions)
        reports = [grading.grade_notebook(path, solution, student=args.student, **options)]
        files = [reporting.write_json(reports[0], reporting.report_path(args.out, reports[0]))]
    else:
        raise FileNotFoundError(f"no submission at {path}: give a notebook or a folder of notebooks")
    for report in reports:
        print(_summary(report))
    print(f"reports: {', '.join(str(f) for f in files)}" if len(files) < 4 else f"reports in {args.out}/")
    flagged = [r.student for r in reports if r.status == "flagged"]
    if flagged:
        print(f"FLAGGED for the instructor ({len(flagged)}): {', '.join(flagged)} (see the flags column of "
              f"{args.out}/grades.csv)", file=sys.stderr)
    return 1 if any(r.status == "invalid" for r in reports) else 0


def _export(args: argparse.Namespace) -> int:
    _grading()
    from coursekit.grading.grade import find_solution
    from coursekit.grading.gradescope import export_gradescope

    for name in args.gradescope:
        solution = find_solution(f"{name}.ipynb", args.solutions)
        out = export_gradescope(solution, Path(args.out) / f"gradescope_{solution.stem}.zip", sandbox=args.sandbox)
        print(f"wrote {out}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    _grading()
    from coursekit.grading.publish import publish_course

    written = publish_course(args.out, root=args.root)
    print(f"published {', '.join(p.name for p in written)} to {args.out} (no solutions/, no tests/)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import os

    import torch

    from coursekit import weights

    # Pretraining is CPU-bound and runs once: use every core even where OMP_NUM_THREADS=1 (test workers).
    torch.set_num_threads(os.cpu_count() or 1)
    weights.coursekit_resnet18(verbose=True)
    print(f"offline backbone ready: {weights._checkpoint_path()}")
    if args.lecture is not None:  # the night before a lecture: train every model once (coursekit.model_cache)
        from coursekit.model_cache import prepare_lecture

        return prepare_lecture(args.lecture, retrain=args.retrain, notebooks_dir=args.notebooks)
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coursekit", description="Course tools: build assignments, grade them, prepare offline weights.")
    commands = parser.add_subparsers(dest="command", required=True)

    assignments = commands.add_parser("assignments", help="student notebooks generated from solutions/")
    actions = assignments.add_subparsers(dest="action", required=True)
    for name, func, text in (("build", _build, "write assignments/ from solutions/"),
                             ("check", _check, "exit 1 if assignments/ is stale or shows solution text")):
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--solutions", default="solutions", help="instructor notebooks (default: solutions)")
        sub.add_argument("--out", default="assignments", help="student notebooks (default: assignments)")
        sub.set_defaults(func=func)

    grade = commands.add_parser("grade", help="grade a submission or a folder of submissions",
                                description="Run submissions in a fresh kernel against the solution's tests; "
                                "write one JSON report per student (and grades.csv for a folder).")
    grade.add_argument("path", help="a submitted .ipynb, or a folder of them (searched recursively)")
    grade.add_argument("--solution", help="the solution notebook (default: found in --solutions by file name)")
    grade.add_argument("--solutions", default="solutions", help="where to look for solutions (default: solutions)")
    grade.add_argument("--out", default="grading_out", help="folder for the reports (default: grading_out)")
    grade.add_argument("--cell-timeout", type=_positive, default=DEFAULT_CELL_TIMEOUT_S,
                       help=f"seconds per cell (default: {DEFAULT_CELL_TIMEOUT_S:g})")
    grade.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds per submission (default: {DEFAULT_TIMEOUT_S:g})")
    grade.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                       help="isolate each kernel with bubblewrap (auto: when installed; none: limits only)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default: 1)")
    grade.add_argument("--student", help="grade (or regrade) only this student's submission")
    grade.add_argument("--memory-gb", type=float, default=6.0, help="memory limit per kernel (default: 6)")
    grade.add_argument("--max-processes", type=int, default=256,
                       help="processes and threads per kernel (default: 256)")
    grade.add_argument("--profile", choices=("fast", "lecture"), default="fast",
                       help="COURSEKIT_PROFILE in the grading kernel (default: fast)")
    grade.set_defaults(func=_grade)

    export = actions.add_parser("export", help="an autograder zip for Gradescope",
                                description="Write gradescope_NN_name.zip (setup.sh, run_autograder, the "
                                "grader's copy of the tests and reference values) for each assignment.")
    export.add_argument("--gradescope", nargs="+", required=True, metavar="NN", help="assignments, e.g. 01_boxes")
    export.add_argument("--solutions", default="solutions", help="instructor notebooks (default: solutions)")
    export.add_argument("--out", default="grading_out", help="folder for the zips (default: grading_out)")
    export.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto")
    export.set_defaults(func=_export)

    publish = commands.add_parser("publish", help="copy the student-facing course, without solutions/ and tests/",
                                  description="Copy notebooks, assignments and the package into a new folder "
                                  "for the public repository; refuses if anything shows solution text.")
    publish.add_argument("out", help="a new folder")
    publish.add_argument("--root", default=".", help="the instructor's course (default: .)")
    publish.set_defaults(func=_publish)

    prepare = commands.add_parser("prepare", help="compute and cache the offline backbone (before a lecture or CI)",
                                  description="Pretrain coursekit's ResNet-18 on Shapes once (1-3 min on a CPU) "
                                  "and cache it, so that no notebook has to wait for it offline.")
    prepare.add_argument("--lecture", nargs="*", metavar="NN",
                         help="then run these notebooks (default: all) in the lecture profile, so that every model "
                         "they train is cached; prints what was trained and how long it took")
    prepare.add_argument("--retrain", action="store_true",
                         help="with --lecture: train every model live (RETRAIN = True) and replace the cached copies")
    prepare.add_argument("--notebooks", default="notebooks", help="the lecture notebooks' folder (default: notebooks)")
    prepare.set_defaults(func=_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"coursekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
