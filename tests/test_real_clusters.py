"""bench/real_clusters.py in small on the real labelled poker clip (``../shared/data/real``):
the benchmark's rows and invariants, ``auto`` and c1c's merge cap on real faces. Figures are
printed by the benchmark, never asserted here."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FACE_PACK, SHARED, need

BENCH = Path(__file__).resolve().parents[1] / "bench" / "real_clusters.py"
POKER = SHARED / "data" / "real" / "tv_poker.mp4"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_real_clusters", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                 # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def poker(tmp_path_factory):
    need(POKER), need(FACE_PACK)
    bench = _bench()
    cache = tmp_path_factory.mktemp("real-cache")
    (clip,) = bench.load_clips(bench.harvest(cache=str(cache), titles=["tv_poker"]))
    return bench, cache, clip


def test_benchmark_rows_and_invariants(poker, tmp_path, capsys):
    bench, cache, clip = poker
    out = tmp_path / "real.json"
    bench.main(["--cache", str(cache), "--titles", "tv_poker.mp4", "--known-k", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "harvested" not in printed                         # the cached harvest is reused
    rows = json.loads(out.read_text())["rows"]
    from training.clustering.methods import METHODS
    k_free = {n for n, m in METHODS.items() if m.parameter_free and not m.crops}
    named = {"auto (cut only)" if m == "auto" else m for m in k_free}
    assert {r["method"] for r in rows} == named | {"auto (default)", "c1c (cap=chain)"} | {
        f"{m} (K known)" for m in ("hac-k", "finch", "c1c", "auto")}
    assert {r["adapt"] for r in rows} >= {"raw", "center", "wccn"}
    labelled = int(clip.labelled.sum())
    for r in rows:
        assert f"| {r['adapt']} | {r['method']} |" in printed
        (s,) = r["clips"]
        assert s["n_identities"] == clip.people > 1
        assert 1 <= s["n_clusters"] <= labelled and s["pcr"] == s["n_clusters"] / clip.people
        assert 0 < s["wcp"] <= 1 and 0 <= s["nmi"] <= 1 and 0 < s["bcubed_f1"] <= 1
        assert r["pooled"] == s                                # one clip: pooled is the clip
        if r["method"].endswith("(K known)") and not r["method"].startswith("finch"):
            assert s["n_clusters"] <= clip.people              # K clusters over all valid tracks


def test_auto_on_a_real_title_keeps_co_occurring_people_apart_and_merges(poker):
    bench, _, clip = poker
    from training.clustering.methods import Job, get, track_confidence
    tracks = clip.tracks
    pairs = tracks.cannot_link_pairs()
    assert len(pairs)
    job = Job(tracks, tracks.means)
    labels = get("auto")(job)
    assert labels.shape == (tracks.n_tracks,)
    assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()
    assert len(set(labels)) < tracks.n_tracks                  # some tracks are one person
    conf = track_confidence(job, labels)
    assert ((conf > 0) & (conf < 1)).all()


def test_c1c_cap_on_a_real_title(poker):
    """The chain cap (the longest step between consecutive faces) cuts every track-level edge on
    real footage: one person per track. The reference's cap (the widest track) merges."""
    bench, _, clip = poker
    chain = bench.run_method("c1c", clip, params=dict(cap="chain"))
    diameter = bench.run_method("c1c", clip)
    pairs = clip.tracks.cannot_link_pairs()
    assert len(set(chain)) == clip.tracks.n_tracks
    assert len(set(diameter)) < clip.tracks.n_tracks
    assert (diameter[pairs[:, 0]] != diameter[pairs[:, 1]]).all()


def test_transductive_head_trains_on_the_title_it_clusters(poker):
    """``training.transductive.fit_title``: a head trained on the poker clip's own unlabelled
    tracks (SSiam: pairs mined inside the title) moves from its initialisation, its loss falls,
    the same seed gives the same model, and the benchmark scores every method through it."""
    import torch
    from training.registry import get as head_spec
    from training.transductive import fit_title
    bench, _, clip = poker
    (shard,) = bench.harvest(cache=str(poker[1]), titles=["tv_poker"])
    lines = []
    model = fit_title("ssiam", shard, epochs=3, seed=0, log=lines.append)
    assert len(lines) == 3
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert losses[-1] < losses[0]
    torch.manual_seed(0)
    init = head_spec("ssiam").model(clip.tracks.means.shape[1])
    assert not torch.equal(init.fc1.weight, model.fc1.weight)
    again = fit_title("ssiam", shard, epochs=3, seed=0)
    assert torch.equal(again.fc1.weight, model.fc1.weight)
    rows = bench.transductive_rows([clip], [shard], ["ssiam"], ["auto", "finch"], False, 2,
                                   log=lambda *_: None)
    assert [r["method"] for r in rows] == ["auto", "finch"]
    assert {r["adapt"] for r in rows} == {"ssiam (the clip itself)"}
    for r in rows:
        (s,) = r["clips"]
        assert 1 <= s["n_clusters"] <= int(clip.labelled.sum())
    emb = head_spec("ssiam").embed_tracks(model, clip.tracks)
    assert emb.shape == (clip.tracks.n_tracks, 512)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
