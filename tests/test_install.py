"""The light install: `pip install coursekit` (Colab's first cell) brings what the notebooks import, no more.

The test builds coursekit's wheel, installs it with `--no-deps --no-index` into a new, empty virtual
environment (no system site-packages), and gives that environment exactly the closure of the wheel's
*core* requirements, nothing else: the distributions it names, recursively, as resolved in the test's
own environment. To stay cheap and offline (torch alone is 5 GB), those distributions are not copied
but linked: a folder of symlinks to their files (the top-level entries their RECORD lists) in this
environment's site-packages, put on the new environment's path by a .pth file. A package that only an
extra brings (JupyterLab, nbformat, papermill, pytest) is not linked, so a notebook import that needs
one fails here. Then every module that a lecture notebook or an assignment imports must import there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Only an extra may bring these: the light install must not.
EXTRAS_ONLY = ["jupyterlab", "jupyter_server", "nbformat", "nbclient", "papermill", "pytest", "playwright"]
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w., ]+?)\s*(?:#.*)?$)")


def notebook_imports() -> list[str]:
    """Every module imported by a code cell of notebooks/ and assignments/ (magics and shell lines skipped)."""
    modules: set[str] = set()
    for path in sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("assignments/*.ipynb")]):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                match = _IMPORT.match(line)
                if match and match.group(1):
                    modules.add(match.group(1))
                elif match:
                    modules.update(part.split(" as ")[0].strip() for part in match.group(2).split(","))
    return sorted(m for m in modules if m and not m.startswith("google.colab"))


def build_wheel(out: Path) -> Path:
    """coursekit's wheel, built from a copy of the sources (no build/ folder left in the repository)."""
    src = out / "src"
    shutil.copytree(ROOT / "coursekit", src / "coursekit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out / "dist"), str(src)], check=True)
    return next((out / "dist").glob("coursekit-*.whl"))


def core_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
            if line.startswith("Requires-Dist:")]
    env = default_environment()
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": ""})]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions that the requirements need, recursively (markers and extras honoured)."""
    env = default_environment()
    found: dict[str, metadata.Distribution] = {}
    todo = [(r, set(r.extras)) for r in requirements]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)  # PackageNotFoundError: this environment lacks a dependency
        assert dist.version in req.specifier or not req.specifier, f"{req} but {dist.version} is installed"
        found[key[0]] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in [""] + sorted(extras)):
                todo.append((sub, set(sub.extras)))
    return found


def link_distributions(dists: dict[str, metadata.Distribution], into: Path) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    into.mkdir()
    for dist in dists.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        tops.add(Path(dist._path).name)  # the .dist-info folder itself (not always in RECORD)
        for top in tops:
            if top.endswith(".pth") or not (site / top).exists() or (into / top).exists():
                continue
            (into / top).symlink_to(site / top)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def light_venv(wheel, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("light")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    link_distributions(closure(core_requirements(wheel)), tmp / "core")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "coursekit_core_deps.pth").write_text(str(tmp / "core") + "\n")
    return python


def run_in(venv_python: Path, *command: str) -> subprocess.CompletedProcess:
    """Run a command of the light venv with a bare environment, outside the repository."""
    tmp = venv_python.parents[2]
    env = {"PATH": f"{venv_python.parent}:/usr/bin:/bin", "COURSEKIT_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "HOME": str(tmp), "COURSEKIT_CACHE": str(tmp / "cache")}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)


def test_core_requirements_leave_out_lab_and_grading_tools(wheel):
    names = {canonicalize_name(r.name) for r in core_requirements(wheel)}
    assert not names & {"jupyterlab", "ipykernel", "papermill", "nbformat", "nbclient", "pytest"}, names
    assert {"torch", "torchvision", "ipywidgets"} <= names


def test_every_notebook_import_works_with_the_core_install_only(light_venv):
    modules = notebook_imports()
    assert "coursekit" in modules and "torch" in modules and len(modules) > 20
    coursekit_modules = ("import pkgutil, coursekit; mods = [m.name for m in pkgutil.walk_packages("
                         "coursekit.__path__, 'coursekit.') if not m.name.startswith('coursekit.grading')]")
    code = f"""
import importlib, importlib.util, sys
{coursekit_modules}
failed = []
for name in {modules!r} + mods:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{{name}}: {{type(err).__name__}}: {{err}}")
print("FAILED", failed)
print("PRESENT", [m for m in {EXTRAS_ONLY!r} if importlib.util.find_spec(m)])
import coursekit
print("FROM", coursekit.__file__)
try:
    import coursekit.grading
except ModuleNotFoundError as err:
    print("GRADING", err)
from coursekit.cli import main
try:
    main(["assignments", "check"])
except SystemExit as err:
    print("CLI", err)
"""
    run = run_in(light_venv, str(light_venv), "-c", code)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert lines["FAILED"] == "[]", f"notebook imports that fail with `pip install coursekit`: {lines['FAILED']}"
    assert lines["PRESENT"] == "[]", f"the light install brings extras' packages: {lines['PRESENT']}"
    assert "site-packages" in lines["FROM"] and str(ROOT) not in lines["FROM"], lines["FROM"]
    assert "coursekit[grading]" in lines.get("GRADING", ""), run.stdout
    assert "pip install 'coursekit[grading]'" in lines.get("CLI", ""), run.stdout


def test_cli_works_without_the_grading_extra(light_venv):
    # The grading commands name the extra (checked above); the console script itself works.
    run = run_in(light_venv, str(light_venv.parent / "coursekit"), "--help")
    assert run.returncode == 0 and "prepare" in run.stdout, run.stderr


def test_cli_defaults_match_the_grader():
    from coursekit import cli
    from coursekit.grading import grade

    assert cli.DEFAULT_CELL_TIMEOUT_S == grade.DEFAULT_CELL_TIMEOUT_S
    assert cli.DEFAULT_TIMEOUT_S == grade.DEFAULT_TIMEOUT_S


def test_lock_pins_every_dependency():
    # constraints.txt (the lock `make lab`/`make test` install from) must name every package that
    # pyproject.toml asks for, core and extras: a new dependency needs `make test-latest && make lock`.
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            pinned[canonicalize_name(name)] = version
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for reqs in project["optional-dependencies"].values() for r in reqs]
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pinned and r.name != "coursekit"]
    assert not missing, f"not in constraints.txt (run make test-latest && make lock): {missing}"
    unmet = [f"{r} (lock: {pinned[canonicalize_name(r.name)]})" for r in wanted
             if r.name != "coursekit" and pinned[canonicalize_name(r.name)] not in r.specifier]
    assert not unmet, f"constraints.txt contradicts pyproject.toml: {unmet}"
