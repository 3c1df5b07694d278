"""In-memory segmentation data: ``(image, class mask)`` pairs with a joint transform (notebook 06).

:class:`SegmentationSet` holds rendered pairs (``SegmentationSet.from_shapes(Shapes(...))``) so that
training does not re-render scenes; its ``transform`` (e.g. :class:`coursekit.segmentation.JointAugment`)
draws a new random version on every access.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SegmentationSet"]


class SegmentationSet(Dataset):
    """``(image Tensor[3, H, W], mask Tensor[H, W] int64)`` pairs held in memory, passed through ``transform``.

    Args:
        images (Tensor[N, 3, H, W]): floats in [0, 1].
        masks (Tensor[N, H, W] int64): class indices.
        transform: ``transform(image, mask) -> (image, mask)``, e.g.
            :class:`coursekit.segmentation.JointAugment`; applied on every access, so every epoch sees new
            random versions.
    """

    def __init__(
        self, images: Tensor, masks: Tensor, transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    ):
        if images.dim() != 4 or masks.dim() != 3 or images.shape[0] != masks.shape[0]:
            raise ValueError(
                f"need images [N, 3, H, W] and masks [N, H, W] with the same N, H, W; got {list(images.shape)} "
                f"and {list(masks.shape)}"
            )
        if images.shape[-2:] != masks.shape[-2:] or masks.is_floating_point():
            raise ValueError(f"masks must be integer class maps of the images' size {list(images.shape[-2:])}")
        self.images, self.masks, self.transform = images, masks.long(), transform

    @classmethod
    def from_shapes(cls, data: Dataset, transform=None, progress: bool = True) -> SegmentationSet:
        """Render every item of a :class:`coursekit.data.Shapes` once, keeping ``target["semantic"]``."""
        from tqdm.auto import tqdm

        items = [data[i] for i in tqdm(range(len(data)), desc="rendering", disable=not progress, leave=False)]
        images = torch.stack([image for image, _ in items])
        masks = torch.stack([target["semantic"] for _, target in items])
        return cls(images, masks, transform)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, mask = self.images[i], self.masks[i]
        return self.transform(image, mask) if self.transform is not None else (image, mask)
