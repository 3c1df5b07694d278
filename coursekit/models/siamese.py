"""Siamese networks: one embedding network applied to several images (retrieval), and SiamFC (tracking).

- :class:`EmbeddingNet`: image -> L2-normalised ``dim``-d vector (deck 003: "describe an image by a
  small vector, 128 or 256 numbers"); trained with the contrastive or triplet loss
  (:mod:`coursekit.losses`), searched by L2 (:mod:`coursekit.retrieval`).
- :class:`SiamFC` (Bertinetto et al., 2016): a fully convolutional branch ``phi`` without padding,
  applied to the exemplar ``z`` and to the larger search region ``x``; the score map is their
  cross-correlation ``phi(z) * phi(x)`` ("one branch applied convolutionally", deck 003):
  the exemplar's features act as the filter of a convolution over the search region's features.

Both register themselves (``create_model("embedding", dim=128)``, ``create_model("siamfc")``), so
``tests/test_models.py`` smoke-tests them. Taught in notebook 10; assignment 07 trains an
:class:`EmbeddingNet`-like network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coursekit.models.blocks import conv_bn_act

__all__ = ["EmbeddingNet", "SiamFC", "siamfc_backbone", "xcorr"]


class EmbeddingNet(nn.Module):
    """A small CNN that maps an image to a point on the unit sphere of ``R^dim``.

    Three stages of two 3x3 conv-BN-ReLU, each followed by 2x2 max pooling (widths ``width``, ``2 width``,
    ``4 width``), global average pooling, then a linear layer to ``dim``, batch normalisation and L2
    normalisation.

    Args:
        dim: embedding size (deck 003: 128 or 256). width: channels of the first stage.
        normalize: return unit vectors (the deck's contrastive loss assumes them).

    Shapes: ``Tensor[B, 3, H, W]`` (H, W >= 8) -> ``Tensor[B, dim]``.
    """

    def __init__(self, dim: int = 128, width: int = 16, normalize: bool = True) -> None:
        super().__init__()
        if dim < 1 or width < 1:
            raise ValueError(f"dim and width must be >= 1, got dim={dim}, width={width}")
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (width, 2 * width, 4 * width):
            layers += [conv_bn_act(c_in, c_out), conv_bn_act(c_out, c_out), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # BatchNorm on the output removes the component all images share (pooled ReLU features are all
        # positive): without it every embedding starts at cosine ~0.99 to every other and training stalls.
        self.head = nn.Sequential(nn.Linear(c_in, dim), nn.BatchNorm1d(dim))
        self.dim, self.normalize = dim, normalize

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 8:
            raise ValueError(f"EmbeddingNet expects images Tensor[B, 3, H, W] with H, W >= 8, got {tuple(x.shape)}")
        z = self.head(self.features(x))  # (B, dim)
        return F.normalize(z, dim=1) if self.normalize else z


def siamfc_backbone(width: int = 16) -> nn.Sequential:
    """SiamFC's branch ``phi``, an AlexNet in miniature: no padding anywhere (a shift of the input shifts
    the output by exactly ``stride`` times less), total stride 4, receptive field 28 px.

    Layers: conv 5x5 -> BN -> ReLU -> max pool 2 -> conv 3x3 -> BN -> ReLU -> max pool 2 -> conv 3x3 -> BN
    -> ReLU -> conv 3x3 (no activation, like the paper's last layer). Widths ``width, 2 width, 2 width, 2 width``.
    Written out rather than built from :func:`~coursekit.models.blocks.conv_bn_act`, whose 'same' padding
    is exactly what SiamFC must not have.
    """
    w2 = 2 * width
    return nn.Sequential(
        nn.Conv2d(3, width, 5, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, w2, 3, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
        nn.Conv2d(w2, w2, 3),
    )


def xcorr(z: Tensor, x: Tensor) -> Tensor:
    """Cross-correlate each exemplar's features with its search region's features (one conv per pair).

    Args:
        z (Tensor[B, C, h, w]): exemplar features, the filters; or ``Tensor[1, C, h, w]``, one exemplar for
            every search region (the tracker's scale search).
        x (Tensor[B, C, H, W]): search features, ``H >= h`` and ``W >= w``.

    Returns:
        Tensor[B, 1, H - h + 1, W - w + 1]: ``out[b, 0, i, j] = sum_{c, u, v} z[b, c, u, v] x[b, c, i + u, j + v]``.
    """
    if z.dim() != 4 or x.dim() != 4 or z.shape[1] != x.shape[1]:
        raise ValueError(f"xcorr needs z [B, C, h, w] and x [B, C, H, W] with the same C, got {tuple(z.shape)} "
                         f"and {tuple(x.shape)}")
    B, C, H, W = x.shape
    if z.shape[0] == 1 and B > 1:
        return F.conv2d(x, z)  # one filter slid over every search region
    if z.shape[0] != B:
        raise ValueError(f"xcorr: {z.shape[0]} exemplars for {B} search regions (use 1 or {B})")
    if z.shape[-2] > H or z.shape[-1] > W:
        raise ValueError(f"xcorr: exemplar features {tuple(z.shape[-2:])} larger than search features {(H, W)}")
    # groups=B: search region b is convolved with exemplar b only (one batched conv instead of B)
    out = F.conv2d(x.reshape(1, B * C, H, W), z, groups=B)  # (1, B, H', W')
    return out.view(B, 1, *out.shape[-2:])


class SiamFC(nn.Module):
    """Fully convolutional siamese tracker: ``score = adjust(phi(z) * phi(x))``.

    ``adjust`` is a learned scale and bias (the paper scales the raw correlation by 1e-3: its values are
    in the thousands). Default sizes are about the paper's divided by 3: exemplar 39 px (paper 127), search
    79 px (paper 255), stride 4 (paper 8): exemplar features 3x3 (paper 6x6), search features 13x13 (paper
    22x22), and a score map of ``(79 - 39) / 4 + 1 = 11`` cells a side (paper 17).
    Shapes: ``z Tensor[B or 1, 3, 39, 39]``, ``x Tensor[B, 3, 79, 79]`` -> ``Tensor[B, 1, 11, 11]`` logits.
    """

    stride = 4

    def __init__(self, width: int = 16, exemplar_size: int = 39, search_size: int = 79) -> None:
        super().__init__()
        self.backbone = siamfc_backbone(width)
        self.adjust = nn.Conv2d(1, 1, 1)
        nn.init.constant_(self.adjust.weight, 1e-3)
        nn.init.zeros_(self.adjust.bias)
        self.exemplar_size, self.search_size = exemplar_size, search_size

    def embed(self, images: Tensor) -> Tensor:
        """``phi``: ``Tensor[B, 3, H, W]`` -> feature map ``Tensor[B, 2 width, h, w]`` (39 -> 3, 79 -> 13)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SiamFC expects images Tensor[B, 3, H, W], got {tuple(images.shape)}")
        return self.backbone(images)

    def score(self, z_feat: Tensor, x_feat: Tensor) -> Tensor:
        return self.adjust(xcorr(z_feat, x_feat))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.score(self.embed(z), self.embed(x))  # (B, 1, h, w)

    def score_size(self) -> int:
        """Side of the score map for the default input sizes."""
        on = next(self.parameters()).device
        with torch.no_grad():
            z = self.embed(torch.zeros(1, 3, self.exemplar_size, self.exemplar_size, device=on))
            x = self.embed(torch.zeros(1, 3, self.search_size, self.search_size, device=on))
        return x.shape[-1] - z.shape[-1] + 1


def _register() -> None:
    from coursekit.models.registry import Smoke, images, register_model

    register_model("embedding", EmbeddingNet, family="siamese",
                   smoke=Smoke({"dim": 16, "width": 4}, images(3, 16), [(2, 16)]))

    def exemplar_and_search(g: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.rand(2, 3, 39, 39, generator=g), torch.rand(2, 3, 79, 79, generator=g)

    register_model("siamfc", SiamFC, family="siamese", smoke=Smoke({"width": 4}, exemplar_and_search, [(2, 1, 11, 11)]))


_register()
