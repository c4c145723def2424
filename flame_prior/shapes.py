"""Shape checks of arrays and tensors (:func:`check_shape`), without importing torch.

Used by :mod:`flame_prior.geometry` (which re-exports it) and by modules the CLI imports before any
work, such as :mod:`flame_prior.intrinsics`, which must not load torch (start-up time).
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_shape"]


def check_shape(x: Any, shape: list[str | int], name: str = "tensor") -> None:
    """Raise ``ValueError`` unless ``x.shape`` matches ``shape``.

    ``shape`` holds ints (exact sizes) or strings (any size; ``"*"`` as the first entry admits
    any number of leading dimensions). Unlike ``assert``, this survives ``python -O``.
    """
    dims = list(x.shape)
    want = list(shape)
    if want and want[0] == "*":
        want = want[1:]
        dims = dims[len(dims) - len(want):] if len(dims) >= len(want) else None  # type: ignore[assignment]
    ok = dims is not None and len(dims) == len(want)
    if ok:
        for d, w in zip(dims, want):
            if isinstance(w, int) and d != w:
                ok = False
                break
    if not ok:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
