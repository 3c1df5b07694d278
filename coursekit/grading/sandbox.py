"""Where a student's kernel runs: limits always, and on Linux a bubblewrap sandbox.

``--sandbox bwrap`` (``auto`` picks it when ``bwrap`` is installed) gives each submission's kernel:

* no network (a network namespace of its own: not even the grader's 127.0.0.1);
* a file system view of the system and the Python environment, read-only, plus two writable, size-limited
  folders of its own (its working folder and ``/tmp``); the instructor's files (solutions, other
  submissions, the home folder) are simply not there;
* its own process namespace, so that every process it started dies with it when grading ends;
* when the grader runs as root, a throwaway user id per parallel job, so that the process limit bites.

Limits apply with or without bubblewrap (Python's ``resource``, set in ``_launch.py`` before the kernel
starts): memory (``RLIMIT_DATA``), CPU seconds, processes and threads, file size. Without bubblewrap
(``none``, or ``auto`` where it is missing) the kernel runs with the grader's rights: each report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Limits", "SandboxMode", "Sandbox", "resolve_sandbox", "NOT_ISOLATED"]

SandboxMode = Literal["auto", "bwrap", "none"]
NOT_ISOLATED = ("grading was not isolated: bubblewrap (bwrap) is not installed, so student code ran with the "
                "grader's rights (install it: apt install bubblewrap / dnf install bubblewrap)")
_LAUNCHER = Path(__file__).with_name("_launch.py")
BASE_UID = 64000  # root only: job k's kernel runs as uid BASE_UID + k


@dataclass(frozen=True)
class Limits:
    """Resource limits of one grading kernel (each process of it; processes count threads)."""

    memory_bytes: int = 6 * 2**30
    cpu_seconds: int = 1800
    processes: int = 256
    file_bytes: int = 256 * 2**20
    tmp_bytes: int = 512 * 2**20  # each of the two writable folders (bubblewrap only: a tmpfs)


def resolve_sandbox(mode: SandboxMode) -> tuple[Literal["bwrap", "none"], str | None]:
    """The sandbox to use and, when grading is not isolated, the line that says so."""
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'none', got {mode!r}")
    found = shutil.which("bwrap") if sys.platform.startswith("linux") else None
    if mode == "bwrap" and not found:
        raise FileNotFoundError("--sandbox bwrap: bubblewrap is not installed (apt install bubblewrap)")
    if mode == "none" or not found:
        return "none", NOT_ISOLATED if mode == "auto" else "grading was not isolated (--sandbox none)"
    return "bwrap", None


def _readable_paths(extra: list[Path]) -> list[Path]:
    """What the kernel must read: the Python installation, its packages, coursekit, the course's cache."""
    import coursekit

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(coursekit.__file__).parent}
    paths.update(Path(p) for p in site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        paths.add(Path(site.getusersitepackages()))
    paths.update(extra)
    resolved = {p.resolve() for p in paths if p.exists()}
    # Keep only the outermost folders, so that no folder is bound twice.
    return sorted(p for p in resolved if not any(q != p and q in p.parents for q in resolved))


def _system_binds() -> list[str]:
    args = []
    for name in ("/usr", "/etc", "/opt"):
        if Path(name).is_dir():
            args += ["--ro-bind", name, name]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    return args


class Sandbox:
    """Builds the command that starts one kernel inside its limits (and its bubblewrap sandbox)."""

    def __init__(self, mode: Literal["bwrap", "none"], limits: Limits, *, slot: int = 0,
                 private: list[Path] = (), readable: list[Path] = ()):
        self.mode, self.limits, self.slot = mode, limits, slot
        self.private = [Path(p).resolve() for p in private]  # must stay out of the kernel's sight
        self.readable = list(readable)

    @property
    def uid(self) -> int | None:
        return BASE_UID + self.slot if self.mode == "bwrap" and os.geteuid() == 0 else None

    def _check_private(self, binds: list[Path]) -> None:
        for secret in self.private:
            for bound in binds:
                if bound == secret or bound in secret.parents:
                    raise ValueError(f"the grading sandbox would expose {secret} (it lies inside {bound}, which "
                                     "the kernel must read): move the solutions out of the Python environment")

    def command(self, kernel_argv: list[str], workdir: Path, socket_dir: Path) -> list[str]:
        """The argv that starts ``kernel_argv`` limited (and sandboxed); writes its config into ``socket_dir``."""
        prefix: list[str] = []
        if self.mode == "bwrap":
            prefix = self._bwrap_args(workdir, socket_dir)
        config = {"limits": asdict(self.limits), "prefix": prefix, "uid": self.uid,
                  "chown": [str(socket_dir)] if self.uid is not None else []}
        config_path = socket_dir / "launch.json"
        config_path.write_text(json.dumps(config))
        return [sys.executable, "-I", str(_LAUNCHER), str(config_path), "--", *kernel_argv]

    def _bwrap_args(self, workdir: Path, socket_dir: Path) -> list[str]:
        readable = _readable_paths([Path(p) for p in self.readable])
        self._check_private(readable)
        size = str(self.limits.tmp_bytes)
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net",
                "--unshare-uts", "--unshare-cgroup-try", "--hostname", "grading", "--proc", "/proc", "--dev", "/dev"]
        if os.geteuid() != 0:
            args.insert(1, "--unshare-user")
        args += _system_binds()
        args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
        # Folders bubblewrap creates on the way to a bind are root's and private: open them for the kernel user.
        system = {Path(p) for p in ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/tmp")}
        parents = {q for p in [*readable, workdir, socket_dir] for q in p.parents
                   if str(q) != "/" and not any(s == q or s in q.parents for s in system - {Path("/tmp")})}
        for parent in sorted(parents - {Path("/tmp")}, key=lambda q: len(q.parts)):
            args += ["--perms", "0755", "--dir", str(parent)]
        for path in readable:
            args += ["--ro-bind", str(path), str(path)]
        args += ["--perms", "1777", "--size", size, "--tmpfs", str(workdir),
                 "--bind", str(socket_dir), str(socket_dir), "--chdir", str(workdir)]
        if self.uid is not None:  # root: drop to the job's own user inside the sandbox
            args += ["--", "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        else:
            args += ["--cap-drop", "ALL", "--"]
        return args
