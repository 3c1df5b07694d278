"""Start a grading kernel inside its limits (run as a script: it must not import coursekit or torch).

    python _launch.py CONFIG.json -- KERNEL ARGV ...

Applies the resource limits (they survive ``exec``), hands the kernel's connection file and socket folder
to the sandbox user when the grader runs as root, then replaces itself with bubblewrap (or, without a
sandbox, with the kernel itself). Everything it needs is in CONFIG.json, written by ``sandbox.py``.
"""

import json
import os
import resource
import sys


def _count_tasks(uid: int) -> int:
    """Threads and processes that already belong to ``uid`` (RLIMIT_NPROC counts them all)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _limit(name: str, value: int) -> None:
    kind = getattr(resource, name)
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def main() -> None:
    config_path, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: _launch.py CONFIG.json -- ARGV"
    with open(config_path) as f:
        config = json.load(f)
    limits = config["limits"]
    uid = config.get("uid")
    if uid is not None:  # root: the kernel runs as a throwaway user that owns only its sockets
        for path in config.get("chown", []):
            os.chown(path, uid, uid)
        connection = next((a for a in argv if a.endswith(".json")), None)
        if connection:
            os.chown(connection, uid, uid)
    nproc = limits["processes"] + (0 if uid is not None else _count_tasks(os.getuid()))
    _limit("RLIMIT_NPROC", nproc)
    _limit("RLIMIT_DATA", limits["memory_bytes"])
    _limit("RLIMIT_FSIZE", limits["file_bytes"])
    _limit("RLIMIT_CPU", limits["cpu_seconds"])
    _limit("RLIMIT_CORE", 0)
    _limit("RLIMIT_NOFILE", 1024)
    if config["prefix"]:
        # In its own process namespace the kernel's parent is the sandbox's init (pid 1), not the grader:
        # ipykernel would take that for "my parent died" and quit. --die-with-parent does that job instead.
        os.environ.pop("JPY_PARENT_PID", None)
    # What the kernel process writes to its own stdout/stderr (start-up banners, a student's os.write(1, ...))
    # is not the grader's business: replies travel over the kernel's sockets.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    command = config["prefix"] + argv
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
