"""BCL head: EmbedMLP (methods.md 1.2) and the published checkpoint loader (1.3).

EmbedMLP(dims): Linear layers dims[i] -> dims[i+1], ReLU after all but the last, output
L2-normalised as x / ||x|| with no epsilon. The learnable radius lives in the loss
(:class:`training.losses.BallClusterLoss`, parameter ``h_bias``).
"""
from __future__ import annotations

import torch
from torch import nn

from training.losses.bcl import BallClusterLoss

PUBLISHED_DIMS = (256, 256, 128, 64, 64)
#: prefix of the loss parameters in the published checkpoint's ``criterion_state``
PUBLISHED_CRITERION_PREFIX = "ctrd."


class EmbedMLP(nn.Module):
    """(B, dims[0]) -> (B, dims[-1]) unit-norm rows.

    ``input_norm``: rows rescaled to norm sqrt(dims[0]) (entries of unit scale) before the first
    layer. Harvested embeddings are unit-norm: fed as they are, the default-initialised layers'
    biases outweigh the input and every track comes out at nearly one point (measured on the
    face pack's 128-d embeddings: all held-out pairs within squared distance 0.004, and after 400
    SGD steps still 0.013), so nothing trains. The published checkpoint (raw VGGFace2 means)
    has it off."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = PUBLISHED_DIMS[1:],
                 input_norm: bool = False):
        super().__init__()
        dims = (in_dim, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.input_norm = input_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm:
            x = x * (x.shape[1] ** 0.5 / x.norm(dim=1, keepdim=True).clamp_min(1e-12))
        for i, layer in enumerate(self.linears):
            x = layer(x)
            if i < len(self.linears) - 1:
                x = torch.relu(x)
        return x / x.norm(dim=1, keepdim=True)

    embed = forward


def batch_loss(model: nn.Module, loss: nn.Module, batch: dict) -> torch.Tensor:
    """batch: ``views`` (B, 3, D) tracklets; ``labels`` (B,) cluster of each track; optional
    ``allowed`` (B, K) bool over the sorted unique labels (weak mode: cannot-link clusters).
    Each track's three tracklets are the members of its cluster."""
    views = batch["views"]
    n_views = views.shape[1]
    x = model(views.reshape(-1, views.shape[-1]))
    labels = batch["labels"].repeat_interleave(n_views)
    allowed = batch.get("allowed")
    if allowed is not None:
        allowed = allowed.repeat_interleave(n_views, dim=0)
    return loss(x, labels, allowed)


def is_published_checkpoint(state: dict) -> bool:
    return isinstance(state, dict) and "model_state" in state and "criterion_state" in state


def load_published(path: str, map_location: str = "cpu") -> tuple[EmbedMLP, BallClusterLoss]:
    """Load the published BCL checkpoint -> (EmbedMLP in eval mode, loss holding the learned h)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not is_published_checkpoint(state):
        raise ValueError(f"{path}: not a BCL checkpoint (keys {sorted(state)})")
    weights = state["model_state"]
    n_layers = len([k for k in weights if k.endswith(".weight")])
    dims = [weights["linears.0.weight"].shape[1]]
    dims += [weights[f"linears.{i}.weight"].shape[0] for i in range(n_layers)]
    model = EmbedMLP(dims[0], tuple(dims[1:]))
    model.load_state_dict(weights)
    loss = BallClusterLoss()
    crit = {k[len(PUBLISHED_CRITERION_PREFIX):]: v for k, v in state["criterion_state"].items()
            if k.startswith(PUBLISHED_CRITERION_PREFIX)}
    loss.load_state_dict(crit)
    return model.eval(), loss
