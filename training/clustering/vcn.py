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

import copy
import logging
import math
import os
import time

import numpy as np

from harvest.vectors import l2_normalize

_BACKBONES: dict = {}       # recogniser path -> converted module (copied per title)
log = logging.getLogger(__name__)


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
def recogniser_path(meta: dict, models: str | None = None) -> str:
    """The face pack's recogniser the shard was embedded with: ``models`` (a directory or URL),
    else the harvest's default model directories ($HARVEST_MODELS, ...); checked by sha256."""
    from harvest.faces.base import file_sha256
    from harvest.faces.insightface_backend import find_model_pack
    from harvest.faces.registry import find_default_models, stage_models
    model_dir = stage_models(models) if models else find_default_models()
    name, sha = meta.get("embedder_file"), meta.get("embedder_sha256")
    if not model_dir:
        raise FileNotFoundError(f"vcn fine-tunes the recogniser the shard was embedded with "
                                f"({name}): give its face pack directory as the method parameter "
                                f"models=DIR or in $HARVEST_MODELS")
    path = os.path.join(model_dir, name) if name else ""
    if not os.path.isfile(path):
        path = find_model_pack(model_dir)[1]
    if sha and file_sha256(path) != sha:
        raise ValueError(f"{path} is not the recogniser the shard was embedded with "
                         f"({name}, sha256 {sha[:12]}...)")
    return path


def _backbone(path: str):
    if path not in _BACKBONES:
        from harvest.faces.torch_backend import convert_onnx
        _BACKBONES[path] = convert_onnx(path)
    return copy.deepcopy(_BACKBONES[path])


