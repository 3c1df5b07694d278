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
