"""The course's table of contents: one place that lists the notebooks, in order.

The README's notebook table, the Colab badges and the test that every notebook runs are all checked
against this list, so adding a notebook means adding one line here.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COURSE_REPO", "Notebook", "NOTEBOOKS", "colab_url", "readme_table", "language_info", "set_language_info"]

COURSE_REPO = "dl4cv-course/dl4cv"  # GitHub owner/name the Colab badges and the Colab install point at


@dataclass(frozen=True)
class Notebook:
    """One lecture notebook: its file in ``notebooks/``, title and a one-line summary."""

    file: str
    title: str
    summary: str


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("01_transfer_learning.ipynb", "Transfer learning",
             "Deck 000's 2x2 table run for real: linear probe, partial and full fine-tuning, learning curves."),
    Notebook("02_localization_regression.ipynb", "Classification + localization as regression",
             "A two-headed net: class and box, the multitask weight, deck 001's two-phase recipe, IoU."),
    Notebook("03_sliding_windows_overfeat.ipynb", "Sliding windows and OverFeat",
             "A classifier at every position and scale; dense layers as convolutions, measured speed-up."),
    Notebook("04_rcnn_family.ipynb", "The R-CNN family",
             "Selective search, R-CNN, Fast R-CNN with RoI pooling, Faster R-CNN with an RPN; one table."),
    Notebook("05_yolo_ssd.ipynb", "Single-shot detectors: YOLO and SSD",
             "YOLO's grid, SSD's anchors, hard negative mining, focal loss, receptive field, FPN, NMS."),
    Notebook("06_semantic_segmentation.ipynb", "Semantic segmentation: FCN, U-Net, SegNet, DeepLab",
             "Upsampling from scratch, transposed convolution, four architectures and smp, Dice/IoU."),
    Notebook("07_mask_rcnn.ipynb", "Instance segmentation: Mask R-CNN",
             "Semantic vs instance, RoIAlign from scratch, Mask R-CNN fine-tuned, box and mask AP."),
    Notebook("08_stacked_hourglass_pose.ipynb", "Human pose: stacked hourglass",
             "Gaussian heatmaps, the recursive hourglass, intermediate supervision, PCK."),
    Notebook("09_deep_image_prior.ipynb", "Deep Image Prior",
             "An untrained net as the prior: denoising, inpainting, x4 super-resolution, early stopping."),
    Notebook("10_similarity_retrieval_tracking.ipynb", "Similarity: retrieval, siamese nets, tracking",
             "Unseen identities by L2 search, contrastive and triplet losses, mining, faiss, SiamFC tracking."),
    Notebook("11_self_supervised_video.ipynb", "Self-supervised pretraining and video",
             "SimCLR (NT-Xent, tau) vs MoCo; probes vs random and supervised; frame average, RNN, C3D, two-stream."),
)


def colab_url(path: str) -> str:
    """The "Open in Colab" address of a notebook given by its path in the repository."""
    return f"https://colab.research.google.com/github/{COURSE_REPO}/blob/main/{path}"


_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def readme_table() -> str:
    """The README's notebook table, written from :data:`NOTEBOOKS` (``tests/test_course.py`` checks that the
    README holds exactly this). After editing :data:`NOTEBOOKS`, paste the output of
    ``python -m coursekit.course`` into the README."""
    rows = ["| # | notebook | what it teaches | |", "|---|---|---|---|"]
    for nb in NOTEBOOKS:
        path = f"notebooks/{nb.file}"
        badge = f"[![Open In Colab]({_BADGE})]({colab_url(path)})"
        rows.append(f"| {nb.file[:2]} | [{nb.title}]({path}) | {nb.summary} | {badge} |")
    return "\n".join(rows)


def language_info() -> dict:
    """What an IPython kernel on this interpreter reports as its language (ipykernel's ``language_info``).

    JupyterLab writes it into the metadata of every notebook it opens; a notebook committed with less is
    marked modified the moment it opens. ``make strip`` therefore writes it into every notebook
    (:func:`set_language_info`). Only ``version`` depends on the machine: a Python of another version
    still marks a notebook modified on open, exactly as JupyterLab would after saving it there.
    """
    major = sys.version_info[0]
    return {"codemirror_mode": {"name": "ipython", "version": major}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": f"ipython{major}", "version": platform.python_version()}


def set_language_info(paths: list[str | Path]) -> list[Path]:
    """Write :func:`language_info` into each notebook, in the form JupyterLab saves (nbformat's JSON:
    sorted keys, one-space indent, UTF-8). Returns the notebooks that changed."""
    changed = []
    for path in map(Path, paths):
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
        nb.setdefault("metadata", {})["language_info"] = language_info()
        new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--language-info"]:  # make strip: python -m coursekit.course --language-info FILE...
        for path in set_language_info(sys.argv[2:]):
            print(f"language_info written: {path}")
    else:
        print(readme_table())
