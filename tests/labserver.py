"""Start `make lab`'s JupyterLab server for a test: scripts/lab.sh, the command `make lab` runs.

Used by tests/test_lab.py (the server answers and lists notebooks/) and tests/test_browser.py (the
widgets in a real browser). The server gets a free port, a known token, no browser, and its own Jupyter
config/runtime folders so that the user's settings cannot change what is tested.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_SCRIPT = ROOT / "scripts" / "lab.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    proc: subprocess.Popen
    url: str
    token: str
    log: Path

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, f"GET {path}: HTTP {status}: {body[:300]!r}"
        return json.loads(body)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def lab_server(tmp_path: Path, env: dict[str, str] | None = None, start_timeout: float = 240,
               as_uid: int | None = None, unset: tuple[str, ...] | list[str] = (), args: tuple[str, ...] = ()):
    """Yield a running LabServer; stop it by its pid afterwards (SIGTERM, then SIGKILL).

    as_uid: run it as that (unprivileged) user, through setpriv: `make lab` as a student would.
    """
    port, token = free_port(), secrets.token_hex(16)
    jupyter = tmp_path / "jupyter"
    server_env = dict(os.environ)
    server_env.update(
        VENV=sys.prefix,  # the environment running the tests: `make test`'s .venv
        JUPYTER_CONFIG_DIR=str(jupyter / "config"), JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"), IPYTHONDIR=str(jupyter / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "settings"),
        PYTHONUNBUFFERED="1",
    )
    # No autosave: a test that runs a notebook in the browser must never write it back into the repository.
    docmanager = jupyter / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True, exist_ok=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}\n')
    server_env.update(env or {})
    for name in unset:
        server_env.pop(name, None)
    prefix = []
    if as_uid is not None:
        jupyter.mkdir(parents=True, exist_ok=True)
        for folder in (tmp_path, jupyter):
            folder.chmod(0o777)
        server_env["HOME"] = str(jupyter)
        # It keeps one capability, reading any folder: the interpreter may live under a private /root
        # (pyenv); everything else is the user's (euid != 0, so JupyterLab takes its non-root path).
        prefix = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups",
                  "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    log = tmp_path / "lab.log"
    command = [*prefix, str(LAB_SCRIPT), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(proc, f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"make lab's server exited with {proc.returncode}:\n{server.output()[-3000:]}")
            try:
                if server.get("/api/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from make lab's server in {start_timeout:.0f} s:\n"
                                     f"{server.output()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Stop the server by its pid (scripts/lab.sh execs jupyter, so the pid is the server's)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the kernels it started go too
            proc.wait(timeout)
    try:  # kernels left by a server that died: they share its process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode
