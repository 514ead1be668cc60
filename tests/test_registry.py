"""The head registry (sample kinds, typed hyper-parameters, clustering rules), the clustering
method registry and the two name resolvers, on synthetic shards (no Ray, fast)."""
import json
import math

import numpy as np
import pytest
import torch

from training import data, registry
from training.clustering import methods, title_tracks
from training.data import build_samples, iter_titles, list_shards, read_title, stream_batches
from training.synthetic import SyntheticSpec, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 3, SyntheticSpec(dim=16), seed=4)


def test_every_head_carries_callables_and_typed_defaults():
    assert {"mvcorr", "imptriplet", "bcl", "ssiam", "tsiam"} <= set(registry.HEADS)
    for name, spec in registry.HEADS.items():
        assert isinstance(spec.samples, data.SampleKind), name
        assert callable(spec.samples.build) and callable(spec.samples.collate)
        assert callable(spec.embed_tracks) and callable(spec.batch_loss)
        assert data.sample_kind(spec.samples.name) is spec.samples
    hp = registry.get("ssiam").hparams(lr=0.5, epochs=None)
    assert hp["lr"] == 0.5 and hp["weight_decay"] == 5e-4 and hp["max_epochs"] == 15
    assert hp["batch_size"] == 128 and hp["draw"] == 3000 and hp["momentum"] == 0.9
    assert registry.get("bcl").hparams()["radius_lr_mult"] == 0.1
    with pytest.raises(TypeError):
        registry.get("mvcorr").hparams(not_a_parameter=1)
    assert registry.get("bcl").stop_rule is not None and registry.get("ssiam").stop_rule is None


@pytest.mark.parametrize("head", ["ssiam", "tsiam"])
def test_frame_kinds_mine_pairs_of_one_title(dataset, head):
    kind = registry.get(head).samples
    path = list_shards(dataset["shards"])[0]
    table = read_title(path, kind.columns)
    s = build_samples(table, kind)
    valid = table.filter(table["is_valid"])
    assert len(s) == sum(len(e) for e in valid["embeddings"].to_pylist())
    hp = dict(draw=200, n_far=25)
    batches = list(stream_batches(iter_titles([path], kind.columns), kind, 16,
                                  np.random.default_rng(0), hp=hp))
    assert len(batches) == math.ceil(len(s) / 16)            # ceil(faces / pairs per batch)
    spec = registry.get(head)
    model, loss = spec.model(16), spec.loss(**spec.loss_kwargs)
    for pool, idx in batches[:3]:
        assert len(idx) == 200 and idx.max() < len(s)
        b = data.collate(pool, idx)
        assert b["first"].shape == b["second"].shape and b["first"].shape[1] == 16
        assert 0 < len(b["similar"]) <= 16 and set(b["similar"].tolist()) <= {0, 1}
        assert math.isfinite(float(spec.batch_loss(model, loss, b)))
        if head == "tsiam":     # positives: same track; negatives: related tracks of the title
            x, track = pool.arrays["x"], pool.arrays["track"]
            rows = {tuple(v): i for i, v in enumerate(x[idx].round(6).tolist())}
            f = [rows[tuple(v)] for v in b["first"].numpy().round(6).tolist()]
            g = [rows[tuple(v)] for v in b["second"].numpy().round(6).tolist()]
            tf, tg = track[idx][f], track[idx][g]
            sim = b["similar"].numpy().astype(bool)
            assert (tf[sim] == tg[sim]).all() and (tf[~sim] != tg[~sim]).all()
            rel = pool.meta["negatives"]
            assert all(rel[a, c] for a, c in zip(tf[~sim], tg[~sim]))


