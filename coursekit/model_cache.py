"""Trained models cached for the lecture: train once (the night before, on a GPU), load in class.

Every lecture-profile training in the notebooks goes through :meth:`ModelCache.train`::

    cache = ck.ModelCache("05", PROFILE, retrain=RETRAIN, device=DEVICE,
                          config={"n_train": N_TRAIN, "seed": SEED, "lr": LR})
    ssd_run = cache.train("SSD", ssd, lambda: train(ssd, S.ssd_step, SSD_STEPS, "SSD"),
                          evaluate=lambda model: {"mAP@0.5": evaluate(model)[0]["map_50"]}, steps=SSD_STEPS)
    ssd_run.history, ssd_run.train_time, ssd_run.metrics   # the same whether trained now or loaded

After a live training it saves the weights, what the training function returned (a ``Trainer``'s history
and timing, a results dict, a ``History``, a coursekit dataclass such as ``DIPResult``), the evaluation
numbers and the random-number state, under a key made of (notebook, model name, a hash of the
configuration, coursekit version). Before training it looks the key up and, when present, loads instead
and prints one line::

    loaded SSD trained 2026-11-30 on cuda (8,000 steps, mAP@0.5 0.81) from the cache; RETRAIN = True trains it live

What decides the result, hence the key: the configuration the notebook passes (sizes, steps, learning
rate, seed, where the backbone's weights came from...), the model's architecture (parameter names, shapes,
dtypes and which ones train), the profile and ``coursekit.__version__``. Bump the version when a change
in coursekit's training code changes results; notebooks put everything else in ``config``.

Safety: files are read with ``torch.load(weights_only=True)``; an unreadable file, a key that does not
match, or weights that do not fit the model print one line naming the problem and the model is trained
live (and the entry rewritten). A configuration with no entry, while entries for other configurations
of the same model exist, says so too: never a silent stale result.

Only the lecture profile uses the cache (``enabled=None``): fast-profile trainings take seconds, they are
what CI runs to test the training code itself, and a cached fast run would test the cache instead.
``COURSEKIT_MODEL_CACHE=0`` turns the cache off everywhere; ``=always`` turns it on in every profile (run a
notebook twice in the fast profile with it to exercise every loading path in a minute). Files live in
``$COURSEKIT_CACHE/models/<notebook>/`` (``~/.cache/coursekit`` by default); every training and load is
logged to ``models/log.jsonl``, which ``coursekit prepare --lecture`` reads for its table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ModelCache", "TrainedRun", "cached_training", "models_dir", "read_log", "prepare_lecture",
           "compare_printed", "printed_lines", "FORMAT"]

FORMAT = 1  # layout of a cache file; bump when it changes (old files are then retrained, with a line saying so)
_TRUE = ("1", "true", "yes", "on")


def models_dir(root: str | Path | None = None) -> Path:
    """Where trained models are cached: ``<root or coursekit's cache folder>/models``."""
    if root is None:
        from coursekit.weights import cache_dir

        return cache_dir() / "models"
    return Path(root) / "models"


def _version() -> str:
    import coursekit

    return coursekit.__version__


def _say(message: str) -> None:
    print(f"coursekit: {message}")


# ----------------------------------------------------------------------------------------------
# What a training returned, as plain values (so that weights_only can load it back)
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainerRecord:
    """What a :class:`coursekit.train.Trainer` leaves that notebooks read after training."""

    history: Any  # coursekit.train.History
    train_time: float
    epoch: int
    global_step: int
    device: str


class _NotStorable(TypeError):
    pass


