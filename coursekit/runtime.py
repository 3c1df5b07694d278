"""Where code runs and how reproducibly: device choice, seeds, offline switch and network probe, notebook profile."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np
import torch

Profile = Literal["fast", "lecture"]
PROFILES: tuple[str, ...] = get_args(Profile)
_TRUE = {"1", "true", "yes", "on"}


def device(preferred: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``preferred`` (or the environment variable ``COURSEKIT_DEVICE``, e.g. ``cpu`` or ``cuda:1``)
    overrides the choice; asking for a device that is not there raises ``ValueError``.
    """
    choice = preferred or os.environ.get("COURSEKIT_DEVICE")
    if choice:
        dev = torch.device(choice)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} asked for, but CUDA is not available here; use 'cpu'")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {choice!r} asked for, but MPS is not available here; use 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def draw_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    """Where to draw random numbers with ``generator``: on its own device, since a CPU generator cannot draw on
    CUDA (and the same seed then gives the same draws on every device); on ``default`` without one."""
    return generator.device if generator is not None else default


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same.

    Pass the returned generator to a ``DataLoader`` when shuffling must not depend on what ran before.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def is_offline() -> bool:
    """True when ``COURSEKIT_OFFLINE`` is set to 1/true (CI and tests set it): never try the network."""
    return os.environ.get("COURSEKIT_OFFLINE", "").strip().lower() in _TRUE


def is_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to ``host:port`` within ``timeout`` seconds? False at once when offline.

    The one network probe of coursekit (weights and real datasets ask it before downloading). It runs in
    a daemon thread, so a hanging DNS lookup cannot hold a notebook: after ``timeout`` we call it offline.
    """
    if is_offline():
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def resolve_profile(profile: str | None = None) -> Profile:
    """The notebook profile: ``"fast"`` (CI: tiny data, few steps) or ``"lecture"`` (trains for real).

    Order: the notebook's own ``PROFILE`` parameter (papermill sets it), then ``$COURSEKIT_PROFILE``,
    then ``"lecture"``.
    """
    value = profile or os.environ.get("COURSEKIT_PROFILE") or "lecture"
    value = value.strip().lower()
    if value not in PROFILES:
        raise ValueError(f"unknown profile {value!r}; choose one of {PROFILES}")
    return value  # type: ignore[return-value]


@contextlib.contextmanager
def threads(n: int | None = 1) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads on the CPU, then restore the previous count.

    For code made of many small tensor operations (a loop of window passes, NMS on a few hundred
    boxes): each operation split over several threads makes the threads wait for each other, and when
    another program is busy on the CPU one of them is often not running; the others then wait a
    scheduler time slice each time. Measured on a 2-core machine with a second job running: NMS on
    1,000 boxes 775 ms with 2 threads against 8 ms with one. ``n=None`` leaves the count as it is.
    Usable as a decorator too. Yields the thread count in force inside the block.
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    previous = torch.get_num_threads()
    if n is not None and n != previous:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
