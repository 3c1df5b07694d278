"""coursekit.train's progress bars end full: every step counted, a deliberate stop is not a failure.

In a notebook tqdm paints a bar red when it closes with n < total; the loop used to leave the bar
before counting its last step ("epoch 2/2: 75% 3/4" after 4 steps: a red bar after every training).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from coursekit import train as T


class RecordingBar(tqdm):
    closed: list[tuple[int, int | None, str]] = []

    def close(self):
        if not self.disable and self.n is not None:
            RecordingBar.closed.append((self.n, self.total, self.desc))
        super().close()


def run(monkeypatch, **fit_kw) -> list[tuple[int, int | None, str]]:
    RecordingBar.closed = []
    monkeypatch.setattr(T, "tqdm", RecordingBar)
    x, y = torch.randn(32, 2), torch.arange(32) % 2
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    trainer = T.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    trainer.fit(DataLoader(TensorDataset(x, y), batch_size=8), progress=True, **fit_kw)  # 4 steps an epoch
    return RecordingBar.closed


def test_every_bar_ends_full_after_whole_epochs(monkeypatch):
    assert run(monkeypatch, epochs=2) == [(4, 4, "epoch 1/2"), (4, 4, "epoch 2/2")]


def test_a_step_budget_ends_the_last_bar_full(monkeypatch):
    # 6 steps = one epoch and 2 steps of the next: that bar's total is the 2 steps the budget allows.
    assert run(monkeypatch, epochs=2, max_steps=6) == [(4, 4, "epoch 1/2"), (2, 2, "epoch 2/2")]


def test_early_stop_ends_the_bar_at_the_steps_done(monkeypatch):
    closed = run(monkeypatch, epochs=3, time_limit=1e-9)  # stops after the first step
    assert closed == [(1, 1, "epoch 1/3")]
