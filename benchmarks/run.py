"""The course's benchmark table: `make bench` (or `python benchmarks/run.py --help`).

Two parts, measured in the same run on this machine:

1. every notebook's wall time in the fast profile (what CI runs; the goal is under 60 s each);
2. every from-scratch op of ``coursekit.benchmark.CASES`` (box IoU, NMS at 1k/10k boxes, mAP at 500
   images, RoI pooling/align, transposed convolution, focal loss, anchors, SSD decoding) against the
   trusted implementation (torchvision / torch / pycocotools): milliseconds per call and the ratio.

It prints a Markdown table (paste it into the README's "Benchmarks" section) and checks the course's
goals: notebooks under 60 s, our mAP faster than pycocotools, our NMS within 3x of torchvision's.
Benchmarks are not timed tests: a slow machine fails no build, it only prints slower numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GOAL_S = 60.0
NMS_GOAL_RATIO = 3.0


def notebook_times(names: list[str] | None = None) -> list[tuple[str, float]]:
    """Seconds to run each notebook top to bottom in the fast profile (papermill, a fresh kernel each)."""
    import papermill

    # offline, headless, one thread per kernel: what CI runs
    os.environ.update(COURSEKIT_OFFLINE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg", COURSEKIT_PROFILE="fast")
    rows = []
    paths = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    with tempfile.TemporaryDirectory() as out:
        for path in paths:
            if names and not any(n in path.name for n in names):
                continue
            start = time.perf_counter()
            papermill.execute_notebook(str(path), str(Path(out) / path.name), parameters={"PROFILE": "fast"},
                                       cwd=str(path.parent), progress_bar=False, kernel_name="python3")
            rows.append((path.stem, time.perf_counter() - start))
            print(f"  {path.stem}: {rows[-1][1]:.1f} s", file=sys.stderr, flush=True)
    return rows


def op_rows(repeats: int, names: list[str] | None = None):
    """``coursekit.benchmark.ops_table`` over the registered cases (those whose name contains one of ``names``)."""
    from coursekit import benchmark as bm

    cases = [c for c in bm.CASES if not names or any(n in c.name for n in names)]
    return bm.ops_table(cases, repeats=repeats)


def markdown(notebooks: list[tuple[str, float]], ops) -> str:
    import torch

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) for the ops.", ""]
    if notebooks:
        lines += ["| notebook (fast profile) | seconds |", "|---|---:|"]
        lines += [f"| {name} | {secs:.1f} |" for name, secs in notebooks]
        lines += [f"| **all** | {sum(s for _, s in notebooks):.1f} |", ""]
    if ops:
        lines += ["| op | ours ms | reference ms | ratio (ours / reference) |", "|---|---:|---:|---:|"]
        lines += [f"| {r.name} | {r.ours_ms:.2f} | {r.reference_ms:.2f} | {r.ratio:.2f} |" for r in ops]
        lines.append("")
    return "\n".join(lines)


def goals(notebooks: list[tuple[str, float]], ops) -> list[str]:
    """One line per goal of the course, met or not, from the rows just measured."""
    out = []
    if notebooks:
        slow = [f"{n} ({s:.0f} s)" for n, s in notebooks if s > NOTEBOOK_GOAL_S]
        out.append(f"every notebook under {NOTEBOOK_GOAL_S:.0f} s in the fast profile: "
                   + ("met" if not slow else "NOT met: " + ", ".join(slow)))
    for r in ops:
        if r.name.startswith("mAP"):
            out.append(f"{r.name}: ours {'faster' if r.ratio < 1 else 'NOT faster'} than pycocotools "
                       f"({1 / r.ratio:.1f}x)")
        if r.name.startswith("nms"):
            verdict = "met" if r.ratio <= NMS_GOAL_RATIO else "NOT met"
            out.append(f"{r.name} within {NMS_GOAL_RATIO:.0f}x of torchvision: {verdict} ({r.ratio:.2f}x)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["ops", "notebooks"], help="run one part only")
    parser.add_argument("--filter", nargs="*", help="only the ops / notebooks whose name contains one of these")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per op (the median is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the ops (CI uses 1)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    notebooks = [] if args.only == "ops" else notebook_times(args.filter)
    ops = [] if args.only == "notebooks" else op_rows(args.repeats, args.filter)
    print(markdown(notebooks, ops))
    for line in goals(notebooks, ops):
        print("goal:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
