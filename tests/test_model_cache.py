"""coursekit.model_cache: trained once, loaded next time; never a silent stale result."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import coursekit
from coursekit import model_cache
from coursekit.model_cache import ModelCache, TrainedRun, read_log
from coursekit.train import History, Trainer

X = torch.linspace(-1, 1, 64 * 4).view(64, 4)
Y = (X.sum(1) > 0).long()
LOADER = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 64, 16)]


def make_model(out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, out)


class Counter:
    """A training function that counts its calls (the cache must skip it when it loads)."""

    def __init__(self, model: nn.Module, steps: int = 8):
        self.model, self.steps, self.calls = model, steps, 0

    def __call__(self) -> Trainer:
        self.calls += 1
        trainer = Trainer(self.model, torch.optim.SGD(self.model.parameters(), lr=0.5), device="cpu")
        trainer.fit(LOADER, epochs=self.steps // len(LOADER), progress=False)
        return trainer


def accuracy(model: nn.Module) -> dict:
    with torch.no_grad():
        return {"acc": float((model(X).argmax(1) == Y).float().mean()), "logits": model(X[:2])}


def cache(tmp_path, **kw) -> ModelCache:
    kw.setdefault("config", {"n": 64})
    return ModelCache("99", "lecture", root=tmp_path, **kw)


def test_round_trip_loads_weights_history_metrics_and_random_state(tmp_path, capsys):
    model = make_model()
    live = cache(tmp_path).train("linear", model, Counter(model), accuracy, steps=8)
    after_live = torch.rand(3)  # the notebook goes on drawing random numbers after training
    assert not live.from_cache and live.global_step == 8 and "acc" in live.metrics
    assert "not in the cache yet" in capsys.readouterr().out

    fresh = make_model()
    train = Counter(fresh)
    loaded = cache(tmp_path).train("linear", fresh, train, accuracy, steps=8)
    out = capsys.readouterr().out
    assert train.calls == 0 and loaded.from_cache
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert loaded.history.epochs == live.history.epochs and loaded.history.steps == live.history.steps
    assert loaded.train_time == pytest.approx(live.train_time) and loaded.global_step == 8
    assert loaded.metrics["acc"] == live.metrics["acc"]
    assert torch.equal(loaded.metrics["logits"], live.metrics["logits"])
    assert torch.equal(torch.rand(3), after_live), "a loaded run continues the random stream as the live one"
    line = [ln for ln in out.splitlines() if "loaded linear" in ln]
    assert len(line) == 1 and "on cpu (8 steps, acc" in line[0] and "RETRAIN = True trains it live" in line[0]
    assert [row["event"] for row in read_log(root=tmp_path)] == ["trained", "loaded"]


def test_retrain_trains_live_and_replaces_the_entry(tmp_path, capsys):
    model = make_model()
    cache(tmp_path).train("linear", model, Counter(model), steps=8)
    again = make_model()
    train = Counter(again, steps=4)  # another result under the same key: RETRAIN replaces it
    run = cache(tmp_path, retrain=True).train("linear", again, train, steps=8)
    assert train.calls == 1 and not run.from_cache
    assert "RETRAIN = True" in capsys.readouterr().out
    third = make_model()
    cache(tmp_path).train("linear", third, Counter(third), steps=8)
    assert torch.equal(third.weight, again.weight)


def test_corrupt_file_says_so_in_one_line_and_trains(tmp_path, capsys):
    model = make_model()
    run = cache(tmp_path).train("linear", model, Counter(model), steps=8)
    run.path.write_bytes(run.path.read_bytes()[:200])  # a truncated copy
    capsys.readouterr()
    fresh = make_model()
    train = Counter(fresh)
    again = cache(tmp_path).train("linear", fresh, train, steps=8)
    lines = capsys.readouterr().out.splitlines()
    assert train.calls == 1 and not again.from_cache
    assert len(lines) == 1 and "unreadable" in lines[0] and "training linear live" in lines[0]
    # ...and the entry is rewritten: the next run loads it
    assert cache(tmp_path).train("linear", make_model(), Counter(make_model()), steps=8).from_cache


def test_a_file_from_another_key_or_model_is_not_loaded(tmp_path, capsys):
    model = make_model()
    run = cache(tmp_path).train("linear", model, Counter(model), steps=8)
    other = cache(tmp_path, config={"n": 65})
    key, _ = other.key("linear", make_model(), steps=8)
    other.path("linear", key).write_bytes(run.path.read_bytes())  # a file under the wrong name
    capsys.readouterr()
    train = Counter(make_model())
    assert not other.train("linear", train.model, train, steps=8).from_cache and train.calls == 1
    assert "does not fit linear (its key is another configuration's)" in capsys.readouterr().out

    entry = torch.load(run.path, weights_only=True)
    entry["model"]["weight"] = torch.zeros(3, 4)  # weights of another shape under the right key
    torch.save(entry, run.path)
    train = Counter(make_model())
    assert not cache(tmp_path).train("linear", train.model, train, steps=8).from_cache
    assert "weights of another shape" in capsys.readouterr().out


def test_mismatched_configuration_architecture_and_version_train_live_and_say_why(tmp_path, capsys, monkeypatch):
    model = make_model()
    cache(tmp_path).train("linear", model, Counter(model), steps=8)
    capsys.readouterr()

    changed = Counter(make_model())
    assert not cache(tmp_path).train("linear", changed.model, changed, steps=16).from_cache
    assert changed.calls == 1
    assert "only for another configuration" in (out := capsys.readouterr().out) and "steps: 8 -> 16" in out

    wider = Counter(make_model(out=3))  # same config, another architecture
    assert not cache(tmp_path).train("linear", wider.model, wider, steps=8).from_cache
    assert "architecture" in capsys.readouterr().out

    frozen = make_model()
    frozen.bias.requires_grad_(False)  # which parameters train decides the result too
    assert cache(tmp_path).key("linear", frozen, steps=8)[0] != cache(tmp_path).key("linear", make_model(), steps=8)[0]

    monkeypatch.setattr(coursekit, "__version__", "9.9.9")
    bumped = Counter(make_model())
    assert not cache(tmp_path).train("linear", bumped.model, bumped, steps=8).from_cache
    assert "coursekit" in capsys.readouterr().out


def test_fast_profile_and_switch_bypass_the_cache(tmp_path, monkeypatch):
    for _ in range(2):
        train = Counter(make_model())
        run = ModelCache("99", "fast", root=tmp_path).train("linear", train.model, train, steps=8)
        assert train.calls == 1 and not run.from_cache and run.path is None
    assert not (tmp_path / "models").exists()
    monkeypatch.setenv("COURSEKIT_MODEL_CACHE", "0")
    assert not ModelCache("99", "lecture", root=tmp_path).enabled
    monkeypatch.setenv("COURSEKIT_MODEL_CACHE", "always")
    assert ModelCache("99", "fast", root=tmp_path).enabled


def test_results_other_than_a_trainer(tmp_path):
    from coursekit.dip import DIPResult

    def results():
        h = History(epochs=[{"epoch": 1, "loss": 0.5}], steps=[0.7, 0.5])
        return {"acc": 0.75, "curve": [0.1, 0.2], "pair": (1, "a"), "history": h, "image": torch.ones(1, 3, 2, 2)}

    first = cache(tmp_path).train("numbers", None, results)
    second = cache(tmp_path).train("numbers", None, lambda: pytest.fail("should load"))
    assert second.from_cache and second.result["pair"] == (1, "a") and second.result["curve"] == [0.1, 0.2]
    assert second.result["history"].steps == [0.7, 0.5] and torch.equal(second.result["image"], torch.ones(1, 3, 2, 2))
    assert first.result["acc"] == second.result["acc"]

    net = make_model()
    with torch.no_grad():
        net.weight.add_(1.0)  # the fitted copy differs from the model passed in (fit_dip copies its net)
    dip_fields = {f: [] for f in DIPResult.__dataclass_fields__}
    dip_fields.update(net=net, output=torch.zeros(1, 3, 2, 2), best_step=3, best_psnr=30.5, best_output=None)
    dip = cache(tmp_path).train("dip", make_model(), lambda: DIPResult(**dip_fields))
    again = cache(tmp_path).train("dip", make_model(), lambda: pytest.fail("should load"))
    assert isinstance(again.result, DIPResult) and again.from_cache and again.result.best_psnr == 30.5
    assert isinstance(again.result.net, nn.Linear) and torch.equal(again.result.net.weight, dip.result.net.weight)
    assert not torch.equal(again.result.net.weight, make_model().weight)


def test_unstorable_result_is_said_and_returned_live(tmp_path, capsys):
    run = cache(tmp_path).train("odd", None, lambda: object())
    assert not run.from_cache and "not cached" in capsys.readouterr().out


def test_sidecar_json_describes_the_entry(tmp_path):
    model = make_model()
    run = cache(tmp_path).train("linear", model, Counter(model), accuracy, steps=8)
    meta = json.loads(run.path.with_suffix(".json").read_text())
    assert meta["name"] == "linear" and meta["steps"] == 8 and meta["coursekit"] == coursekit.__version__
    assert meta["description"]["config"] == {"n": 64, "steps": 8} and "acc" in meta["metrics"]


def test_trained_run_attributes_for_a_history_result():
    h = History(epochs=[{"epoch": 1, "time": 2.0}], steps=[1.0, 0.5, 0.2])
    run = TrainedRun("x", None, h, {}, False, "cpu", "2026-11-30", seconds=3.0)
    assert run.history is h and run.global_step == 3 and run.train_time == 3.0 and run.trainer is None
    assert model_cache._describe(8000, {"mAP@0.5": 0.8094, "preds": []}) == " (8,000 steps, mAP@0.5 0.809)"
    wrapped = TrainedRun("x", None, {"trainer": h, "curves": {}}, {}, False, "cpu", "2026-11-30", seconds=3.0)
    assert wrapped.history is h and wrapped.global_step == 3


@pytest.mark.notebook
def test_prepare_lecture_runs_notebooks_and_tabulates_what_it_trained(tmp_path, monkeypatch, capsys):
    import nbformat

    from coursekit import course

    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PROFILE = None\nRETRAIN = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import torch\nimport coursekit as ck\n"
        "cache = ck.ModelCache('98', PROFILE, retrain=RETRAIN)\n"
        "net = torch.nn.Linear(2, 2)\n"
        "run = cache.train('tiny', net, lambda: {'loss': 0.5}, lambda m: {'acc': 0.75}, steps=3)\n"
        "print('acc', run.metrics['acc'])\n"
        "print('from cache:', run.from_cache)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "98_tiny.ipynb")
    monkeypatch.setattr(course, "NOTEBOOKS", (course.Notebook("98_tiny.ipynb", "Tiny", "a test notebook"),))
    monkeypatch.setenv("COURSEKIT_CACHE", str(tmp_path / "cache"))

    assert model_cache.prepare_lecture(["98"], notebooks_dir=folder, out_dir=tmp_path / "out") == 0
    assert model_cache.prepare_lecture(None, notebooks_dir=folder, out_dir=tmp_path / "out") == 0
    out = capsys.readouterr().out
    table = [re.split(r"\s{2,}", line) for line in out.splitlines() if line.startswith("98")]
    assert [row[2] for row in table] == ["trained", "ok", "loaded", "ok"], out
    assert "acc 0.75" in out
    assert "from cache: True" in (tmp_path / "out" / "98_tiny.ipynb").read_text()
    # the cold copy is kept beside the warm one, and the table compares what they printed
    assert "from cache: False" in (tmp_path / "out" / "98_tiny.previous.ipynb").read_text()
    assert "1 of 2 printed lines as the run before; first difference: 'from cache: False' -> 'from cache: True'" in out
    assert model_cache.prepare_lecture(["98"], notebooks_dir=folder, out_dir=tmp_path / "out") == 0
    assert "printed the same 2 lines as the run before" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no notebook '77'"):
        model_cache.prepare_lecture(["77"], notebooks_dir=folder)


def test_printed_lines_mask_durations_and_keep_results(tmp_path):
    def notebook(path, seconds, miou):
        cells = [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stdout",
             "text": [f"fcn32s: mIoU {miou}\n", f"U-Net, 2500 steps in {seconds} s: mIoU 0.914\n",
                      "coursekit: loaded unet from the cache\n", f"train: 100%|####| 10/10 [{seconds}s, 3.1it/s]\n"]},
            {"output_type": "display_data", "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"}}]}]
        path.write_text(json.dumps({"cells": cells}))
        return path

    cold, warm = notebook(tmp_path / "cold.ipynb", 801, 0.421), notebook(tmp_path / "warm.ipynb", 12.5, 0.421)
    assert model_cache.printed_lines(cold) == ["fcn32s: mIoU 0.421", "U-Net, 2500 steps in <time>: mIoU 0.914"]
    assert model_cache.compare_printed(cold, warm) == "printed the same 2 lines as the run before"
    other = notebook(tmp_path / "other.ipynb", 801, 0.5)
    assert "1 of 2 printed lines as the run before; first difference: 'fcn32s: mIoU 0.421'" in \
        model_cache.compare_printed(cold, other)
