"""VideoClusterNet (`vcn`, training/clustering/vcn.py): the methods.md 5.3 test vectors against our
functions, the blockwise loss-as-distance against a brute-force loop over crop pairs, the
recogniser's tail run on a perturbed inner feature (SER-FIQ dropout), and `evaluate` / `cluster`
with `--method vcn` on a real labelled harvest (SCRFD + MobileFaceNet pack, Ray)."""
import json
import os
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, need
from training.clustering import vcn

A = np.array([[0, 0], [0.5, 0.1], [-0.3, 0.4], [0.2, -0.5], [0.6, 0.6], [-0.6, -0.2],
              [0.1, 0.3], [-0.2, -0.4]])


def test_gaussian_matching_vector():
    mu, cov = vcn.gaussian_fit(A, shrinkage=0.0)
    assert np.allclose(mu, [0.0375, 0.0375])
    assert np.allclose(cov, [[0.162679, 0.058393], [0.058393, 0.151250]], atol=1e-6)
    pdf = np.exp(vcn.gaussian_logpdf(A, mu, cov))
    assert np.allclose(pdf, [1.086073, 0.543644, 0.313911, 0.258091, 0.250983, 0.313396,
                             0.865832, 0.570965], atol=1e-6)
    log_tau = vcn.match_log_threshold(np.log(pdf))
    assert np.exp(log_tau) == pytest.approx(0.254537, abs=1e-6)
    assert np.exp(vcn.gaussian_logpdf([[0.3, 0.2]], mu, cov))[0] == pytest.approx(0.868865, abs=1e-6)
    assert np.exp(vcn.gaussian_logpdf([[1.5, 1.5]], mu, cov))[0] == pytest.approx(5.2e-5, rel=0.01)
    # one direction: B's mean inside A's Gaussian matches B -> A; A's mean is outside B's own
    # (degenerate, single-point) Gaussian, so not A -> B
    assert vcn.coarse_matches([A, [[0.3, 0.2]]], 0.0) == [(1, 0)]
    assert vcn.coarse_matches([A, [[1.5, 1.5]]], 0.0) == []
    assert vcn.coarse_matches([A, [[0.3, 0.2]]], 0.0, cannot={(0, 1)}) == []   # co-occurring


def test_serfiq_mad_and_loss_vectors():
    x = np.array([[1, 0], [0.9, 0.1], [0.95, -0.05], [1, 0.2]])
    assert float(vcn.serfiq_quality(x)) == pytest.approx(0.946342, abs=1e-6)
    q = np.array([0.80, 0.82, 0.79, 0.81, 0.83, 0.60, 0.78, 0.84])
    assert np.flatnonzero(vcn.mad_unknown(q, 2.7)).tolist() == [5]
    assert q.mean() - 2.7 * 0.02 == pytest.approx(0.72975)
    a, b = np.array([1, 0.2, -0.5, 0]), np.array([0.8, 0.4, -0.3, 0.1])
    h = lambda t, s: float(vcn.ssl_loss(t, s, np.zeros(4), 0.04, 0.1))
    assert h(a, b) == pytest.approx(0.019061, abs=1e-6)
    assert h(b, a) == pytest.approx(0.000745, abs=1e-6)
    assert (h(a, b) + h(b, a)) / 2 == pytest.approx(0.009903, abs=1e-6)
    assert h(a, a) == pytest.approx(0.000381, abs=1e-6)


def _random_crops(rng, n_tracks=7, k=12):
    track = np.repeat(np.arange(n_tracks), rng.integers(1, 6, n_tracks))
    t_logits, s_logits = rng.normal(size=(2, len(track), k))
    p = np.exp(t_logits / 0.3)
    p /= p.sum(1, keepdims=True)
    ls = -(s_logits / 0.5 - np.log(np.exp(s_logits / 0.5).sum(1, keepdims=True)))
    return track, p, ls


def test_blockwise_dissimilarity_matches_brute_force():
    rng = np.random.default_rng(3)
    track, p, ls = _random_crops(rng)
    T = track.max() + 1
    sp, sl, diag, n = vcn.track_sums(p, ls, track, T)
    h = p @ ls.T                               # H(i -> j) for every crop pair
    brute = np.zeros((T, T))
    own = np.zeros(T)
    for u in range(T):
        iu = np.flatnonzero(track == u)
        for v in range(T):
            iv = np.flatnonzero(track == v)
            brute[u, v] = np.mean([(h[i, j] + h[j, i]) / 2 for i in iu for j in iv])
        pairs = [h[i, j] for i in iu for j in iu if i != j]
        own[u] = np.mean(pairs) if pairs else h[iu[0], iu[0]]
    got = np.zeros((T, T))
    for rows, d in vcn.dissimilarity_blocks(sp, sl, n, block=3):
        assert len(rows) <= 3
        got[rows] = d
    assert np.allclose(got, brute)
    assert np.allclose(vcn.own_threshold(sp, sl, diag, n), own)


