"""The issue-9 methods end to end on a real labelled harvest (`harvest sample` titles, SCRFD +
MobileFaceNet pack, Ray): FINCH and C1C in `evaluate`, cannot-link HAC, and SSiam / TSiam
trained through the streaming Ray Train loop, then used by `evaluate` by their run directory."""
import json
import math

import numpy as np
import pytest

from conftest import FACE_PACK, need


def harvest_once(tmp_path_factory) -> tuple:
    """A 3-title labelled harvest, made once per pytest session (shared with
    test_cluster_command.py through the session's base temp directory)."""
    from harvest.cli import EXIT_OK, main as harvest_main
    from harvest.samples import make_sample_set
    root = tmp_path_factory.getbasetemp() / "issue9-harvest"
    manifest = root / "harvest" / "manifest.jsonl"
    if not manifest.exists():
        make_sample_set(str(root / "videos"), n_titles=3, seed=20)
        code = harvest_main(["run", "--input", str(root / "videos"), "--output",
                             str(root / "harvest"), "--models", need(FACE_PACK), "--no-progress",
                             "--workers", "2"])
        assert code == EXIT_OK
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    return root, {r["source"].rsplit("/", 1)[-1]: r["title_id"] for r in records}


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def _evaluate(root, tmp_path, *extra):
    from training.cli import evaluate_main
    out = tmp_path / "eval.json"
    assert evaluate_main(["--shards", str(root / "harvest" / "shards"),
                          "--labels", str(root / "videos" / "labels.csv"),
                          "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())["results"]


def test_evaluate_finch_and_c1c_parameter_free(harvested, tmp_path):
    root, title_of = harvested
    recs = _evaluate(root, tmp_path, "--method", "finch", "c1c", "auto", "--titles", "title_0.mp4",
                     title_of["title_1.mp4"], "title_2")
    by = {(r["title"], r["method"]): r for r in recs}
    assert {t for t, _ in by} == set(title_of.values()) | {"pooled"}
    for r in recs:
        assert r["head"] == "raw" and 1 <= r["n_clusters"] <= r["n_tracks"]
        assert 0 <= r["nmi"] <= 1 and 0 < r["wcp"] <= 1
    # real MobileFaceNet embeddings of distinct people: C1C (tracks + cannot-links) gets the
    # identities (measured: every title exact); FINCH's coarsest partition merges some
    assert by[("pooled", "c1c")]["nmi"] >= 0.9 and by[("pooled", "c1c")]["wcp"] >= 0.9
    assert by[("pooled", "finch")]["n_clusters"] <= by[("pooled", "c1c")]["n_clusters"]
    # cluster's default stays exact on the generated titles (one still photo per identity)
    assert by[("pooled", "auto")]["nmi"] > 0.999 and by[("pooled", "auto")]["wcp"] == 1.0


def test_evaluate_known_k_and_cannot_link(harvested, tmp_path):
    root, _ = harvested
    recs = _evaluate(root, tmp_path, "--method", "c1c", "finch", "hac-k", "hac-threshold",
                     "--known-k", "--cannot-link")
    for r in recs:
        if r["title"] != "pooled" and r["method"] in ("c1c", "hac-k"):
            assert r["n_clusters"] == r["n_identities"], r
        if r["method"] == "finch":           # K, or FINCH's first partition when K exceeds it
            assert r["n_clusters"] <= max(r["n_identities"], r["n_tracks"])
    assert {r["method"] for r in recs} == {"c1c", "finch", "hac-k", "hac-threshold"}


def test_cannot_linked_tracks_never_share_a_cluster(harvested):
    from training.clustering import methods, title_tracks
    from training.data import list_shards
    root, _ = harvested
    n_pairs = 0
    for path in list_shards(str(root / "harvest" / "shards")):
        tracks, _ = title_tracks.read_tracks(path)
        pairs = tracks.cannot_link_pairs()
        n_pairs += len(pairs)
        emb = tracks.means.astype(np.float64)
        for name, job in [("c1c", methods.Job(tracks, emb)),
                          ("hac-k", methods.Job(tracks, emb, k=1, cannot_link=True)),
                          ("hac-threshold", methods.Job(tracks, emb, cut=(4.0, "complete"),
                                                        cannot_link=True))]:
            labels = methods.get(name)(job)
            assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all(), (name, path)
    assert n_pairs > 0                  # the sample titles have co-occurring faces


@pytest.fixture(scope="module")
def siamese_runs(harvested, tmp_path_factory):
    from training.train import fit
    root, _ = harvested
    runs = tmp_path_factory.mktemp("siamese-runs")
    return runs, {head: fit(head, str(root / "harvest" / "shards"), str(runs), workers=2,
                            val_titles=["title_2.mp4"], epochs=2, batch_size=32, draw=400,
                            lr=0.01, name=head)
                  for head in ("ssiam", "tsiam")}


@pytest.mark.parametrize("head", ["ssiam", "tsiam"])
def test_siamese_heads_train_through_ray_train(siamese_runs, head):
    _, results = siamese_runs
    r = results[head]
    assert r.error is None
    m = r.metrics
    assert m["epoch"] == 2 and m["train_samples"] > 0
    for k in ("train_loss", "val_loss", "val_loss_init"):
        assert math.isfinite(m[k]) and m[k] >= 0, m
    assert m["best_val_loss"] < m["val_loss_init"], m          # the contrastive objective fell


@pytest.mark.parametrize("head", ["ssiam", "tsiam"])
def test_evaluate_siamese_head_by_run_directory(siamese_runs, harvested, tmp_path, head):
    root, _ = harvested
    runs, _ = siamese_runs
    recs = _evaluate(root, tmp_path, "--titles", "title_2.mp4", "--head", str(runs / head),
                     "--method", "hac-k", "c1c", "finch")
    assert {r["method"] for r in recs} == {"hac-k", "c1c", "finch"}
    for r in recs:
        assert r["head"] == head and r["n_tracks"] >= 3 and 0 <= r["nmi"] <= 1


def test_cluster_with_siamese_head_by_run_directory(siamese_runs, harvested, tmp_path):
    import pyarrow.parquet as pq

    from training.cli import cluster_main
    from training.clustering.cluster_titles import META_KEY
    from training.checkpoints import resolve_head
    root, title_of = harvested
    runs, _ = siamese_runs
    out = tmp_path / "clusters"
    assert cluster_main(["--shards", str(root / "harvest" / "shards"), "--output", str(out),
                         "--head", str(runs / "tsiam"), "--titles", "title_0.mp4"]) == 0
    t = pq.read_table(out / f"{title_of['title_0.mp4']}.parquet")
    meta = json.loads(t.schema.metadata[META_KEY])
    assert meta["config"]["head"] == resolve_head(str(runs / "tsiam")) != str(runs / "tsiam")
    assert len(meta["config"]["head_sha256"]) == 64 and sum(meta["cluster_sizes"]) == t.num_rows
