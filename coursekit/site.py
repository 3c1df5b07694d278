"""The course as a website: a static HTML book of the README, the executed lecture notebooks and the
student assignments (never ``solutions/``, never hidden tests). ``make site`` runs::

    python -m coursekit.site build [--profile auto|fast|lecture] [--force] [--check]

- **Tools**: Sphinx + myst-nb + sphinx-book-theme, all from PyPI (the ``[site]`` extra). Jupyter Book 2
  would need a Node.js runtime that pip cannot install without downloading a binary.
- **Execution, cached on each notebook's code**: a notebook is executed with papermill in a profile and
  the executed copy is kept in ``$COURSEKIT_CACHE/site-executed/``, named by a hash of its code cells,
  the profile and the coursekit version (what jupyter-cache keys on, plus the profile): a rebuild
  re-runs only notebooks whose code changed. The notebook tests (``tests/test_notebooks.py``) and
  ``coursekit prepare --lecture`` store their executed copies there too, so CI builds the site from the
  notebooks its tests have just run, without executing them twice.
- **Profile**: ``auto`` (default) takes a lecture-profile copy when one is there (``coursekit prepare
  --lecture`` leaves one, with its trained models in the model cache), else the fast profile. Every page
  says which profile produced its outputs, on what device, and which models came from the cache.
- **Widgets**: a static page has no kernel, and ipywidgets' embedded state would show sliders that move but
  redraw nothing (our figures are drawn by Python callbacks). So each slider widget becomes the figure it
  drew at its default values, the sliders' names and values, and a note to launch the notebook in Colab
  or JupyterLab to play; progress bars become their text.
- **Checks** (``--check``, CI): one page per notebook and assignment, at least one figure on every
  notebook page, no execution error, no broken internal link (files and #anchors), no solution text.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["execution_key", "store_executed", "find_executed", "inline_figures", "merge", "static_widgets",
           "provenance", "stage", "build", "check_site", "main"]

ROOT = Path(__file__).resolve().parents[1]  # the course's checkout (the site is built from one)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PROFILES = ("fast", "lecture")
# The kernel's matplotlib backend: inline, so that plt.show() leaves a PNG in the notebook. Under Agg (what
# the test process itself uses) plt.show() draws nothing and a page would lose its figures.
INLINE = "module://matplotlib_inline.backend_inline"
FORBIDDEN_TEXT = ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


# ----------------------------------------------------------------------------------------------
# The execution cache
# ----------------------------------------------------------------------------------------------
def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def execution_key(notebook: dict | str | Path, profile: str) -> str:
    """Hash of a notebook's code cells (sources, in order), the profile and coursekit's version."""
    import coursekit

    nb = notebook if isinstance(notebook, dict) else _read(Path(notebook))
    code = [_source(c) for c in nb["cells"]
            if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])]
    blob = json.dumps({"code": code, "profile": profile, "coursekit": coursekit.__version__, "figures": INLINE})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def inline_figures():
    """Kernels started inside this block draw their figures inline (headless, PNG outputs), whatever
    ``MPLBACKEND`` the calling process uses."""
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = old


def executed_dir() -> Path:
    from coursekit.weights import cache_dir

    return cache_dir() / "site-executed"


def _executed_path(source: Path, profile: str, key: str) -> Path:
    return executed_dir() / f"{Path(source).stem}-{profile}-{key}.ipynb"


def store_executed(source: str | Path, executed: str | Path, profile: str) -> Path | None:
    """Keep an executed copy of ``source`` (run in ``profile``) for the site; None when it holds an error."""
    nb = _read(Path(executed))
    if _errors(nb):
        return None
    target = _executed_path(Path(source), profile, execution_key(Path(source), profile))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(executed, tmp)
    tmp.replace(target)
    return target


def find_executed(source: str | Path, profile: str) -> Path | None:
    """The cached executed copy of ``source``'s current code in ``profile``, if any."""
    path = _executed_path(Path(source), profile, execution_key(Path(source), profile))
    return path if path.is_file() else None


