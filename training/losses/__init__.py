"""Losses of the adaptation heads, one module each (methods.md 1.4, 3, 4.4, 7); the Siamese
pair miners (4.3, 4.5)."""
from training.losses.base import BaseLoss
from training.losses.bcl import BallClusterLoss
from training.losses.contrastive import ContrastiveLoss
from training.losses.imptriplet import ImpTripletLoss, batch_hard_triplet, cheng_triplet
from training.losses.mvcorr import MvCorrLoss, mcca_covariances
from training.losses.siamese_miners import (Pairs, draw, ssiam_neighbours, ssiam_pairs,
                                           tsiam_negative_tracks, tsiam_pairs)

__all__ = ["BaseLoss", "BallClusterLoss", "ContrastiveLoss", "ImpTripletLoss", "MvCorrLoss",
           "Pairs", "batch_hard_triplet", "cheng_triplet", "draw", "mcca_covariances",
           "ssiam_neighbours", "ssiam_pairs", "tsiam_negative_tracks", "tsiam_pairs"]
