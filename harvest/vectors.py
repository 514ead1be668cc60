"""Unit-normalising embedding rows: the one definition every layer uses (backends, miners,
clustering, people, training data)."""
from __future__ import annotations

import numpy as np


def l2_normalize(x, axis: int = -1, dtype=np.float32) -> np.ndarray:
    """``x`` divided by its L2 norm along ``axis`` (rows by default), as ``dtype`` (None: the
    input's own float dtype); a zero row stays zero (the norm is floored at 1e-12)."""
    x = np.asarray(x, dtype) if dtype is not None else np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