def test_loss_distance_clustering_merges_transitively_and_keeps_cannot_links_apart():
    # two identities, three tracks each; prototypes 0-1 vs 2-3, a sharp teacher
    k = 4
    track = np.repeat(np.arange(6), 3)
    who = np.array([0, 0, 0, 1, 1, 1])[track]
    logits = np.where(np.arange(k)[None] // 2 == who[:, None], 2.0, -2.0)
    logits += np.random.default_rng(0).normal(0, 0.3, logits.shape)
    p = np.exp(logits / 0.1)
    p /= p.sum(1, keepdims=True)
    ls = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
    sums = vcn.track_sums(p, ls, track, 6)
    labels = vcn.loss_distance_clustering(*sums)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
    # tracks 0 and 1 share a frame: never one cluster, whatever their distance
    labels = vcn.loss_distance_clustering(*sums, cannot_pairs=np.array([[0, 1]]))
    assert labels[0] != labels[1]
    assert labels[3] == labels[4] == labels[5] and labels[2] in (labels[0], labels[1])


def test_recogniser_tail_runs_on_an_inner_feature():
    import torch
    from harvest.faces.torch_backend import convert_onnx
    net = convert_onnx(os.path.join(need(FACE_PACK), "mobilefacenet_128.onnx"))
    tap = net.last_linear_input()
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feat, out = net(x, outputs=[tap, net.output_names[0]])
        assert feat.shape[:2] == (3, 512) and out.shape == (3, 128)
        assert torch.allclose(net(resume={tap: feat}), out, atol=1e-5)
        assert not torch.allclose(net(resume={tap: feat * 0.5}), out, atol=1e-3)


# --------------------------------------------------------------------------- end to end
FAST = ["crops_per_track=4", "head_steps=100", "rounds=1", "steps=1", "batch=4", "serfiq_passes=20"]


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    from test_methods_e2e import harvest_once
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def test_vcn_refuses_a_shard_without_crops(harvested):
    from training.clustering import methods, title_tracks
    from training.data import list_shards
    root, _ = harvested
    tracks, _ = title_tracks.read_tracks(list_shards(str(root / "harvest" / "shards"))[0])
    assert sum(map(len, tracks.crops[0])) > 0
    bare = replace(tracks, load_crops=lambda: ([[]] * tracks.n_tracks,
                                               [np.zeros(0, np.int64)] * tracks.n_tracks),
                   _crops=None)
    with pytest.raises(ValueError, match="--crops sample"):
        methods.get("vcn")(methods.Job(bare, bare.means, params=dict(models=str(FACE_PACK))))


def test_evaluate_and_cluster_with_vcn(harvested, tmp_path, capsys):
    from training.cli import cluster_main, evaluate_main
    from training.data import list_shards
    root, title_of = harvested
    shards = str(root / "harvest" / "shards")
    out = tmp_path / "eval.json"
    assert evaluate_main(["--shards", shards, "--labels", str(root / "videos" / "labels.csv"),
                          "--titles", "title_0.mp4", "title_1.mp4", "--method", "vcn", "c1c",
                          "--json", str(out), "--param", f"models={FACE_PACK}", *FAST]) == 0
    recs = json.loads(out.read_text())["results"]
    by = {(r["title"], r["method"]): r for r in recs}
    with capsys.disabled():             # the measured figures, in the -s log
        print("\n" + "\n".join(f"{t[:14]:14s} {m:4s} NMI {r['nmi']:.3f} WCP {r['wcp']:.3f} "
                               f"PCR {r['pcr']:.2f} clusters {r['n_clusters']}/{r['n_identities']}"
                               for (t, m), r in sorted(by.items())))
    for (title, method), r in by.items():
        assert 1 <= r["n_clusters"] <= r["n_tracks"] and 0 <= r["nmi"] <= 1 and 0 < r["wcp"] <= 1
    assert by[("pooled", "vcn")]["n_tracks"] == by[("pooled", "c1c")]["n_tracks"] > 0
    # the generated titles are easy: each is only a few distinct people
    assert by[("pooled", "vcn")]["nmi"] >= 0.6

    capsys.readouterr()
    clusters = tmp_path / "clusters"
    assert cluster_main(["--shards", shards, "--output", str(clusters), "--method", "vcn",
                         "--titles", "title_0.mp4", "--param", f"models={FACE_PACK}", *FAST]) == 0
    assert "1 done" in capsys.readouterr().out
    t = pq.read_table(clusters / f"{title_of['title_0.mp4']}.parquet")
    meta = json.loads(t.schema.metadata[b"movieface_cluster"])
    assert meta["config"]["method"] == "vcn" and meta["config"]["params"]["steps"] == 1
    shard = [pq.read_table(p, columns=["title_id", "track_id", "is_valid", "cannot_link"])
             for p in list_shards(shards)]
    shard = next(s for s in shard if s["title_id"][0].as_py() == title_of["title_0.mp4"])
    valid = shard.filter(shard["is_valid"])
    ids = t["track_id"].to_pylist()
    assert sorted(ids) == sorted(valid["track_id"].to_pylist()) and len(set(ids)) == len(ids)
    label = dict(zip(ids, t["cluster_id"].to_pylist()))
    pairs = [(a, b) for a, links in zip(valid["track_id"].to_pylist(),
                                        valid["cannot_link"].to_pylist()) for b in links]
    assert pairs and all(label[a] != label[b] for a, b in pairs)
