"""coursekit.data.identities: glyph identities, disjoint splits, rendering, held-out digits."""

import pytest
import torch

from coursekit.data.identities import Identities, glyph_strokes, held_out_digits, render_glyphs


def test_items_shapes_and_determinism():
    a = Identities(5, 3, image_size=24, split="test", seed=1)
    b = Identities(5, 3, image_size=24, split="test", seed=1)
    assert a.images.shape == (15, 3, 24, 24) and a.images.dtype == torch.float32
    assert a.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert torch.equal(a.images, b.images)
    assert 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    image, label = a[4]
    assert image.shape == (3, 24, 24) and label == 1 and len(a) == 15


def test_splits_have_disjoint_glyphs():
    train = {tuple(glyph_strokes(k).flatten().tolist()) for k in range(50)}
    test = {tuple(glyph_strokes(1_000_000 + k).flatten().tolist()) for k in range(50)}
    assert not train & test
    assert torch.equal(glyph_strokes(3), glyph_strokes(3))


def test_render_glyphs_matches_a_pixel_loop():
    # one horizontal stroke through the middle, no transform: ink where the distance is below the width
    strokes = torch.tensor([[[[0.25, 0.5], [0.75, 0.5]]]])
    ink = render_glyphs(strokes, 16, torch.zeros(1), torch.ones(1), torch.zeros(1, 2), torch.full((1,), 0.05))[0]
    for r in range(16):
        for c in range(16):
            x, y = (c + 0.5) / 16, (r + 0.5) / 16
            dx = max(0.25 - x, 0.0, x - 0.75)
            d = (dx**2 + (y - 0.5) ** 2) ** 0.5
            assert float(ink[r, c]) == pytest.approx(min(max((0.05 + 0.03 - d) / 0.03, 0.0), 1.0), abs=1e-5)


def test_rotation_by_90_degrees_transposes_a_symmetric_glyph():
    strokes = torch.tensor([[[[0.2, 0.5], [0.8, 0.5]]]])
    flat = render_glyphs(strokes, 20, torch.zeros(1), torch.ones(1), torch.zeros(1, 2), torch.full((1,), 0.05))
    turned = render_glyphs(strokes, 20, torch.full((1,), torch.pi / 2), torch.ones(1), torch.zeros(1, 2),
                           torch.full((1,), 0.05))
    assert torch.allclose(flat[0].T, turned[0], atol=1e-4)


def test_held_out_digits_split_by_class():
    d = held_out_digits((7, 8, 9), image_size=16)
    assert set(d["test_labels"].unique().tolist()) == {7, 8, 9}
    assert not set(d["train_labels"].unique().tolist()) & {7, 8, 9}
    assert d["train_images"].shape[1:] == (3, 16, 16) and len(d["train_images"]) + len(d["test_images"]) == 1797


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="split"):
        Identities(2, 2, split="val")
    with pytest.raises(ValueError, match="num_identities"):
        Identities(0, 2)
    with pytest.raises(ValueError, match="image_size"):
        Identities(2, 2, image_size=4)
    with pytest.raises(ValueError, match="some \\(not all\\)"):
        held_out_digits(tuple(range(10)))
