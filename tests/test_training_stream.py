"""Streaming Ray Train on 2 CPU workers: the driver never reads shard rows, a worker killed
mid-epoch is replaced and the run finishes from the last checkpoint with every epoch once, and
early stopping ends a run whose validation loss stops improving."""
import json
import os

import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray")

from training.data import shards  # noqa: E402
from training.synthetic import SyntheticSpec, write_dataset  # noqa: E402
from training.checkpoints import HEAD_FILE, STATE_FILE  # noqa: E402
from training.train import fit

VAL = ["title004", "title005"]
MVCORR = dict(lr=0.05, batch_size=64, model_kwargs=dict(hidden=32, out_dim=8))


@pytest.fixture(scope="module")
def dataset(ray_cluster, tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 6, SyntheticSpec(dim=16), seed=5,
                         labels=False)


def _history(result):
    saved = torch.load(os.path.join(result.checkpoint.path, STATE_FILE), weights_only=False)
    return saved["state"]["history"]


def test_worker_death_mid_epoch_resumes_from_checkpoint(dataset, tmp_path):
    marker = tmp_path / "fault-fired"
    result = fit("mvcorr", dataset["shards"], str(tmp_path / "runs"), workers=2, val_titles=VAL,
                 epochs=4, max_failures=2, fault=dict(epoch=3, marker=str(marker)), **MVCORR)
    assert marker.exists()                       # rank 1 did die (once) during epoch 3
    assert result.error is None
    assert result.metrics["epoch"] == 4
    history = _history(result)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]        # each epoch exactly once
    assert all(h["train_samples"] > 0 for h in history)


def test_worker_death_without_retries_fails_the_run(dataset, tmp_path):
    """The control: the same fault with max_failures=0 ends the run (killed in the last epoch,
    after a checkpoint: a checkpoint to resume from does not make Ray Train retry)."""
    from ray.train import TrainingFailedError
    marker = tmp_path / "fault-fired"
    with pytest.raises(TrainingFailedError):
        fit("mvcorr", dataset["shards"], str(tmp_path / "runs"), workers=2, val_titles=VAL,
            epochs=2, max_failures=0, fault=dict(epoch=2, marker=str(marker)), **MVCORR)
    assert marker.exists()


def test_early_stopping_and_driver_reads_no_rows(dataset, tmp_path, monkeypatch):
    def no_rows(*a, **k):
        raise AssertionError("the driver must not read shard rows")
    monkeypatch.setattr(pq, "read_table", no_rows)          # driver process only; footers are fine
    monkeypatch.setattr(shards, "read_title", no_rows)
    # lr so small that validation moves by far less than min_delta: it stops improving at once
    result = fit("bcl", dataset["shards"], str(tmp_path / "runs"), workers=2, val_titles=VAL,
                 epochs=20, lr=1e-7, batch_size=64, patience=2, min_delta=1e-3,
                 model_kwargs=dict(hidden=(32, 16, 16)))
    assert result.error is None
    m = result.metrics
    assert m["early_stopped"] and m["epoch"] == 3 < 20            # best epoch 1, then 2 bad epochs
    assert m["best_epoch"] == 1
    history = _history(result)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert m["best_val_loss"] == history[0]["val_loss"]
    assert all(abs(h["val_loss"] - history[0]["val_loss"]) < 1e-3 for h in history)
    # the kept best checkpoint is the lowest validation loss, and says which epoch it holds
    path, best = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"])
    assert best["val_loss"] == min(h["val_loss"] for h in history)
    with open(os.path.join(path.path, HEAD_FILE)) as f:
        assert json.load(f)["epoch"] == best["epoch"]
