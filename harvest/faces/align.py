"""5-point face alignment to the ArcFace template, batched.

``similarity_transforms`` solves the least-squares similarity (Umeyama 1991, the estimator that
insightface's ``norm_crop`` calls through scikit-image one face at a time) for every face at
once with one batched SVD; ``align_faces`` then warps each face with OpenCV. The matrices equal
``insightface.utils.face_align.estimate_norm`` (tested); the per-face Python cost is one warp.
"""
from __future__ import annotations

import cv2
import numpy as np

# insightface.utils.face_align.arcface_dst: landmark positions in a 112 x 112 crop
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def template(size: int = 112) -> np.ndarray:
    """The 5 target points for a ``size`` crop (insightface's rule: 112-multiples scale, 128-multiples
    scale and shift x by 8 * ratio)."""
    if size % 112 == 0:
        return ARCFACE_112 * (size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        return ARCFACE_112 * ratio + np.array([8.0 * ratio, 0.0])
    raise ValueError(f"crop size {size} is not a multiple of 112 or 128")


def similarity_transforms(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """kps (n, 5, 2) source landmarks -> (n, 2, 3) float64 affine matrices (source -> crop)."""
    src = np.asarray(kps, np.float64).reshape(-1, 5, 2)
    dst = template(size)
    n = len(src)
    if n == 0:
        return np.zeros((0, 2, 3), np.float64)
    src_mean = src.mean(axis=1)                                   # (n, 2)
    dst_mean = dst.mean(axis=0)                                   # (2,)
    src_c = src - src_mean[:, None, :]
    dst_c = dst - dst_mean
    A = np.einsum("ki,nkj->nij", dst_c, src_c) / 5.0              # (n, 2, 2) = dst_c.T @ src_c / 5
    d = np.ones((n, 2))
    d[np.linalg.det(A) < 0, 1] = -1.0
    U, S, Vt = np.linalg.svd(A)
    R = U @ (d[:, :, None] * Vt)                                  # U diag(d) Vt
    var = src_c.var(axis=1).sum(axis=1)                           # (n,)
    scale = (S * d).sum(axis=1) / np.maximum(var, 1e-12)
    M = np.empty((n, 2, 3))
    M[:, :, :2] = scale[:, None, None] * R
    M[:, :, 2] = dst_mean - np.einsum("nij,nj->ni", M[:, :, :2], src_mean)
    return M


def align_faces(frame: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """frame (H, W, 3) uint8, kps (n, 5, 2) -> (n, size, size, 3) uint8 aligned crops."""
    mats = similarity_transforms(kps, size)
    out = np.empty((len(mats), size, size, 3), np.uint8)
    for i, M in enumerate(mats):
        cv2.warpAffine(frame, M, (size, size), dst=out[i], borderValue=0.0)
    return out
