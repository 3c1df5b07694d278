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
