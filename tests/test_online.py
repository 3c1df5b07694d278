"""The online path, exercised without a network (issue 15 section 3).

A temporary cache holds what the network would have delivered (``tests/online_cache.py``): torchvision
weight files under their real names, smp's encoder in the Hugging Face cache layout, and dataset folders
in torchvision's layouts. With ``COURSEKIT_OFFLINE`` unset and every connection blocked, the loaders
parse those formats, the weight helpers take their "real weights" branch, and the notebooks that have
an online branch run it in the fast profile.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import online_cache
import papermill
import pytest
import torch
from machine_speed import scaled

from coursekit.headless import guard_lost_wakeups

ROOT = Path(__file__).resolve().parents[1]
# The lecture notebooks whose code branches on the network: real ImageNet weights (01, 02, and the
# ResNet-18 backbones of 04 and 07) and smp's ImageNet encoder (06).
ONLINE_NOTEBOOKS = ["notebooks/01_transfer_learning.ipynb", "notebooks/02_localization_regression.ipynb",
                    "notebooks/04_rcnn_family.ipynb", "notebooks/06_semantic_segmentation.ipynb",
                    "notebooks/07_mask_rcnn.ipynb"]
CELL_TIMEOUT_S = scaled(120)  # stretched on a slow host: tests/machine_speed.py


@pytest.fixture(scope="session")
def online_paths(tmp_path_factory):
    return online_cache.build(tmp_path_factory.mktemp("online"))


@pytest.fixture
def online(online_paths, monkeypatch):
    """This process as on a lecture machine whose downloads are cached: online switches off, no network."""
    for key, value in online_cache.environment(online_paths, {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COURSEKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(online_paths["hf_cache"]))
    namespace: dict = {}
    exec(online_cache.BLOCK_NETWORK, namespace)  # patches socket; undone below
    monkeypatch.setattr(socket.socket, "connect", namespace["_blocked_connect"])
    monkeypatch.setattr(socket, "create_connection", namespace["_blocked_create_connection"])
    return online_paths


def test_the_network_is_blocked_and_the_probe_says_so(online):
    import coursekit as ck

    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("download.pytorch.org", 443), timeout=1)
    assert not ck.is_offline() and not ck.weights.is_online(timeout=1)


def test_torchvision_weights_load_from_the_cache_under_their_real_name(online):
    from torchvision.models import ResNet18_Weights

    from coursekit import weights

    assert weights.is_cached(ResNet18_Weights.IMAGENET1K_V1) and weights.available(ResNet18_Weights.IMAGENET1K_V1)
    model, source = weights.resnet18_backbone(verbose=False)
    assert source == "imagenet" and model.fc.out_features == 1000
    name = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    saved = torch.load(Path(torch.hub.get_dir()) / "checkpoints" / name, weights_only=True)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])
    assert weights.load_backbone_weights(model, verbose=False) == "imagenet"


def test_smp_encoder_weights_load_from_the_hugging_face_cache(online):
    from coursekit import weights
    from coursekit.models.segmentation import smp_unet

    assert weights.smp_weights_cached() and weights.smp_encoder_weights(verbose=False) == "imagenet"
    model = smp_unet(3)
    assert model.weights_source == "imagenet"
    from safetensors.torch import load_file

    snapshot = next(Path(online["hf_cache"]).glob("models--smp-hub--resnet18.imagenet/snapshots/*"))
    assert torch.equal(model.net.encoder.conv1.weight, load_file(str(snapshot / "model.safetensors"))["conv1.weight"])


def test_real_dataset_loaders_parse_torchvision_layouts(online):
    from coursekit.data import VOC_CLASSES, oxford_pet, penn_fudan, voc_detection, voc_segmentation

    root = online["data"]
    people = penn_fudan(root)
    image, target = people[0]
    assert image.shape == (3, 80, 96) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["labels"].tolist() == [1, 1] and target["masks"].shape == (2, 80, 96)
    assert target["boxes"][0].tolist() == [5.0, 10.0, 30.0, 70.0]  # x2 = last column + 1

    pets = oxford_pet(root)
    image, target = pets[0]
    assert image.shape == (3, 48, 64) and target["category"] == 0
    assert set(target["semantic"].unique().tolist()) == {0, 1, 255}

    detection = voc_detection(root, year="2012", split="train")
    image, target = detection[1]
    assert target["boxes"].tolist() == [[4.0, 5.0, 30.0, 40.0], [32.0, 3.0, 60.0, 20.0]]  # 1-based, inclusive
    assert [VOC_CLASSES[i] for i in target["labels"]] == ["dog", "car"]
    assert target["difficult"].tolist() == [False, True]

    segmentation = voc_segmentation(root, year="2012", split="val")
    image, target = segmentation[0]
    assert set(target["semantic"].unique().tolist()) == {0, VOC_CLASSES.index("person"), 255}


def test_a_missing_dataset_is_one_clear_error_not_a_download(online, tmp_path):
    from coursekit.data import OfflineError, penn_fudan

    with pytest.raises(OfflineError, match="cannot be reached"):
        penn_fudan(tmp_path)


def _stdout(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.mark.notebook
@pytest.mark.parametrize("path", ONLINE_NOTEBOOKS)
def test_notebook_online_branch_runs_in_fast_profile(path, online, tmp_path):
    out = tmp_path / Path(path).name
    # the kernel inherits this environment: cache paths set, offline switches removed, and the IPython
    # startup file of the cache blocks its network
    guard_lost_wakeups()  # the widget-cell hang: coursekit/headless.py
    papermill.execute_notebook(str(ROOT / path), str(out), parameters={"PROFILE": "fast"}, kernel_name="python3",
                               cwd=str((ROOT / path).parent), execution_timeout=CELL_TIMEOUT_S, progress_bar=False)
    printed = _stdout(out)
    assert "coursekit: offline" not in printed, f"{path} took an offline branch:\n{printed[-2000:]}"
    assert "network blocked" not in printed
