"""The course's benchmark table: `make bench` (or `python benchmarks/run.py --help`).

Two parts, measured in the same run on this machine:

1. every notebook's wall time in the fast profile (what CI runs; the goal is under 60 s each);
2. every from-scratch op of ``coursekit.benchmark.CASES`` (box IoU, NMS at 1k/10k boxes, mAP at 500
   images, RoI pooling/align, transposed convolution, focal loss, anchors, SSD decoding) against the
   trusted implementation (torchvision / torch / pycocotools): milliseconds per call and the ratio, in
   three settings: torch's default thread count (one per core), one thread, and the default count
   while a competing CPU-bound process runs (a student's laptop always has something else busy; code
   made of many small operations on several threads collapses there).

It prints a Markdown table (paste it into the README's "Benchmarks" section) and checks the course's
goals: notebooks under 60 s, our mAP faster than pycocotools, every other op within 3x of its
reference in each of the three settings.
Benchmarks are not timed tests: a slow machine fails no build, it only prints slower numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GOAL_S = 60.0
OP_GOAL_RATIO = 3.0  # every op but mAP (whose goal is to beat pycocotools) within 3x of its reference
SETTINGS = ("default", "1 thread", "busy CPU")


def notebook_times(names: list[str] | None = None) -> list[tuple[str, float]]:
    """Seconds to run each notebook top to bottom in the fast profile (papermill, a fresh kernel each)."""
    import papermill

    from coursekit.headless import guard_lost_wakeups

    # offline, headless, one thread per kernel: what CI runs
    os.environ.update(COURSEKIT_OFFLINE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg", COURSEKIT_PROFILE="fast")
    rows = []
    paths = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    with tempfile.TemporaryDirectory() as out:
        for path in paths:
            if names and not any(n in path.name for n in names):
                continue
            start = time.perf_counter()
            guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
            papermill.execute_notebook(str(path), str(Path(out) / path.name), parameters={"PROFILE": "fast"},
                                       cwd=str(path.parent), progress_bar=False, kernel_name="python3")
            rows.append((path.stem, time.perf_counter() - start))
            print(f"  {path.stem}: {rows[-1][1]:.1f} s", file=sys.stderr, flush=True)
    return rows


def default_threads() -> int:
    """The intra-op thread count torch picks by itself (one per core), whatever ``OMP_NUM_THREADS`` says."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def busy_cpu():
    """A competing CPU-bound process (a pure-Python busy loop) for the duration of the block."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it get going
        yield
    finally:
        spinner.kill()
        spinner.wait()


def op_rows(repeats: int, names: list[str] | None = None, threads: int | None = None, busy: bool = False):
    """``coursekit.benchmark.ops_table`` over the registered cases (those whose name contains one of ``names``),
    with ``threads`` torch threads (None: as it is), while a busy process competes if ``busy``."""
    import torch

    from coursekit import benchmark as bm

    cases = [c for c in bm.CASES if not names or any(n in c.name for n in names)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with busy_cpu() if busy else contextlib.nullcontext():
            return bm.ops_table(cases, repeats=repeats)
    finally:
        torch.set_num_threads(previous)


def op_settings(repeats: int, names: list[str] | None, threads: int) -> dict[str, list]:
    """The op rows in each of :data:`SETTINGS`: ``threads`` threads, 1 thread, ``threads`` with a busy CPU."""
    out = {}
    for setting, n, busy in (("default", threads, False), ("1 thread", 1, False), ("busy CPU", threads, True)):
        print(f"  ops, {setting} ({n} thread(s){', a busy process competing' if busy else ''})",
              file=sys.stderr, flush=True)
        out[setting] = op_rows(repeats, names, n, busy)
    return out


def markdown(notebooks: list[tuple[str, float]], ops: dict[str, list], threads: int) -> str:
    import torch

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}; ops at the default {threads} thread(s), at 1 thread, and at "
             f"{threads} thread(s) with a busy process competing.", ""]
    if notebooks:
        lines += ["| notebook (fast profile) | seconds |", "|---|---:|"]
        lines += [f"| {name} | {secs:.1f} |" for name, secs in notebooks]
        lines += [f"| **all** | {sum(s for _, s in notebooks):.1f} |", ""]
    if ops:
        settings = list(ops)
        lines.append("| op | " + " | ".join(f"{s}: ours / reference ms | ratio" for s in settings) + " |")
        lines.append("|---|" + "---:|---:|" * len(settings))
        for i, row in enumerate(ops[settings[0]]):
            cells = [f"{ops[s][i].ours_ms:.2f} / {ops[s][i].reference_ms:.2f} | {ops[s][i].ratio:.2f}"
                     for s in settings]
            lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def goals(notebooks: list[tuple[str, float]], ops: dict[str, list]) -> list[str]:
    """One line per goal of the course, met or not, from the rows just measured."""
    out = []
    if notebooks:
        slow = [f"{n} ({s:.0f} s)" for n, s in notebooks if s > NOTEBOOK_GOAL_S]
        out.append(f"every notebook under {NOTEBOOK_GOAL_S:.0f} s in the fast profile: "
                   + ("met" if not slow else "NOT met: " + ", ".join(slow)))
    for setting, rows in ops.items():
        for r in rows:
            if r.name.startswith("mAP"):
                out.append(f"{setting}: {r.name}: ours {'faster' if r.ratio < 1 else 'NOT faster'} than "
                           f"pycocotools ({1 / r.ratio:.1f}x)")
        slow = [f"{r.name} ({r.ratio:.1f}x)" for r in rows if not r.name.startswith("mAP") and r.ratio > OP_GOAL_RATIO]
        out.append(f"{setting}: every op within {OP_GOAL_RATIO:.0f}x of its reference: "
                   + ("met" if not slow else "NOT met: " + ", ".join(slow)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["ops", "notebooks"], help="run one part only")
    parser.add_argument("--filter", nargs="*", help="only the ops / notebooks whose name contains one of these")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per op (the median is kept)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="the 'default' thread count of the ops (default: one per core, torch's own default)")
    args = parser.parse_args(argv)

    notebooks = [] if args.only == "ops" else notebook_times(args.filter)
    ops = {} if args.only == "notebooks" else op_settings(args.repeats, args.filter, args.threads)
    print(markdown(notebooks, ops, args.threads))
    for line in goals(notebooks, ops):
        print("goal:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
