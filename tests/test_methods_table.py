"""bench/methods_table.py on a tiny configuration: generated titles with disjoint identities,
a real harvest (SCRFD + MobileFaceNet pack, Ray), one head trained through Ray Train for one
epoch, evaluate on the held-out title, and the printed markdown table."""
import json
import sys

from conftest import FACE_PACK, REPO, need


def test_methods_table_tiny(tmp_path, ray_cluster, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import methods_table
    out = tmp_path / "table.json"
    report = methods_table.main([
        "--workdir", str(tmp_path / "work"), "--models", need(FACE_PACK), "--json", str(out),
        "--train-titles", "2", "--test-titles", "1", "--shots", "3", "--heads", "bcl",
        "--known-k", "hac-k", "--k-free", "c1c", "--epochs", "1", "--workers", "1",
        "--no-published"])
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert [(r["setting"], r["method"], r["head"], r["pooled"]["nmi"]) for r in written["table"]] \
        == [(r["setting"], r["method"], r["head"], r["pooled"]["nmi"]) for r in report["table"]]
    assert len(written["records"]) == len(report["records"]) == 2 * len(report["table"])

    # the held-out title shows only identities the head never saw
    labels = (tmp_path / "work" / "videos" / "labels.csv").read_text().splitlines()[1:]
    who = {}
    for line in labels:
        who.setdefault(line.split(",")[0].split("_")[0], set()).add(line.rsplit(",", 1)[1])
    assert who["test"] and not who["test"] & who["train"], who

    rows = report["table"]
    assert sorted((r["setting"], r["method"], r["head"]) for r in rows) == [
        ("K-free", "c1c", "bcl"), ("K-free", "c1c", "raw"),
        ("known-K", "hac-k", "bcl"), ("known-K", "hac-k", "raw")]
    for r in rows:
        p = r["pooled"]
        for k in ("wcp", "nmi", "bcubed_f1"):
            assert 0 <= p[k] <= 1, (k, r)
        assert p["pcr"] == p["n_clusters"] / p["n_identities"] > 0
        assert list(r["titles"]) == ["test_00"] and r["pcr_range"][0] == r["pcr_range"][1]
        assert isinstance(r["goal"], bool) and (r["goal"] is False or r["setting"] == "K-free")
        if r["method"] == "hac-k":                       # K given: exactly K clusters
            assert p["n_clusters"] == p["n_identities"]
    # the markdown tables: one line per row, pooled and per title
    for r in rows:
        assert sum(line.startswith(f"| {r['setting']} | {r['method']} | {r['head']} |")
                   for line in printed.splitlines()) == 2
    assert report["training"]["bcl"]["epochs"] == 1 and report["training"]["bcl"]["seconds"] > 0
