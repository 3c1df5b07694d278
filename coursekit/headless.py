"""Running notebooks headless (papermill, nbclient, the grader): the one fix all of them need.

**The hang.** Run a notebook with widgets many times on a busy machine and about one run in seven stops
for good on a widget cell: the kernel has run the cell and sits idle, papermill waits forever for the
reply (jupyter/nbclient#312 reports the same). Measured here (2026-11-30, a 6-cell notebook with a
progress bar, an ``Output`` widget and ``interact``, 3 runs at a time on 2 busy cores): 6 hangs in 39
runs. A second client connected to a hung kernel gets its answers at once, and the kernel's history
holds the cell: the kernel ran it and is idle; the client never saw even the cell's first output. What
was lost is the *wakeup* in the client: jupyter_client waits on a ZeroMQ socket with
``await socket.poll(timeout)``, and ZeroMQ signals new messages through an edge-triggered file
descriptor; an edge that is consumed without the message being read (zeromq/pyzmq#2173 describes one
way) is never signalled again, and the message sits in the socket while the client sleeps. The fix
below confirms it: asking ZeroMQ directly once a second finds those messages, and the hangs stop.

**The fix.** :func:`guard_lost_wakeups` makes jupyter_client poll in slices of :data:`SLICE_S`. When a
slice ends, pyzmq asks ZeroMQ directly whether a message waits (no edge involved), so a lost wakeup costs
at most one slice instead of the whole run. Measured with ``benchmarks/notebook_hang.py`` (the same
notebook, same machine and load): see the README's "Hung notebooks" section. Each message found at a
slice's end that the kernel had sent more than :data:`STALE_S` before is counted (:func:`lost_wakeups`;
on a machine so busy that the client did not run for that long, a late but not lost message counts too),
and ``tests/conftest.py`` prints the count in the test summary, so the upstream bug stays visible.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from queue import Empty
from typing import Any

__all__ = ["SLICE_S", "guard_lost_wakeups", "lost_wakeups"]

SLICE_S = 1.0  # longest a missed wakeup can delay a message; a poll per second costs nothing measurable
STALE_S = 0.5  # a message older than this when a slice ends waited through a lost wakeup
_recovered = 0


def lost_wakeups() -> int:
    """How many messages were found waiting after a poll slept through them (in this process)."""
    return _recovered


def _count_if_stale(msg: dict[str, Any]) -> None:
    """Count a message found at the end of a slice that the kernel had sent long before: its wakeup was lost
    (a message that merely arrived as the slice ended is young)."""
    global _recovered
    sent = msg.get("header", {}).get("date")
    if isinstance(sent, datetime) and sent.tzinfo is not None:
        if (datetime.now(timezone.utc) - sent).total_seconds() > STALE_S:
            _recovered += 1


def guard_lost_wakeups() -> None:
    """Make jupyter_client's async ``get_msg`` (papermill's and nbclient's) poll in slices. Idempotent."""
    import zmq
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_coursekit_sliced", False):
        return

    async def get_msg(self: Any, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else max(0.0, min(SLICE_S, deadline - time.monotonic()))
            start = time.monotonic()
            # When the slice ends, pyzmq asks ZeroMQ directly (zmq_poll with no wait): a message whose
            # wakeup was lost is found there, at the latest one slice after it arrived.
            ready = await self.socket.poll(int(left * 1000)) or self.socket.get(zmq.EVENTS) & zmq.POLLIN
            if ready:
                msg = await self._recv()
                if time.monotonic() - start >= 0.99 * left:
                    _count_if_stale(msg)
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg._coursekit_sliced = True  # type: ignore[attr-defined]
    AsyncZMQSocketChannel.get_msg = get_msg  # type: ignore[method-assign]