def test_siamese_clustering_rule_uses_faces(dataset):
    tracks, _ = title_tracks.read_tracks(list_shards(dataset["shards"])[0])
    model = registry.get("ssiam").model(16)
    emb = registry.get("ssiam").embed_tracks(model, tracks)
    assert emb.shape == (tracks.n_tracks, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with torch.no_grad():      # track 0 by hand: mean of its faces' first-layer features
        h = model.features(torch.from_numpy(tracks.faces[tracks.track_of_face == 0])).mean(0)
    np.testing.assert_allclose(emb[0], (h / h.norm()).numpy(), atol=1e-5)
    raw = registry.get("bcl").embed_tracks(None, tracks)
    np.testing.assert_allclose(raw, tracks.means, atol=1e-6)


def test_method_registry_flags_and_labels(dataset):
    assert {"hac-k", "hac-threshold", "ap", "finch", "c1c"} <= set(methods.METHODS)
    assert methods.get("hac-k").k == "required" and not methods.get("hac-k").parameter_free
    assert methods.get("finch").parameter_free and methods.get("c1c").parameter_free
    assert methods.get("c1c").cannot_link == "always"
    assert methods.get("hac-threshold").threshold
    with pytest.raises(ValueError):
        methods.get("kmeans")
    tracks, _ = title_tracks.read_tracks(list_shards(dataset["shards"])[1])
    emb = tracks.means.astype(np.float64)
    pairs = tracks.cannot_link_pairs()
    assert len(pairs)
    for name in ("finch", "c1c", "ap"):
        labels = methods.get(name)(methods.Job(tracks, emb))
        assert labels.shape == (tracks.n_tracks,) and labels.min() == 0
    for name in ("c1c", "hac-k", "hac-threshold"):      # no cluster holds a co-occurring pair
        job = methods.Job(tracks, emb, k=None if name == "c1c" else 2, cut=(4.0, "average"),
                          cannot_link=True)     # (c1c with K relaxes them when it must merge)
        labels = methods.get(name)(job)
        assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all(), name
    k = 4
    assert len(set(methods.get("c1c")(methods.Job(tracks, emb, k=k)))) == k
    job = methods.Job(tracks, emb)
    conf = methods.track_confidence(job, methods.get("c1c")(job))
    assert conf.shape == (tracks.n_tracks,) and ((conf > 0) & (conf < 1)).all()
    from training.clustering.confidence import calibrate
    single = methods.track_confidence(job, np.arange(tracks.n_tracks))   # every track alone
    np.testing.assert_allclose(single, calibrate(1.0))
    one = methods.track_confidence(job, np.zeros(tracks.n_tracks, np.int64))
    assert (one < calibrate(1.0)).all()           # off-centre members are less certain


def test_title_resolver_takes_ids_and_file_names():
    infos = [dict(title_id="title_1-aaaaaaaaaaaa", source_uri="file:///v/title_1.mp4"),
             dict(title_id="title_2-bbbbbbbbbbbb", source_uri="s3://b/x/title_2.mkv"),
             dict(title_id="dup-cccccccccccc", source_uri="file:///a/same.mp4"),
             dict(title_id="dup-dddddddddddd", source_uri="file:///b/same.mp4")]
    got = data.resolve_titles(infos, ["title_2.mkv", "title_1-aaaaaaaaaaaa", "title_1"])
    assert [i["title_id"] for i in got] == ["title_2-bbbbbbbbbbbb", "title_1-aaaaaaaaaaaa",
                                            "title_1-aaaaaaaaaaaa"]
    with pytest.raises(ValueError, match="no shard"):
        data.resolve_titles(infos, ["title_3.mp4"])
    with pytest.raises(ValueError, match="use the title_id"):
        data.resolve_titles(infos, ["same.mp4"])
    assert [i["title_id"] for i in data.resolve_titles(infos, ["dup-dddddddddddd"])] == \
        ["dup-dddddddddddd"]


def test_head_resolver_takes_run_and_checkpoint_dirs(tmp_path):
    from training.checkpoints import HEAD_FILE, load_head, resolve_head, save_state
    from training.objective import Objective
    from training.train import make_optimizer
    run = tmp_path / "run"
    hp = registry.get("ssiam").hparams()
    saved = {}
    for name, val in [("checkpoint_a", 0.5), ("checkpoint_b", 0.2), ("checkpoint_c", 0.9)]:
        (run / name).mkdir(parents=True)
        obj = Objective("ssiam", 16)
        state = dict(epoch=1, history=[dict(val_loss=val)])
        save_state(str(run / name), obj, make_optimizer(obj, hp), state, hp)
        saved[name] = obj
    assert json.loads((run / "checkpoint_b" / HEAD_FILE).read_text())["val_loss"] == 0.2
    assert resolve_head(str(run)) == str(run / "checkpoint_b")             # run dir: the best
    assert resolve_head(str(run / "checkpoint_c")) == str(run / "checkpoint_c")  # checkpoint: as is
    (run / "checkpoint_a" / HEAD_FILE).unlink()           # older layout: val loss from state.pt
    assert resolve_head(str(run)) == str(run / "checkpoint_b")
    name, model, _ = load_head(str(run))
    assert name == "ssiam"
    torch.testing.assert_close(model.fc1.weight, saved["checkpoint_b"].model.fc1.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        resolve_head(str(tmp_path / "empty"))


def test_cluster_title_with_a_head_that_has_its_own_cut(dataset, tmp_path):
    """BCL carries its stopping rule (4b, complete linkage): `cluster` may use hac-threshold
    with it, never without a head; the labels are the head's HAC at that cut."""
    from training.clustering import hac
    from training.clustering.cluster_titles import label_title, make_config
    from training.data import shard_info
    from training.checkpoints import load_head, save_state
    from training.objective import Objective
    from training.train import make_optimizer
    hp = registry.get("bcl").hparams()
    obj = Objective("bcl", 16)
    (tmp_path / "ckpt").mkdir()
    save_state(str(tmp_path / "ckpt"), obj, make_optimizer(obj, hp),
               dict(epoch=1, history=[dict(val_loss=1.0)]), hp)
    with pytest.raises(ValueError, match="threshold"):
        make_config("hac-threshold")
    cfg = make_config("hac-threshold", str(tmp_path / "ckpt"))
    assert len(cfg["head_sha256"]) == 64
    name, model, loss = load_head(cfg["head"])
    info = shard_info(dataset["shards"])[0]
    table, meta = label_title(info, {**cfg, "head_name": name}, model, loss)
    tracks, _ = title_tracks.read_tracks(info["path"])
    emb = registry.embed_rows(model, tracks.means)
    want = hac.hac_threshold(emb, loss.hac_threshold(), "complete")
    got = table["cluster_id"].to_numpy()
    assert table["track_id"].to_pylist() == tracks.track_ids.tolist()
    assert len(set(zip(got, want))) == len(set(got)) == len(set(want)) == meta["n_clusters"]
