"""coursekit.models.siamese: the embedding net, cross-correlation against a loop, SiamFC's shapes."""

import pytest
import torch
import torch.nn.functional as F

from coursekit.models import create_model, list_models
from coursekit.models.siamese import EmbeddingNet, SiamFC, xcorr


def test_embedding_net_returns_unit_vectors():
    net = EmbeddingNet(dim=128, width=8).eval()
    z = net(torch.rand(5, 3, 32, 32))
    assert z.shape == (5, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    assert EmbeddingNet(dim=16, width=4, normalize=False).eval()(torch.rand(2, 3, 20, 20)).shape == (2, 16)


def test_xcorr_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(3, 4, 2, 3, generator=g), torch.randn(3, 4, 6, 7, generator=g)
    out = xcorr(z, x)
    assert out.shape == (3, 1, 5, 5)
    for b in range(3):
        for i in range(5):
            for j in range(5):
                ref = (z[b] * x[b, :, i : i + 2, j : j + 3]).sum()
                assert torch.isclose(out[b, 0, i, j], ref, atol=1e-5)
    one = xcorr(z[:1], x)  # one exemplar for every search region
    assert torch.allclose(one, F.conv2d(x, z[:1]))


def test_siamfc_is_translation_equivariant_with_stride_4():
    # no padding: shifting the search image by 4 px shifts the score map by one cell
    model = SiamFC(width=4).eval()
    g = torch.Generator().manual_seed(1)
    z, x = torch.rand(1, 3, 39, 39, generator=g), torch.rand(1, 3, 83, 83, generator=g)
    with torch.no_grad():
        a = model(z, x[..., :79, :79])
        b = model(z, x[..., :79, 4:83])
    assert a.shape == (1, 1, 11, 11) and model.score_size() == 11
    assert torch.allclose(a[..., 1:], b[..., :-1], atol=1e-5)
    assert SiamFC(width=4).to("meta").score_size() == 11  # probes on the model's device (meta stands in for CUDA)


def test_both_networks_are_registered():
    assert list_models("siamese") == ["embedding", "siamfc"]
    assert isinstance(create_model("embedding", dim=32), EmbeddingNet)
    assert isinstance(create_model("siamfc"), SiamFC)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="choose one of"):
        create_model("resnet")
    with pytest.raises(ValueError, match="Tensor\\[B, 3, H, W\\]"):
        EmbeddingNet()(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="same C"):
        xcorr(torch.rand(1, 2, 3, 3), torch.rand(1, 3, 9, 9))
    with pytest.raises(ValueError, match="exemplars"):
        xcorr(torch.rand(2, 3, 3, 3), torch.rand(3, 3, 9, 9))
