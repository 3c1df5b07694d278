"""nbval where it adds something: the cells that print the decks' own numbers keep printing them.

``tests/nbval/deck_numbers.ipynb`` holds lines of the lecture notebooks that print numbers the slides
show (deck 001's 2x2 map, deck 002's 1,024 passes and 32x32 map, deck 004's receptive-field table),
committed with their outputs. ``pytest --nbval`` re-runs it and compares every cell's output with the
stored one, reporting each cell as its own test (a failure shows the cell and a diff). It is the one
notebook allowed to keep outputs (``tests/test_notebooks.py`` checks that the exception stays this narrow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DECK_NUMBERS = "tests/nbval/deck_numbers.ipynb"


def _cells() -> list[dict]:
    return json.loads((ROOT / DECK_NUMBERS).read_text())["cells"]


def test_every_checked_cell_has_stored_outputs_and_names_its_lecture_notebook():
    code = [c for c in _cells() if c["cell_type"] == "code"]
    printing = [c for c in code if c["metadata"].get("coursekit", {}).get("deck")]
    assert len(printing) >= 3, "deck 001, 002 and 004's numbers"
    for cell in printing:
        assert cell["outputs"], f"no stored output for {cell['metadata']['coursekit']['deck']}: run nbconvert --execute"
        assert (ROOT / cell["metadata"]["coursekit"]["from"]).is_file()


def test_checked_lines_are_still_lines_of_their_lecture_notebook():
    # The checked cells copy lecture code: if the lecture changes those lines, this notebook must follow.
    for cell in _cells():
        source = cell["metadata"].get("coursekit", {}).get("from", "")
        if not source.startswith("notebooks/"):
            continue
        lecture = json.loads((ROOT / source).read_text())
        lines = {line.rstrip("\n") for c in lecture["cells"] if c["cell_type"] == "code" for line in c["source"]}
        missing = [line for line in "".join(cell["source"]).splitlines() if line not in lines]
        assert not missing, f"{DECK_NUMBERS}: lines no longer in {source}: {missing}"


@pytest.mark.notebook
def test_deck_numbers_match_their_stored_outputs():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", DECK_NUMBERS, "-p", "no:xdist", "-p", "no:cacheprovider",
         "-q", "--nbval-current-env"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"a deck's number changed (nbval, one test per cell):\n{result.stdout[-4000:]}"
