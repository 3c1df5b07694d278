"""`make lab` starts, as root (a container) and as a user: its server answers and lists notebooks/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from labserver import LAB_SCRIPT, ROOT, lab_server

pytest.importorskip("jupyterlab", reason="make lab's environment: pip install 'coursekit[lab]'")


def test_make_lab_runs_scripts_lab_sh():
    # One command for both: the test below starts what `make lab` runs.
    # --no-print-directory: under `make test` this make is nested and would print "Entering directory".
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-o", "v/.installed-lab", "lab", "VENV=v"],
                         cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().startswith("VENV=v scripts/lab.sh"), dry.stdout


def test_lab_server_answers_and_lists_notebooks(tmp_path):
    with lab_server(tmp_path) as server:
        listing = server.json("/api/contents/notebooks")
        names = {item["name"] for item in listing["content"]}
        expected = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert expected and expected <= names, f"missing from the server's listing: {sorted(expected - names)}"
        assert server.proc.poll() is None
        if os.geteuid() == 0:
            assert "running as root" in server.output() and "--allow-root" in server.output()
        assert "Running as root is not recommended" not in server.output()
    assert server.proc.returncode is not None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to switch user")
def test_lab_server_starts_as_a_user():
    # The same server as an ordinary user (nobody), as on a student's laptop: no root line, no flag.
    tmp = Path(tempfile.mkdtemp(prefix="lab-user-"))
    try:
        with lab_server(tmp, as_uid=65534) as server:
            names = {item["name"] for item in server.json("/api/contents/notebooks")["content"]}
            assert {p.name for p in (ROOT / "notebooks").glob("*.ipynb")} <= names
            assert "running as root" not in server.output()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_lab_script_passes_allow_root_only_as_root(tmp_path):
    # A fake venv whose `jupyter` prints its arguments: the flag is there exactly when running as root.
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "jupyter").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "bin" / "jupyter").chmod(0o755)
    run = subprocess.run([str(LAB_SCRIPT), "--no-browser"], env={**os.environ, "VENV": str(fake)},
                         capture_output=True, text=True, check=True)
    assert run.stdout.startswith("lab ") and "--no-browser" in run.stdout
    assert ("--allow-root" in run.stdout) == (os.geteuid() == 0)
    assert (len(run.stderr.splitlines()) == 1) == (os.geteuid() == 0)
