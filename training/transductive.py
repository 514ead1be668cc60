"""Transductive adaptation: a head trained on the very title it then clusters.

SSiam, TSiam (methods.md 4.4) and VideoClusterNet train on the episode they cluster: the title's
own unlabelled tracks give positives (faces of one track) and negatives (tracks that share a
frame), and nothing else is needed. :func:`fit_title` does that for any registered head, in this
process (one title needs no cluster): the head's own sample kind, batches, objective, optimiser
and learning-rate schedule, the batches a Ray Train worker of ``train`` would make
(``training.train.worker_batches``, without its prefetch thread) stepped by its ``run_epoch``,
the title read once for all epochs, for a fixed number of epochs. There is no validation title
to stop early on: ``epochs`` is the head's paper default for SSiam and TSiam
(15) and :data:`EPOCHS` for the others.

``bench/real_clusters.py --transductive`` scores it on the labelled real clips.
"""
from __future__ import annotations

import numpy as np
import torch

from training import registry
from training.data import collated, read_title, shard_info, stream_batches

#: epochs of a transductive fit when neither the caller nor the head's defaults say (the head
#: defaults' ``max_epochs`` is an early-stopping cap there, 100 for the corpus heads)
EPOCHS = 15


def fit_title(head: str, shard: str, epochs: int | None = None, seed: int = 0, log=None,
              **overrides):
    """Train ``head`` on the one title of ``shard`` (a Parquet file or URL) for ``epochs``
    epochs; -> the model in eval mode (for ``registry.get(head).embed_tracks`` and the
    clustering methods). ``overrides``: any hyper-parameter of the head (``lr``,
    ``batch_size``, ...). ``log``: a callable given one line per epoch."""
    from training.objective import Objective
    from training.train import make_optimizer, run_epoch
    spec = registry.get(head)
    defaults = spec.hparams()
    if epochs is None:
        epochs = defaults["max_epochs"] if defaults["max_epochs"] <= 50 else EPOCHS
    hp = spec.hparams(max_epochs=epochs, seed=seed, **overrides)
    (info,) = shard_info(shard)
    table = read_title(info["path"], spec.samples.columns)     # once: every epoch reads it
    torch.manual_seed(seed)
    objective = Objective(head, info["dim"], hp.get("model_kwargs"))
    optimizer = make_optimizer(objective, hp)
    device, step = torch.device("cpu"), 0
    for epoch in range(epochs):
        rng = np.random.default_rng(seed * 100003 + epoch)
        batches = collated(stream_batches([table], spec.samples, hp["batch_size"], rng, None, hp))
        (total, count), step = run_epoch(objective, batches, device, optimizer, hp, epoch, step)
        if count == 0:
            raise ValueError(f"{info['title_id']}: no {head} training sample in this title")
        if log:
            log(f"[{head} on {info['title_id']}] epoch {epoch + 1}/{epochs} "
                f"loss {total / count:.5f} ({count} samples)")
    return objective.model.eval()
