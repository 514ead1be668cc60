"""Ray Train fitting of one head: ``fit`` (driver) and ``train_loop`` (each worker).

The driver reads the shards with Ray Data, splits them by title, builds the head's samples and
puts them in the object store; each worker takes an equal share of every epoch's batches
(DDP through ``ray.train.torch.prepare_model``), reports per-epoch metrics and a checkpoint
(rank 0), and resumes from ``ray.train.get_checkpoint()`` when the run (same ``RunConfig``
name and storage path) already has one. Early stopping: validation loss must fall by
``min_delta`` within ``patience`` epochs.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from training import registry
from training.data import (build_samples, collate, make_batches, read_tracks, shard_batches,
                           split_titles)
from training.columns import TITLE_ID

STATE_FILE = "state.pt"
HEAD_FILE = "head.json"


class Objective(nn.Module):
    """Model + loss as one module, so DDP synchronises the loss's parameters (BCL radius) too."""

    def __init__(self, head: str, in_dim: int, model_kwargs: dict | None = None):
        super().__init__()
        spec = registry.get(head)
        self.head, self.in_dim = head, in_dim
        self.model_kwargs = {**spec.model_kwargs, **(model_kwargs or {})}
        self.model = spec.model(in_dim, **self.model_kwargs)
        self.loss = spec.loss(**spec.loss_kwargs)
        self._batch_loss = spec.batch_loss

    def forward(self, batch: dict) -> torch.Tensor:
        return self._batch_loss(self.model, self.loss, batch)


def _unwrap(module: nn.Module) -> Objective:
    return module.module if hasattr(module, "module") else module


