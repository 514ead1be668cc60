"""Ray Train fitting of one head: ``fit`` (driver) and ``train_loop`` (each worker).

The driver only lists the shards and reads their footers (title, D, track count), splits the
titles train/validation and hands the title lists to the workers; it never reads the corpus.
Every epoch each worker takes its share of the training titles (``data.deal_titles``: reshuffled
per epoch from the seed, balanced by track count), streams them one title group at a time
(``worker_batches``: ``data.iter_titles`` -> ``data.stream_batches`` -> collate, in a prefetch
thread two batches ahead of the step) and steps DDP (``prepare_model``); a rank
that runs out of batches first starts over until every rank has done its share once (equal
step counts, nothing dropped). Validation: each rank a fixed share of the validation titles,
losses summed over ranks. Rank 0 logs one line per epoch and reports the checkpoint; every run
(same ``RunConfig`` name and storage path) resumes from ``ray.train.get_checkpoint()`` (the
``train`` command first makes the user choose: ``--resume``, ``--overwrite``; see
``existing_run``), and so
does a restart: with ``max_failures`` a dead worker restarts the group from the last epoch's
checkpoint and that epoch replays with the same title order. Early stopping: validation loss
must fall by ``min_delta`` within ``patience`` epochs.

Fault injection (tests): ``fault=dict(epoch=E, marker=PATH)`` (or ``$TRAIN_FAULT_EXIT=E:PATH``)
makes rank 1 ``os._exit(1)`` after its first step of epoch E, once (the marker file records it).
"""
from __future__ import annotations

import logging
import os
import resource
import tempfile
import time

import numpy as np
import torch

from training import registry
from training.checkpoints import STATE_FILE, local_abs, save_state
from training.objective import Objective, unwrap
from training.data import (Collated, collate, collated, deal_titles, iter_titles, prefetched,
                           resolve_titles, shard_info, split_titles, stream_batches)

log = logging.getLogger("movieface.train")
PREFETCH_BATCHES = 2     # collated batches made ahead of the training step (data.prefetched)


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


def _allreduce(values, device, op: str = "sum") -> list[float]:
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dict(sum=dist.ReduceOp.SUM, min=dist.ReduceOp.MIN,
                                   max=dist.ReduceOp.MAX)[op])
    return t.tolist()


def _allreduce_mean(total: float, count: int, device) -> float:
    total, count = _allreduce([total, float(count)], device)
    return total / max(count, 1.0)


def until_every_rank_is_done(make_batches, device):
    """Batches of ``make_batches()``; a rank that runs out starts over until every rank has
    finished its own once, so all ranks make the same number of DDP steps and no rank's data
    is dropped (one all-reduce per step)."""
    done, batches = False, make_batches()
    while True:
        item = next(batches, None)
        if item is None:
            done, batches = True, make_batches()
            item = next(batches, None)
        if _allreduce([float(done)], device, "min")[0] == 1.0:
            return
        if item is None:
            raise ValueError("a worker's titles hold no usable training sample")
        yield item


def run_epoch(objective, batches, device, optimizer=None, hp=None, epoch=0, step=0,
              after_step=None):
    """One pass over ``batches`` ((samples, indices) pairs, or :class:`~training.data.Collated`
    batches): trains when ``optimizer`` is given, else evaluates. Returns ((loss sum, sample
    count) on this rank, new global step)."""
    obj = unwrap(objective)
    objective.train(optimizer is not None)
    total, count = 0.0, 0
    freeze = optimizer is not None and epoch < hp["radius_freeze_epochs"]
    for item in batches:
        if isinstance(item, Collated):       # made ahead by the prefetch thread
            batch = {k: v.to(device, non_blocking=True) for k, v in item.tensors.items()}
            n = item.n
        else:
            samples, idx = item
            batch, n = collate(samples, idx, device), len(idx)
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
            if after_step is not None:
                after_step(epoch)
        total += float(loss.detach()) * n
        count += n
    return (total, count), step


