"""Test-wide settings: CPU, offline, headless plotting, quiet hub libraries."""

import os

# Set before anything imports torch, matplotlib or segmentation-models-pytorch.
os.environ.setdefault("COURSEKIT_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COURSEKIT_PROFILE", "fast")


def pytest_configure(config):
    """Pretrain the offline backbone once, before parallel workers start, if the cache lacks it.

    On a fresh machine it takes one to three minutes; done inside a notebook test it would eat that
    notebook's cell timeout while every other worker waits on the file lock.
    """
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller has done it
        return
    from coursekit import weights

    if not weights._checkpoint_path().is_file():
        from coursekit.cli import main

        main(["prepare"])
