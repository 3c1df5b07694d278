"""coursekit.train: the loop, its logs, callbacks, checkpoints (exact resume), AMP switch, timing."""

from __future__ import annotations

import math
import time
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coursekit import train as T

CPU = torch.device("cpu")


def blobs(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two Gaussian blobs in 2-D: a problem a tiny MLP solves in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 1.5
    return TensorDataset(x, y)


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def make_trainer(seed: int = 0, lr: float = 0.05, **kw) -> T.Trainer:
    model = mlp(seed)
    return T.Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), device="cpu", **kw)


def loader(bs: int = 16, shuffle: bool = False, n: int = 64) -> DataLoader:
    return DataLoader(blobs(n), batch_size=bs, shuffle=shuffle)


# ----------------------------------------------------------------------------------------------
def test_to_device_moves_nested_tensors_and_keeps_structure():
    Pair = namedtuple("Pair", "a b")
    obj = {
        "x": torch.ones(2),
        "ys": [torch.zeros(1), (torch.ones(3, dtype=torch.int64), "tag")],
        "p": Pair(torch.ones(1), 3),
    }
    moved = T.to_device(obj, "meta")  # "meta" exists everywhere, so the move is real even on CPU
    assert moved["x"].device.type == "meta" and moved["ys"][0].device.type == "meta"
    assert isinstance(moved["ys"][1], tuple) and moved["ys"][1][1] == "tag"
    assert moved["ys"][1][0].dtype == torch.int64 and moved["ys"][1][0].device.type == "meta"
    assert isinstance(moved["p"], Pair) and moved["p"].a.device.type == "meta" and moved["p"].b == 3


def test_classification_step_matches_cross_entropy_and_accuracy():
    torch.manual_seed(0)
    model, x, y = nn.Linear(5, 3), torch.randn(10, 5), torch.randint(0, 3, (10,))
    out = T.classification_step(model, (x, y), CPU)
    logits = model(x)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, y))
    assert out["acc"].item() == pytest.approx((logits.argmax(1) == y).float().mean().item())
    with pytest.raises(ValueError, match="length 2"):
        T.classification_step(model, (x, y, y), CPU)


def test_fit_learns_and_logs_epoch_means_of_the_steps():
    trainer = make_trainer()
    hist = trainer.fit(loader(), epochs=5, progress=False)
    assert len(hist) == 5 and len(hist.steps) == 5 * 4 and trainer.global_step == 20
    assert hist["epoch"] == [1, 2, 3, 4, 5] and hist["step"] == [4, 8, 12, 16, 20]
    # Each epoch's "loss" is the mean of its 4 step losses.
    assert hist["loss"][2] == pytest.approx(sum(hist.steps[8:12]) / 4)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0] and hist["acc"][-1] > 0.9
    assert hist["time"] == sorted(hist["time"]) and hist["time"][0] > 0
    # A second fit continues the numbering.
    trainer.fit(loader(), epochs=1, progress=False)
    assert trainer.history["epoch"][-1] == 6 and trainer.epoch == 6