def worker_batches(kind, infos, hp: dict, rng: np.random.Generator, identities=None,
                   prefetch: int = PREFETCH_BATCHES, pin: bool = False):
    """The batches a worker trains on from the shards ``infos``: read, turned into samples,
    cut into batches and collated by a background thread ``prefetch`` batches ahead of the
    step (0: in the caller's thread), as :class:`~training.data.Collated`; ``pin``: in
    page-locked memory (a GPU worker's host-to-device copy then runs asynchronously)."""
    items = collated(stream_batches(iter_titles((i["path"] for i in infos), kind.columns), kind,
                                    hp["batch_size"], rng, identities, hp))
    if pin:
        items = (Collated({k: v.pin_memory() for k, v in b.tensors.items()}, b.n) for b in items)
    return prefetched(items, prefetch) if prefetch else items


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fault_hook(fault: dict | None, rank: int):
    """``after_step`` that kills rank 1 once at epoch ``fault['epoch']`` (1-based)."""
    if not fault or rank != 1:
        return None

    def hook(epoch):
        if epoch + 1 == int(fault["epoch"]):
            try:
                fd = os.open(fault["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)
    return hook


def _quiet_ray_train_logs() -> None:
    """Ray Train logs every report of every rank, and every persisted checkpoint, at INFO;
    keep one line per epoch (ours)."""
    try:
        from ray.train.v2._internal.execution import context, storage
        logging.getLogger(context.__file__).setLevel(logging.WARNING)
        logging.getLogger(storage.__name__).setLevel(logging.WARNING)
    except ImportError:
        pass


def train_loop(config: dict) -> None:
    """Ray Train worker function (``config`` from :func:`fit`)."""
    import ray
    import ray.train
    import ray.train.torch

    _quiet_ray_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hp, head, dim = config["hparams"], config["head"], config["dim"]
    kind = registry.get(head).samples
    identities = ray.get(config["identities"]) if config.get("identities") is not None else None
    torch.manual_seed(hp["seed"])
    objective = Objective(head, dim, hp.get("model_kwargs"))
    optimizer = make_optimizer(objective, hp)
    state = _restore(objective, optimizer, head, dim, rank)
    objective = ray.train.torch.prepare_model(objective)
    device = ray.train.torch.get_device()
    val_share = deal_titles(config["val"], world)[rank]
    after_step = _fault_hook(config.get("fault"), rank)

    def batches(infos, rng):
        return worker_batches(kind, infos, hp, rng, identities, pin=device.type == "cuda")

    def validate():     # unwrapped: no DDP collectives, so ranks may run different batch counts
        val_batches = batches(val_share, np.random.default_rng(hp["seed"] + 1))
        return _allreduce_mean(*run_epoch(unwrap(objective), val_batches, device)[0], device)

    if state["init"] is None:
        state["init"] = validate()
    for epoch in range(state["epoch"], hp["max_epochs"]):
        if state["stopped"]:
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng(hp["seed"] * 100003 + epoch)
        share = deal_titles(config["train"], world, rng)[rank]
        train_batches = until_every_rank_is_done(lambda: batches(share, rng), device)
        (total, count), state["step"] = run_epoch(objective, train_batches, device, optimizer, hp,
                                                  epoch, state["step"], after_step=after_step)
        total, count = _allreduce([total, float(count)], device)
        t_train = time.perf_counter() - t0
        metrics = _end_epoch(state, hp, epoch, total / max(count, 1.0), validate(), int(count))
        metrics.update(seconds=t_train, val_seconds=time.perf_counter() - t0 - t_train,
                       worker_peak_rss_mb=_allreduce([peak_rss_mb()], device, "max")[0],
                       lr=optimizer.param_groups[0]["lr"],
                       **registry.get(head).loss_metrics(unwrap(objective).loss))
        state["history"].append(metrics)
        _report(rank, head, hp, state, metrics, unwrap(objective), optimizer)


def _restore(objective: Objective, optimizer, head: str, dim: int, rank: int) -> dict:
    """The run's state: fresh, or (a resumed run, a restarted worker group) the last
    checkpoint's, loaded into ``objective`` and ``optimizer``."""
    import ray.train
    state = dict(epoch=0, step=0, best=float("inf"), best_epoch=0, bad=0, stopped=False,
                 history=[], init=None)
    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return state
    with ckpt.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    if saved["head"] != head or saved["in_dim"] != dim:
        raise ValueError(f"checkpoint is {saved['head']}/D={saved['in_dim']}, "
                         f"not {head}/D={dim}")
    objective.load_state_dict(saved["objective"])
    optimizer.load_state_dict(saved["optimizer"])
    if rank == 0:
        log.info(f"[{head}] resumed from epoch {saved['state']['epoch']}")
    return {"best_epoch": 0, **saved["state"]}


def _end_epoch(state: dict, hp: dict, epoch: int, train_loss: float, val_loss: float,
               samples: int) -> dict:
    """Early-stopping bookkeeping after an epoch -> the epoch's metrics so far."""
    if val_loss < state["best"] - hp["min_delta"]:
        state["best"], state["best_epoch"], state["bad"] = val_loss, epoch + 1, 0
    else:
        state["bad"] += 1
    state["stopped"] = state["bad"] >= hp["patience"]
    state["epoch"] = epoch + 1
    return dict(epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss,
                best_val_loss=state["best"], best_epoch=state["best_epoch"],
                val_loss_init=state["init"], early_stopped=state["stopped"],
                train_samples=samples)


def _report(rank: int, head: str, hp: dict, state: dict, metrics: dict, obj: Objective,
            optimizer) -> None:
    """Rank 0 logs the epoch's line and reports it with a checkpoint; the others report the
    metrics alone (every rank must report)."""
    import ray.train
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    log.info(f"[{head}] epoch {metrics['epoch']}/{hp['max_epochs']} train "
             f"{metrics['train_loss']:.5f} val {metrics['val_loss']:.5f} (init {state['init']:.5f}, "
             f"best {state['best']:.5f} @{state['best_epoch']}) {metrics['seconds']:.1f}s + val "
             f"{metrics['val_seconds']:.1f}s, peak RSS {metrics['worker_peak_rss_mb']:.0f} MiB")
    if state["stopped"]:
        log.info(f"[{head}] early stop: no improvement of {hp['min_delta']} for "
                 f"{hp['patience']} epochs (best epoch {state['best_epoch']})")
    with tempfile.TemporaryDirectory() as d:
        save_state(d, obj, optimizer, state, hp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _split(shards: str, val_titles, val_fraction: float) -> dict:
    """The run's titles from the shards' footers: ``train`` and ``val`` (lists of
    ``shard_info`` dicts, in shard order), ``val_names`` (as the split chose them) and their
    embedding size ``dim``."""
    infos = shard_info(shards)
    dims = {i["dim"] for i in infos}
    if len(dims) != 1:
        raise ValueError(f"shards mix embedding sizes {sorted(dims)}")
    if val_titles:          # title_ids or source file names
        val_titles = [i["title_id"] for i in resolve_titles(infos, val_titles)]
    train_titles, val = split_titles([i["title_id"] for i in infos], val_titles, val_fraction)
    if not val or not train_titles:
        raise ValueError(f"need at least one training and one validation title, "
                         f"got {sorted(i['title_id'] for i in infos)}")
    val_set = set(val)
    return dict(dim=dims.pop(), train=[i for i in infos if i["title_id"] not in val_set],
                val=[i for i in infos if i["title_id"] in val_set], val_names=val)


def fit(head: str, shards: str, output: str, workers: int = 2, gpu: bool = False,
        val_titles=None, val_fraction: float = 0.2, name: str | None = None,
        identities: dict | None = None, max_failures: int = 0, fault: dict | None = None,
        **overrides):
    """Train ``head`` on ``shards``; checkpoints under ``output/name``. Returns the Ray Result.

    ``overrides`` (``epochs``, ``batch_size``, ``lr``, ``model_kwargs`` or any registry
    hyper-parameter) replace the registry defaults; ``epochs`` is the maximum epoch count (early
    stopping may end sooner). ``identities`` ((title_id, track_id) -> identity name) trains BCL
    supervised. ``max_failures``: worker-group restarts (from the last checkpoint) Ray Train may
    make. ``fault``: see the module docstring.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    overrides["max_epochs"] = overrides.pop("epochs", None)
    hp = registry.get(head).hparams(**overrides)
    config = dict(head=head, hparams=hp, **_split(shards, val_titles, val_fraction))
    train, val = config["train"], config["val"]
    if len(train) < workers:     # a worker streams whole titles: one at least each
        print(f"[{head}] {len(train)} training title(s): training on {len(train)} worker(s) "
              f"instead of {workers}", flush=True)
        workers = len(train)
    names = config.pop("val_names")
    print(f"[{head}] {len(train)} training titles ({sum(i['tracks'] for i in train)} tracks), "
          f"{len(val)} validation titles ({sum(i['tracks'] for i in val)} tracks): "
          f"{names[:10]}{' ...' if len(names) > 10 else ''}", flush=True)
    if identities is not None:     # names -> ids shared by every title group
        ids = {n: j for j, n in enumerate(sorted(set(identities.values())))}
        config["identities"] = ray.put({k: ids[n] for k, n in identities.items()})
    env_fault = os.environ.get("TRAIN_FAULT_EXIT")
    if fault is None and env_fault:
        epoch, marker = env_fault.split(":", 1)
        fault = dict(epoch=int(epoch), marker=marker)
    config["fault"] = fault
    # Ray Train 2.60's controller takes a worker's report only when it polls the workers (every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default) and the worker's next report waits for
    # that (a result queue of one): every epoch cost >= 2 s, most of a small run. Poll every
    # 0.2 s (a late poll is carried over, not an error). No per-run preemption-watcher actor
    # either (a process importing Ray Train only to log node preemptions). The driver passes
    # these variables to the controller and workers; a value the user set wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=RunConfig(
            name=name or head, storage_path=local_abs(output),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min")))
    return trainer.fit()
