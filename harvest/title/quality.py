"""Per-face and per-track quality, and the median-absolute-deviation rule that flags bad tracks."""
from __future__ import annotations

import cv2
import numpy as np

SIZE_REF = 48.0    # px: faces this size or larger count as full size
BLUR_REF = 100.0   # variance of Laplacian of the aligned crop at which sharpness saturates


def blur_score(crops: np.ndarray) -> np.ndarray:
    """crops (n, S, S, 3) uint8 -> (n,) variance of the Laplacian of the grey crop (higher = sharper)."""
    out = np.empty(len(crops), np.float32)
    for i, c in enumerate(crops):
        out[i] = cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
    return out


def face_size(boxes: np.ndarray) -> np.ndarray:
    """boxes (n, 4) -> (n,) sqrt of box area in pixels."""
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return np.sqrt(w * h).astype(np.float32)


def face_quality(det_score: np.ndarray, size: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """(n,) each -> (n,) in [0, 1]: detector score x size factor x sharpness factor."""
    size_f = np.minimum(1.0, size / SIZE_REF)
    blur_f = blur / (blur + BLUR_REF)
    return (det_score * size_f * (0.5 + blur_f)).astype(np.float32)


def track_quality(face_q: np.ndarray) -> float:
    """Median of the faces' quality: robust to a few bad frames."""
    return float(np.median(face_q)) if len(face_q) else 0.0


def mad_outliers(q: np.ndarray, k: float = 2.7) -> np.ndarray:
    """(T,) track qualities -> (T,) bool, True where q < mean - k * MAD (MAD = median |q - median q|)."""
    q = np.asarray(q, np.float64)
    if len(q) < 3:
        return np.zeros(len(q), bool)
    mad = np.median(np.abs(q - np.median(q)))
    return q < q.mean() - k * mad
