"""Reproduce the widget-cell hang (coursekit/headless.py) and check the guard: `python benchmarks/notebook_hang.py`.

Runs a small notebook (a progress bar, an Output widget with a slider, `interact`) many times with papermill,
a few at a time so that the machine is busy, with and without `coursekit.headless.guard_lost_wakeups`, and
prints how many runs hung (no progress for `--limit` seconds) and how many lost wakeups the guard recovered.
Run it after upgrading pyzmq, jupyter_client or nbclient: when the unguarded runs stop hanging, the upstream
bug is fixed and the guard can go.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

CELLS = [
    "import ipywidgets as w, matplotlib.pyplot as plt, numpy as np, torch\n"
    "from tqdm.auto import tqdm\n%matplotlib inline",
    "for i in tqdm(range(40), desc='train'):\n    torch.randn(64, 64) @ torch.randn(64, 64)",
    "out = w.Output()\ns = w.IntSlider(3, 0, 10, description='gamma')\ndef draw(change=None):\n    with out:\n"
    "        out.clear_output(wait=True)\n"
    "        plt.figure(figsize=(3, 2)); plt.plot(np.arange(10) * s.value); plt.show()\n"
    "        print('value', s.value)\ns.observe(draw, 'value'); draw()\nw.VBox([s, out])",
    "@w.interact(x=(0, 10))\ndef f(x=3):\n"
    "    plt.figure(figsize=(3, 2)); plt.imshow(np.random.rand(20, 20)); plt.show(); print(x)",
    "for i in tqdm(range(20), desc='eval'):\n    torch.randn(128, 128) @ torch.randn(128, 128)",
    "print('done')",
]
# One run, in its own process as papermill's CLI would be: argv = notebook, output, guard (0/1), count file.
RUNNER = """
import sys, papermill
from coursekit.headless import guard_lost_wakeups, lost_wakeups
if sys.argv[3] == "1":
    guard_lost_wakeups()
try:
    papermill.execute_notebook(sys.argv[1], sys.argv[2], kernel_name="python3", progress_bar=False)
finally:
    open(sys.argv[4], "w").write(str(lost_wakeups()))
"""


def _one(folder: Path, index: int, guard: bool, limit: float) -> tuple[bool, int]:
    """(hung, wakeups recovered) for one run. Hung: the output notebook, which papermill writes after every
    cell, has not changed for ``limit`` seconds (a slow start on a busy machine is not a hang). A hung run
    is killed with its kernel."""
    import psutil

    out, count = folder / f"out{index}.ipynb", folder / f"count{index}.txt"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(folder / "hang.ipynb"), str(out),
                             "1" if guard else "0", str(count)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while proc.poll() is None:
        if time.time() - (out.stat().st_mtime if out.exists() else start) > limit:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            return True, 0
        time.sleep(2)
    return False, int(count.read_text() or 0) if count.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per setting")
    parser.add_argument("--jobs", type=int, default=3, help="runs at a time (the load that makes it happen)")
    parser.add_argument("--limit", type=float, default=120,
                        help="seconds without a finished cell after which a run counts as hung")
    parser.add_argument("--only", choices=["guarded", "unguarded"], help="run one setting only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / "hang.ipynb")
        for name, guard in (("unguarded", False), ("guarded", True)):
            if args.only and args.only != name:
                continue
            start = time.perf_counter()
            with cf.ThreadPoolExecutor(args.jobs) as pool:
                runs = [pool.submit(_one, folder, i, guard, args.limit) for i in range(args.runs)]
                results = [run.result() for run in runs]
            hung, recovered = sum(h for h, _ in results), sum(r for _, r in results)
            print(f"{name}: {hung} of {args.runs} runs hung, {recovered} lost wakeup(s) recovered "
                  f"({args.jobs} at a time, {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
