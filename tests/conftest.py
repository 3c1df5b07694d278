"""Test-wide settings: CPU, offline, headless plotting, quiet hub libraries."""

import os

# Set before anything imports torch, matplotlib or segmentation-models-pytorch.
os.environ.setdefault("COURSEKIT_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COURSEKIT_PROFILE", "fast")
