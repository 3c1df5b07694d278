"""coursekit.headless: jupyter_client polls in slices and recovers a message whose wakeup was missed."""

import asyncio
import time
from datetime import datetime, timedelta, timezone
from queue import Empty

import pytest
import zmq

from coursekit import headless

channels = pytest.importorskip("jupyter_client.channels")


class _Socket:
    """A socket whose poll never wakes (the lost edge) while ``pending`` messages wait in it."""

    def __init__(self, pending: int):
        self.pending, self.polls = pending, []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        await asyncio.sleep(timeout_ms / 1000)
        return 0

    def get(self, option):
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.pending else 0


class _Channel:
    def __init__(self, pending: int, age_s: float = 2.0):
        self.socket, self.age_s = _Socket(pending), age_s

    async def _recv(self):
        self.socket.pending -= 1  # sent by the kernel age_s ago
        sent = datetime.now(timezone.utc) - timedelta(seconds=self.age_s)
        return {"msg_type": "execute_reply", "header": {"date": sent}}


@pytest.fixture
def get_msg(monkeypatch):
    monkeypatch.setattr(channels.AsyncZMQSocketChannel, "get_msg", channels.AsyncZMQSocketChannel.get_msg)
    monkeypatch.setattr(headless, "SLICE_S", 0.05)
    headless.guard_lost_wakeups()
    headless.guard_lost_wakeups()  # idempotent: wrapping twice would still work, but it must not happen
    assert getattr(channels.AsyncZMQSocketChannel.get_msg, "_coursekit_sliced", False)
    return channels.AsyncZMQSocketChannel.get_msg


def test_a_message_behind_a_missed_wakeup_is_received_and_counted(get_msg):
    before = headless.lost_wakeups()
    channel = _Channel(pending=1)
    start = time.monotonic()
    msg = asyncio.run(get_msg(channel, timeout=None))  # unpatched: waits forever
    assert msg["msg_type"] == "execute_reply"
    assert time.monotonic() - start < 1.0  # one slice, not the whole timeout
    assert headless.lost_wakeups() == before + 1


def test_a_message_that_just_arrived_is_not_counted(get_msg):
    before = headless.lost_wakeups()
    msg = asyncio.run(get_msg(_Channel(pending=1, age_s=0.01), timeout=None))
    assert msg["msg_type"] == "execute_reply" and headless.lost_wakeups() == before


def test_nothing_pending_still_times_out(get_msg):
    channel = _Channel(pending=0)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(get_msg(channel, timeout=0.2))
    assert 0.2 <= time.monotonic() - start < 1.0
    assert all(ms <= 50 for ms in channel.socket.polls)  # polled in slices of SLICE_S
