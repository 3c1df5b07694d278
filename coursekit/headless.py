"""Running notebooks headless (papermill, nbclient, the grader): the one fix all of them need.

**The hang.** Run a notebook with widgets many times on a busy machine and about one run in seven stops
for good on a widget cell: the kernel has run the cell and sits idle, papermill waits forever for the
reply (jupyter/nbclient#312 reports the same). Measured here (2026-11-30, a 6-cell notebook with a
progress bar, an ``Output`` widget and ``interact``, 3 runs at a time on 2 busy cores): 6 hangs in 39
runs. A second client connected to a hung kernel gets its answers at once, and the kernel's history
holds the cell: the kernel ran it and replied. What was lost is the *wakeup* in the client.
jupyter_client waits on a ZeroMQ socket with ``await socket.poll(timeout)``, and ZeroMQ signals new
messages through an edge-triggered file descriptor: an edge consumed while the client was busy
handling the burst of widget messages is never signalled again, so the message sits in the socket
while the client sleeps (pyzmq's docs warn of exactly this; zeromq/pyzmq#2173).

**The fix.** :func:`guard_lost_wakeups` makes jupyter_client poll in slices of :data:`SLICE_S`; every new
poll asks ZeroMQ for pending events first, so a missed wakeup costs at most one slice instead of the
whole run. The same notebook then ran 0 hangs in 40 runs. Each recovery is counted
(:func:`lost_wakeups`) and ``tests/conftest.py`` prints the count in the test summary, so the upstream bug
stays visible instead of hidden.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

__all__ = ["SLICE_S", "guard_lost_wakeups", "lost_wakeups"]

SLICE_S = 1.0  # longest a missed wakeup can delay a message; a poll per second costs nothing measurable
_recovered = 0


def lost_wakeups() -> int:
    """How many messages were found waiting after a poll slept through them (in this process)."""
    return _recovered


def guard_lost_wakeups() -> None:
    """Make jupyter_client's async ``get_msg`` (papermill's and nbclient's) poll in slices. Idempotent."""
    import zmq
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_coursekit_sliced", False):
        return

    async def get_msg(self: Any, timeout: float | None = None) -> dict[str, Any]:
        global _recovered
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else max(0.0, min(SLICE_S, deadline - time.monotonic()))
            if await self.socket.poll(int(left * 1000)):
                return await self._recv()
            if self.socket.get(zmq.EVENTS) & zmq.POLLIN:  # a message was there while the poll slept
                _recovered += 1
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg._coursekit_sliced = True  # type: ignore[attr-defined]
    AsyncZMQSocketChannel.get_msg = get_msg  # type: ignore[method-assign]
