"""Checkpoints of a head: what :func:`save_state` writes (``state.pt`` and ``head.json``), how
a head given as a run directory or a checkpoint resolves to one (:func:`resolve_head`, the one
rule every command uses), loading it for inference (:func:`load_head`), and a run directory
left by an earlier ``train`` (:func:`existing_run`, :func:`remove_run`).
"""
from __future__ import annotations

import json
import os

import torch

from training import registry
from training.objective import Objective

STATE_FILE = "state.pt"
HEAD_FILE = "head.json"


def save_state(directory: str, obj: Objective, optimizer, state: dict, hp: dict) -> None:
    torch.save(dict(head=obj.head, in_dim=obj.in_dim, objective=obj.state_dict(),
                    optimizer=optimizer.state_dict(), state=state, hparams=hp,
                    model_kwargs=obj.model_kwargs),
               os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, HEAD_FILE), "w") as f:
        json.dump(dict(head=obj.head, in_dim=obj.in_dim, epoch=state["epoch"],
                       val_loss=state["history"][-1]["val_loss"] if state["history"] else None), f)


def resolve_head(path: str) -> str:
    """A head given as a checkpoint directory (or its ``state.pt``, or the published BCL file)
    or as a run directory (``--output/<name>``: its checkpoint of lowest validation loss, the
    latest on ties) -> the checkpoint path. The one rule every command uses."""
    import fsspec
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.isdir(p) or fs.exists(p.rstrip("/") + "/" + STATE_FILE):
        return path
    found = []
    for state in sorted(fs.glob(p.rstrip("/") + "/*/" + STATE_FILE)):
        d = state.rsplit("/", 1)[0]
        try:
            with fs.open(d + "/" + HEAD_FILE) as f:
                meta = json.load(f)
        except FileNotFoundError:
            meta = {}
        val = meta.get("val_loss")
        if val is None:
            with fs.open(state, "rb") as f:
                hist = torch.load(f, map_location="cpu", weights_only=False)["state"]["history"]
            val = hist[-1]["val_loss"] if hist else float("inf")
        found.append((val, d))
    if not found:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a run directory with "
                                f"checkpoints ({STATE_FILE} in a sub-directory)")
    best = min(v for v, _ in found)
    d = [d for v, d in found if v == best][-1]
    return d if "://" not in path else fs.unstrip_protocol(d)


def load_head(path: str):
    """A trained head for inference -> (name, model in eval mode, loss).

    ``path``: a checkpoint directory written by ``training.train.train_loop`` (local or URL), its
    ``state.pt``, a run directory (:func:`resolve_head`), or a checkpoint its paper published
    (``HeadSpec.published``: the BCL file).
    """
    import fsspec
    path = resolve_head(path)
    fs, p = fsspec.core.url_to_fs(path)
    if fs.isdir(p):
        p = p.rstrip("/") + "/" + STATE_FILE
    with fs.open(p, "rb") as f:
        saved = torch.load(f, map_location="cpu", weights_only=False)
    published = registry.published_head(saved)
    if published is not None:
        model, loss = registry.get(published).published[1](path)
        return published, model, loss
    obj = Objective(saved["head"], saved["in_dim"], saved["model_kwargs"])
    obj.load_state_dict(saved["objective"])
    return saved["head"], obj.model.eval(), obj.loss


def existing_run(output: str, name: str) -> dict | None:
    """The run directory ``output/name`` an earlier ``fit`` left, if it holds anything:
    ``{"path", "epoch"}`` (the latest checkpointed epoch, None without a checkpoint)."""
    import fsspec
    url = local_abs(output).rstrip("/") + "/" + name
    fs, p = fsspec.core.url_to_fs(url)
    if not fs.isdir(p) or not fs.ls(p, detail=False):
        return None
    epochs = []
    for meta in fs.glob(p + "/*/" + HEAD_FILE):
        with fs.open(meta) as f:
            epochs.append(json.load(f).get("epoch") or 0)
    return dict(path=url, epoch=max(epochs, default=None))


def remove_run(run: dict) -> None:
    """Delete a run directory found by :func:`existing_run` (``train --overwrite``)."""
    import fsspec
    fs, p = fsspec.core.url_to_fs(run["path"])
    fs.rm(p, recursive=True)


def local_abs(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)
