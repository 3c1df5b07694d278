"""coursekit.runtime: device choice, seeds, offline switch, profiles."""

import random

import numpy as np
import pytest
import torch

import coursekit as ck


def test_device_default_and_override(monkeypatch):
    monkeypatch.delenv("COURSEKIT_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert ck.device().type == expected
    monkeypatch.setenv("COURSEKIT_DEVICE", "cpu")
    assert ck.device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_asking_for_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        ck.device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    g = ck.seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    g = ck.seed_everything(7)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    with pytest.raises(ValueError):
        ck.seed_everything(-1)


def test_offline_switch(monkeypatch):
    monkeypatch.setenv("COURSEKIT_OFFLINE", "1")
    assert ck.is_offline()
    monkeypatch.setenv("COURSEKIT_OFFLINE", "0")
    assert not ck.is_offline()


def test_profile_precedence(monkeypatch):
    monkeypatch.delenv("COURSEKIT_PROFILE", raising=False)
    assert ck.resolve_profile(None) == "lecture"
    monkeypatch.setenv("COURSEKIT_PROFILE", "fast")
    assert ck.resolve_profile(None) == "fast"
    assert ck.resolve_profile("lecture") == "lecture"  # the notebook's own parameter wins
    with pytest.raises(ValueError, match="unknown profile"):
        ck.resolve_profile("slow")


def test_threads_sets_and_restores_the_torch_thread_count():
    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # tests run with OMP_NUM_THREADS=1: start from a count that must change
    try:
        _check_threads()
    finally:
        torch.set_num_threads(outer)


def _check_threads():
    before = torch.get_num_threads()
    with ck.runtime.threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), ck.runtime.threads(1):
        raise RuntimeError("restored even when the block raises")
    assert torch.get_num_threads() == before
    with ck.runtime.threads(None) as n:
        assert n == before

    @ck.runtime.threads(1)
    def small_ops() -> int:
        return torch.get_num_threads()

    assert small_ops() == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with ck.runtime.threads(0):
            pass
