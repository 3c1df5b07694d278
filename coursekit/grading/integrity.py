"""How the grader knows that its own test code ran as written in a kernel the student's code shares.

* **Canaries.** Before and after every test cell the grader runs two tiny cells with a fresh secret: one
  must *fail* with the secret in its message (an ``assert``), one must *print* it. Only the grader knows
  the secrets and the outcomes it expects. A kernel whose cells were turned into ``pass``, whose
  ``run_cell`` skips cells with an ``assert``, or that otherwise no longer runs code as written, gets a
  canary wrong: the submission is flagged and the tests from there on score 0.
* **An end marker.** Each test cell ends by printing a secret; a test whose body was skipped or cut short
  does not print it, and does not pass.
* **A guard.** Before every answer and test cell, each forbidden API already imported (the solution's
  metadata) is wrapped so
  that a call made directly from an answer cell raises ``ForbiddenAPIError``; the instructor's cells
  still call the real thing. The static pass (``static.py``) catches the ways around it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = ["Canary", "canary_evidence", "end_marker", "guard_source", "make_canary"]


@dataclass(frozen=True)
class Canary:
    """A cell whose outcome only the grader knows in advance."""

    kind: Literal["raise", "print"]
    secret: str
    source: str


def make_canary(kind: Literal["raise", "print"]) -> Canary:
    secret = "ck-" + secrets.token_hex(12)
    if kind == "raise":
        a = secrets.randbelow(10**6)
        return Canary(kind, secret, f'assert {a} == {a + 1 + secrets.randbelow(97)}, "{secret}"')
    return Canary(kind, secret, f'print("{secret}")')


def canary_evidence(canary: Canary, status: str, error: str | None, stdout: str) -> str | None:
    """None when the canary cell behaved as planted; otherwise what the kernel did instead."""
    if canary.kind == "raise":
        if status == "error" and error and canary.secret in error:
            return None
        return f"a cell that must fail with a secret message gave {status}" + (f" ({error})" if error else "")
    if status == "ok" and canary.secret in stdout:
        return None
    return f"a cell that must print a secret gave {status}, printing {stdout[-80:]!r}"


def end_marker() -> tuple[str, str]:
    """``(secret, source line)`` appended to a test cell: the line prints the secret if the test reached its end."""
    secret = "ck-end-" + secrets.token_hex(12)
    return secret, f'\nprint("{secret}")'


_GUARD = r'''
def _ck_guard(forbidden, answers):
    import functools, inspect, linecache, sys

    class ForbiddenAPIError(RuntimeError):
        """Raised when an answer cell calls an API the assignment forbids."""

    verdicts = {}  # code file name -> is it an answer cell? (a cell's name is a hash of its source: stable)

    def from_answer(frame):
        name = frame.f_code.co_filename
        if name not in verdicts:
            entry = linecache.cache.get(name)
            verdicts[name] = bool(entry) and "".join(entry[2]).strip() in answers
        return verdicts[name]

    def wrap(name, fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            if from_answer(sys._getframe(1)):
                raise ForbiddenAPIError(f"{name} is forbidden in this assignment: write it yourself")
            return fn(*args, **kwargs)
        return guarded

    # Only what is imported already (importing here would cost a cell's time limit): the grader runs this
    # cell again before every answer and test cell, so what an answer imports is wrapped before it is tested.
    for dotted in forbidden:
        if dotted in sys.modules:
            modules = [m for n, m in list(sys.modules.items())
                       if (n == dotted or n.startswith(dotted + ".")) and m is not None]
            targets = [(m, a) for m in modules for a in list(vars(m)) if not a.startswith("__")]
        else:
            parent, _, attr = dotted.rpartition(".")
            if parent not in sys.modules:
                continue
            targets = [(sys.modules[parent], attr)]
        for module, attr in targets:
            fn = getattr(module, attr, None)
            if (inspect.isfunction(fn) or inspect.isbuiltin(fn)) and not getattr(fn, "_ck_guarded", False):
                guarded = wrap(f"{module.__name__}.{attr}", fn)
                guarded._ck_guarded = True
                try:
                    setattr(module, attr, guarded)
                except (AttributeError, TypeError):
                    pass


_ck_guard(FORBIDDEN, ANSWERS)
del _ck_guard
'''


def guard_source(forbidden: list[str], answer_sources: list[str]) -> str:
    """The cell that installs the run-time guard; ``answer_sources`` as they will run (raw and transformed)."""
    answers = sorted({s.strip() for s in answer_sources if s.strip()})
    return (_GUARD.replace("FORBIDDEN", json.dumps(sorted(forbidden)))
            .replace("ANSWERS", "frozenset(" + json.dumps(answers) + ")").strip())
