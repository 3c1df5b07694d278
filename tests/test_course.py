"""coursekit.course: the one list of notebooks; the README's table is written from it."""

import json
from pathlib import Path

import pytest

from coursekit.course import NOTEBOOKS, language_info, readme_table, set_language_info

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_generated_from_the_notebook_list():
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "README's notebook table is stale: paste `python -m coursekit.course` into it"
    assert readme.count("| # | notebook | what it teaches | |") == 1


def test_every_listed_notebook_exists():
    assert all((ROOT / "notebooks" / nb.file).is_file() for nb in NOTEBOOKS)


def test_language_info_is_what_the_kernel_reports():
    ipkernel = pytest.importorskip("ipykernel.ipkernel", reason="ipykernel absent: pip install 'coursekit[lab]'")
    assert language_info() == ipkernel.IPythonKernel.language_info


def test_set_language_info_writes_the_jupyterlab_form(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# é")])
    nb.metadata["language_info"] = {"name": "python"}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    assert set_language_info([path]) == [path]
    assert json.loads(path.read_text(encoding="utf-8"))["metadata"]["language_info"] == language_info()
    assert '"# é"' in path.read_text(encoding="utf-8")  # UTF-8 kept, as JupyterLab writes it
    assert set_language_info([path]) == []  # idempotent: a second run changes nothing
