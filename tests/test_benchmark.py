"""coursekit.benchmark: the timer, the table, and that every registered case compares equal things."""

import time

import pytest
import torch

from coursekit import benchmark as bm


def test_benchmark_returns_the_median_time():
    assert 0.004 <= bm.benchmark(time.sleep, 0.005, repeats=3, warmup=0) < 0.05
    calls = []
    bm.benchmark(calls.append, 1, repeats=4, warmup=2)
    assert len(calls) == 6
    with pytest.raises(ValueError, match="repeats"):
        bm.benchmark(calls.append, 1, repeats=0)


def test_compare_alternates_so_a_load_change_hits_both_alike():
    calls = []
    ours, ref = bm.compare(lambda: calls.append("ours"), lambda: calls.append("ref"), repeats=3, warmup=1)
    assert calls == ["ours", "ref"] * 4 and ours >= 0 and ref >= 0
    # The machine slows down 10x halfway through: timed block after block, the ratio would be off by 10x.
    state = {"n": 0}

    def load_changes_halfway(t):
        state["n"] += 1
        time.sleep(t * (10 if state["n"] > 12 else 1))

    ours, ref = bm.compare(load_changes_halfway, load_changes_halfway, 0.001, repeats=11, warmup=1)
    assert 0.5 < ours / ref < 2
    with pytest.raises(ValueError, match="repeats"):
        bm.compare(calls.append, calls.append, 1, repeats=0)


def test_ops_table_rows_and_format():
    case = bm.Case("sleep", lambda t: time.sleep(2 * t), lambda t: time.sleep(t), lambda g: (0.002,))
    (row,) = bm.ops_table([case], repeats=2)
    assert row.name == "sleep" and row.ours_ms > row.reference_ms > 1.5
    assert row.ratio == pytest.approx(row.ours_ms / row.reference_ms)
    text = bm.format_table([row])
    assert text.splitlines()[0].split() == ["op", "ours", "ms", "ref", "ms", "ratio"] and "sleep" in text


def test_add_case_is_one_line():
    before = list(bm.CASES)
    try:
        bm.add_case("relu", torch.relu, torch.nn.functional.relu, lambda g: (torch.randn(10, generator=g),))
        assert bm.CASES[-1].name == "relu" and len(bm.CASES) == len(before) + 1
    finally:
        bm.CASES[:] = before


def test_registered_cases_compare_equal_results():
    names = [c.name.split()[0] for c in bm.CASES]
    assert {"roi_pool", "roi_align", "conv_transpose2d", "sigmoid_focal_loss", "anchors"} <= set(names)
    for case in bm.CASES:
        args = case.make_inputs(torch.Generator().manual_seed(0))
        ours, ref = case.ours(*args), case.reference(*args)
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-4), case.name


def _load_runner(script: str = "run"):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{script}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_command_prints_the_table_and_the_goals(capsys):
    runner = _load_runner()
    assert runner.main(["--only", "ops", "--filter", "nms 1k", "box_iou 1k", "--repeats", "1", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    header = ("| op | default: ours / reference ms | ratio | 1 thread: ours / reference ms | ratio "
              "| busy CPU: ours / reference ms | ratio |")
    assert header in out
    assert "| nms 1k boxes |" in out and "| box_iou 1k x 1k |" in out and "mAP" not in out
    for setting in ("default", "1 thread", "busy CPU"):
        assert f"goal: {setting}: every op within 3x of its reference:" in out


def test_benchmark_goals_say_when_they_are_not_met():
    runner = _load_runner()
    rows = [bm.Row("nms 10k boxes", 40.0, 10.0, 4.0), bm.Row("mAP boxes", 2.0, 1.0, 2.0)]
    lines = runner.goals([("01_x", 30.0), ("02_y", 75.0)], {"busy CPU": rows})
    assert lines[0].endswith("NOT met: 02_y (75 s)")
    assert "NOT faster" in lines[1] and lines[2].endswith("NOT met: nms 10k boxes (4.0x)")
    assert runner.goals([("01_x", 30.0)], {})[0].endswith(": met")


def test_busy_cpu_runs_a_competing_process_only_inside_the_block():
    import psutil

    runner = _load_runner()
    before = {p.pid for p in psutil.Process().children()}
    with runner.busy_cpu():
        spinners = [p for p in psutil.Process().children() if p.pid not in before]
        assert len(spinners) == 1 and spinners[0].is_running()
    assert not spinners[0].is_running() or spinners[0].status() == psutil.STATUS_ZOMBIE


def test_amp_bench_counts_training_steps_through_the_trainer():
    amp = _load_runner("amp")
    steps = []

    def tiny():
        model = torch.nn.Linear(4, 2)
        step = lambda m, batch, device: (steps.append(1), {"loss": m(batch.to(device)).square().mean()})[1]  # noqa: E731
        return model, step, torch.rand(8, 4)

    rate = amp.steps_per_second(tiny, "cpu", False, seconds=0.05)
    assert rate > 0 and len(steps) >= 5 + 1  # the warm-up steps, then at least one timed one
    with pytest.raises(ValueError, match="CUDA"):
        amp.steps_per_second(tiny, "cpu", True, seconds=0.05)  # AMP needs CUDA: said, not ignored