def _errors(nb: dict) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {str(o.get('evalue'))[:200]}"
            for i, c in enumerate(nb["cells"]) for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _execute(source: Path, profile: str, timeout: int) -> tuple[Path, float, str | None]:
    """Run ``source`` with papermill in ``profile``; store it; return (executed path, seconds, error)."""
    import papermill

    from coursekit.headless import guard_lost_wakeups

    out = executed_dir() / "running" / source.name
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    for attempt in (1, 2):
        try:
            with inline_figures():
                guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
                papermill.execute_notebook(str(source), str(out), parameters={"PROFILE": profile},
                                           kernel_name="python3", cwd=str(source.parent),
                                           execution_timeout=timeout, progress_bar=False)
            error = None
            break
        except Exception as err:  # the executed copy keeps the error output; the check reports it
            error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
            # A cell that timed out (a hang coursekit.headless did not catch, or a slow run) gets one fresh try.
            if not isinstance(err, TimeoutError) or attempt == 2:
                break
            print(f"{source.name}: a cell timed out after {timeout} s; retrying once in a fresh kernel", flush=True)
    seconds = time.perf_counter() - start
    stored = store_executed(source, out, profile) if error is None else None
    return (stored or out), seconds, error


# ----------------------------------------------------------------------------------------------
# Staging: what Sphinx reads
# ----------------------------------------------------------------------------------------------
def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _markdown_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text, "id": hashlib.sha1(text.encode()).hexdigest()[:8]}


