"""SimCLR's augmentations, batched: two random views of every image in a batch (notebook 11).

Contrastive pretraining makes a network say "same image" for two views and "different images" for the
rest of the batch, so the augmentations decide what it learns to ignore: where the object is and how
big (random resized crop), left and right (flip), colour and lighting (colour jitter, greyscale).
SimCLR (Chen et al., 2020) found crop + colour the pair that matters most: with crops alone the colour
histogram is enough to match two views and the network learns nothing else.

Everything is done for the whole batch at once on the images' device: a crop-and-flip is one affine
``grid_sample``, the colour changes are per-image scale factors. (torchvision's ``v2`` transforms do
one image per call: ~50x slower on a batch of small images.) Hue jitter is a rotation of every pixel's colour
about the grey axis (what CSS's ``hue-rotate`` does): close to torchvision's HSV hue shift, and one 3x3 matrix
per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SimCLRAugment", "two_views"]

_GREY = (0.2989, 0.587, 0.114)  # luma weights of torchvision's rgb_to_grayscale


def _grey(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    return (images * images.new_tensor(_GREY).view(1, 3, 1, 1)).sum(1, keepdim=True)


@dataclass
class SimCLRAugment:
    """A random view of each image: ``views = SimCLRAugment()(images)``, images ``Tensor[B, 3, H, W]`` in [0, 1].

    Fields (SimCLR's CIFAR-10 settings, scaled to small images):
    """

    scale: tuple[float, float] = (0.3, 1.0)  # crop area as a share of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (width / height)
    flip_p: float = 0.5  # probability of a horizontal flip
    jitter: float = 0.4  # brightness, contrast and saturation factors drawn in [1 - jitter, 1 + jitter]
    jitter_p: float = 0.8  # probability that an image gets colour jitter
    hue: float = 0.1  # hue rotated by up to this share of the colour wheel (SimCLR: 0.1; 0.5: any hue), with jitter_p
    grey_p: float = 0.2  # probability that an image turns grey
    generator: torch.Generator | None = None  # seeded CPU generator for reproducible views

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio!r}")
        for name in ("flip_p", "jitter_p", "grey_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a share of the colour wheel), got {self.hue!r}")

    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def crop_and_flip(self, images: Tensor) -> Tensor:
        """Random resized crop + horizontal flip of every image, output at the input size."""
        B = len(images)
        area = self._uniform(B, *self.scale)
        log_ratio = self._uniform(B, *torch.tensor(self.ratio).log().tolist()).exp()
        w = (area * log_ratio).sqrt().clamp(max=1.0)  # crop width as a share of the image width
        h = (area / log_ratio).sqrt().clamp(max=1.0)
        cx = (1 - w) * self._uniform(B, -1.0, 1.0)  # crop centre in [-1, 1] coordinates, crop inside the image
        cy = (1 - h) * self._uniform(B, -1.0, 1.0)
        flip = torch.where(torch.rand(B, generator=self.generator) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def hue_rotation(self, images: Tensor, turns: Tensor) -> Tensor:
        """Rotate every pixel's RGB vector of image b by ``turns[b]`` turns about the grey axis (1, 1, 1).

        Greys stay grey and luma is kept up to clamping; a third of a turn permutes the channels (R -> G -> B).
        Rodrigues' formula: ``R = cos(a) I + sin(a) [k]x + (1 - cos(a)) k k^T`` with ``k = (1, 1, 1) / sqrt(3)``.
        """
        angle = (2 * math.pi * turns).to(images).view(-1, 1, 1)
        cross = images.new_tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)  # [k]x
        rotation = (angle.cos() * torch.eye(3, device=images.device) + angle.sin() * cross
                    + (1 - angle.cos()) * images.new_full((3, 3), 1 / 3))  # (B, 3, 3)
        return torch.einsum("bij,bjhw->bihw", rotation, images).clamp(0, 1)

    def colour(self, images: Tensor) -> Tensor:
        """Colour jitter (brightness, contrast, saturation, hue, in that order) and random greyscale."""
        B = len(images)

        def factor() -> Tensor:
            f = self._uniform(B, 1 - self.jitter, 1 + self.jitter)
            keep = torch.rand(B, generator=self.generator) >= self.jitter_p  # these images are not jittered
            return f.masked_fill(keep, 1.0).view(B, 1, 1, 1).to(images)

        x = (images * factor()).clamp(0, 1)  # brightness
        mean = _grey(x).mean((2, 3), keepdim=True)
        x = ((x - mean) * factor() + mean).clamp(0, 1)  # contrast
        grey = _grey(x)
        x = ((x - grey) * factor() + grey).clamp(0, 1)  # saturation
        if self.hue > 0:
            turns = self._uniform(B, -self.hue, self.hue)
            x = self.hue_rotation(x, turns.masked_fill(torch.rand(B, generator=self.generator) >= self.jitter_p, 0.0))
        to_grey = (torch.rand(B, generator=self.generator) < self.grey_p).view(B, 1, 1, 1).to(images.device)
        return torch.where(to_grey, _grey(x).expand_as(x), x)

    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
        return self.colour(self.crop_and_flip(images))


def two_views(images: Tensor, augment: SimCLRAugment | None = None) -> tuple[Tensor, Tensor]:
    """Two independent random views of each image, ``(Tensor[B, 3, H, W], Tensor[B, 3, H, W])``: SimCLR's
    positive pairs (row i of each); every other row of the batch is a negative for them."""
    augment = augment or SimCLRAugment()
    return augment(images), augment(images)