def _modules(backbone, dim: int, p: dict):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            h, b = p["hidden"], p["bottleneck"]
            self.mlp = nn.Sequential(nn.Linear(dim, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                     nn.Linear(h, b))
            self.prototypes = nn.Parameter(torch.randn(p["prototypes"], b) / math.sqrt(b))

        def forward(self, emb):
            z = F.normalize(self.mlp(F.normalize(emb, dim=-1)), dim=-1)
            return z @ F.normalize(self.prototypes, dim=-1).T

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, Head()
            self.tap = backbone.last_linear_input()

        def embed(self, x, with_tap=False):
            out = self.backbone(x, outputs=[self.tap, self.backbone.output_names[0]])
            tap, emb = out[0], out[1].reshape(len(x), -1)
            return (emb, tap) if with_tap else emb

        def forward(self, x):
            return self.head(self.embed(x))
    return Net()


def _augment(x, gen):
    """(B, 3, S, S) float in [0, 255]: flip (p 0.5), rotation +-10 deg, colour temperature +-10 %."""
    import torch
    import torch.nn.functional as F
    b = len(x)
    u = torch.rand(b, 3, generator=gen).to(x.device)
    flip = u[:, 0] < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    a = (u[:, 1] * 2 - 1) * math.radians(10)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), torch.zeros_like(a)], 1),
                         torch.stack([a.sin(), a.cos(), torch.zeros_like(a)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    d = (u[:, 2] * 2 - 1) * 0.1
    scale = torch.stack([1 + d, torch.ones_like(d), 1 - d], 1)[:, :, None, None]
    return (x * scale).clamp(0, 255).contiguous(memory_format=torch.channels_last)


class _Crops:
    """The title's crops as JPEG bytes (decoded per batch, never the whole title at once): at
    most ``per_track`` of each track's stored crops, evenly spread over them."""

    def __init__(self, jpegs: list, positions: list, per_track: int, device):
        pick = [np.unique(np.round(np.linspace(0, len(c) - 1, per_track)).astype(np.int64))
                if len(c) > per_track else np.arange(len(c)) for c in jpegs]
        self.jpegs = [c[i] for c, idx in zip(jpegs, pick) for i in idx]
        self.positions = np.array([pos[i] for pos, idx in zip(positions, pick) for i in idx],
                                  np.int64)
        self.track = np.repeat(np.arange(len(jpegs)), [len(i) for i in pick])
        self.device = device

    def __len__(self):
        return len(self.jpegs)

    def pixels(self, idx):
        """-> (B, 3, S, S) float32 in [0, 255] on the device."""
        import torch

        from harvest.dataset.shard import decode_crop
        imgs = [decode_crop(self.jpegs[i]) for i in idx]
        if any(im is None for im in imgs):
            raise ValueError("vcn: an undecodable face crop in the shard (run harvest validate)")
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
        return x.to(self.device).contiguous(memory_format=torch.channels_last)


def _norm(x):
    return (x - 127.5) / 127.5


# ------------------------------------------------------------------ the method
def run(job) -> np.ndarray:
    """The ``vcn`` method of :mod:`training.clustering.methods`: Job -> (T,) labels."""
    import torch
    p = job.params
    t = job.title
    jpegs, positions = t.crops
    if not sum(map(len, jpegs)):
        raise ValueError(f"vcn needs face crops in the shard of {t.title_id} (crops mode "
                         f"{t.meta.get('crops', 'none')!r}): harvest it with --crops sample")
    device = torch.device("cuda" if p["device"] in ("auto", "cuda") and torch.cuda.is_available()
                          else "cpu")
    gen = torch.Generator().manual_seed(int(p["seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    crops = _Crops(jpegs, positions, int(p["crops_per_track"]), device)
    T, N, bs = t.n_tracks, len(crops), int(p["batch"])
    cannot = {(int(a), int(b)) for a, b in t.cannot_link_pairs()}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(p["seed"]))
        student = _modules(_backbone(recogniser_path(t.meta, p["models"])), t.means.shape[1], p)
    student = student.to(device, memory_format=torch.channels_last)   # ~2x faster convs on CPU
    teacher = copy.deepcopy(student)
    for q in teacher.parameters():
        q.requires_grad_(False)
    centre = torch.zeros(p["prototypes"], device=device)
    tau_t, tau_s = p["tau_t"], p["tau_s"]

    def embed_all(net, aug=False):
        net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, N, 64):
                x = crops.pixels(range(i, min(i + 64, N)))
                out.append(net.embed(_norm(_augment(x, gen) if aug else x)))
        return torch.cat(out)

    def pairs(emb_unit):
        groups = [emb_unit[crops.track == k] for k in range(T)]
        partners = [[k] for k in range(T)]
        for u, v in coarse_matches(groups, p["shrinkage"], cannot):
            partners[u].append(v)
            partners[v].append(u)
        by_track = [np.flatnonzero(crops.track == k) for k in range(T)]
        live = [k for k in range(T) if len(by_track[k])]

        def draw(n):
            a = rng.choice(live, n)
            b = [rng.choice([v for v in partners[k] if len(by_track[v])]) for k in a]
            return (np.array([rng.choice(by_track[k]) for k in a]),
                    np.array([rng.choice(by_track[k]) for k in b]))
        return draw

    def step(opt, t_a, t_b, s_a, s_b, s_mod, t_mod):
        """One update on the outputs of two views (teacher t_*, student s_*) of a pair; the
        teacher module ``t_mod`` follows the student's ``s_mod`` (EMA)."""
        nonlocal centre
        loss = (ssl_loss(t_a, s_b, centre, tau_t, tau_s).mean()
                + ssl_loss(t_b, s_a, centre, tau_t, tau_s).mean()) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        m = p["teacher_momentum"]
        with torch.no_grad():
            tp = list(t_mod.parameters())
            torch._foreach_mul_(tp, m)
            torch._foreach_add_(tp, [q.detach() for q in s_mod.parameters()], alpha=1 - m)
            batch_centre = torch.cat([t_a, t_b]).mean(0)
            centre = p["centre_momentum"] * centre + (1 - p["centre_momentum"]) * batch_centre
        return float(loss.detach())

    clock = time.perf_counter()
    log.info("vcn %s: %d tracks, %d crops, device %s", t.title_id, T, N, device)
    # stage 1: head only, on the stored (un-augmented) and one augmented backbone view per crop
    stored = _stored_embeddings(t, crops)
    views = torch.stack([torch.as_tensor(stored, dtype=torch.float32, device=device),
                         embed_all(student, aug=True)])
    draw = pairs(_unit(stored))
    opt = torch.optim.AdamW(student.head.parameters(), lr=p["lr"], weight_decay=0.04)
    student.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny ops: worker threads only add barrier waits
    try:
        for _ in range(int(p["head_steps"])):
            a, b = draw(bs)
            va, vb = rng.integers(2, size=bs), rng.integers(2, size=bs)
            xa, xb = views[va, a], views[vb, b]
            with torch.no_grad():
                ta, tb = teacher.head(xa), teacher.head(xb)
            step(opt, ta, tb, student.head(xa), student.head(xb), student.head, teacher.head)
    finally:
        torch.set_num_threads(threads)

    log.info("vcn stage 1 (head, %d steps) done at %.1fs", p["head_steps"],
             time.perf_counter() - clock)
    # stage 2: joint fine-tuning, alternating with coarse track matching
    opt = torch.optim.AdamW([{"params": student.head.parameters()},
                             {"params": student.backbone.parameters(), "lr": p["backbone_lr"]}],
                            lr=p["lr"], weight_decay=0.04)
    for r in range(int(p["rounds"])):
        if r:       # the first round's teacher backbone is still the recogniser: stored views
            draw = pairs(_unit(embed_all(teacher).cpu().numpy()))
        for _ in range(int(p["steps"])):
            a, b = draw(bs)
            xa = _norm(_augment(crops.pixels(a), gen))
            xb = _norm(_augment(crops.pixels(b), gen))
            student.train()
            with torch.no_grad():
                ta, tb = teacher(xa), teacher(xb)
            step(opt, ta, tb, student(xa), student(xb), student, teacher)

    log.info("vcn stage 2 (%d x %d joint steps) done at %.1fs", p["rounds"], p["steps"],
             time.perf_counter() - clock)
    # quality and the loss-as-distance sums, one block of crops at a time
    student.eval()
    teacher.eval()
    K = p["prototypes"]
    sp, sl = np.zeros((T, K)), np.zeros((T, K))
    diag, quality = np.zeros(T), np.zeros(T)
    with torch.no_grad():
        w = None
        for i in range(0, N, 64):
            idx = np.arange(i, min(i + 64, N))
            x = _norm(crops.pixels(idx))
            emb, tap = teacher.embed(x, with_tap=True)
            pt = torch.softmax((teacher.head(emb) - centre) / tau_t, -1)
            ls = -torch.log_softmax(student(x) / tau_s, -1)
            q = _serfiq_passes(teacher, tap, p, gen)
            tr = crops.track[idx]
            np.add.at(sp, tr, pt.double().cpu().numpy())
            np.add.at(sl, tr, ls.double().cpu().numpy())
            np.add.at(diag, tr, (pt * ls).sum(1).double().cpu().numpy())
            np.add.at(quality, tr, q)
    n = np.bincount(crops.track, minlength=T).astype(np.float64)
    quality = quality / np.maximum(n, 1)
    has = n > 0
    unknown = ~has
    unknown[has] = mad_unknown(quality[has], p["mad"])
    keep = np.flatnonzero(~unknown)
    remap = np.full(T, -1)
    remap[keep] = np.arange(len(keep))
    cl = np.array([(remap[a], remap[b]) for a, b in cannot if remap[a] >= 0 and remap[b] >= 0],
                  np.int64).reshape(-1, 2)
    labels = np.empty(T, np.int64)
    labels[keep] = loss_distance_clustering(sp[keep], sl[keep], diag[keep], n[keep], cl,
                                            int(p["max_edges"]))
    labels[unknown] = len(keep) + np.arange(unknown.sum())       # Unknown: one label each
    log.info("vcn: %d Unknown tracks, %d clusters, %.1fs", unknown.sum(), len(set(labels)),
             time.perf_counter() - clock)
    return labels


def _unit(x):
    return l2_normalize(x, dtype=np.float64)


def _stored_embeddings(title, crops) -> np.ndarray:
    """The shard's embedding of each crop's face (the un-augmented backbone view)."""
    faces, tof = title.faces, title.track_of_face
    first = np.searchsorted(tof, np.arange(title.n_tracks))
    return faces[first[crops.track] + crops.positions]


def _serfiq_passes(net, tap, p, gen) -> np.ndarray:
    """Per crop SER-FIQ score: m passes of dropout on the recogniser's last linear input."""
    import torch
    m, rate = int(p["serfiq_passes"]), float(p["serfiq_dropout"])
    b = len(tap)
    rep = tap.repeat_interleave(m, 0)
    keep = (torch.rand(rep.shape, generator=gen) >= rate).to(rep.device, rep.dtype)
    out = net.backbone(resume={net.tap: rep * keep / (1 - rate)}).reshape(b, m, -1)
    return serfiq_quality(out.double().cpu().numpy())
