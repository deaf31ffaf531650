"""Plain JSON values for the store's attributes and small arrays (numpy in, lists and numbers out)."""
from __future__ import annotations

import numpy as np


def jsonable(obj):
    """Convert numpy scalars / arrays / tuples in attributes to plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if all(type(v) is str for v in obj):  # tokens, modality: nothing to convert
            return list(obj)
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "iub":  # integers and booleans: tolist() is already plain JSON
            return obj.tolist()
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if hasattr(obj, "items"):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return obj


def array_to_json(a) -> list:
    """Nested lists of plain numbers; NaN / inf become null (JSON has neither)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return np.where(np.isfinite(a), a.astype(object), None).tolist()
    return a.tolist()


def array_from_json(values, dtype, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of ``array_to_json`` (null -> NaN); ``shape`` restores the columns of an empty array."""
    arr = np.array(values, dtype=dtype)
    return arr.reshape(shape) if shape is not None and arr.size == 0 else arr
