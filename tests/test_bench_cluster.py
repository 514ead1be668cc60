"""bench/cluster.py at a small size: one table row per registered clustering method (and its
cannot-link / HNSW variants) with measured figures; no timing is asserted."""
import importlib.util
import re
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cluster.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cluster", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_title_has_its_structure():
    bench = _bench()
    title, ident = bench.make_title(400, 16, faces=(5, 50), seed=3)
    assert title.n_tracks == 400 and title.means.shape == (400, 16)
    assert np.allclose(np.linalg.norm(title.means, axis=1), 1, atol=1e-5)
    counts = np.bincount(title.track_of_face, minlength=400)
    assert counts.min() >= 5 and counts.max() <= 50
    pairs = title.cannot_link_pairs()
    assert len(pairs) > 0 and (ident[pairs[:, 0]] != ident[pairs[:, 1]]).all()   # co-occurring
    x = title.means                                                # people differ
    same = ident[:, None] == ident[None, :]
    cos = x @ x.T
    off = ~np.eye(400, dtype=bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.3


def test_bench_prints_one_row_per_method(capsys):
    from training.clustering import methods
    bench = _bench()
    bench.main(["--tracks", "300", "--inline", "--ann-from", "300", "--faces", "3", "8"])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 10 and cells[1] == "300":
            rows[cells[2]] = (cells[3], cells[5], line)
    for name, method in methods.METHODS.items():
        assert name in rows, f"no row for {name}:\n{out}"
        seconds, nmi, line = rows[name]
        if bench.needs_crops(method):
            assert "skipped" in line
            continue
        assert float(seconds) >= 0 and 0 <= float(nmi) <= 1, line
        if method.cannot_link == "option":
            assert float(rows[name + " +cl"][0]) >= 0
    for name in ("finch", "c1c"):           # the HNSW rows agree with the exact partition
        if "skipped" not in rows[name + " ~hnsw"][2]:
            assert re.search(r"NMI vs exact (\d\.\d+)", rows[name + " ~hnsw"][2])
    # cannot-link methods never put two co-occurring tracks in one cluster
    for name in ("c1c", "hac-k +cl", "hac-threshold +cl"):
        assert rows[name][2].split("|")[7].strip() == "0", rows[name][2]
