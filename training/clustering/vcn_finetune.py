"""The ``vcn`` method (VideoClusterNet; its formulas and defaults: :mod:`training.clustering.vcn`):
the face pack's recogniser as a trainable torch student with its prototype head, an EMA
teacher, the two training stages, the per-track sums, and the loss-as-distance clustering.

The method registry imports this module only when the method runs (it imports torch).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time

import numpy as np

from training.clustering.vcn import (coarse_matches, loss_distance_clustering, mad_unknown,
                                     serfiq_quality, ssl_loss, unit)

_BACKBONES: dict = {}       # recogniser path -> converted module (copied per title)
log = logging.getLogger("training.clustering.vcn")


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


class FineTune:
    """One title's fine-tuning (methods.md 5.2 steps 1-4): :meth:`head_stage`, then
    :meth:`joint_stage`, then :meth:`track_sums` for the clustering."""

    def __init__(self, title, p: dict):
        import torch
        self.t, self.p = title, p
        self.device = torch.device("cuda" if p["device"] in ("auto", "cuda")
                                   and torch.cuda.is_available() else "cpu")
        self.gen = torch.Generator().manual_seed(int(p["seed"]))
        self.rng = np.random.default_rng(int(p["seed"]))
        jpegs, positions = title.crops
        self.crops = _Crops(jpegs, positions, int(p["crops_per_track"]), self.device)
        self.T, self.N, self.bs = title.n_tracks, len(self.crops), int(p["batch"])
        self.cannot = {(int(a), int(b)) for a, b in title.cannot_link_pairs()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(p["seed"]))
            student = _modules(_backbone(recogniser_path(title.meta, p["models"])),
                               title.means.shape[1], p)
        self.student = student.to(self.device, memory_format=torch.channels_last)  # ~2x convs
        self.teacher = copy.deepcopy(self.student)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.centre = torch.zeros(p["prototypes"], device=self.device)
        self.clock = time.perf_counter()
        log.info("vcn %s: %d tracks, %d crops, device %s", title.title_id, self.T, self.N,
                 self.device)

    def embed_all(self, net, aug: bool = False):
        import torch
        net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, self.N, 64):
                x = self.crops.pixels(range(i, min(i + 64, self.N)))
                out.append(net.embed(_norm(_augment(x, self.gen) if aug else x)))
        return torch.cat(out)

    def pairs(self, emb_unit: np.ndarray):
        """-> draw(n): n positive pairs of crop indices: two crops of one track, or of two
        coarsely matched tracks (``coarse_matches`` on ``emb_unit``, never co-occurring)."""
        crops, rng, T = self.crops, self.rng, self.T
        groups = [emb_unit[crops.track == k] for k in range(T)]
        partners = [[k] for k in range(T)]
        for u, v in coarse_matches(groups, self.p["shrinkage"], self.cannot):
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

    def step(self, opt, t_a, t_b, s_a, s_b, s_mod, t_mod) -> float:
        """One update on the outputs of two views (teacher t_*, student s_*) of a pair; the
        teacher module ``t_mod`` follows the student's ``s_mod`` (EMA), the centre follows the
        teacher's outputs."""
        import torch
        p = self.p
        loss = (ssl_loss(t_a, s_b, self.centre, p["tau_t"], p["tau_s"]).mean()
                + ssl_loss(t_b, s_a, self.centre, p["tau_t"], p["tau_s"]).mean()) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        m = p["teacher_momentum"]
        with torch.no_grad():
            tp = list(t_mod.parameters())
            torch._foreach_mul_(tp, m)
            torch._foreach_add_(tp, [q.detach() for q in s_mod.parameters()], alpha=1 - m)
            batch_centre = torch.cat([t_a, t_b]).mean(0)
            self.centre = (p["centre_momentum"] * self.centre
                           + (1 - p["centre_momentum"]) * batch_centre)
        return float(loss.detach())

    def head_stage(self) -> None:
        """Stage 1: the head only, on two backbone views per crop: the shard's stored embedding
        (un-augmented) and one augmented view."""
        import torch
        student, teacher, rng, bs = self.student, self.teacher, self.rng, self.bs
        stored = stored_embeddings(self.t, self.crops)
        views = torch.stack([torch.as_tensor(stored, dtype=torch.float32, device=self.device),
                             self.embed_all(student, aug=True)])
        draw = self.draw = self.pairs(unit(stored))   # also stage 2's first round
        opt = torch.optim.AdamW(student.head.parameters(), lr=self.p["lr"], weight_decay=0.04)
        student.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)        # tiny ops: worker threads only add barrier waits
        try:
            for _ in range(int(self.p["head_steps"])):
                a, b = draw(bs)
                va, vb = rng.integers(2, size=bs), rng.integers(2, size=bs)
                xa, xb = views[va, a], views[vb, b]
                with torch.no_grad():
                    ta, tb = teacher.head(xa), teacher.head(xb)
                self.step(opt, ta, tb, student.head(xa), student.head(xb), student.head,
                          teacher.head)
        finally:
            torch.set_num_threads(threads)
        log.info("vcn stage 1 (head, %d steps) done at %.1fs", self.p["head_steps"],
                 time.perf_counter() - self.clock)

    def joint_stage(self) -> None:
        """Stage 2: ``rounds`` x (coarse track matching on the teacher's embeddings, then
        ``steps`` joint steps, the backbone at ``backbone_lr``)."""
        import torch
        p, student, teacher = self.p, self.student, self.teacher
        opt = torch.optim.AdamW([{"params": student.head.parameters()},
                                 {"params": student.backbone.parameters(),
                                  "lr": p["backbone_lr"]}], lr=p["lr"], weight_decay=0.04)
        draw = self.draw
        for r in range(int(p["rounds"])):
            if r:   # the first round's teacher backbone is still the recogniser: stored views
                draw = self.pairs(unit(self.embed_all(teacher).cpu().numpy()))
            for _ in range(int(p["steps"])):
                a, b = draw(self.bs)
                xa = _norm(_augment(self.crops.pixels(a), self.gen))
                xb = _norm(_augment(self.crops.pixels(b), self.gen))
                student.train()
                with torch.no_grad():
                    ta, tb = teacher(xa), teacher(xb)
                self.step(opt, ta, tb, student(xa), student(xb), student, teacher)
        log.info("vcn stage 2 (%d x %d joint steps) done at %.1fs", p["rounds"], p["steps"],
                 time.perf_counter() - self.clock)

    def track_sums(self) -> tuple:
        """Per track, over its crops: the teacher's centred probabilities and the student's
        negative log-probabilities summed (``sp``, ``sl``), their own-pair sum (``diag``), the
        crop count and the mean SER-FIQ quality; one block of crops at a time."""
        import torch
        p, crops, T = self.p, self.crops, self.T
        self.student.eval()
        self.teacher.eval()
        K = p["prototypes"]
        sp, sl = np.zeros((T, K)), np.zeros((T, K))
        diag, quality = np.zeros(T), np.zeros(T)
        with torch.no_grad():
            for i in range(0, self.N, 64):
                idx = np.arange(i, min(i + 64, self.N))
                x = _norm(crops.pixels(idx))
                emb, tap = self.teacher.embed(x, with_tap=True)
                pt = torch.softmax((self.teacher.head(emb) - self.centre) / p["tau_t"], -1)
                ls = -torch.log_softmax(self.student(x) / p["tau_s"], -1)
                q = _serfiq_passes(self.teacher, tap, p, self.gen)
                tr = crops.track[idx]
                np.add.at(sp, tr, pt.double().cpu().numpy())
                np.add.at(sl, tr, ls.double().cpu().numpy())
                np.add.at(diag, tr, (pt * ls).sum(1).double().cpu().numpy())
                np.add.at(quality, tr, q)
        n = np.bincount(crops.track, minlength=T).astype(np.float64)
        return sp, sl, diag, n, quality / np.maximum(n, 1)


