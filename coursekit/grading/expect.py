"""Hidden checks whose expected values never enter the student's kernel.

A hidden test calls ``expect("key", value)`` on what the student's code returned. In the student's
kernel that only *publishes* the value (a display message of a private MIME type, turned into plain
JSON there); the grader compares it, in its own process, with the value the instructor's solution
published for the same key when the grader ran the solution in a separate, clean kernel. So the
reference is computed by code the student cannot touch, and rebinding a helper, a reference function
or ``expect`` itself in the student's kernel cannot make a wrong answer match: the kernel would have
to produce the right numbers.

Hidden tests that use ``expect`` seed their own inputs, so that the solution's run and the student's
see the same ones. The tolerance is the *solution's* (``atol``/``rtol`` from its run).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["EXPECT_MIME", "MAX_VALUE_ITEMS", "expect", "to_plain", "values_match"]

EXPECT_MIME = "application/vnd.coursekit.expect+json"
MAX_VALUE_ITEMS = 1_000_000  # numbers per published value: more is a mistake (or a flood), not a check


def to_plain(value: Any, _budget: list[int] | None = None) -> Any:
    """``value`` as JSON data: numbers, bools, strings, None and nested lists; tensors and arrays as
    ``{"shape": [...], "dtype": "...", "data": [...]}``. Anything else raises ``TypeError``.

    Only exact built-in types are trusted: a subclass of ``float`` or ``list`` is converted through
    ``float()`` / iteration, so an object with a rigged ``__eq__`` arrives as a plain number or fails.
    """
    budget = [MAX_VALUE_ITEMS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"expect: the value has more than {MAX_VALUE_ITEMS} items")
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    array = _as_numpy(value)
    if array is not None:
        budget[0] -= array.size
        if budget[0] < 0:
            raise ValueError(f"expect: the value has more than {MAX_VALUE_ITEMS} items")
        data = array.astype(float).ravel().tolist() if array.dtype.kind in "fc" else array.ravel().tolist()
        return {"shape": list(array.shape), "dtype": str(array.dtype), "data": data}
    if isinstance(value, list | tuple):
        return [to_plain(v, budget) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v, budget) for k, v in value.items()}
    raise TypeError(f"expect: cannot compare a {type(value).__name__}; give numbers, lists, arrays or tensors")


def _as_numpy(value: Any):
    try:
        import numpy as np
    except ModuleNotFoundError:  # pragma: no cover - numpy is a core dependency
        return None
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            return np.asarray(value.detach().cpu().resolve_conj().resolve_neg().numpy())
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    return None


def expect(key: str, value: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Publish ``value`` under ``key`` for the grader, who compares it with the solution's value.

    Args:
        key: unique within the test cell, e.g. ``"box_iou 13x29"``.
        value: a number, bool, string, list, dict, numpy array or torch tensor.
        atol, rtol: tolerance for numbers (the solution's run decides which applies).
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"expect: the key must be a non-empty string, got {key!r}")
    payload = {"key": key, "value": to_plain(value), "atol": float(atol), "rtol": float(rtol)}
    try:
        from IPython.display import display
    except ModuleNotFoundError:  # outside Jupyter there is no grader to publish to
        return
    display({EXPECT_MIME: payload, "text/plain": f"(value {key!r} recorded for the grader)"}, raw=True)


def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def values_match(got: Any, want: Any, atol: float, rtol: float) -> str | None:
    """None when the student's ``got`` matches the solution's ``want`` (both from ``to_plain``), else why not."""
    if isinstance(want, dict) and "shape" in want and "data" in want:
        if not (isinstance(got, dict) and isinstance(got.get("shape"), list) and isinstance(got.get("data"), list)):
            return f"expected an array of shape {want['shape']}, got {_kind(got)}"
        if got["shape"] != want["shape"]:
            return f"expected shape {want['shape']}, got {got['shape']}"
        if want["dtype"].startswith(("int", "uint", "bool")) and got.get("dtype") != want["dtype"]:
            return f"expected dtype {want['dtype']}, got {got.get('dtype')}"
        return values_match(got["data"], want["data"], atol, rtol)
    if isinstance(want, bool) or want is None or isinstance(want, str):
        return None if (type(got) is type(want) and got == want) else f"expected {want!r}, got {_kind(got)}"
    if isinstance(want, int | float):
        if isinstance(got, bool) or not isinstance(got, int | float):
            return f"expected a number, got {_kind(got)}"
        return None if _close(float(got), float(want), atol, rtol) else f"expected {want:.6g}, got {got:.6g}"
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"expected {len(want)} items, got {_kind(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            why = values_match(g, w, atol, rtol)
            if why:
                return f"item {i}: {why}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"expected keys {sorted(want)}, got {_kind(got)}"
        for k in want:
            why = values_match(got[k], want[k], atol, rtol)
            if why:
                return f"{k!r}: {why}"
        return None
    return f"cannot compare with {type(want).__name__}"


def _kind(value: Any) -> str:
    if isinstance(value, dict) and "shape" in value:
        return f"an array of shape {value['shape']}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
