"""The sandbox around a student's kernel (coursekit.grading.sandbox), tested without a kernel: a short Python
program started exactly as a kernel would be, with small limits so that each attack is fast and safe."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coursekit.grading.sandbox import Limits, Sandbox, resolve_sandbox

SECRET_DIR = Path(__file__).resolve().parents[1] / "solutions"
needs_bwrap = pytest.mark.skipif(resolve_sandbox("auto")[0] != "bwrap",
                                 reason="bubblewrap (bwrap) is not installed: the sandbox cannot be tested here")


def run_in_sandbox(tmp_path: Path, code: str, mode: str = "bwrap", **limits) -> subprocess.CompletedProcess:
    work, sockets = tmp_path / "work", tmp_path / "sockets"
    work.mkdir(exist_ok=True)
    sockets.mkdir(exist_ok=True)
    box = Sandbox(mode, Limits(**{"cpu_seconds": 60, **limits}), private=[SECRET_DIR])
    argv = box.command([sys.executable, "-c", textwrap.dedent(code)], work, sockets)
    # The launcher sends the program's own output to /dev/null (as a kernel's): report through a file.
    return subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=120)


def result(tmp_path: Path) -> str:
    return (tmp_path / "sockets" / "out.txt").read_text()


REPORT = "import os, sys\nOUT = open(sys.argv[0] if False else '{out}', 'w')\n"


def program(tmp_path: Path, body: str) -> str:
    out = tmp_path / "sockets" / "out.txt"
    return f"OUT = open({str(out)!r}, 'w', buffering=1)\n" + textwrap.dedent(body)


@needs_bwrap
def test_instructors_files_are_not_there_and_only_own_folders_are_writable(tmp_path):
    code = program(tmp_path, f"""
        import os
        print(os.path.exists({str(SECRET_DIR)!r}), file=OUT)
        print(os.path.exists(os.path.expanduser('~root/.ssh')), file=OUT)
        for target in ({str(tmp_path / 'escaped.txt')!r}, '/usr/x', {str(Path(sys.executable).parent / 'x')!r}):
            try:
                open(target, 'w').write('x')
                print('wrote', target, file=OUT)
            except OSError:
                print('refused', file=OUT)
        open('mine.txt', 'w').write('ok')
        open('/tmp/mine.txt', 'w').write('ok')
        print('own folders ok', file=OUT)
    """)
    run_in_sandbox(tmp_path, code)
    assert result(tmp_path).split("\n")[:6] == ["False", "False", "refused", "refused", "refused", "own folders ok"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "work" / "mine.txt").exists()


@needs_bwrap
def test_no_network_not_even_the_graders_loopback(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = program(tmp_path, f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=2)
            print('connected', file=OUT)
        except OSError as err:
            print('refused', type(err).__name__, file=OUT)
    """)
    run_in_sandbox(tmp_path, code)
    server.close()
    assert result(tmp_path).startswith("refused")


@needs_bwrap
def test_fork_bomb_stops_at_the_process_limit_and_every_process_dies_with_the_sandbox(tmp_path):
    code = program(tmp_path, """
        import subprocess
        children = []
        try:
            for _ in range(500):
                children.append(subprocess.Popen(['sleep', '876.5']))
        except OSError as err:
            print('stopped at', len(children), type(err).__name__, file=OUT)
        subprocess.Popen(['setsid', 'sleep', '876.5'])  # a daemon in its own session
    """)
    run_in_sandbox(tmp_path, code, processes=40)
    stopped = result(tmp_path).split()
    assert stopped[:2] == ["stopped", "at"] and int(stopped[2]) < 40
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "sleep 876.5" in line]


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_memory_and_file_size_limits_hold_with_or_without_bubblewrap(tmp_path, mode):
    if mode == "bwrap" and resolve_sandbox("auto")[0] != "bwrap":
        pytest.skip("bubblewrap (bwrap) is not installed")
    code = program(tmp_path, """
        try:
            hog = bytearray(3 * 2**30)
            print('allocated', file=OUT)
        except MemoryError:
            print('MemoryError', file=OUT)
        try:
            with open('big.bin', 'wb') as f:
                f.write(bytes(2**20) * 64)
            print('wrote', file=OUT)
        except OSError as err:
            print('OSError', err.errno, file=OUT)
    """)
    run_in_sandbox(tmp_path, code, mode=mode, memory_bytes=2**30, file_bytes=16 * 2**20)
    assert result(tmp_path).split("\n")[:2] == ["MemoryError", "OSError 27"]  # 27: EFBIG, file too large


def test_bad_sandbox_mode_and_missing_bwrap_are_clear():
    with pytest.raises(ValueError, match="'auto', 'bwrap' or 'none'"):
        resolve_sandbox("docker")
    mode, note = resolve_sandbox("none")
    assert mode == "none" and "not isolated" in note


def test_the_sandbox_refuses_to_expose_the_solutions(tmp_path):
    box = Sandbox("bwrap", Limits(), private=[Path(sys.prefix) / "solutions"])
    if resolve_sandbox("auto")[0] != "bwrap":
        pytest.skip("bubblewrap (bwrap) is not installed")
    with pytest.raises(ValueError, match="would expose"):
        box.command(["true"], tmp_path, tmp_path)
