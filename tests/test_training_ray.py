"""Ray Train on 2 CPU workers on synthetic shards: each head's objective improves, a run resumes
from its checkpoint, and a trained head evaluates a held-out title with box-level labels."""
import json
import os

import pytest
import torch

ray = pytest.importorskip("ray")

from training.cli import evaluate_main, train_main  # noqa: E402
from training.synthetic import SyntheticSpec, write_dataset  # noqa: E402
from training.checkpoints import STATE_FILE, load_head  # noqa: E402
from training.train import fit

VAL = ["title008", "title009"]
SMALL = {
    "imptriplet": dict(lr=0.05, batch_size=64, model_kwargs=dict(hidden=64, out_dim=32)),
    "mvcorr": dict(lr=0.05, batch_size=128, model_kwargs=dict(hidden=64, out_dim=16)),
    "bcl": dict(lr=0.1, batch_size=64, radius_freeze_epochs=1, model_kwargs=dict(hidden=(64, 32, 32))),
}


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The session's local Ray (tests/conftest.py): 2 CPUs, as on CI."""
    return ray_cluster


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 10, SyntheticSpec(dim=32), seed=1)


@pytest.fixture(scope="module")
def trained(cluster, dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    return {head: fit(head, dataset["shards"], out, workers=2, val_titles=VAL, epochs=4, **kw)
            for head, kw in SMALL.items()}


@pytest.mark.parametrize("head", sorted(SMALL))
def test_head_objective_improves_on_validation(trained, head):
    result = trained[head]
    assert result.error is None
    m = result.metrics
    assert m["epoch"] == 4
    assert m["best_val_loss"] < m["val_loss_init"] - 1e-3, m
    name, model, loss = load_head(result.checkpoint.path)
    assert name == head
    assert model.embed(torch.randn(5, 32)).shape[0] == 5


def test_bcl_radius_frozen_then_learned(trained):
    saved = torch.load(os.path.join(trained["bcl"].checkpoint.path, STATE_FILE), weights_only=False)
    b = [h["radius_b"] for h in saved["state"]["history"]]
    assert b[0] == pytest.approx(0.744397, abs=1e-6)       # epoch 1: frozen at softplus(0.1)
    assert b[-1] != pytest.approx(b[0], abs=1e-6)


def test_train_resumes_from_checkpoint(cluster, dataset, tmp_path):
    kw = dict(workers=2, val_titles=VAL, name="resume", **SMALL["mvcorr"])
    first = fit("mvcorr", dataset["shards"], str(tmp_path), epochs=2, **kw)
    assert first.metrics["epoch"] == 2
    second = fit("mvcorr", dataset["shards"], str(tmp_path), epochs=4, **kw)
    assert second.metrics["epoch"] == 4
    saved = torch.load(os.path.join(second.checkpoint.path, STATE_FILE), weights_only=False)
    history = saved["state"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # epochs 1-2 were not re-run: the resumed history keeps the first run's numbers
    assert history[1]["train_loss"] == first.metrics["train_loss"]
    assert history[0]["val_loss_init"] == second.metrics["val_loss_init"]


def test_evaluate_cli_with_trained_head(trained, dataset, tmp_path, capsys):
    out = tmp_path / "eval.json"
    ckpt = trained["bcl"].checkpoint.path
    rc = evaluate_main(["--shards", dataset["shards"], "--titles", "title009.mp4",
                        "--labels", dataset["box_labels"], "--head", ckpt,
                        "--json", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())["results"]
    assert {(r["title"], r["method"]) for r in records} == {
        (t, m) for t in ("title009", "pooled") for m in ("auto", "hac-k", "hac-threshold", "ap")}
    for r in records:
        assert r["head"] == "bcl" and r["n_unmatched"] == 0 and r["n_tracks"] > 30
        assert 0 <= r["nmi"] <= 1 and 0 <= r["wcp"] <= 1
    assert "hac-threshold" in capsys.readouterr().out


def test_train_cli_runs(cluster, dataset, tmp_path, capsys):
    rc = train_main(["--head", "imptriplet", "--shards", dataset["shards"], "--output",
                     str(tmp_path), "--workers", "1", "--epochs", "1", "--batch-size", "256",
                     "--val-titles", *VAL])
    assert rc == 0
    out = capsys.readouterr().out
    assert "best checkpoint" in out and "'epoch': 1" in out


def test_train_with_fewer_training_titles_than_workers(cluster, tmp_path, capsys):
    """The README's `train` on the 2-title demo: 1 training title, default 2 workers -> trains on
    1 worker (a worker streams whole titles) instead of refusing."""
    data = write_dataset(str(tmp_path / "two"), 2, SyntheticSpec(dim=32), seed=3)
    rc = train_main(["--head", "bcl", "--shards", data["shards"], "--output", str(tmp_path / "runs"),
                     "--epochs", "1", "--val-titles", "title001"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training on 1 worker(s) instead of 2" in out and "best checkpoint" in out
