"""The one place that maps a head name to everything about it: model, loss, batch objective,
typed hyper-parameters, the sample kind (per-title sample builder, batcher, collate: see
:mod:`training.data`) and its clustering rule (how a title's tracks become track embeddings,
and the head's own HAC stopping rule if it has one). Nothing else switches on a head name.

Defaults follow the papers (methods.md 0, 1.3, 4.4): SGD momentum 0.9; ImpTriplet lr 1e-3 and
MvCorr lr 1e-2 with Keras-style decay 1e-6 (lr_t = lr / (1 + decay * step)), batch 1024; BCL lr
3e-3 decayed x0.9 every 10 epochs, batch 2000 tracklets-worth of tracks, no weight decay, radius
parameter frozen for the first ``radius_freeze_epochs`` epochs, then trained at
``radius_lr_mult`` x lr (0.1, the paper's choice; the released checkpoint used 0.01); SSiam /
TSiam lr 1e-3, weight decay 5e-4, 15 epochs, 128 pairs per batch mined from ``draw`` = 3000
faces, ceil(faces / 128) batches per title and epoch, TSiam singletons take the ``n_far`` = 25
farthest tracks as negatives.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from training import data
from training.heads import bcl as bcl_head
from training.heads import imptriplet as imptriplet_head
from training.heads import mvcorr as mvcorr_head
from training.heads import siamese as siamese_head
from training.losses import BallClusterLoss, ContrastiveLoss, ImpTripletLoss, MvCorrLoss


@dataclass(frozen=True)
class HParams:
    """Training hyper-parameters of a head (``fit`` overrides any of them by name)."""
    lr: float = 1e-3
    batch_size: int = 1024
    momentum: float = 0.9
    weight_decay: float = 0.0
    keras_decay: float = 0.0
    lr_step_epochs: int = 0
    lr_step_gamma: float = 1.0
    radius_freeze_epochs: int = 0
    radius_lr_mult: float = 1.0
    max_epochs: int = 100
    min_delta: float = 1e-3
    patience: int = 5
    seed: int = 0
    draw: int = 3000                  # frame kinds: candidate faces per batch
    n_far: int = 25                   # TSiam: negatives of a singleton track
    model_kwargs: dict | None = None


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32))


def embed_rows(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """(N, D) -> (N, E) float64: ``x`` itself without a model, else ``model.embed``."""
    if model is None:
        return np.asarray(x, np.float64)
    model.eval()
    with torch.no_grad():
        outs = [model.embed(_as_tensor(x[i:i + batch])) for i in range(0, len(x), batch)]
    return torch.cat(outs).double().numpy() if outs else np.zeros((0, 0))


def mean_track_embedding(model, title) -> np.ndarray:
    """Track embeddings of the MvCorr / ImpTriplet / BCL heads (and raw): the track's
    ``mean_embedding`` through ``model.embed``."""
    return embed_rows(model, title.means)


def siamese_track_embedding(model, title) -> np.ndarray:
    """SSiam / TSiam (methods.md 4.4): mean over the track's faces of the first-layer features,
    L2-normalised (``SiameseMLP.embed_tracks``)."""
    model.eval()
    with torch.no_grad():
        out = model.embed_tracks(_as_tensor(title.faces), torch.from_numpy(title.track_of_face),
                                 title.n_tracks)
    return out.double().numpy()


@dataclass(frozen=True)
class HeadSpec:
    model: type
    loss: type
    batch_loss: Callable
    samples: data.SampleKind          # per-title sample builder, batcher and collate
    defaults: HParams = HParams()
    model_kwargs: dict = field(default_factory=dict)
    loss_kwargs: dict = field(default_factory=dict)
    embed_tracks: Callable = mean_track_embedding     # (model, TitleTracks) -> (T, E)
    stop_rule: Callable | None = None  # loss -> (HAC threshold, linkage): the head's own cut
    loss_metrics: Callable = lambda loss: {}    # loss -> extra per-epoch metrics (BCL: radius)
    # a checkpoint format of the head's own paper: (is_it(state dict), load(path) -> (model,
    # loss)); ``load_head`` reads such a file as this head (the published BCL checkpoint)
    published: tuple[Callable, Callable] | None = None

    def hparams(self, **overrides) -> dict:
        """Defaults with non-None overrides applied (unknown names raise TypeError)."""
        hp = dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items()
                                                   if v is not None})
        return dataclasses.asdict(hp)


HEADS: dict[str, HeadSpec] = {}


def register(name: str, spec: HeadSpec) -> HeadSpec:
    HEADS[name] = spec
    return spec


register("imptriplet", HeadSpec(
    model=imptriplet_head.ImpTripletHead, loss=ImpTripletLoss,
    batch_loss=imptriplet_head.batch_loss, samples=data.TRIPLETS,
    defaults=HParams(lr=1e-3, batch_size=1024, keras_decay=1e-6),
    loss_kwargs=dict(margin=0.3, beta=0.002, tau2=0.01)))
register("mvcorr", HeadSpec(
    model=mvcorr_head.MvCorrHead, loss=MvCorrLoss,
    batch_loss=mvcorr_head.batch_loss, samples=data.VIEWS,
    defaults=HParams(lr=1e-2, batch_size=1024, keras_decay=1e-6),
    loss_kwargs=dict(gamma=0.2)))
register("bcl", HeadSpec(
    model=bcl_head.EmbedMLP, loss=BallClusterLoss,
    batch_loss=bcl_head.batch_loss, samples=data.CLUSTERS,
    defaults=HParams(lr=3e-3, batch_size=2000, lr_step_epochs=10, lr_step_gamma=0.9,
                     radius_freeze_epochs=2, radius_lr_mult=0.1),
    model_kwargs=dict(input_norm=True),     # unit-norm shard embeddings (heads/bcl.py)
    loss_kwargs=dict(init_bias=0.1, alpha_pos=4.0, alpha_neg=1.0, eps=0.05),
    stop_rule=lambda loss: (loss.hac_threshold(), "complete"),      # 4b, methods.md 1.5
    loss_metrics=lambda loss: {"radius_b": float(loss.b.detach())},
    published=(bcl_head.is_published_checkpoint, bcl_head.load_published)))
SIAMESE = HParams(lr=1e-3, batch_size=128, weight_decay=5e-4, max_epochs=15)
register("ssiam", HeadSpec(
    model=siamese_head.SiameseMLP, loss=ContrastiveLoss, batch_loss=siamese_head.batch_loss,
    samples=data.SSIAM_FRAMES, defaults=SIAMESE, loss_kwargs=dict(margin=1.0),
    embed_tracks=siamese_track_embedding))
register("tsiam", HeadSpec(
    model=siamese_head.SiameseMLP, loss=ContrastiveLoss, batch_loss=siamese_head.batch_loss,
    samples=data.TSIAM_FRAMES, defaults=SIAMESE, loss_kwargs=dict(margin=1.0),
    embed_tracks=siamese_track_embedding))


def published_head(state) -> str | None:
    """The head whose paper's checkpoint format ``state`` (a loaded file) is, if any."""
    return next((n for n, h in HEADS.items() if h.published and h.published[0](state)), None)


def get(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}") from None
