"""Grading throughput and the sandbox's cost: `python benchmarks/grading.py [--copies 100] [--jobs 1 2]`.

Grades COPIES copies of each assignment's solution (what a class of honest students hands in), once per
--jobs setting, and prints submissions per minute; then grades the toy fixture five times with and without
bubblewrap to measure the sandbox's overhead per submission. A benchmark, not a test: it takes long.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from coursekit.grading import grade_folder, grade_notebook, resolve_sandbox

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "fixtures" / "grading" / "solutions" / "01_toy.ipynb"


def throughput(solution: Path, copies: int, jobs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / solution.stem
        folder.mkdir()
        for k in range(copies):
            shutil.copy(solution, folder / f"student{k:03d}.ipynb")
        grade_folder(folder, solution, jobs=1, student="student000")  # reference values cached, not timed
        start = time.perf_counter()
        reports = grade_folder(folder, solution, jobs=jobs, progress=True)
        seconds = time.perf_counter() - start
    full = sum(r.score == r.max_score for r in reports)
    return copies / seconds * 60, full / copies


def overhead(repeats: int = 5) -> dict[str, float]:
    times: dict[str, list[float]] = {"none": [], "bwrap": []}
    modes = ["none", "bwrap"] if resolve_sandbox("auto")[0] == "bwrap" else ["none"]
    for _ in range(repeats):
        for mode in modes:
            start = time.perf_counter()
            grade_notebook(TOY, TOY, sandbox=mode, cell_timeout=60)
            times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(t) for mode, t in times.items() if t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--assignments", nargs="+", default=None, help="e.g. 01_boxes (default: all)")
    args = parser.parse_args()
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    if args.assignments:
        solutions = [s for s in solutions if any(a in s.stem for a in args.assignments)]
    median = overhead()
    print("toy submission, median of 5: " + ", ".join(f"{m} {t:.2f} s" for m, t in median.items()))
    print("| assignment | copies | " + " | ".join(f"--jobs {j} (per min)" for j in args.jobs) + " | full marks |")
    print("|---|---:|" + "---:|" * len(args.jobs) + "---:|")
    for solution in solutions:
        rates = [throughput(solution, args.copies, j) for j in args.jobs]
        print(f"| {solution.stem} | {args.copies} | " + " | ".join(f"{r:.1f}" for r, _ in rates)
              + f" | {rates[-1][1]:.0%} |", flush=True)


if __name__ == "__main__":
    main()
