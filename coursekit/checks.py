"""Argument checks shared across coursekit, each answering a bad value with what to pass instead.

- :func:`as_pair`: an ``int`` or an ``(h, w)`` pair -> ``(h, w)`` (window sizes, strides, RoI output
  sizes, heatmap sizes, kernel sizes, ...).

Checks of one concept stay with it (:func:`coursekit.boxes.check_boxes`,
:func:`coursekit.models.blocks.check_square_images`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["as_pair"]


def as_pair(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(h, w)`` stays ``(h, w)``. ``ValueError`` naming ``name`` unless both are ints
    ``>= minimum``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair (h, w) of them, got {value!r}")
    return pair  # type: ignore[return-value]
