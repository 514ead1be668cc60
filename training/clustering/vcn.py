"""VideoClusterNet (Walawalkar & Garrido, ECCV 2024; methods.md section 5) as the clustering
method ``vcn``: per-title self-supervised fine-tuning of the recogniser itself on the title's
stored face crops, then parameter-free clustering with the loss as the distance.

No public code exists; this follows methods.md 5.2 and marks our choices:

* Backbone: the face pack's ONNX recogniser (the file the shard was embedded with, checked by
  sha256) as a trainable torch module (``harvest.faces.torch_backend.convert_onnx``). Student =
  backbone + head; teacher = a copy, updated only as an EMA of the student (momentum 0.996).
* Head (ours): L2-normalised embedding -> Linear(D, 256) -> GELU -> Linear(256, 256) -> GELU ->
  Linear(256, 64) -> L2 norm -> cosine to K = 1024 unit prototypes (DINO's weight-normalised
  last layer with its norm fixed), randomly initialised.
* Loss: positive pairs only (two crops of one track, or of two coarsely matched tracks), both
  directions, L_ssl = -sum_k softmax((t - c)/tau_t)_k log softmax(s/tau_s)_k, tau_s 0.1,
  tau_t 0.04, c an EMA (0.9) of the teacher outputs; gradient through the student only.
  Augmentations on each view: horizontal flip (p 0.5), rotation (uniform +-10 degrees), a colour
  temperature shift (R x (1 + d), B x (1 - d), d uniform +-0.1).
* Stage 1 (backbone frozen, head only): ``head_steps`` steps on precomputed backbone embeddings of
  two views per crop: the shard's stored embedding (un-augmented) and one augmented view.
  Stage 2: ``rounds`` x (coarse track matching on the teacher's embeddings, then ``steps`` joint
  steps, backbone at ``backbone_lr``).
* Coarse matching (5.2 step 3): a Gaussian per track on its crops' unit embeddings, covariance
  shrunk toward a scaled identity ``(1 - s) S + s tr(S)/D I`` (s = ``shrinkage``; S unbiased),
  log-pdf space; tau_t = mean of the floor(0.25 n) (>= 1) lowest pdf values of the track's own
  embeddings; u matches t when pdf_t(mu_u) >= tau_t (one direction, as the paper reads; either
  direction yields a positive pair). Co-occurring tracks never match.
* Track quality (SER-FIQ-style, 5.2 step 4): MobileFaceNet's ONNX has no dropout, so dropout
  (p = ``serfiq_dropout``) is applied to the input of the recogniser's last linear layer (the
  512-d GDC feature for MobileFaceNet), ``serfiq_passes`` = m times, the rest of the graph run
  on each; q = 2 sigmoid(-(2/m^2) sum_{i<j} |x_i - x_j|) per crop, track quality = mean over
  its crops; tracks below mean - 2.7 MAD are Unknown: each gets its own singleton label (the
  method contract returns one label per track) and takes no part in the merging.
* Clustering (5.2 step 5): H(u -> v) = mean over crop pairs of L_ssl(teacher of u's crop,
  student of v's crop) (teacher centred with the final c); dissimilarity = (H(u->v) + H(v->u))/2;
  a cluster's threshold = mean L_ssl over pairs of distinct crops of the cluster. L_ssl is linear
  in the teacher probabilities and in the student log-probabilities, so every such mean is a dot
  product of per-cluster sums (never a pair matrix of crops): O(T K) memory for the sums and
  dissimilarities in row blocks of tracks. Merge two clusters when their dissimilarity is below
  EITHER threshold, candidates in ascending dissimilarity (at most ``max_edges`` per cluster and
  pass), transitively through a union-find that refuses a union whose two sides hold a
  cannot-linked pair (two tracks that share a frame are never in one cluster); the cluster sums
  and thresholds are recomputed and the pass repeats until nothing merges.
"""
from __future__ import annotations

import math

import numpy as np

from harvest.vectors import l2_normalize


