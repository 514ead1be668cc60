"""``auto``: K-free clustering of a title's tracks calibrated on the title's own evidence.

No K, no threshold, no labels: everything it needs comes from the video.

1. **Adapt the embedding to the title** (transductive, closed form, no training). All faces of a
   track are one person, so what varies inside a track (pose, expression, blur, small-face noise)
   is nuisance. The faces are centred on the title's mean face embedding (removes what every face
   of this title shares: grading, lighting, the recogniser's bias on small faces) and whitened by
   the within-track covariance, shrunk towards a multiple of the identity (``shrink``): *within-
   class covariance normalisation* with tracks as classes. A track's embedding is the unit mean of
   its adapted faces. O(F E^2) time, O(E^2 + chunk E) memory beyond the faces.
2. **Calibrate the stopping height on the cannot-links.** Two tracks that share a frame are
   different people, so their similarities show how close different people come *in this
   title* (high in a crowd of small faces, low in a two-hander of close-ups). Merging stops at
   the ``quantile`` of the cannot-linked similarities plus ``offset``; with few cannot-links the
   height leans towards ``prior`` (``prior_weight`` pseudo-pairs at the prior). It never goes
   below ``floor``: where every pair of different people is far apart (after centring, their
   similarities are negative: generated titles of one still photo per person) the quantile says
   little about where one person's tracks sit, and two tracks at chance-level similarity
   (1/sqrt(128) = 0.09 for 128-d embeddings) must not merge. On the real clips the calibrated
   heights are 0.13-0.31, above the floor.
3. **Cluster**: average-linkage HAC on the adapted track embeddings that never joins a
   cannot-linked pair (:func:`training.clustering.hac.hac_constrained`), cut at that height.

The defaults are the setting chosen on the labelled real clips by ``bench/real_clusters.py``
(leave one clip out there for the figures on clips they were not chosen on; docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np

from harvest.vectors import l2_normalize
from training.clustering.hac import hac_constrained

#: the defaults of the ``auto`` method (training.clustering.methods), chosen by bench/real_clusters.py
DEFAULTS = dict(adapt="wccn", shrink=0.3, quantile=0.7, offset=0.0, prior=0.35, prior_weight=5,
                floor=0.1)
ADAPTS = ("wccn", "center", "none")
CHUNK = 8192


def unit(x: np.ndarray) -> np.ndarray:
    """Unit rows in float64 (``harvest.vectors.l2_normalize``)."""
    return l2_normalize(x, dtype=np.float64)


def _track_sums(x: np.ndarray, track_of_face: np.ndarray, n_tracks: int) -> np.ndarray:
    out = np.zeros((n_tracks, x.shape[1]))
    np.add.at(out, track_of_face, x)
    return out


class TitleAdapter:
    """The adaptation as a head-like object: ``embed(x)`` maps (N, E) face or track embeddings
    to the adapted space (``unit(unit(x) - mean) @ projection``), so every clustering method can
    run on it (bench/real_clusters.py); a track's adapted embedding is the unit mean of its
    adapted faces."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray):
        self.mean, self.projection = mean, projection

    def embed(self, x) -> np.ndarray:
        return unit(unit(np.asarray(x, np.float64)) - self.mean) @ self.projection

    def tracks(self, faces: np.ndarray, track_of_face: np.ndarray, n_tracks: int) -> np.ndarray:
        """(T, E) unit means of the adapted faces, read in chunks of :data:`CHUNK` rows."""
        tof = np.asarray(track_of_face, np.int64)
        sums = np.zeros((n_tracks, self.projection.shape[1]))
        for i in range(0, len(tof), CHUNK):
            sums += _track_sums(self.embed(faces[i:i + CHUNK]), tof[i:i + CHUNK], n_tracks)
        return unit(sums)


def fit_adapter(faces: np.ndarray, track_of_face: np.ndarray, n_tracks: int,
                adapt: str = "wccn", shrink: float = 0.3) -> TitleAdapter:
    """The adapter of a title's faces (F, E) grouped by track (module doc, 1): ``none`` = the
    identity; ``center`` = centred on the title's mean unit face; ``wccn`` = centred, then
    whitened by the shrunk within-track covariance. Faces are read in chunks of :data:`CHUNK`
    rows: the working memory beyond ``faces`` is O(T E + E^2 + CHUNK E)."""
    if adapt not in ADAPTS:
        raise ValueError(f"adapt must be one of {ADAPTS}, not {adapt!r}")
    tof = np.asarray(track_of_face, np.int64)
    n, dim = len(tof), faces.shape[1]
    chunks = [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
    mean = np.zeros(dim)
    if adapt != "none":
        for s in chunks:
            mean += unit(faces[s]).sum(0)
        mean /= max(n, 1)
    if adapt != "wccn":
        return TitleAdapter(mean, np.eye(dim))
    centred = TitleAdapter(mean, np.eye(dim))
    sums = np.zeros((n_tracks, dim))
    for s in chunks:
        sums += _track_sums(centred.embed(faces[s]), tof[s], n_tracks)
    centre = sums / np.maximum(np.bincount(tof, minlength=n_tracks), 1)[:, None]
    within = np.zeros((dim, dim))
    for s in chunks:
        r = centred.embed(faces[s]) - centre[tof[s]]
        within += r.T @ r
    within /= max(n, 1)
    within += shrink * max(np.trace(within), 1e-12) / dim * np.eye(dim)
    vals, vecs = np.linalg.eigh(within)
    return TitleAdapter(mean, (vecs / np.sqrt(vals)) @ vecs.T)


def adapted_tracks(faces: np.ndarray, track_of_face: np.ndarray, n_tracks: int,
                   adapt: str = "wccn", shrink: float = 0.3) -> np.ndarray:
    """(T, E) unit track embeddings of a title's faces under its own adapter."""
    return fit_adapter(faces, track_of_face, n_tracks, adapt, shrink).tracks(
        faces, track_of_face, n_tracks)


def negative_similarities(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each cannot-linked pair of unit rows."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(1)


def stopping_similarity(negatives: np.ndarray, quantile: float = 0.7, offset: float = 0.0,
                        prior: float = 0.35, prior_weight: float = 5, floor: float = 0.1) -> float:
    """The cosine similarity below which merging stops (module doc, 2), never below ``floor``."""
    n = len(negatives)
    if n == 0:
        return float(max(prior, floor))
    q = float(np.quantile(negatives, quantile)) + offset
    return float(max((n * q + prior_weight * prior) / (n + prior_weight), floor))


def auto_cluster(emb: np.ndarray, cannot_pairs: np.ndarray, quantile: float = 0.7,
                 offset: float = 0.0, prior: float = 0.35, prior_weight: float = 5,
                 floor: float = 0.1, **_) -> tuple[np.ndarray, float]:
    """-> ((T,) labels 0..C-1, the stopping similarity) for unit track embeddings ``emb``."""
    emb = unit(emb)
    if len(emb) <= 1:
        return np.zeros(len(emb), np.int64), float(prior)
    tau = stopping_similarity(negative_similarities(emb, cannot_pairs), quantile, offset, prior,
                              prior_weight, floor)
    labels = hac_constrained(emb, cannot_pairs, threshold=2.0 - 2.0 * tau, method="average")
    return labels - 1, tau
