"""Losses of the adaptation heads, one module each (methods.md 1.4, 3, 7)."""
from training.losses.base import BaseLoss
from training.losses.bcl import BallClusterLoss
from training.losses.imptriplet import ImpTripletLoss, batch_hard_triplet, cheng_triplet
from training.losses.mvcorr import MvCorrLoss, mcca_covariances

__all__ = ["BaseLoss", "BallClusterLoss", "ImpTripletLoss", "MvCorrLoss", "batch_hard_triplet",
           "cheng_triplet", "mcca_covariances"]
