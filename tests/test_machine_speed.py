"""The time limits stretch only when the host runs slower than usual, never below the written limits."""

import machine_speed


def test_limits_are_as_written_without_a_measurement(monkeypatch):
    monkeypatch.delenv(machine_speed.ENV, raising=False)
    assert machine_speed.factor() == 1.0 and machine_speed.scaled(150) == 150


def test_a_slow_probe_stretches_the_limits_and_a_fast_one_never_shrinks_them(monkeypatch):
    monkeypatch.setattr(machine_speed, "probe_seconds", lambda: 4 * machine_speed.REFERENCE_S)
    monkeypatch.setenv(machine_speed.ENV, "1")  # monkeypatch restores the controller's values afterwards
    monkeypatch.setenv(machine_speed.ENV + "_PROBE", "0")
    machine_speed.measure()
    assert machine_speed.factor() == 4.0 and machine_speed.scaled(150) == 600
    monkeypatch.setattr(machine_speed, "probe_seconds", lambda: machine_speed.REFERENCE_S / 3)
    machine_speed.measure()
    assert machine_speed.factor() == 1.0


def test_the_probe_runs_one_thread_and_restores_the_thread_count():
    import torch

    threads = torch.get_num_threads()
    assert machine_speed.probe_seconds(repeats=1) > 0
    assert torch.get_num_threads() == threads
