"""One training loop for the whole course: ``Trainer`` / ``fit``, callbacks, checkpoints, timing.

Every notebook that trains something calls :class:`Trainer` (or the :func:`fit` shortcut). What a
task computes from a batch lives in a *step function*, kept apart from the loop (the way
deep-image-prior keeps its optimisation loop apart from the task's loss)::

    step(model, batch, device) -> {"loss": Tensor[], "acc": Tensor[], ...}

``"loss"`` is the total that is back-propagated; every other entry is only logged (the four
Faster R-CNN losses of notebook 04, ``"loss_cls"`` / ``"loss_box"`` of notebook 02, ...).
Plots and early stopping attach through :class:`Callback` objects.

- AMP: on CUDA by default (``torch.autocast(float16)`` + ``torch.amp.GradScaler``), off on CPU/MPS.
- Checkpoints hold model, optimizer, scheduler, scaler, epoch, history and the torch RNG state, so
  ``1 epoch + save + load + 1 epoch`` gives the same weights as ``2 epochs`` (``tests/test_train.py``).
- :func:`freeze` / :func:`unfreeze` / :func:`count_parameters` serve notebook 01 (transfer learning);
  :func:`time_per_image` fills every "time per image" table of the course (notebooks 03-08).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from coursekit.runtime import device as default_device

__all__ = [
    "StepFn",
    "History",
    "Callback",
    "LivePlot",
    "EarlyStopping",
    "Checkpoint",
    "Trainer",
    "fit",
    "classification_step",
    "detection_step",
    "to_device",
    "count_parameters",
    "freeze",
    "unfreeze",
    "frozen_to_eval",
    "eval_mode",
    "time_per_image",
]

StepFn = Callable[[nn.Module, Any, torch.device], dict[str, Tensor]]
Mode = Literal["min", "max"]
_MODES: tuple[str, ...] = ("min", "max")


# ----------------------------------------------------------------------------------------------
# Moving batches, step functions
# ----------------------------------------------------------------------------------------------
def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move a tensor, or tensors nested in lists / tuples / dicts, to ``device``; leave the rest.

    Detection batches are ``(list[Tensor[3, H, W]], list[dict[str, Tensor]])``: one call moves all.
    Named tuples keep their type.
    """
    if isinstance(obj, Tensor):
        # Asynchronous copies only towards the GPU: a non-blocking copy back to the CPU could be
        # read before it has landed.
        return obj.to(device, non_blocking=torch.device(device).type == "cuda")
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple: rebuild field by field
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _unpack_pair(batch: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise ValueError(
            f"{what} expects a batch (inputs, targets) of length 2, got {type(batch).__name__}"
            f"{f' of length {len(batch)}' if isinstance(batch, (list, tuple)) else ''}; "
            "write your own step(model, batch, device) for other batch layouts"
        )
    return batch[0], batch[1]


def classification_step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """Cross-entropy on a batch ``(x: Tensor[B, ...], y: Tensor[B] int64)``; also logs accuracy.

    The model returns logits ``Tensor[B, C]``. Returns ``{"loss": Tensor[], "acc": Tensor[]}``.
    Taught in notebook 01 (transfer learning) and 02 (the class branch).
    """
    x, y = to_device(_unpack_pair(batch, "classification_step"), device)
    logits = model(x)  # (B, C)
    loss = F.cross_entropy(logits, y)
    acc = (logits.detach().argmax(dim=1) == y).float().mean()
    return {"loss": loss, "acc": acc}


def detection_step(model: nn.Module, batch: Any, device: torch.device) -> dict[str, Tensor]:
    """One batch for a torchvision detection model (Faster / Mask R-CNN, RetinaNet, SSD, ...).

    ``batch = (images, targets)``: images a list of ``Tensor[3, H, W]`` floats in [0, 1] (or one
    ``Tensor[B, 3, H, W]``), targets a list of ``{"boxes": Tensor[N, 4] xyxy, "labels": Tensor[N]
    int64, ...}``. In train mode the model returns its loss dict; ``"loss"`` is their sum and each
    loss is logged too (notebook 04 plots the four Faster R-CNN losses).
    """
    images, targets = _unpack_pair(batch, "detection_step")
    images = to_device(list(images), device)
    targets = to_device(list(targets), device)
    losses = model(images, targets)
    if not isinstance(losses, Mapping):
        raise ValueError(
            f"the detection model returned {type(losses).__name__}, not a loss dict: "
            "it must be in train mode (Trainer puts it there) and be given targets"
        )
    return {"loss": sum(losses.values()), **losses}


# ----------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------
@dataclass
class History:
    """What a training run logged, as plain Python values (so checkpoints load with weights_only).

    ``epochs``: one row per epoch, e.g. ``{"epoch": 1, "step": 120, "time": 3.2, "lr": 1e-3,
    "loss": 0.41, "acc": 0.87, "val_acc": 0.85}`` (step entries are means over the epoch's steps,
    ``time`` is cumulative training seconds without validation, ``val_*`` come from ``val_fn``).
    ``steps``: the loss of every optimizer step, in order.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)  # one row per (possibly partial) epoch
    steps: list[float] = field(default_factory=list)  # "loss" after each optimizer step

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self) -> list[str]:
        """Every key that appears in some epoch row, in first-seen order."""
        return list(dict.fromkeys(k for row in self.epochs for k in row))

    def __getitem__(self, key: str) -> list[float]:
        """Per-epoch values of ``key`` (NaN for an epoch that did not log it)."""
        if key not in self.keys():
            raise KeyError(f"{key!r} was never logged; logged keys: {self.keys()}")
        return [row.get(key, math.nan) for row in self.epochs]

    def best(self, key: str, mode: Mode = "min") -> dict[str, float]:
        """The epoch row where ``key`` is lowest (``mode="min"``) or highest (``"max"``)."""
        _check_mode(mode)
        rows = [row for row in self.epochs if key in row and not math.isnan(row[key])]
        if not rows:
            raise KeyError(f"{key!r} was never logged; logged keys: {self.keys()}")
        pick = min if mode == "min" else max
        return pick(rows, key=lambda row: row[key])

    def as_table(self, digits: int = 4) -> str:
        """The epoch rows as a fixed-width text table (one line per epoch)."""
        keys = self.keys()
        cells = [[_format_cell(row.get(k, math.nan), digits) for k in keys] for row in self.epochs]
        widths = [max([len(k)] + [len(r[i]) for r in cells]) for i, k in enumerate(keys)]
        lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)

    def plot(self, keys: Sequence[str] | None = None, ax=None):
        """Curves of ``keys`` against epoch: see :func:`coursekit.viz.plot_history`."""
        from coursekit.viz import plot_history  # lazy: keep matplotlib out of training-only imports

        return plot_history(self, keys=keys, ax=ax)

    def state_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, list]) -> History:
        return cls(epochs=[dict(row) for row in state["epochs"]], steps=list(state["steps"]))


def _format_cell(value: float, digits: int) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.{digits}g}"


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------
class Callback:
    """Hooks into :meth:`Trainer.fit`; override what you need. Set ``trainer.stop_training = True``
    to stop after the current step."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        """After optimizer step number ``step`` (1-based, counted over the trainer's life)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """After epoch number ``epoch`` (1-based) with its history row (validation included)."""

    def on_fit_end(self, trainer: Trainer) -> None: ...


class _Monitor:
    """Tracks the best value of one logged key (shared by EarlyStopping and Checkpoint)."""

    def __init__(self, monitor: str, mode: Mode, min_delta: float = 0.0):
        _check_mode(mode)
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf

    def improved(self, logs: Mapping[str, float]) -> bool:
        if self.monitor not in logs:
            raise ValueError(
                f"cannot monitor {self.monitor!r}: the epoch logged {sorted(logs)}; "
                "pass val_fn to fit() for 'val_*' keys"
            )
        value = logs[self.monitor]
        better = (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better:
            self.best = value
        return better


class EarlyStopping(Callback):
    """Stop when ``monitor`` (an epoch-row key, e.g. ``"val_loss"``) has not improved for
    ``patience`` epochs. Notebook 09 (Deep Image Prior) shows why stopping early matters."""

    def __init__(
        self, monitor: str = "val_loss", mode: Mode = "min", patience: int = 3, min_delta: float = 0.0
    ):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self._monitor = _Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.wait, self.stopped_epoch = 0, None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self._monitor.improved(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop_training = True
            self.stopped_epoch = epoch
            m = self._monitor
            print(
                f"early stopping at epoch {epoch}: {m.monitor} did not improve on {m.best:.4g} "
                f"for {self.patience} epochs"
            )


class Checkpoint(Callback):
    """Save the trainer to ``path`` after every epoch (``monitor=None``) or only when ``monitor``
    improves (the best model so far). Reload with :meth:`Trainer.load` or :meth:`Trainer.resume`."""

    def __init__(self, path: str | Path, monitor: str | None = None, mode: Mode = "min"):
        self.path = Path(path)
        self._monitor = _Monitor(monitor, mode) if monitor else None
        self.saved_epochs: list[int] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self._monitor is None or self._monitor.improved(logs):
            trainer.save(self.path)
            self.saved_epochs.append(epoch)


class LivePlot(Callback):
    """A loss curve that redraws while training runs in Jupyter (every ``every`` steps).

    ``keys`` are step entries (``"loss"``, ``"acc"``, ``"loss_box"``...) drawn against the step, or
    epoch entries (``"val_loss"``...) drawn as dots at the step where each epoch ended. In a
    notebook the figure is updated in place through a display handle (the progress bar above it
    stays); outside a notebook (scripts, pytest) it only collects data and draws once, at the end,
    into ``self.fig``.
    """

    def __init__(
        self, keys: Sequence[str] = ("loss",), every: int = 20, figsize: tuple[float, float] = (6, 3.5)
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.keys, self.every, self.figsize = tuple(keys), every, figsize
        self.data: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in self.keys}
        self.fig = None
        self._handle = None
        self.draws = 0  # how many times the figure was drawn (tests check there is no spam)

    def on_fit_start(self, trainer: Trainer) -> None:
        import matplotlib.pyplot as plt

        from coursekit.viz import in_notebook

        if self.fig is None:
            self.fig, self.ax = plt.subplots(figsize=self.figsize)
            plt.close(self.fig)  # we display it ourselves; keep pyplot from showing it a second time
        if in_notebook():
            from IPython.display import display

            self._handle = display(self._image(), display_id=True)

    def _record(self, step: int, logs: Mapping[str, float]) -> None:
        for key in self.keys:
            if key in logs:
                self.data[key][0].append(step)
                self.data[key][1].append(logs[key])

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        self._record(step, logs)
        if self._handle is not None and step % self.every == 0:
            self.draw()

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self._record(trainer.global_step, {k: v for k, v in logs.items() if k.startswith("val_")})

    def on_fit_end(self, trainer: Trainer) -> None:
        self.draw()

    def draw(self) -> None:
        """Redraw the curves (and push them to the notebook if there is one)."""
        from coursekit.viz import class_color  # lazy: keep matplotlib out of training-only imports

        self.ax.clear()
        for i, (key, (xs, ys)) in enumerate(self.data.items()):
            if xs:
                style = "o-" if key.startswith("val_") else "-"
                self.ax.plot(xs, ys, style, color=class_color(i + 1), label=key, lw=1.2, ms=4)
        self.ax.set_xlabel("optimizer step")
        if any(xs for xs, _ in self.data.values()):
            self.ax.legend(loc="best")
        self.ax.grid(alpha=0.3)
        self.draws += 1
        if self._handle is not None:
            self._handle.update(self._image())

    def _image(self):
        from IPython.display import Image

        from coursekit.viz import figure_to_png

        # PNG bytes, not the Figure: that renders under any backend (Agg in CI, inline in Jupyter).
        return Image(data=figure_to_png(self.fig))


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` with ``optimizer`` on the losses returned by ``step``.

    Args:
        model: moved to ``device`` here.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        step: ``step(model, batch, device) -> dict[str, Tensor]`` with a ``"loss"`` entry;
            default :func:`classification_step`.
        device: default ``coursekit.device()`` (CUDA, then MPS, then CPU).
        amp: mixed precision (float16 autocast + gradient scaling); ``None``: on exactly when the
            device is CUDA. ``True`` on a non-CUDA device raises ``ValueError``.
        scheduler: an ``lr_scheduler``, stepped after every epoch (``scheduler_interval="epoch"``)
            or every optimizer step (``"step"``, e.g. OneCycleLR). ``ReduceLROnPlateau`` is given
            ``val_loss`` if logged, else ``loss``.
        callbacks: :class:`Callback` objects (plots, early stopping, checkpoints).
        grad_clip: clip the global gradient norm to this value (after unscaling under AMP).

    State you can read: ``epoch`` (epochs completed), ``global_step`` (optimizer steps taken),
    ``history`` (:class:`History`), ``stop_training`` (a callback sets it to stop).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step: StepFn | None = None,
        *,
        device: torch.device | str | None = None,
        amp: bool | None = None,
        scheduler: Any = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        callbacks: Iterable[Callback] = (),
        grad_clip: float | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        if self.amp and self.device.type != "cuda":
            raise ValueError(f"amp=True needs a CUDA device, got {self.device}; use amp=None (auto) or False")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be a positive norm, got {grad_clip}")
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.step = step or classification_step
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.callbacks = list(callbacks)
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history = History()
        self.epoch = 0
        self.global_step = 0
        self.train_time = 0.0  # seconds spent in training steps, validation excluded
        self.stop_training = False

    # -- one step ---------------------------------------------------------------------------
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16)

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward (under autocast), backward (scaled), clip, optimizer step; returns the logs."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.step(self.model, batch, self.device)
        loss = _check_step_output(out)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.global_step + 1}: lower the learning rate, "
                "check the inputs and targets, or set grad_clip"
            )
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1
        return {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in out.items()}

    # -- the loop ---------------------------------------------------------------------------
    def fit(
        self,
        train_loader: Iterable,
        epochs: int,
        val_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        *,
        max_steps: int | None = None,
        time_limit: float | None = None,
        progress: bool = True,
    ) -> History:
        """Train for ``epochs`` more epochs (numbering continues from ``self.epoch``).

        Args:
            train_loader: yields batches for ``step``.
            epochs: how many epochs to run in this call.
            val_fn: ``val_fn(model) -> {"acc": 0.9, ...}`` run after each epoch with the model in
                eval mode under ``no_grad`` (then back to train mode); keys are logged as ``val_*``.
            max_steps: stop after this many optimizer steps in this call (fast profiles).
            time_limit: stop after this many seconds of training in this call ("equal training
                time" comparisons). A stopped epoch is still logged (and validated).
            progress: show a tqdm bar per epoch with the running mean loss.

        Returns ``self.history`` (all epochs of this trainer, earlier calls included).
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit}")
        self.stop_training = False
        budget = _Budget(self.global_step, max_steps, time_limit)
        self.model.train()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        last = self.epoch + epochs
        for _ in range(epochs):
            row = self._train_epoch(train_loader, last, progress, budget)
            if val_fn is not None:
                row.update(self.validate(val_fn))
            self._step_scheduler(row)
            self.history.epochs.append(row)
            self.epoch += 1
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, row)
            if self.stop_training:
                break
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _train_epoch(
        self, loader: Iterable, last_epoch: int, progress: bool, budget: _Budget
    ) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        # The bar counts each step once it is done (bar.update below). Iterating tqdm(loader) would count a
        # step only when the next batch is asked for, so a budget's break left the last one uncounted: the
        # notebook bar ended red and short ("3/4" after 4 steps).
        bar = tqdm(
            desc=f"epoch {self.epoch + 1}/{last_epoch}",
            total=budget.total(loader, self.global_step),
            disable=not progress,
            leave=True,
        )
        with bar:
            tick = time.perf_counter()
            for batch in loader:
                logs = self.train_step(batch)
                # Training time counts data loading and the step, not the callbacks (plots) below.
                dt = time.perf_counter() - tick
                self.train_time += dt
                budget.spent += dt
                n += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                self.history.steps.append(logs["loss"])
                # refresh=False: tqdm redraws at its own pace, not once per step (a widget message each).
                bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", refresh=False)
                bar.update()
                for cb in self.callbacks:
                    cb.on_step_end(self, self.global_step, logs)
                if budget.exhausted(self.global_step):
                    self.stop_training = True
                if self.stop_training:
                    # A deliberate stop (time budget, early stopping) is a finished run: the bar ends full
                    # and green at the steps done, not red as tqdm marks a bar left short.
                    bar.total = bar.n
                    break
                tick = time.perf_counter()
        if n == 0:
            raise ValueError(
                "train_loader yielded no batches: check the dataset size and batch_size/drop_last"
            )
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "time": round(self.train_time, 4),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        row.update({k: v / n for k, v in sums.items()})
        return row

    def validate(self, val_fn: Callable[[nn.Module], Mapping[str, float]]) -> dict[str, float]:
        """Run ``val_fn(model)`` in eval mode under ``no_grad``; return its numbers as ``val_*``."""
        with eval_mode(self.model), torch.no_grad():
            metrics = val_fn(self.model)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"val_fn must return a dict of numbers, got {type(metrics).__name__}")
        return {(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in metrics.items()}

    def _step_scheduler(self, row: Mapping[str, float]) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(row.get("val_loss", row["loss"]))
        else:
            self.scheduler.step()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training; plain tensors, dicts, lists and numbers only."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "train_time": self.train_time,
            "history": self.history.state_dict(),
            "rng": rng,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to ``path`` (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def load(self, path: str | Path, *, restore_rng: bool = True) -> Trainer:
        """Restore a checkpoint written by :meth:`save` (``torch.load(weights_only=True)``).

        With ``restore_rng`` the torch RNG is put back too, so shuffling and dropout continue
        exactly as in an uninterrupted run. Returns ``self``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.train_time = float(state["train_time"])
        self.history = History.from_state_dict(state["history"])
        if restore_rng:
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return self

    @classmethod
    def resume(
        cls,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step: StepFn | None = None,
        **kw,
    ) -> Trainer:
        """A new trainer (same arguments as ``Trainer``) restored from ``path``; then call ``fit``
        with the epochs that are left (``total - trainer.epoch``)."""
        return cls(model, optimizer, step, **kw).load(path)


class _Budget:
    """The max_steps / time_limit of one fit() call."""

    def __init__(self, start_step: int, max_steps: int | None, time_limit: float | None):
        self.start_step, self.max_steps, self.time_limit = start_step, max_steps, time_limit
        self.spent = 0.0

    def exhausted(self, global_step: int) -> bool:
        if self.max_steps is not None and global_step - self.start_step >= self.max_steps:
            return True
        return self.time_limit is not None and self.spent >= self.time_limit

    def total(self, loader: Iterable, global_step: int) -> int | None:
        """Steps the coming epoch will take, for the progress bar (None: the loader has no len)."""
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        if self.max_steps is None:
            return n
        return min(n, self.max_steps - (global_step - self.start_step))


def _check_step_output(out: Any) -> Tensor:
    if not isinstance(out, Mapping) or "loss" not in out:
        got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(
            f"step must return a dict with a 'loss' entry (the total to backpropagate), got {got}"
        )
    loss = out["loss"]
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise ValueError(
            "step's 'loss' must be a scalar tensor that requires grad, got "
            f"{type(loss).__name__}{list(loss.shape) if isinstance(loss, Tensor) else ''}; "
            "reduce it with .mean() or .sum() and do not call .item() on it"
        )
    return loss


# ----------------------------------------------------------------------------------------------
# Shortcuts and measurements
# ----------------------------------------------------------------------------------------------
_OPTIMIZERS = ("adam", "adamw", "sgd")


def fit(
    model: nn.Module,
    train_loader: Iterable,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: Literal["adam", "adamw", "sgd"] = "adam",
    step: StepFn | None = None,
    *,
    weight_decay: float = 0.0,
    val_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    max_steps: int | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    **trainer_kw: Any,
) -> History:
    """Build an optimizer over the trainable parameters and a :class:`Trainer`, then train.

    ``optimizer``: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9). Other keyword arguments
    go to :class:`Trainer` (``device``, ``amp``, ``scheduler``, ``callbacks``, ``grad_clip``).
    Frozen parameters (:func:`freeze`) are left out of the optimizer.
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: unfreeze() some layers first")
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr, weight_decay=weight_decay)
    trainer = Trainer(model, opt, step, **trainer_kw)
    return trainer.fit(
        train_loader, epochs, val_fn, max_steps=max_steps, time_limit=time_limit, progress=progress
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` if ``trainable_only``).

    Notebook 01 prints it for each transfer-learning regime (VGG-16: 138,357,544 in all).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for every parameter of ``module``; returns it (notebook 01).

    BatchNorm running statistics still update in train mode (and ``Trainer`` calls ``model.train()``):
    call :func:`frozen_to_eval` in the step function if the frozen part must not change at all.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def frozen_to_eval(model: nn.Module) -> nn.Module:
    """Put frozen BatchNorm layers in eval mode after ``model.train()``.

    A frozen block must stay exactly as pretrained; in train mode its BatchNorm would still update its
    running mean and variance from the target data, silently changing the "frozen" features.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` runs the block with ``model`` in eval mode (BatchNorm uses its running
    statistics, dropout is off) and gives the model its train/eval mode back afterwards, even on an error.
    Gradients are not affected: add ``torch.no_grad()`` for inference."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unfreeze(module: nn.Module) -> nn.Module:
    """Let every parameter of ``module`` train again; returns it."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def time_per_image(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    device: torch.device | str | None = None,
    repeats: int = 10,
    warmup: int = 2,
) -> float:
    """Seconds of inference per image: ``model(images)`` in eval mode under ``no_grad``, timed with
    :func:`coursekit.benchmark.benchmark` (the median of ``repeats`` calls, after ``warmup`` calls).

    Args:
        images: a batch ``Tensor[B, 3, H, W]``, or a list of ``Tensor[3, H, W]`` (detection models).
        device: default ``coursekit.device()``; the model is moved there (and left there).
        repeats: timed forward passes; ``warmup`` untimed ones run first (cuDNN autotuning, caches).

    Returns ``median_time / B``. The model's train/eval mode is restored afterwards.
    Used by every "time per image" table of the course (R-CNN vs Fast vs Faster R-CNN, sliding
    windows vs convolutional OverFeat, ...).
    """
    from coursekit.benchmark import benchmark

    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    n = len(images)
    if n == 0:
        raise ValueError("images is empty: pass a batch Tensor[B, 3, H, W] or a list of images")
    dev = torch.device(device) if device is not None else default_device()
    model = model.to(dev)
    images = to_device(images, dev)
    with eval_mode(model):
        seconds = benchmark(model, images, repeats=repeats, warmup=warmup)
    return seconds / n