def provenance(nb: dict) -> dict[str, Any]:
    """Profile, device and cached models of an executed notebook, read from what it printed."""
    text = "\n".join(_source(o) if "source" in o else "".join(o.get("text", ""))
                     for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream")
    found = re.search(r"profile: (\w+), device: (\S+)", text)
    loaded = re.findall(r"coursekit: loaded (.+?) trained (\S+) on (\S+?)[ ,(]", text)
    trained = re.findall(r"coursekit: (?:RETRAIN = True: training (.+?) live|(.+?) is not in the cache yet)", text)
    return {
        "profile": found.group(1) if found else "unknown",
        "device": found.group(2).rstrip(",") if found else "unknown",
        "loaded": [{"name": n, "date": d, "device": dev} for n, d, dev in loaded],
        "trained": [a or b for a, b in trained],
    }


def _provenance_note(info: dict, when: str) -> str:
    profile = info["profile"]
    if profile == "fast":
        what = ("the **fast profile** (tiny data, a few training steps: the CI check, so the numbers printed "
                "here are far from the lecture's; the text quotes the lecture run)")
    elif profile == "lecture":
        what = "the **lecture profile** (trained to the results the text quotes)"
    else:
        what = f"profile {profile}"
    note = f"**Outputs on this page**: {what}, executed on **{info['device']}** on {when}."
    if info["loaded"]:
        models = ", ".join(f"{m['name']} ({m['device']}, {m['date']})" for m in info["loaded"][:8])
        more = f" and {len(info['loaded']) - 8} more" if len(info["loaded"]) > 8 else ""
        note += f" Trained models loaded from the model cache: {models}{more}."
    return "```{note}\n" + note + " Run it yourself: the launch button above (Colab) or `make lab`.\n```\n"


def _widget_states(nb: dict) -> dict[str, dict]:
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return {k: v.get("state", {}) for k, v in state.items()}


def _descendants(model_id: str, states: dict[str, dict], seen: set | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    if model_id in seen or model_id not in states:
        return []
    seen.add(model_id)
    found = [model_id]
    for child in states[model_id].get("children", []):
        found += _descendants(str(child).removeprefix("IPY_MODEL_"), states, seen)
    return found


def static_widgets(nb: dict) -> dict:
    """Replace widget views by what a static page can show (see the module docstring); drop widget state."""
    nb = copy.deepcopy(nb)
    states = _widget_states(nb)
    for cell in nb["cells"]:
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                outputs.append(out)
                continue
            ids = _descendants(data[WIDGET_VIEW].get("model_id", ""), states)
            shown = [o for i in ids if states[i].get("_model_name") == "OutputModel"
                     for o in states[i].get("outputs", [])]
            sliders = [states[i] for i in ids if "value" in states[i] and states[i].get("_model_name", "").endswith(
                ("SliderModel", "DropdownModel", "ToggleButtonsModel", "CheckboxModel"))]
            if shown or sliders:  # an interactive figure (coursekit.widgets.slider_plot and friends)
                outputs += shown
                controls = ", ".join(f"{s.get('description') or 'control'} = {_label(s)}" for s in sliders)
                outputs.append({"output_type": "display_data", "metadata": {}, "data": {"text/markdown": (
                    f"*Interactive widget, shown at its default values ({controls}). A static page has no Python "
                    "kernel to redraw it: launch this notebook in Colab or JupyterLab to move the sliders.*"),
                    "text/plain": "(interactive widget)"}})
            elif "text/plain" in data:  # progress bars: their text
                plain = dict(out)
                plain["data"] = {"text/plain": data["text/plain"]}
                outputs.append(plain)
        if cell.get("outputs") is not None:
            cell["outputs"] = outputs
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def _label(state: dict) -> str:
    value = state.get("value")
    labels = state.get("_options_labels")
    if isinstance(value, int) and labels and "index" in state:
        return str(labels[state["index"]])
    return f"{value:g}" if isinstance(value, float) else str(value)


def _github(path: str) -> str:
    from coursekit.course import COURSE_REPO

    return f"https://github.com/{COURSE_REPO}/blob/main/{path}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _rewrite_links(text: str, here: str, in_site: set[str]) -> str:
    """Links to files of the site stay; links to other repository files point at GitHub; solutions: none."""
    def fix(match: re.Match) -> str:
        target = match.group(1)
        if urlsplit(target).scheme or target.startswith("#"):
            return match.group(0)
        path = (Path(here).parent / target.split("#")[0]).as_posix()
        path = str(Path(path)).replace("\\", "/")
        normal = _normalise(path)
        if normal.startswith("solutions/"):
            return "](#)"
        if normal in in_site:
            return match.group(0)
        return f"]({_github(normal)})"

    return _LINK.sub(fix, text)


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _conf(title: str) -> str:
    from coursekit.course import COURSE_REPO

    return f'''# Generated by coursekit.site: the Sphinx configuration of the course's website.
project = {title!r}
author = "the course's contributors"
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = {title!r}
nb_execution_mode = "off"  # executed by coursekit.site (cached on each notebook's code), not by Sphinx
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
exclude_patterns = ["_build"]
html_theme_options = {{
    "repository_url": "https://github.com/{COURSE_REPO}",
    "repository_branch": "main",
    "path_to_docs": "",
    "use_repository_button": True,
    "launch_buttons": {{"colab_url": "https://colab.research.google.com"}},
}}
'''


def merge(source: dict, executed: dict) -> dict:
    """The current source notebook with the outputs of its executed copy.

    The execution cache is keyed on code only, so markdown edited since (text, a glossary) comes from the
    source; the code cells, equal in both, take the executed copy's outputs (papermill's injected
    parameters cell is kept after the parameters cell, so the page shows which profile ran)."""
    runs = [c for c in executed["cells"] if c["cell_type"] == "code"]
    injected = [c for c in runs if "injected-parameters" in c["metadata"].get("tags", [])]
    runs = [c for c in runs if c not in injected]
    out = copy.deepcopy(source)
    cells, k = [], 0
    for cell in out["cells"]:
        cells.append(cell)
        if cell["cell_type"] != "code":
            continue
        if k < len(runs) and _source(runs[k]) == _source(cell):
            cell["outputs"], cell["execution_count"] = runs[k].get("outputs", []), runs[k].get("execution_count")
        k += 1
        if "parameters" in cell["metadata"].get("tags", []):
            cells += copy.deepcopy(injected)
    out["cells"] = cells
    if "widgets" in executed.get("metadata", {}):
        out.setdefault("metadata", {})["widgets"] = executed["metadata"]["widgets"]
    return out


def stage(executed: dict[str, Path], src: Path, when: str) -> dict[str, Any]:
    """Write Sphinx's sources to ``src``: index (README), notebooks (executed, static widgets, provenance
    note), assignments (student versions, unexecuted). Returns what each page holds."""
    from coursekit.course import NOTEBOOKS

    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "assignments").mkdir(parents=True)
    assignments = sorted((ROOT / "assignments").glob("*.ipynb"))
    in_site = {"README.md", *(f"notebooks/{nb.file}" for nb in NOTEBOOKS),
               *(f"assignments/{p.name}" for p in assignments)}
    pages: dict[str, Any] = {}
    for nb_info in NOTEBOOKS:
        rel = f"notebooks/{nb_info.file}"
        nb = static_widgets(merge(_read(ROOT / rel), _read(executed[nb_info.file])))
        info = provenance(nb)
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = _rewrite_links(_source(cell), rel, in_site)
        nb["cells"].insert(1, _markdown_cell(_provenance_note(info, when)))
        (src / rel).write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        shows = any("plt.show()" in _source(c) for c in nb["cells"] if c["cell_type"] == "code")
        pngs = sum(1 for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        pages[rel] = {"kind": "notebook", "provenance": info, "errors": _errors(nb),
                      "figures_missing": shows and pngs < 2}
    for path in assignments:
        rel = f"assignments/{path.name}"
        nb = _read(path)
        for cell in nb["cells"]:
            cell["outputs"] = [] if cell["cell_type"] == "code" else cell.get("outputs")
            if cell["cell_type"] == "markdown":
                cell["source"] = _rewrite_links(_source(cell), rel, in_site)
            if cell["outputs"] is None:
                cell.pop("outputs")
        nb["cells"].insert(1, _markdown_cell(
            "```{note}\nA graded assignment, shown here as students get it (not executed): open it in Colab (launch "
            "button above) or JupyterLab, fill in the answers, and run the tests in it.\n```\n"))
        (src / rel).write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        pages[rel] = {"kind": "assignment"}
    readme = _rewrite_links((ROOT / "README.md").read_text(), "README.md", in_site)
    title = readme.splitlines()[0].lstrip("# ").strip()
    toc = ["", "```{toctree}", ":caption: Lecture notebooks", ":maxdepth: 1", "",
           *[f"notebooks/{nb.file.removesuffix('.ipynb')}" for nb in NOTEBOOKS], "```", "",
           "```{toctree}", ":caption: Assignments", ":maxdepth: 1", "",
           *[f"assignments/{p.stem}" for p in assignments], "```", ""]
    (src / "index.md").write_text(readme + "\n" + "\n".join(toc))
    (src / "conf.py").write_text(_conf(title.split(":")[0] if title else "Deep learning for computer vision"))
    pages["index.md"] = {"kind": "index"}
    return pages


# ----------------------------------------------------------------------------------------------
# Checking the built HTML
# ----------------------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.tracebacks = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            (self.images if tag == "img" else self.links).append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") and "stylesheet" in (a.get("rel") or ""):
            self.links.append(a["href"])
        if "traceback" in (a.get("class") or "").split():
            self.tracebacks += 1


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(errors="replace"))
    return page


def check_site(html: Path, pages: dict[str, Any], src: Path | None = None) -> list[str]:
    """Problems with the built site (an empty list when it passes)."""
    problems: list[str] = []
    parsed = {p: _parse(p) for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts}
    for rel, info in pages.items():
        page = html / (rel.rsplit(".", 1)[0] + ".html")
        if not page.is_file():
            problems.append(f"{rel}: no page {page.relative_to(html)}")
            continue
        doc = parsed[page]
        if info["kind"] == "notebook":
            figures = [s for s in doc.images if urlsplit(s).scheme == "" and re.search(r"\.(png|jpe?g|svg|gif)$", s)]
            if not figures:
                problems.append(f"{rel}: no figure on the page")
            if info.get("figures_missing"):
                problems.append(f"{rel}: plt.show() drew nothing: was the kernel run under MPLBACKEND=Agg?")
            for error in info.get("errors", []):
                problems.append(f"{rel}: execution error in {error}")
            if doc.tracebacks:
                problems.append(f"{rel}: {doc.tracebacks} traceback(s) on the page")
    for page, doc in parsed.items():
        for link in doc.links + doc.images:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//") or link.startswith("mailto:"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            if parts.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            where = page.relative_to(html)
            if not target.is_file():
                problems.append(f"{where}: broken link {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if parts.fragment not in ids:
                    problems.append(f"{where}: link {link}: no #{parts.fragment} there")
    for path in html.rglob("*"):
        if path.is_file() and ("solutions" in path.relative_to(html).parts):
            problems.append(f"{path.relative_to(html)}: solutions must not be published")
    if src is not None:
        for path in src.rglob("*"):
            # notebooks only: the README explains the markers to instructors, which is no leak
            if path.suffix == ".ipynb" and any(t in path.read_text() for t in FORBIDDEN_TEXT):
                problems.append(f"{path.relative_to(src)}: shows solution or hidden-test text")
    return problems


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------
def build(profile: str = "auto", out: Path | None = None, *, force: bool = False, check: bool = False,
          timeout: int = 600) -> int:
    """Execute (or reuse) every lecture notebook, stage, run Sphinx, optionally check. Returns an exit status."""
    from coursekit.course import NOTEBOOKS

    if profile not in ("auto", *PROFILES):
        raise ValueError(f"profile must be auto, fast or lecture, got {profile!r}")
    out = Path(out) if out is not None else ROOT / "build" / "site"
    start = time.perf_counter()
    executed: dict[str, Path] = {}
    rows = []
    for nb in NOTEBOOKS:
        source = ROOT / "notebooks" / nb.file
        found, used, seconds, error = None, profile, 0.0, None
        if not force:
            order = ["lecture", "fast"] if profile == "auto" else [profile]
            for candidate in order:
                found = find_executed(source, candidate)
                if found:
                    used = candidate
                    break
        if found is None:
            used = "fast" if profile == "auto" else profile
            print(f"executing {nb.file} ({used} profile)", flush=True)
            found, seconds, error = _execute(source, used, timeout)
        executed[nb.file] = found
        rows.append((nb.file, used, "executed" if seconds else "cached", f"{seconds:.0f}", error or ""))
    when = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    src = out / "src"
    pages = stage(executed, src, when)
    html = out / "html"
    warnings = out / "sphinx-warnings.txt"
    sphinx_start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-w", str(warnings),
                             "-d", str(out / "doctrees"), str(src), str(html)], text=True)
    sphinx_seconds = time.perf_counter() - sphinx_start
    for row in rows:
        print(f"{row[0]:<36} {row[1]:<8} {row[2]:<9} {row[3]:>5} s  {row[4]}")
    print(f"sphinx: {sphinx_seconds:.0f} s; total {time.perf_counter() - start:.0f} s; site: {html / 'index.html'}")
    if result.returncode != 0:
        print(f"sphinx failed (exit {result.returncode}); warnings in {warnings}", file=sys.stderr)
        return 1
    if not check:
        return 0
    problems = check_site(html, pages, src)
    problems += [f"{row[0]}: execution failed: {row[4]}" for row in rows if row[4]]
    for problem in problems:
        print(f"site check: {problem}", file=sys.stderr)
    n_nb = sum(1 for p in pages.values() if p["kind"] == "notebook")
    n_as = sum(1 for p in pages.values() if p["kind"] == "assignment")
    if problems:
        print(f"site check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"site check: passed ({n_nb} notebook pages with figures, {n_as} assignment pages, no execution error, "
          f"no broken internal link, no solution text)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.site", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build the static site into build/site/html")
    b.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                   help="auto: lecture-profile outputs where `coursekit prepare --lecture` left them, else fast")
    b.add_argument("--out", type=Path, default=None, help="build folder (default: build/site)")
    b.add_argument("--force", action="store_true", help="execute every notebook again, ignoring the cache")
    b.add_argument("--check", action="store_true", help="then check the site (CI): exit 1 on any problem")
    b.add_argument("--timeout", type=int, default=600, help="seconds per cell when executing (default: 600)")
    args = parser.parse_args(argv)
    return build(args.profile, args.out, force=args.force, check=args.check, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