#: the method's parameters and defaults (``--param``), registered by training.clustering.methods
DEFAULTS = dict(
    models=None, device="auto", seed=0, prototypes=1024, hidden=256, bottleneck=64,
    tau_s=0.1, tau_t=0.04, centre_momentum=0.9, teacher_momentum=0.996, lr=1e-3,
    backbone_lr=1e-5, batch=8, head_steps=300, rounds=2, steps=4, crops_per_track=8,
    shrinkage=0.5, serfiq_passes=100, serfiq_dropout=0.5, mad=2.7, max_edges=32)


# ------------------------------------------------------------------ formulas (methods.md 5.3)
def gaussian_fit(x: np.ndarray, shrinkage: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) -> (mean, covariance): unbiased covariance shrunk toward tr(S)/D I by
    ``shrinkage`` in [0, 1] (a floor keeps it positive definite for n = 1 or constant data)."""
    x = np.asarray(x, np.float64)
    mu = x.mean(0)
    d = x.shape[1]
    s = np.cov(x.T, ddof=1).reshape(d, d) if len(x) > 1 else np.zeros((d, d))
    scale = max(np.trace(s) / d, 1e-6)
    cov = (1 - shrinkage) * s + shrinkage * scale * np.eye(d)
    return mu, cov + 1e-9 * scale * np.eye(d)


def gaussian_logpdf(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Log density of N(mu, cov) at the rows of ``x`` (m, D)."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mu).T)
    return -0.5 * (z * z).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * len(mu) * math.log(2 * math.pi)


def match_log_threshold(own_logpdf: np.ndarray) -> float:
    """log tau: log of the mean of the floor(0.25 n) (at least 1) lowest own pdf values."""
    v = np.sort(np.asarray(own_logpdf, np.float64))[:max(1, len(own_logpdf) // 4)]
    return float(np.logaddexp.reduce(v) - math.log(len(v)))


def coarse_matches(groups: list, shrinkage: float, cannot=frozenset()) -> list[tuple[int, int]]:
    """Track u matches track t when pdf_t(mu_u) >= tau_t (``groups``: per track its (n_t, D)
    embeddings; ``cannot``: set of (i, j) pairs i < j that never match) -> [(u, t), ...]."""
    mus = np.stack([np.asarray(g, np.float64).mean(0) for g in groups])
    out = []
    for t, g in enumerate(groups):
        mu, cov = gaussian_fit(g, shrinkage)
        tau = match_log_threshold(gaussian_logpdf(g, mu, cov))
        for u in np.flatnonzero(gaussian_logpdf(mus, mu, cov) >= tau):
            if u != t and (min(u, t), max(u, t)) not in cannot:
                out.append((int(u), t))
    return out


def serfiq_quality(x) -> np.ndarray:
    """SER-FIQ score of m stochastic embeddings (..., m, D): 2 sigmoid(-(2/m^2) sum_{i<j}
    |x_i - x_j|) on the L2-normalised rows."""
    import torch
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float64), dim=-1)
    m = x.shape[-2]
    dist = torch.cdist(x, x).sum((-1, -2)) / 2            # each pair i < j once
    return (2 * torch.sigmoid(-2.0 / m ** 2 * dist)).numpy()


def mad_unknown(q: np.ndarray, k: float = 2.7) -> np.ndarray:
    """Low-quality (Unknown) mask: q < mean(q) - k MAD, MAD = median |q - median q|."""
    q = np.asarray(q, np.float64)
    mad = np.median(np.abs(q - np.median(q)))
    return q < q.mean() - k * mad


def ssl_loss(teacher, student, centre, tau_t: float, tau_s: float):
    """Per row: -sum_k softmax((t - c)/tau_t)_k log softmax(s/tau_s)_k (torch or numpy in,
    torch out)."""
    import torch
    t, s = torch.as_tensor(teacher), torch.as_tensor(student)
    p = torch.softmax((t - torch.as_tensor(centre, dtype=t.dtype)) / tau_t, dim=-1)
    return -(p * torch.log_softmax(s / tau_s, dim=-1)).sum(-1)


# ------------------------------------------------------------------ loss-as-distance clustering
def track_sums(p_teacher: np.ndarray, neglog_student: np.ndarray, track: np.ndarray, n_tracks: int):
    """Per-crop teacher probabilities P and student -log probabilities L (N, K) -> per track
    (sum P (T, K), sum L (T, K), sum_i P_i . L_i (T,), crop count (T,))."""
    sp = np.zeros((n_tracks, p_teacher.shape[1]))
    sl = np.zeros_like(sp)
    np.add.at(sp, track, p_teacher)
    np.add.at(sl, track, neglog_student)
    diag = np.bincount(track, (p_teacher * neglog_student).sum(1), minlength=n_tracks)
    return sp, sl, diag, np.bincount(track, minlength=n_tracks).astype(np.float64)


def own_threshold(sp, sl, diag, n) -> np.ndarray:
    """Mean L_ssl over pairs of distinct crops of each group (its single crop's self-loss when
    it has one)."""
    total = np.einsum("ik,ik->i", sp, sl)
    pairs = n * (n - 1)
    return np.where(pairs > 0, (total - diag) / np.maximum(pairs, 1), diag / np.maximum(n, 1))


def dissimilarity_blocks(sp, sl, n, block: int = 1024):
    """Yield (rows, D) with D[r, v] = (H(r -> v) + H(v -> r)) / 2, the mean over crop pairs, for
    row blocks of groups (never the crop-pair matrix; at most ``block`` x G values at a time)."""
    for r0 in range(0, len(n), block):
        r1 = min(r0 + block, len(n))
        h = sp[r0:r1] @ sl.T + (sl[r0:r1] @ sp.T)      # H(r->v) n_r n_v + H(v->r) n_v n_r
        yield np.arange(r0, r1), h / (2 * n[r0:r1, None] * n[None])


def loss_distance_clustering(sp, sl, diag, n, cannot_pairs=np.zeros((0, 2), np.int64),
                             max_edges: int = 32, block: int = 1024) -> np.ndarray:
    """Parameter-free clustering of T groups from their sums (``track_sums``) -> (T,) labels."""
    T = len(n)
    labels = np.arange(T)
    cannot = {(int(a), int(b)) for a, b in np.asarray(cannot_pairs).reshape(-1, 2)}
    while True:
        ids, inv = np.unique(labels, return_inverse=True)
        G = len(ids)
        g_sp, g_sl = np.zeros((G, sp.shape[1])), np.zeros((G, sp.shape[1]))
        np.add.at(g_sp, inv, sp)
        np.add.at(g_sl, inv, sl)
        g_diag, g_n = np.bincount(inv, diag, G), np.bincount(inv, n, G)
        th = own_threshold(g_sp, g_sl, g_diag, g_n)
        g_cannot = {(min(inv[a], inv[b]), max(inv[a], inv[b])) for a, b in cannot}
        edges = []
        for rows, d in dissimilarity_blocks(g_sp, g_sl, g_n, block):
            ok = (d < np.maximum(th[rows, None], th[None])) & (np.arange(G)[None] > rows[:, None])
            for r, row in zip(rows, d):
                cols = np.flatnonzero(ok[r - rows[0]])
                cols = cols[np.argsort(row[cols], kind="stable")[:max_edges]]
                edges += [(row[c], int(r), int(c)) for c in cols]
        parent = list(range(G))
        bans = {g: set() for g in range(G)}
        for a, b in g_cannot:
            bans[a].add(b)
            bans[b].add(a)

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        merged = False
        for _, a, b in sorted(edges):
            ra, rb = find(a), find(b)
            if ra == rb or rb in bans[ra]:
                continue
            parent[rb] = ra
            bans[ra] |= bans.pop(rb)
            for o in bans[ra]:
                bans[o].discard(rb)
                bans[o].add(ra)
            merged = True
        if not merged:
            return np.unique(labels, return_inverse=True)[1]
        labels = np.array([find(g) for g in range(G)])[inv]


# ------------------------------------------------------------------ networks


def unit(x) -> np.ndarray:
    return l2_normalize(x, dtype=np.float64)