def stored_embeddings(title, crops) -> np.ndarray:
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


def run(job) -> np.ndarray:
    """The ``vcn`` method of :mod:`training.clustering.methods`: Job -> (T,) labels: the
    title's fine-tuning (:class:`FineTune`), then the loss-as-distance clustering of its
    tracks, Unknown (low-quality) tracks each on their own."""
    p, t = job.params, job.title
    jpegs, _ = t.crops
    if not sum(map(len, jpegs)):
        raise ValueError(f"vcn needs face crops in the shard of {t.title_id} (crops mode "
                         f"{t.meta.get('crops', 'none')!r}): harvest it with --crops sample")
    tune = FineTune(t, p)
    tune.head_stage()
    tune.joint_stage()
    sp, sl, diag, n, quality = tune.track_sums()
    has = n > 0
    unknown = ~has
    unknown[has] = mad_unknown(quality[has], p["mad"])
    keep = np.flatnonzero(~unknown)
    remap = np.full(t.n_tracks, -1)
    remap[keep] = np.arange(len(keep))
    cl = np.array([(remap[a], remap[b]) for a, b in tune.cannot
                   if remap[a] >= 0 and remap[b] >= 0], np.int64).reshape(-1, 2)
    labels = np.empty(t.n_tracks, np.int64)
    labels[keep] = loss_distance_clustering(sp[keep], sl[keep], diag[keep], n[keep], cl,
                                            int(p["max_edges"]))
    labels[unknown] = len(keep) + np.arange(unknown.sum())       # Unknown: one label each
    log.info("vcn: %d Unknown tracks, %d clusters, %.1fs", unknown.sum(), len(set(labels)),
             time.perf_counter() - tune.clock)
    return labels
