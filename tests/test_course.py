"""coursekit.course: the one list of notebooks; the README's table is written from it."""

from pathlib import Path

from coursekit.course import NOTEBOOKS, readme_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_generated_from_the_notebook_list():
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "README's notebook table is stale: paste `python -m coursekit.course` into it"
    assert readme.count("| # | notebook | what it teaches | |") == 1


def test_every_listed_notebook_exists():
    assert all((ROOT / "notebooks" / nb.file).is_file() for nb in NOTEBOOKS)
