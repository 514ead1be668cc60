"""The one place that maps a head name to its model, loss, batch objective and defaults.

Defaults follow the papers (methods.md 0, 1.3): SGD momentum 0.9; ImpTriplet lr 1e-3 and MvCorr
lr 1e-2 with Keras-style decay 1e-6 (lr_t = lr / (1 + decay * step)), batch 1024; BCL lr 3e-3
decayed x0.9 every 10 epochs, batch 2000 tracklets-worth of tracks, no weight decay, radius
parameter frozen for the first ``radius_freeze_epochs`` epochs, then trained at
``radius_lr_mult`` x lr (0.1, the paper's choice; the released checkpoint used 0.01).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from training.heads import bcl as bcl_head
from training.heads import imptriplet as imptriplet_head
from training.heads import mvcorr as mvcorr_head
from training.losses import BallClusterLoss, ImpTripletLoss, MvCorrLoss

COMMON = dict(momentum=0.9, weight_decay=0.0, keras_decay=0.0, lr_step_epochs=0, lr_step_gamma=1.0,
              radius_freeze_epochs=0, radius_lr_mult=1.0, max_epochs=100, min_delta=1e-3,
              patience=5, seed=0)


@dataclass(frozen=True)
class HeadSpec:
    model: type
    loss: type
    batch_loss: Callable
    samples: str                      # which samples data.build_samples makes: see data.py
    defaults: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    loss_kwargs: dict = field(default_factory=dict)

    def hparams(self, **overrides) -> dict:
        """Defaults with non-None overrides applied."""
        out = {**COMMON, **self.defaults}
        out.update({k: v for k, v in overrides.items() if v is not None})
        return out


HEADS: dict[str, HeadSpec] = {
    "imptriplet": HeadSpec(
        model=imptriplet_head.ImpTripletHead, loss=ImpTripletLoss,
        batch_loss=imptriplet_head.batch_loss, samples="triplets",
        defaults=dict(lr=1e-3, batch_size=1024, keras_decay=1e-6),
        loss_kwargs=dict(margin=0.3, beta=0.002, tau2=0.01)),
    "mvcorr": HeadSpec(
        model=mvcorr_head.MvCorrHead, loss=MvCorrLoss,
        batch_loss=mvcorr_head.batch_loss, samples="views",
        defaults=dict(lr=1e-2, batch_size=1024, keras_decay=1e-6),
        loss_kwargs=dict(gamma=0.2)),
    "bcl": HeadSpec(
        model=bcl_head.EmbedMLP, loss=BallClusterLoss,
        batch_loss=bcl_head.batch_loss, samples="clusters",
        defaults=dict(lr=3e-3, batch_size=2000, lr_step_epochs=10, lr_step_gamma=0.9,
                      radius_freeze_epochs=2, radius_lr_mult=0.1),
        loss_kwargs=dict(init_bias=0.1, alpha_pos=4.0, alpha_neg=1.0, eps=0.05)),
}


def get(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}") from None
