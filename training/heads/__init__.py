"""Adaptation heads (models only; losses live in ``training.losses``)."""
from training.heads.bcl import EmbedMLP, load_published
from training.heads.imptriplet import ImpTripletHead
from training.heads.mvcorr import MvCorrHead
from training.heads.siamese import SiameseMLP

__all__ = ["EmbedMLP", "ImpTripletHead", "MvCorrHead", "SiameseMLP", "load_published"]
