"""coursekit.site: the website's execution cache, static widgets, provenance note and checks.

The whole build (Sphinx on every executed notebook) runs in CI as `make site SITE_PROFILE=fast` after the
tests, on the notebooks tests/test_notebooks.py has just executed; these tests cover its parts quickly.
"""

from __future__ import annotations

import copy
import json

import pytest

from coursekit import site


def code(source: str, outputs=None, tags=None) -> dict:
    return {"cell_type": "code", "metadata": {"tags": tags or []}, "source": source, "outputs": outputs or [],
            "execution_count": None}


def md(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source}


def stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


SOURCE = {"cells": [md("# 99 · Title"), code("PROFILE = None", tags=["parameters"]), code("print(1)"), md("text")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def executed() -> dict:
    nb = copy.deepcopy(SOURCE)
    nb["cells"].insert(2, code('PROFILE = "fast"', tags=["injected-parameters"]))
    nb["cells"][3]["outputs"] = [stream("profile: fast, device: cpu\ncoursekit: loaded SSD trained 2026-11-30 on "
                                        "cuda (8,000 steps) from the cache; RETRAIN = True trains it live\n")]
    return nb


def test_execution_key_depends_on_code_and_profile_only():
    key = site.execution_key(SOURCE, "fast")
    edited = copy.deepcopy(SOURCE)
    edited["cells"][3]["source"] = "new text, a glossary"
    assert site.execution_key(edited, "fast") == key
    assert site.execution_key(executed(), "fast") == key, "papermill's injected cell is not part of the key"
    assert site.execution_key(SOURCE, "lecture") != key
    edited["cells"][2]["source"] = "print(2)"
    assert site.execution_key(edited, "fast") != key


def test_store_and_find_executed(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_CACHE", str(tmp_path / "cache"))
    source, out = tmp_path / "99_x.ipynb", tmp_path / "out.ipynb"
    source.write_text(json.dumps(SOURCE))
    out.write_text(json.dumps(executed()))
    assert site.find_executed(source, "fast") is None
    stored = site.store_executed(source, out, "fast")
    assert stored is not None and site.find_executed(source, "fast") == stored
    assert site.find_executed(source, "lecture") is None
    failed = executed()
    failed["cells"][3]["outputs"].append({"output_type": "error", "ename": "ValueError", "evalue": "x",
                                          "traceback": []})
    out.write_text(json.dumps(failed))
    source.write_text(json.dumps({**SOURCE, "cells": SOURCE["cells"] + [code("print(3)")]}))
    assert site.store_executed(source, out, "fast") is None, "a run with an error is never published"


def test_merge_takes_markdown_from_the_source_and_outputs_from_the_run():
    source = copy.deepcopy(SOURCE)
    source["cells"].append(md("## Glossary"))
    merged = site.merge(source, executed())
    texts = [site._source(c) for c in merged["cells"]]
    assert texts[-1] == "## Glossary" and 'PROFILE = "fast"' in texts
    assert merged["cells"][3]["outputs"][0]["text"].startswith("profile: fast")


def test_provenance_reads_profile_device_and_cached_models():
    info = site.provenance(executed())
    assert info["profile"] == "fast" and info["device"] == "cpu"
    assert info["loaded"] == [{"name": "SSD", "date": "2026-11-30", "device": "cuda"}]
    note = site._provenance_note(info, "2026-11-30")
    assert "fast profile" in note and "**cpu**" in note and "SSD (cuda, 2026-11-30)" in note


def test_static_widgets_show_the_figure_the_values_and_a_launch_note():
    view = "application/vnd.jupyter.widget-view+json"
    nb = copy.deepcopy(SOURCE)
    nb["cells"][2]["outputs"] = [
        {"output_type": "display_data", "metadata": {}, "data": {view: {"model_id": "box"}, "text/plain": "VBox()"}},
        {"output_type": "display_data", "metadata": {}, "data": {view: {"model_id": "bar"}, "text/plain": "50%|#"}},
    ]
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}}
    nb["metadata"]["widgets"] = {site.WIDGET_STATE: {"state": {
        "box": {"state": {"_model_name": "VBoxModel", "children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
        "slider": {"state": {"_model_name": "FloatSliderModel", "description": "sigma", "value": 0.1}},
        "out": {"state": {"_model_name": "OutputModel", "outputs": [png]}},
        "bar": {"state": {"_model_name": "HBoxModel", "children": []}},
    }}}
    static = site.static_widgets(nb)
    outputs = static["cells"][2]["outputs"]
    assert outputs[0] == png
    assert "sigma = 0.1" in outputs[1]["data"]["text/markdown"] and "Colab" in outputs[1]["data"]["text/markdown"]
    assert outputs[2]["data"] == {"text/plain": "50%|#"}
    assert "widgets" not in static["metadata"]


def test_links_to_other_repository_files_go_to_github_and_solutions_nowhere():
    in_site = {"README.md", "notebooks/01_a.ipynb", "assignments/06_dip.ipynb"}
    text = "[a](notebooks/01_a.ipynb) [c](CONTRIBUTING.md) [s](solutions/06_dip.ipynb) [w](https://x.org/a)"
    out = site._rewrite_links(text, "README.md", in_site)
    assert "(notebooks/01_a.ipynb)" in out and "blob/main/CONTRIBUTING.md)" in out and "solutions" not in out
    assert "(https://x.org/a)" in out
    assert site._rewrite_links("[x](../assignments/06_dip.ipynb)", "notebooks/09.ipynb", in_site).endswith(
        "(../assignments/06_dip.ipynb)")


@pytest.fixture
def built(tmp_path):
    html = tmp_path / "html"
    (html / "notebooks").mkdir(parents=True)
    (html / "_images").mkdir()
    (html / "_images" / "fig.png").write_bytes(b"png")
    (html / "index.html").write_text('<a href="notebooks/01_a.html#intro">x</a>')
    (html / "notebooks" / "01_a.html").write_text('<h1 id="intro">t</h1><img src="../_images/fig.png">')
    return html


def test_check_site_passes_a_good_site(built):
    pages = {"notebooks/01_a.ipynb": {"kind": "notebook", "errors": []}, "index.md": {"kind": "index"}}
    assert site.check_site(built, pages) == []


def test_check_site_finds_each_kind_of_problem(built):
    (built / "notebooks" / "01_a.html").write_text(
        '<a href="../missing.html">m</a><a href="../index.html#nowhere">n</a><div class="output traceback">x</div>')
    pages = {"notebooks/01_a.ipynb": {"kind": "notebook", "errors": ["cell 3: ValueError: x"]},
             "assignments/01_b.ipynb": {"kind": "assignment"}}
    problems = "\n".join(site.check_site(built, pages))
    for expected in ("no figure", "execution error in cell 3", "traceback", "broken link ../missing.html",
                     "no #nowhere there", "assignments/01_b.ipynb: no page"):
        assert expected in problems, problems