def _pack(obj: Any) -> Any:
    """``obj`` as tensors, numbers, strings, lists and dicts; raises ``_NotStorable`` for anything else."""
    from coursekit.train import History, Trainer

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, nn.Module):  # e.g. DIPResult.net: rebuilt on load as a copy of the cached model
        state = {k: v.detach().cpu().clone() for k, v in obj.state_dict().items()}
        return {"__nn_module__": type(obj).__qualname__, "state": state, "training": bool(obj.training)}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Trainer):
        obj = TrainerRecord(obj.history, obj.train_time, obj.epoch, obj.global_step, str(obj.device))
    if isinstance(obj, History):
        return {"__history__": obj.state_dict()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        if not cls.__module__.startswith("coursekit"):
            raise _NotStorable(f"{cls.__qualname__} (only coursekit's own dataclasses are stored)")
        fields = {f.name: _pack(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise _NotStorable("a dict whose keys are not str or int")
        return {"__dict__": [[k, _pack(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v) for v in obj]
    raise _NotStorable(type(obj).__qualname__)


def _unpack(obj: Any, template: nn.Module | None = None) -> Any:
    """Inverse of :func:`_pack`; a stored ``nn.Module`` is rebuilt as a copy of ``template``."""
    import copy

    from coursekit.train import History

    def again(value: Any) -> Any:
        return _unpack(value, template)

    if isinstance(obj, list):
        return [again(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return obj["__ndarray__"].numpy()
    if "__history__" in obj:
        return History.from_state_dict(obj["__history__"])
    if "__tuple__" in obj:
        return tuple(again(v) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: again(v) for k, v in obj["__dict__"]}
    if "__nn_module__" in obj:
        if template is None or type(template).__qualname__ != obj["__nn_module__"]:
            raise ValueError(f"the result holds a {obj['__nn_module__']}: pass one as the cached model to rebuild it")
        module = copy.deepcopy(template)
        problem = _state_mismatch(module.state_dict(), obj["state"])
        if problem:
            raise ValueError(f"the stored {obj['__nn_module__']} does not fit the model: {problem}")
        module.load_state_dict(obj["state"])
        return module.train(bool(obj["training"]))
    if "__dataclass__" in obj:
        module, qualname = obj["__dataclass__"].split(":")
        if not module.startswith("coursekit"):
            raise ValueError(f"refusing to rebuild {module}.{qualname}: not a coursekit class")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**{k: again(v) for k, v in obj["fields"].items()})
    raise ValueError(f"unknown stored value with keys {sorted(obj)}")


# ----------------------------------------------------------------------------------------------
# The key
# ----------------------------------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    """A JSON-able form of a configuration value that does not depend on memory addresses."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (np.generic,)):
        return _canonical(value.item())
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(str(_canonical(v)) for v in value)
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "sha": hashlib.sha256(value.detach().cpu().numpy().tobytes()).hexdigest()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, type) or callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{getattr(value, '__module__', '?')}.{name}"
    return str(value)  # torch.device, torch.dtype, Path, enums...


def architecture(model: nn.Module | None) -> list:
    """What the key keeps of a model: parameter and buffer names, shapes, dtypes, which parameters train, and the
    ``weights_source`` / ``source`` its modules record (where their pretrained weights came from)."""
    if model is None:
        return []
    params = [[n, list(p.shape), str(p.dtype), bool(p.requires_grad)] for n, p in model.named_parameters()]
    buffers = [[n, list(b.shape), str(b.dtype)] for n, b in model.named_buffers()]
    # where pretrained weights came from ("imagenet", "coursekit-shapes", "coco"), as models record it
    sources = sorted({f"{n}.{attr}={value}" for n, m in model.named_modules() for attr in ("weights_source", "source")
                      if isinstance(value := getattr(m, attr, None), str)})
    return [type(model).__qualname__, params, buffers, sources]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


# ----------------------------------------------------------------------------------------------
# What a cached training gives back
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainedRun:
    """One training, live or loaded: the same attributes either way.

    ``result``: what the training function returned (live: the object itself, e.g. a ``Trainer``;
    loaded: its stored copy, a :class:`TrainerRecord` for a Trainer). ``history`` / ``train_time`` /
    ``global_step``: from the result when it has them. ``metrics``: what ``evaluate`` returned.
    ``from_cache``: loaded (True) or trained now (False). ``trained_on``, ``date``: where and when.
    """

    name: str
    model: nn.Module | None
    result: Any
    metrics: dict
    from_cache: bool
    trained_on: str
    date: str
    seconds: float  # wall-clock seconds of the training function when it ran
    path: Path | None = None

    @property
    def _trained(self) -> Any:
        """The result, or the Trainer / History inside a dict result (``{"trainer": ..., "curves": ...}``)."""
        from coursekit.train import History

        if isinstance(self.result, Mapping):
            for value in self.result.values():
                if isinstance(value, History) or hasattr(value, "history"):
                    return value
        return self.result

    @property
    def history(self):
        from coursekit.train import History

        if isinstance(self._trained, History):
            return self._trained
        return getattr(self._trained, "history", None)

    @property
    def train_time(self) -> float:
        return float(getattr(self._trained, "train_time", self.seconds))

    @property
    def global_step(self) -> int | None:
        step = getattr(self._trained, "global_step", None)
        if step is None and self.history is not None:
            return len(self.history.steps) or None
        return step

    @property
    def trainer(self):
        """The live ``Trainer`` (None when loaded from the cache)."""
        from coursekit.train import Trainer

        return self.result if isinstance(self.result, Trainer) else None


def _describe(steps: Any, metrics: Mapping) -> str:
    parts = []
    if isinstance(steps, int) and steps > 0:
        parts.append(f"{steps:,} steps")
    for key, value in metrics.items():
        if not _is_number(value):
            continue
        value = float(value)
        parts.append(f"{key} {value:.3g}" if abs(value) < 1000 else f"{key} {value:,.0f}")
        if len(parts) >= 4:
            break
    return f" ({', '.join(parts)})" if parts else ""


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------
class ModelCache:
    """The trained models of one notebook. See the module docstring.

    Args:
        notebook: the notebook's number (``"05"``); a folder of the cache.
        profile: the notebook's ``PROFILE``; only ``"lecture"`` uses the cache unless ``enabled=True``.
        retrain: train live even when an entry exists (the notebook's ``RETRAIN`` parameter); the entry
            is then replaced.
        config: what decides every training of this notebook (data sizes, seed, ...); merged with the
            per-call configuration of :meth:`train`.
        device: where models go after loading (where the live training would have put them).
        enabled: ``None``: on in the lecture profile unless ``COURSEKIT_MODEL_CACHE=0``.
        root: the cache folder (default ``$COURSEKIT_CACHE`` or ``~/.cache/coursekit``).
    """

    def __init__(
        self,
        notebook: str,
        profile: str,
        *,
        retrain: bool = False,
        config: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        enabled: bool | None = None,
        root: str | Path | None = None,
    ):
        self.notebook, self.profile, self.retrain = str(notebook), str(profile), bool(retrain)
        self.config = dict(config or {})
        self.device = torch.device(device) if device is not None else None
        if enabled is None:
            switch = os.environ.get("COURSEKIT_MODEL_CACHE", "1").strip().lower()
            # "always": every profile (a quick check of the loading paths with fast-profile trainings)
            enabled = switch == "always" or (self.profile == "lecture" and switch in _TRUE)
        self.enabled = bool(enabled)
        self.root = root
        self.runs: list[TrainedRun] = []

    # -- where -----------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return models_dir(self.root) / _slug(self.notebook)

    def key(self, name: str, model: nn.Module | None = None, **config: Any) -> tuple[str, dict]:
        """The hash that names ``name``'s entry, and the description it is made of."""
        description = {
            "notebook": self.notebook,
            "name": name,
            "profile": self.profile,
            "coursekit": _version(),
            "format": FORMAT,
            "config": _canonical({**self.config, **config}),
            "architecture": _digest(architecture(model)),
        }
        return _digest(description), description

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{_slug(name)}-{key[:16]}.pt"

    # -- the one call ------------------------------------------------------------------------
    def train(
        self,
        name: str,
        model: nn.Module | None,
        train_fn: Callable[[], Any],
        evaluate: Callable[[nn.Module | None], Mapping[str, Any]] | None = None,
        **config: Any,
    ) -> TrainedRun:
        """Load ``name`` from the cache, or run ``train_fn()`` (which trains ``model`` in place) and cache it.

        Args:
            name: the model's name in messages and file names (``"SSD"``, ``"U-Net 2500 steps"``).
            model: the module ``train_fn`` trains (its weights are saved and loaded), or ``None`` when
                only ``train_fn``'s result matters.
            train_fn: trains and returns what the notebook reads afterwards: a ``Trainer``, a ``History``,
                a dict of numbers and tensors, a coursekit dataclass, or None.
            evaluate: ``evaluate(model) -> dict`` run after a live training; its numbers are stored,
                printed when loading, and given back as ``run.metrics`` (a loaded run does not re-evaluate).
            **config: what else decides this training (steps, learning rate, ...); part of the key.
        """
        key, description = self.key(name, model, **config)
        path = self.path(name, key)
        if not self.enabled:
            return self._live(name, model, train_fn, evaluate, key, description, path, save=False)
        if self.retrain:
            _say(f"RETRAIN = True: training {name} live (the cached copy, if any, is replaced)")
        elif path.is_file():
            run = self._load(name, model, key, path)
            if run is not None:
                return run
        else:
            others = sorted(p for p in self.folder.glob(f"{_slug(name)}-*.pt") if p != path)
            if others:
                _say(f"the cache holds {name} only for another configuration or coursekit version "
                     f"({self._difference(others[-1], description)}): training it live")
            else:
                _say(f"{name} is not in the cache yet: training it live (then cached in {self.folder})")
        return self._live(name, model, train_fn, evaluate, key, description, path, save=True)

    # -- live --------------------------------------------------------------------------------
    def _live(self, name, model, train_fn, evaluate, key, description, path, save: bool) -> TrainedRun:
        start = time.perf_counter()
        result = train_fn()
        seconds = time.perf_counter() - start
        metrics = {}
        if evaluate is not None:
            was_training = model.training if model is not None else None
            metrics = dict(evaluate(model))
            if model is not None:
                model.train(was_training)  # evaluating must not leave the model in another mode
        device = str(getattr(result, "device", None) or self.device or _model_device(model))
        run = TrainedRun(name, model, result, metrics, False, device,
                         _dt.datetime.now(_dt.timezone.utc).date().isoformat(), seconds)
        if save:
            run.path = self._save(run, key, description, path)
            self._log("trained", run)
        self.runs.append(run)
        return run

    def _save(self, run: TrainedRun, key: str, description: dict, path: Path) -> Path | None:
        try:
            result = _pack(run.result)
            metrics = _pack(run.metrics)
        except _NotStorable as err:
            _say(f"{run.name} was trained but not cached: its result holds a {err}, which the cache cannot store")
            return None
        model = run.model
        entry = {
            "format": FORMAT,
            "key": key,
            "description": json.dumps(description, sort_keys=True),
            "name": run.name,
            "date": run.date,
            "trained_on": run.trained_on,
            "seconds": float(run.seconds),
            "steps": _steps_of(run) or _configured_steps(description["config"]),
            "coursekit": _version(),
            "torch": str(torch.__version__),
            "model": None if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_training": None if model is None else bool(model.training),
            "result": result,
            "metrics": metrics,
            "rng": _rng_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(entry, tmp)
        tmp.replace(path)  # atomic: a reader never sees half a file
        meta = {k: entry[k] for k in ("key", "name", "date", "trained_on", "seconds", "steps", "coursekit", "torch")}
        meta["file"] = path.name
        meta["description"] = description
        meta["metrics"] = {k: float(v) for k, v in run.metrics.items() if _is_number(v)}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return path

    # -- loaded ------------------------------------------------------------------------------
    def _load(self, name: str, model: nn.Module | None, key: str, path: Path) -> TrainedRun | None:
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: zipfile, pickle, EOF, RuntimeError...
            _say(f"cache file {path} is unreadable ({type(err).__name__}: {_first_line(err)}): training {name} live")
            return None
        problem = _check_entry(entry, key, model)
        if problem:
            _say(f"cache file {path} does not fit {name} ({problem}): training it live")
            return None
        try:
            result, metrics = _unpack(entry["result"], model), _unpack(entry["metrics"], model)
        except Exception as err:
            _say(f"cache file {path} holds a result that cannot be rebuilt ({_first_line(err)}): training {name} live")
            return None
        if model is not None:
            with torch.no_grad():
                model.load_state_dict(entry["model"])
            model.train(bool(entry["model_training"]))
            if self.device is not None:
                model.to(self.device)
        _set_rng_state(entry.get("rng"))
        run = TrainedRun(name, model, result, metrics, True, str(entry["trained_on"]), str(entry["date"]),
                         float(entry["seconds"]), path)
        _say(f"loaded {name} trained {run.date} on {run.trained_on}{_describe(entry.get('steps'), metrics)} "
             "from the cache; RETRAIN = True trains it live")
        self._log("loaded", run)
        self.runs.append(run)
        return run

    def _difference(self, other: Path, description: dict) -> str:
        try:
            theirs = json.loads(other.with_suffix(".json").read_text())["description"]
        except (OSError, ValueError, KeyError):
            return "the other entry's description is unreadable"
        changed = [k for k in ("coursekit", "profile", "format", "architecture") if theirs.get(k) != description[k]]
        mine_cfg, their_cfg = description["config"], theirs.get("config", {})
        changed += [f"config {k}: {their_cfg.get(k)!r} -> {mine_cfg.get(k)!r}"
                    for k in sorted(set(mine_cfg) | set(their_cfg)) if mine_cfg.get(k) != their_cfg.get(k)]
        return "differs in " + "; ".join(changed[:4]) if changed else "same description, another key"

    def _log(self, event: str, run: TrainedRun) -> None:
        line = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "event": event, "notebook": self.notebook, "name": run.name, "seconds": round(run.seconds, 1),
            "trained_on": run.trained_on, "date": run.date, "steps": _steps_of(run),
            "metrics": {k: float(v) for k, v in run.metrics.items() if _is_number(v)},
        }
        try:
            log = models_dir(self.root) / "log.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as handle:
                handle.write(json.dumps(line) + "\n")
        except OSError:
            pass  # the log only feeds `coursekit prepare`'s table


def cached_training(
    notebook: str, name: str, model: nn.Module | None, train_fn: Callable[[], Any], *, profile: str,
    retrain: bool = False, evaluate: Callable | None = None, device: torch.device | str | None = None,
    **config: Any,
) -> TrainedRun:
    """One-off form of :meth:`ModelCache.train` (``config`` is this training's whole configuration)."""
    return ModelCache(notebook, profile, retrain=retrain, device=device).train(
        name, model, train_fn, evaluate, **config)


def read_log(since: float | None = None, root: str | Path | None = None) -> list[dict]:
    """The cache's log lines (``trained`` / ``loaded`` events), those after ``since`` (a Unix time) only."""
    path = models_dir(root) / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        when = _dt.datetime.fromisoformat(row["time"]).timestamp()
        if since is None or when >= since - 1:
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype == torch.bool
    return isinstance(value, (int, float, np.generic)) and not isinstance(value, bool)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:160]


def _model_device(model: nn.Module | None) -> str:
    if model is None:
        return "cpu"
    for tensor in model.parameters():
        return str(tensor.device)
    return "cpu"


def _steps_of(run: TrainedRun) -> int | None:
    try:
        step = run.global_step
    except Exception:
        return None
    return int(step) if step else None


def _configured_steps(config: Mapping[str, Any]) -> int | None:
    """The step count the configuration names, for results that do not count their own (DIP fits)."""
    for key in ("steps", "n_iters", "n_steps", "iterations"):
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            return int(config[key])
    return None


def _check_entry(entry: Any, key: str, model: nn.Module | None) -> str:
    """Why a loaded entry cannot be used for this key and model ("" when it can)."""
    if not isinstance(entry, dict) or "format" not in entry:
        return "not a coursekit cache entry"
    if entry["format"] != FORMAT:
        return f"file format {entry['format']}, this coursekit writes {FORMAT}"
    if entry.get("key") != key:
        return "its key is another configuration's"
    if model is None:
        return ""
    stored = entry.get("model")
    if not isinstance(stored, dict):
        return "it holds no weights"
    return _state_mismatch(model.state_dict(), stored)


def _state_mismatch(own: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor]) -> str:
    """How ``stored`` weights fail to fit a model whose state dict is ``own`` ("" when they fit)."""
    missing, unexpected = sorted(own.keys() - stored.keys()), sorted(stored.keys() - own.keys())
    if missing or unexpected:
        return (f"{len(missing)} weights missing (e.g. {missing[:1]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(stored[k].shape) or own[k].dtype != stored[k].dtype]
    if wrong:
        return f"{len(wrong)} weights of another shape or dtype (e.g. {wrong[0]})"
    return ""


def _rng_state() -> dict:
    """The random state after training, so that a loaded run continues the notebook as the live one did."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])]
    py_state = random.getstate()
    state["python"] = [int(py_state[0]), [int(v) for v in py_state[1]], py_state[2]]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Any) -> None:
    if not isinstance(state, dict):
        return
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, ValueError):
            pass  # another number of GPUs than where it was trained: the CPU state is what matters here


# ----------------------------------------------------------------------------------------------
# coursekit prepare --lecture: fill the cache the night before
# ----------------------------------------------------------------------------------------------
def _select_notebooks(selection: list[str] | None) -> list[str]:
    from coursekit.course import NOTEBOOKS

    files = [nb.file for nb in NOTEBOOKS]
    if not selection:
        return files
    chosen = []
    for wanted in selection:
        matches = [f for f in files if f.startswith(wanted) or f == wanted]
        if not matches:
            raise ValueError(f"no notebook {wanted!r}; choose among {', '.join(f[:2] for f in files)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def prepare_lecture(
    selection: list[str] | None = None,
    *,
    retrain: bool = False,
    notebooks_dir: str | Path = "notebooks",
    out_dir: str | Path | None = None,
) -> int:
    """Run the chosen notebooks (``["05", "07"]``; None: all) in the lecture profile, so that every training
    they do lands in the cache; print a table of what was trained or loaded and how long it took.

    Executed copies go to ``out_dir`` (default ``$COURSEKIT_CACHE/executed``); the one of the run before is kept
    as ``NN_name.previous.ipynb`` and the printed results of the two are compared (:func:`compare_printed`): run
    it twice, cold then warm, and the table says whether the cached models reproduce the live ones.
    Returns 0, or 1 if a notebook failed (the others still run).
    """
    try:
        import papermill

        from coursekit.headless import guard_lost_wakeups
    except ModuleNotFoundError as err:
        raise SystemExit(f"coursekit prepare --lecture needs {err.name}: pip install papermill") from None
    from coursekit.weights import cache_dir

    folder = Path(notebooks_dir)
    files = _select_notebooks(selection)
    out = Path(out_dir) if out_dir is not None else cache_dir() / "executed"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []
    failed = 0
    for file in files:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"no notebook at {path}: run from the course's folder or pass --notebooks")
        number, executed, previous = file[:2], out / file, out / f"{Path(file).stem}.previous.ipynb"
        if executed.is_file():
            executed.replace(previous)
        else:
            previous.unlink(missing_ok=True)
        print(f"--- {file}: lecture profile{' (RETRAIN = True)' if retrain else ''}", flush=True)
        start_clock, start = time.time(), time.perf_counter()
        status = "ok"
        try:
            guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
            papermill.execute_notebook(str(path), str(executed), cwd=str(folder), kernel_name="python3",
                                       parameters={"PROFILE": "lecture", "RETRAIN": retrain}, progress_bar=False)
            from coursekit.site import store_executed

            store_executed(path, executed, "lecture")  # the website shows lecture outputs where it has them
        except Exception as err:  # papermill's PapermillExecutionError names the cell; keep going
            status, failed = f"FAILED: {type(err).__name__}: {_first_line(err)}", failed + 1
        seconds = time.perf_counter() - start
        for row in read_log(since=start_clock):
            if row["notebook"] == number:
                result = _describe(row.get("steps"), row.get("metrics", {})).strip(" ()")
                rows.append((number, row["name"], row["event"], f"{row['seconds']:.0f}" if row["event"] == "trained"
                             else "-", result))
        same = compare_printed(previous, executed) if status == "ok" and previous.is_file() else ""
        rows.append((number, "(whole notebook)", status, f"{seconds:.0f}", same))
    _print_table(("notebook", "model", "what", "train s", "result"), rows)
    print(f"cache: {models_dir()}; executed notebooks: {out}")
    return 1 if failed else 0


# Lines that differ between two runs by design: progress bars and the cache's own "trained" / "loaded" lines are
# dropped; in the others, durations and speeds are masked ("U-Net, 2500 steps in <time>: mIoU 0.914" still counts).
_UNSTABLE = re.compile(r"it/s\]|s/it\]|%\||coursekit:|object at 0x")
_TIMING = re.compile(r"(?<![\w.])\d[\d.,]*\s?(ms|s|min|seconds?|FPS|fps|/s|(images|queries|frames)/s|per second)\b")


def printed_lines(path: str | Path) -> list[str]:
    """What an executed notebook printed (streams and cell results), line by line, minus the unstable lines.

    Displays (figures, widgets, the live training plot that only a training run shows) are left out.
    """
    lines = []
    for cell in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind not in ("stream", "execute_result"):
                continue
            text = output.get("text") if kind == "stream" else output.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text or ""
            lines += [_TIMING.sub("<time>", s.strip()) for s in text.replace("\r", "\n").splitlines()
                      if s.strip() and not _UNSTABLE.search(s)]
    return lines


def compare_printed(before: str | Path, after: str | Path) -> str:
    """One line: whether two executed copies of a notebook printed the same results.

    Durations and speeds written with their unit are masked (:func:`printed_lines`), a speed table's bare numbers
    are not: the first difference is quoted so that a reader sees whether it is a timing or a result.
    """
    a, b = printed_lines(before), printed_lines(after)
    differ = [(x, y) for x, y in zip(a, b) if x != y]
    n = max(len(a), len(b))
    if not differ and len(a) == len(b):
        return f"printed the same {n} lines as the run before"
    first = differ[0] if differ else (f"{len(a)} lines", f"{len(b)} lines")
    return (f"{n - len(differ) - abs(len(a) - len(b))} of {n} printed lines as the run before; first difference: "
            f"{first[0][:60]!r} -> {first[1][:60]!r}")


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