def test_val_fn_runs_in_eval_mode_without_grad_then_back_to_train():
    seen = []

    def val_fn(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return {"acc": 0.5, "val_loss": 1.0}

    trainer = make_trainer()
    hist = trainer.fit(loader(), epochs=2, val_fn=val_fn, progress=False)
    assert seen == [(False, False), (False, False)]
    assert trainer.model.training
    assert hist["val_acc"] == [0.5, 0.5] and hist["val_loss"] == [1.0, 1.0]  # no "val_val_loss"
    with pytest.raises(ValueError, match="dict"):
        trainer.fit(loader(), 1, val_fn=lambda m: 0.5, progress=False)


def test_max_steps_and_time_limit_stop_cleanly_and_log_the_partial_epoch():
    trainer = make_trainer()
    hist = trainer.fit(loader(bs=8), epochs=10, max_steps=5, progress=False)  # 8 steps per epoch
    assert trainer.global_step == 5 and len(hist) == 1 and hist["step"] == [5]
    assert hist["loss"][0] == pytest.approx(sum(hist.steps) / 5)

    def slow_step(model, batch, device):
        time.sleep(0.02)
        return T.classification_step(model, batch, device)

    trainer = make_trainer(step=slow_step)
    start = time.perf_counter()
    hist = trainer.fit(loader(bs=8), epochs=10, time_limit=0.1, val_fn=lambda m: {"acc": 1.0}, progress=False)
    # 0.1 s of >= 0.02 s steps: at most 5 full steps plus the one running at the limit, however busy the CPU
    # (a loaded machine makes steps slower, so only an upper bound on the count holds everywhere)
    assert 1 <= trainer.global_step <= 6
    assert time.perf_counter() - start < 5.0
    assert len(hist) == 1 and hist["val_acc"] == [1.0]  # stopped run is still validated
    for bad in ({"max_steps": 0}, {"time_limit": 0}):
        with pytest.raises(ValueError):
            trainer.fit(loader(), 1, **bad)


def test_step_output_is_checked():
    def no_loss(model, batch, device):
        return {"loss_cls": model(batch[0]).sum()}

    def item_loss(model, batch, device):
        return {"loss": model(batch[0]).sum().item()}

    def vector_loss(model, batch, device):
        return {"loss": model(batch[0]).sum(1)}

    for fn, msg in ((no_loss, "'loss' entry"), (item_loss, "scalar tensor"), (vector_loss, "scalar tensor")):
        with pytest.raises(ValueError, match=msg):
            make_trainer(step=fn).fit(loader(), 1, progress=False)


def test_nan_loss_raises_with_the_step_number():
    def nan_step(model, batch, device):
        return {"loss": model(batch[0]).sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="step 1"):
        make_trainer(step=nan_step).fit(loader(), 1, progress=False)


def test_empty_loader_raises():
    with pytest.raises(ValueError, match="no batches"):
        make_trainer().fit([], 1, progress=False)


def test_grad_clip_bounds_the_gradient_norm():
    trainer = make_trainer(grad_clip=1e-3)
    trainer.train_step(next(iter(loader())))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert norm <= 1e-3 * (1 + 1e-5)
    unclipped = make_trainer()
    unclipped.train_step(next(iter(loader())))
    assert (
        torch.stack([p.grad.norm() for p in unclipped.model.parameters()]).norm() > 1e-2
    )  # clipping did work


def test_scheduler_per_epoch_and_per_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hist = T.Trainer(model, opt, device="cpu", scheduler=sched).fit(loader(), 3, progress=False)
    assert hist["lr"] == pytest.approx([0.1, 0.05, 0.025])  # lr in force during each epoch

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    T.Trainer(model, opt, device="cpu", scheduler=sched, scheduler_interval="step").fit(
        loader(), 1, progress=False
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    T.Trainer(model, opt, device="cpu", scheduler=plateau).fit(
        loader(), 3, val_fn=lambda m: {"loss": 1.0}, progress=False
    )
    assert opt.param_groups[0]["lr"] < 0.1  # val_loss never improved


def test_amp_is_off_on_cpu_and_cannot_be_forced():
    assert make_trainer().amp is False
    with pytest.raises(ValueError, match="CUDA"):
        make_trainer(amp=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_trains_in_float16():
    dtypes = []

    def step(model, batch, device):
        out = T.classification_step(model, batch, device)
        dtypes.append(model(batch[0].to(device)).dtype)
        return out

    model = mlp()
    trainer = T.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), step, device="cuda")
    assert trainer.amp and trainer.scaler.is_enabled()
    hist = trainer.fit(loader(), 5, progress=False)
    assert dtypes[0] == torch.float16 and hist["loss"][-1] < hist["loss"][0]
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def _resumable(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    model = mlp(seed, dropout=0.3)  # dropout and shuffling both draw from the torch RNG
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return (
        model,
        opt,
        {"device": "cpu", "scheduler": torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.5)},
    )


def test_save_load_resume_gives_the_same_weights_as_training_straight(tmp_path):
    torch.manual_seed(1)
    model, opt, kw = _resumable()
    straight = T.Trainer(model, opt, **kw)
    straight.fit(loader(shuffle=True), 2, progress=False)

    torch.manual_seed(1)
    model, opt, kw = _resumable()
    first = T.Trainer(model, opt, **kw)
    first.fit(loader(shuffle=True), 1, progress=False)
    first.save(tmp_path / "ckpt" / "run.pt")
    torch.rand(1000)  # disturb the RNG: load must restore it

    model, opt, kw = _resumable(seed=123)  # a different init: load must overwrite it
    resumed = T.Trainer.resume(tmp_path / "ckpt" / "run.pt", model, opt, **kw)
    assert resumed.epoch == 1 and resumed.global_step == 4
    resumed.fit(loader(shuffle=True), 1, progress=False)

    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.history.steps == straight.history.steps
    assert resumed.history["loss"] == straight.history["loss"]
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_resume_without_the_rng_differs(tmp_path):
    # The control for the test above: the same resume without the RNG state does NOT match.
    torch.manual_seed(1)
    model, opt, kw = _resumable()
    straight = T.Trainer(model, opt, **kw)
    straight.fit(loader(shuffle=True), 2, progress=False)
    torch.manual_seed(1)
    model, opt, kw = _resumable()
    first = T.Trainer(model, opt, **kw)
    first.fit(loader(shuffle=True), 1, progress=False)
    first.save(tmp_path / "a.pt")
    torch.rand(1000)
    model, opt, kw = _resumable(seed=123)
    resumed = T.Trainer(model, opt, **kw).load(tmp_path / "a.pt", restore_rng=False)
    resumed.fit(loader(shuffle=True), 1, progress=False)
    assert not torch.equal(straight.model[0].weight, resumed.model[0].weight)


def test_checkpoint_loads_with_weights_only_and_missing_file_is_named(tmp_path):
    trainer = make_trainer()
    trainer.fit(loader(), 1, val_fn=lambda m: {"acc": 0.25}, progress=False)
    path = trainer.save(tmp_path / "t.pt")
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["history"]["epochs"][0]["val_acc"] == 0.25
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        make_trainer().load(missing)


# ----------------------------------------------------------------------------------------------
# History and callbacks
# ----------------------------------------------------------------------------------------------
def test_history_access_best_and_table():
    h = T.History(
        epochs=[
            {"epoch": 1, "loss": 0.9, "val_acc": 0.5},
            {"epoch": 2, "loss": 0.4, "val_acc": 0.7},
            {"epoch": 3, "loss": 0.5},
        ],
        steps=[1.0, 0.8],
    )
    assert h["loss"] == [0.9, 0.4, 0.5]
    assert math.isnan(h["val_acc"][2])
    assert h.best("loss")["epoch"] == 2 and h.best("val_acc", "max")["epoch"] == 2
    table = h.as_table().splitlines()
    assert (
        table[0].split() == ["epoch", "loss", "val_acc"] and len(table) == 4 and table[2].split()[1] == "0.4"
    )
    with pytest.raises(KeyError, match="loss"):
        h["acc"]
    with pytest.raises(ValueError, match="mode"):
        h.best("loss", "lowest")
    assert T.History.from_state_dict(h.state_dict()) == h


class Recorder(T.Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("start")

    def on_step_end(self, trainer, step, logs):
        self.calls.append(("step", step, sorted(logs)))

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(("epoch", epoch, logs["step"]))

    def on_fit_end(self, trainer):
        self.calls.append("end")


def test_callbacks_are_called_in_order_with_their_logs():
    rec = Recorder()
    make_trainer(callbacks=[rec]).fit(loader(bs=32), 2, progress=False)
    assert rec.calls == [
        "start",
        ("step", 1, ["acc", "loss"]),
        ("step", 2, ["acc", "loss"]),
        ("epoch", 1, 2),
        ("step", 3, ["acc", "loss"]),
        ("step", 4, ["acc", "loss"]),
        ("epoch", 2, 4),
        "end",
    ]


def scripted(values):
    it = iter(values)
    return lambda model: {"loss": next(it)}


def test_early_stopping_and_best_checkpoint(tmp_path, capsys):
    stop = T.EarlyStopping("val_loss", "min", patience=2)
    ckpt = T.Checkpoint(tmp_path / "best.pt", monitor="val_loss", mode="min")
    trainer = make_trainer(callbacks=[stop, ckpt])
    hist = trainer.fit(loader(), 10, val_fn=scripted([1.0, 0.5, 0.6, 0.7, 0.4, 0.3]), progress=False)
    assert len(hist) == 4 and stop.stopped_epoch == 4  # 0.6 and 0.7 did not beat 0.5
    assert "early stopping at epoch 4" in capsys.readouterr().out
    assert ckpt.saved_epochs == [1, 2]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(ValueError, match="val_acc"):
        make_trainer(callbacks=[T.EarlyStopping("val_acc", "max")]).fit(loader(), 1, progress=False)
    with pytest.raises(ValueError, match="patience"):
        T.EarlyStopping(patience=0)


def test_checkpoint_every_epoch(tmp_path):
    ckpt = T.Checkpoint(tmp_path / "last.pt")
    make_trainer(callbacks=[ckpt]).fit(loader(), 3, progress=False)
    assert ckpt.saved_epochs == [1, 2, 3]


def test_liveplot_headless_collects_everything_and_draws_once():
    live = T.LivePlot(keys=("loss", "val_acc"), every=1)
    make_trainer(callbacks=[live]).fit(loader(), 3, val_fn=lambda m: {"acc": 0.5}, progress=False)
    assert live.draws == 1  # no redraw per step outside a notebook
    steps, losses = live.data["loss"]
    assert steps == list(range(1, 13)) and len(losses) == 12
    assert live.data["val_acc"] == ([4, 8, 12], [0.5, 0.5, 0.5])
    assert len(live.ax.lines) == 2


# ----------------------------------------------------------------------------------------------
# fit(), parameters, timing, detection
# ----------------------------------------------------------------------------------------------
def test_fit_shortcut_trains_only_unfrozen_parameters():
    model = mlp()
    T.freeze(model[0])
    before = model[0].weight.clone(), model[3].weight.clone()
    hist = T.fit(model, loader(), epochs=2, lr=0.05, optimizer="sgd", device="cpu", progress=False)
    assert len(hist) == 2
    assert torch.equal(model[0].weight, before[0]) and not torch.equal(model[3].weight, before[1])
    with pytest.raises(ValueError, match="adam"):
        T.fit(model, loader(), optimizer="rmsprop")
    T.freeze(model)
    with pytest.raises(ValueError, match="unfreeze"):
        T.fit(model, loader())


def test_count_parameters_freeze_unfreeze():
    model = mlp()  # 2*16 + 16 + 16*2 + 2 = 82
    assert T.count_parameters(model) == 82 == sum(p.numel() for p in model.parameters())
    T.freeze(model[0])
    assert T.count_parameters(model, trainable_only=True) == 34 and T.count_parameters(model) == 82
    assert T.unfreeze(model) is model and T.count_parameters(model, trainable_only=True) == 82


class Sleepy(nn.Module):
    """Takes 10 ms a call whatever the batch: time per image is 10 ms / B."""

    def forward(self, x):
        time.sleep(0.01)
        return x


def test_time_per_image_divides_by_batch_and_restores_mode():
    model = Sleepy().train()
    t = T.time_per_image(model, torch.zeros(4, 3, 8, 8), device="cpu", repeats=5, warmup=1)
    assert 0.0025 <= t < 0.006
    assert model.training
    t_list = T.time_per_image(model, [torch.zeros(3, 8, 8)] * 2, device="cpu", repeats=3, warmup=0)
    assert 0.005 <= t_list < 0.012
    with pytest.raises(ValueError):
        T.time_per_image(model, [], device="cpu")


class TinyBackbone(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.out_channels = 8


def test_detection_step_trains_a_torchvision_faster_rcnn_and_logs_its_four_losses():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    model = FasterRCNN(
        TinyBackbone(),
        num_classes=3,
        min_size=64,
        max_size=64,
        rpn_anchor_generator=AnchorGenerator(((16, 32),), ((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 3, 2),
        representation_size=16,
        rpn_batch_size_per_image=16,
        box_batch_size_per_image=16,
    )
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    trainer = T.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), T.detection_step, device="cpu")
    hist = trainer.fit([(images, targets)] * 2, 1, progress=False)
    four = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
    assert all(k in hist.keys() for k in ["loss", *four])
    assert hist["loss"][0] == pytest.approx(sum(hist[k][0] for k in four), rel=1e-5)
    model.eval()
    with pytest.raises(ValueError, match="train mode"):
        T.detection_step(model, (images, targets), CPU)


def test_eval_mode_switches_to_eval_and_gives_the_mode_back_even_on_an_error():
    from coursekit.train import eval_mode

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for start in (True, False):
        net.train(start)
        with eval_mode(net) as inside:
            assert inside is net and not net.training and not net[1].training
        assert net.training is start
    with pytest.raises(RuntimeError), eval_mode(net.train()):
        raise RuntimeError("boom")
    assert net.training