def _lr_factor(hp: dict, epoch: int, step: int) -> float:
    """Step decay by epoch (BCL) times Keras-style 1 / (1 + decay * step) (Multi-Face heads)."""
    f = 1.0 / (1.0 + hp["keras_decay"] * step)
    if hp["lr_step_epochs"]:
        f *= hp["lr_step_gamma"] ** (epoch // hp["lr_step_epochs"])
    return f


def make_optimizer(obj: Objective, hp: dict) -> torch.optim.Optimizer:
    """SGD; group 0 the model, group 1 the loss parameters at ``radius_lr_mult`` x lr, no decay."""
    groups = [dict(params=list(obj.model.parameters()), lr=hp["lr"], base_lr=hp["lr"],
                   weight_decay=hp["weight_decay"])]
    loss_params = list(obj.loss.parameters())
    if loss_params:
        lr = hp["lr"] * hp["radius_lr_mult"]
        groups.append(dict(params=loss_params, lr=lr, base_lr=lr, weight_decay=0.0))
    return torch.optim.SGD(groups, momentum=hp["momentum"])


def _allreduce_mean(total: float, count: int, device) -> float:
    import torch.distributed as dist
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return float(t[0] / max(t[1], 1.0))


def run_epoch(objective, samples, batches, device, optimizer=None, hp=None, epoch=0, step=0):
    """One pass over ``batches``: trains when ``optimizer`` is given, else evaluates.
    Returns (mean loss on this rank's batches as (sum, count), new global step)."""
    obj = _unwrap(objective)
    objective.train(optimizer is not None)
    total, count = 0.0, 0
    freeze = optimizer is not None and epoch < hp["radius_freeze_epochs"]
    for idx in batches:
        batch = collate(samples, idx, device)
        if optimizer is None:
            with torch.no_grad():
                loss = objective(batch)
        else:
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(hp, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss = objective(batch)
            loss.backward()
            if freeze:
                for p in obj.loss.parameters():
                    p.grad = None if p.grad is None else torch.zeros_like(p.grad)
            optimizer.step()
            step += 1
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return (total, count), step


def train_loop(config: dict) -> None:
    """Ray Train worker function (``config`` from :func:`fit`)."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hp, head = config["hparams"], config["head"]
    train_s, val_s = ray.get(config["train_ref"]), ray.get(config["val_ref"])
    torch.manual_seed(hp["seed"])
    objective = Objective(head, train_s.dim, hp.get("model_kwargs"))
    optimizer = make_optimizer(objective, hp)
    state = dict(epoch=0, step=0, best=float("inf"), bad=0, stopped=False, history=[], init=None)
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        if saved["head"] != head or saved["in_dim"] != train_s.dim:
            raise ValueError(f"checkpoint is {saved['head']}/D={saved['in_dim']}, "
                             f"not {head}/D={train_s.dim}")
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        if rank == 0:
            print(f"[{head}] resumed from epoch {state['epoch']}", flush=True)
    objective = ray.train.torch.prepare_model(objective)
    device = ray.train.torch.get_device()
    val_rng = np.random.default_rng(hp["seed"] + 1)
    val_batches = shard_batches(make_batches(val_s, hp["batch_size"], val_rng, world), rank, world)

    def validate():
        return _allreduce_mean(*run_epoch(objective, val_s, val_batches, device)[0], device)

    if state["init"] is None:
        state["init"] = validate()
    for epoch in range(state["epoch"], hp["max_epochs"]):
        if state["stopped"]:
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng(hp["seed"] * 100003 + epoch)
        batches = shard_batches(make_batches(train_s, hp["batch_size"], rng, world), rank, world)
        sums, state["step"] = run_epoch(objective, train_s, batches, device, optimizer, hp, epoch,
                                        state["step"])
        train_loss = _allreduce_mean(*sums, device)
        val_loss = validate()
        if val_loss < state["best"] - hp["min_delta"]:
            state["best"], state["bad"] = val_loss, 0
        else:
            state["bad"] += 1
        state["stopped"] = state["bad"] >= hp["patience"]
        state["epoch"] = epoch + 1
        metrics = dict(epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss,
                       best_val_loss=state["best"], val_loss_init=state["init"],
                       early_stopped=state["stopped"], seconds=time.perf_counter() - t0,
                       lr=optimizer.param_groups[0]["lr"])
        obj = _unwrap(objective)
        if hasattr(obj.loss, "b"):
            metrics["radius_b"] = float(obj.loss.b.detach())
        state["history"].append(metrics)
        if rank == 0:
            print(f"[{head}] epoch {epoch + 1}/{hp['max_epochs']} train {train_loss:.5f} "
                  f"val {val_loss:.5f} (init {state['init']:.5f}, best {state['best']:.5f}) "
                  f"{metrics['seconds']:.1f}s", flush=True)
            with tempfile.TemporaryDirectory() as d:
                save_state(d, obj, optimizer, state, hp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)
        if state["stopped"] and rank == 0:
            print(f"[{head}] early stop: no improvement of {hp['min_delta']} for "
                  f"{hp['patience']} epochs", flush=True)


def save_state(directory: str, obj: Objective, optimizer, state: dict, hp: dict) -> None:
    torch.save(dict(head=obj.head, in_dim=obj.in_dim, objective=obj.state_dict(),
                    optimizer=optimizer.state_dict(), state=state, hparams=hp,
                    model_kwargs=obj.model_kwargs),
               os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, HEAD_FILE), "w") as f:
        json.dump(dict(head=obj.head, in_dim=obj.in_dim, epoch=state["epoch"]), f)


def load_head(path: str):
    """A trained head for inference -> (name, model in eval mode, loss).

    ``path``: a checkpoint directory written by :func:`train_loop` (local or URL), its
    ``state.pt``, or the published BCL checkpoint file.
    """
    from training.heads.bcl import is_published_checkpoint, load_published

    import fsspec
    fs, p = fsspec.core.url_to_fs(path)
    if fs.isdir(p):
        p = p.rstrip("/") + "/" + STATE_FILE
    with fs.open(p, "rb") as f:
        saved = torch.load(f, map_location="cpu", weights_only=False)
    if is_published_checkpoint(saved):
        model, loss = load_published(path)
        return "bcl", model, loss
    obj = Objective(saved["head"], saved["in_dim"], saved["model_kwargs"])
    obj.load_state_dict(saved["objective"])
    return saved["head"], obj.model.eval(), obj.loss


def _local_abs(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def fit(head: str, shards: str, output: str, workers: int = 2, gpu: bool = False,
        val_titles=None, val_fraction: float = 0.2, name: str | None = None,
        engine: str = "ray", identities: dict | None = None, **overrides):
    """Train ``head`` on ``shards``; checkpoints under ``output/name``. Returns the Ray Result.

    ``overrides`` (``epochs``, ``batch_size``, ``lr``, ``model_kwargs`` or any registry
    hyper-parameter) replace the registry defaults; ``epochs`` is the maximum epoch count (early stopping may end sooner).
    """
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = registry.get(head)
    overrides["max_epochs"] = overrides.pop("epochs", None)
    hp = spec.hparams(**overrides)
    table = read_tracks(shards, engine=engine)
    titles = table[TITLE_ID].unique().to_pylist()
    train_titles, val = split_titles(titles, val_titles, val_fraction)
    if not val or not train_titles:
        raise ValueError(f"need at least one training and one validation title, got {titles}")
    import pyarrow.compute as pc
    in_val = pc.is_in(table[TITLE_ID], value_set=__import__("pyarrow").array(val))
    train_s = build_samples(table.filter(pc.invert(in_val)), spec.samples, identities)
    val_s = build_samples(table.filter(in_val), spec.samples, identities)
    del table
    print(f"[{head}] {len(train_titles)} training titles ({len(train_s)} samples), "
          f"{len(val)} validation titles ({len(val_s)} samples): {val}", flush=True)
    config = dict(head=head, hparams=hp, train_ref=ray.put(train_s), val_ref=ray.put(val_s))
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=RunConfig(
            name=name or head, storage_path=_local_abs(output),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min")))
    return trainer.fit()
