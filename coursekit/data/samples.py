"""Real pictures that ship inside the scikit-image and scikit-learn wheels: they load with no network.

``sample_image`` for photos (sliding windows in notebook 03, Deep Image Prior in notebook 09, pretrained
demos), ``lfw_faces`` for a real face / non-face task (notebooks 01 and 03), ``digits`` for real
handwriting (notebook 01). Each function gives the sources and licences of its pictures.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["SAMPLE_IMAGES", "sample_image", "lfw_faces", "digits"]

_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field")
_SKLEARN = ("china", "flower")
SAMPLE_IMAGES: tuple[str, ...] = _SKIMAGE + _SKLEARN


def sample_image(name: str) -> Tensor:
    """A real photo as a float32 ``Tensor[3, H, W]`` in [0, 1]; grey images are repeated to 3 channels.

    From ``skimage.data``: ``"astronaut"`` (512x512, public domain), ``"chelsea"`` (a cat, 300x451, CC0),
    ``"coffee"`` (400x600, CC0), ``"rocket"`` (427x640, public domain), ``"camera"`` (512x512 grey, CC0),
    ``"coins"`` (303x384 grey, ~24 coins), ``"hubble_deep_field"`` (872x1000, public domain).
    From ``sklearn.datasets.load_sample_images``: ``"china"`` and ``"flower"`` (427x640), licensed
    CC BY 2.0: credit them where shown ("china.jpg" and "flower.jpg", scikit-learn sample images,
    CC BY 2.0). Unknown names raise ``ValueError`` listing ``SAMPLE_IMAGES``.
    """
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; choose one of {SAMPLE_IMAGES}")
    if name in _SKIMAGE:
        import skimage.data

        array = getattr(skimage.data, name)()
    else:
        from sklearn.datasets import load_sample_image

        array = load_sample_image(f"{name}.jpg")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255.0


def lfw_faces() -> tuple[Tensor, Tensor]:
    """Real faces and non-faces from ``skimage.data.lfw_subset()``: 25x25 grey crops.

    Returns ``images`` float32 ``Tensor[200, 1, 25, 25]`` in [0, 1] and ``labels`` int64 ``Tensor[200]``:
    1 for the first 100 (faces), 0 for the last 100 (not faces). Notebooks 01 (transfer) and 03
    (a sliding-window face detector run over ``sample_image("astronaut")``).
    """
    import skimage.data

    images = torch.from_numpy(skimage.data.lfw_subset().astype(np.float32))[:, None]
    labels = torch.cat([torch.ones(100, dtype=torch.int64), torch.zeros(100, dtype=torch.int64)])
    return images, labels


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 real handwritten digits.

    Returns ``images`` float32 ``Tensor[1797, 1, 8, 8]`` in [0, 1] (the original 0..16 grey levels / 16)
    and ``labels`` int64 ``Tensor[1797]`` in 0..9 (the digit itself, no background class here).
    The same glyphs, by index, are used by :class:`~coursekit.data.DigitScenes`. Notebook 01.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    return images, torch.from_numpy(bunch.target.astype(np.int64))
