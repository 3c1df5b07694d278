"""Determinism, kept: the same seed gives the same printed metrics (CPU, fast profile).

One notebook (09, deep image prior: it trains a network from a seeded initialisation and prints PSNRs)
runs twice in fresh kernels; every line it prints must be identical once timings are masked. Where CUDA
is not deterministic, see the README ("Reproducibility").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import papermill
import pytest
from machine_speed import scaled

from coursekit.headless import guard_lost_wakeups

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/09_deep_image_prior.ipynb"
# Wall-clock numbers differ from run to run: "12s", "0.31 s/image", "3.2 it/s", "450 ms".
_TIMING = re.compile(r"\d+(?:\.\d+)?\s*(?:s/image|it/s|ms|s)\b")


def metric_lines(notebook: Path) -> list[str]:
    """Every printed (stdout) line that holds a number, with timings masked."""
    lines = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text = output["text"] if isinstance(output["text"], str) else "".join(output["text"])
                lines += [_TIMING.sub("<time>", line) for line in text.splitlines() if re.search(r"\d", line)]
    return lines


def test_metric_lines_mask_timings_only():
    assert _TIMING.sub("<time>", "denoising 20.31 28.75 600 steps 12s 0.4 s/image") == \
        "denoising 20.31 28.75 600 steps <time> <time>"


@pytest.mark.notebook
def test_same_seed_same_printed_metrics(tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}.ipynb"
        guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
        papermill.execute_notebook(str(ROOT / NOTEBOOK), str(out), parameters={"PROFILE": "fast", "SEED": 0},
                                   kernel_name="python3", cwd=str((ROOT / NOTEBOOK).parent),
                                   execution_timeout=scaled(120), progress_bar=False)
        runs.append(metric_lines(out))
    assert len(runs[0]) >= 3, f"{NOTEBOOK} printed too few metric lines: {runs[0]}"
    different = [(a, b) for a, b in zip(*runs, strict=False) if a != b]
    assert not different and len(runs[0]) == len(runs[1]), f"same seed, different output: {different[:5]}"
