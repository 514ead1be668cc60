"""bench/gpu_acceptance.py, the GPU machine's acceptance command, in its CPU mode: the rows that
make sense without a GPU run (small sizes), the GPU-only ones say "skipped (no CUDA)", it needs
no Ray, and a row fails when what it checks is broken (fault injection)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CROWD, FACE_PACK, REPO, need

sys.path.insert(0, str(REPO / "bench"))
import gpu_acceptance as ga  # noqa: E402


def _table(stdout: str) -> dict[str, tuple[str, str]]:
    """The printed table: row name -> (result, figures)."""
    lines = stdout.split("\ncheck ", 1)[1].splitlines()[2:]
    out = {}
    for line in lines:
        for status in ("skipped (no CUDA)", "pass", "FAIL"):
            name, sep, rest = line.partition(f"  {status}")
            if sep:
                out[name.strip()] = (status, rest.strip())
                break
    return out


def test_cpu_mode_runs_without_ray_and_prints_one_table(tmp_path):
    """The whole command at CI size, in a fresh process where ``import ray`` fails (as on the
    GPU machine), its layout workers included."""
    need(FACE_PACK), need(CROWD)
    shim = tmp_path / "no_ray"
    shim.mkdir()
    (shim / "ray.py").write_text("raise ImportError('ray is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(shim), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--device", "cpu",
         "--seconds", "4", "--res", "360", "--frames", "3", "--titles", "2", "--k", "2",
         "--threads", "2", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table(proc.stdout)
    assert list(rows) == ["nvdec frame-exact", "precision cpu bf16 vs cpu fp32",
                          "harvest auto = cpu harvest", "throughput 360p stride 1",
                          "layout actors (k 2)", "layout shared (k 2)"], proc.stdout
    assert rows["nvdec frame-exact"][0] == rows["throughput 360p stride 1"][0] == "skipped (no CUDA)"
    assert all(status == "pass" for name, (status, _) in rows.items() if "skipped" not in status)
    # the figures are measured ones: faces compared, two shots, tracks identical
    assert "matched" in rows["precision cpu bf16 vs cpu fp32"][1]
    assert "torch + pyav" in rows["harvest auto = cpu harvest"][1]
    assert "2 shots, 100 frames" in rows["harvest auto = cpu harvest"][1]


@pytest.fixture(scope="module")
def precision_pair():
    a = argparse.Namespace(models=need(FACE_PACK), threads=2, device="cpu")
    return ga.precision_backends(a)


@pytest.mark.parametrize("fault", [None, "embeddings", "boxes"])
def test_precision_row_fails_when_the_backends_disagree(monkeypatch, precision_pair, fault):
    """Fault injection into the candidate backend: noisy embeddings or boxes shifted by a fifth
    of their width fail the row, naming the broken threshold; unbroken, it passes."""
    ref, cand = precision_pair
    if fault == "embeddings":
        embed = type(cand)._embed
        rng = np.random.default_rng(0)
        monkeypatch.setattr(cand, "_embed", lambda crops: embed(cand, crops) + rng.normal(
            0, 0.3, (len(crops), cand.embedding_dim)).astype(np.float32))
    elif fault == "boxes":
        detect = type(cand)._detect

        def shifted(frames):
            from harvest.faces.base import Detections
            out = []
            for d in detect(cand, frames):
                dx = 0.2 * (d.boxes[:, 2:3] - d.boxes[:, 0:1])
                out.append(Detections(d.boxes + np.hstack([dx, 0 * dx, dx, 0 * dx]), d.kps, d.scores))
            return out
        monkeypatch.setattr(cand, "_detect", shifted)
    monkeypatch.setattr(ga, "precision_backends", lambda a: (ref, cand))
    a = argparse.Namespace(crowd=need(CROWD), frames=1)
    row = ga.check_precision(a)
    assert row.name == "precision cpu bf16 vs cpu fp32"
    if fault is None:
        assert row.status == "pass", row.detail
    else:
        assert row.status == "FAIL"
        assert ("cosine" if fault == "embeddings" else "matched at IoU") in row.detail


def test_a_check_that_raises_is_a_failed_row_and_fails_the_run():
    rows: list = []

    def broken():
        raise RuntimeError("NVDEC cannot open the stream\nmore")
    ga.attempt(rows, "nvdec frame-exact", broken)
    ga.attempt(rows, "throughput", lambda: ga.Row("throughput", ga.NO_CUDA, ""))
    assert rows[0] == ga.Row("nvdec frame-exact", "FAIL", "RuntimeError: NVDEC cannot open the stream")
    assert ga.exit_code(rows[1:]) == 0             # skipped rows do not fail a run
    assert ga.exit_code(rows) == 1
    assert "FAIL" in ga.table(rows).splitlines()[2]


@pytest.mark.parametrize("fault", [None, "drop", "shift"])
def test_reader_comparison_of_the_nvdec_row(fault):
    """The NVDEC row's frame comparison, run on two CPU readers of open_gop.mp4 (numpy frames,
    and tensor frames as a GPU reader hands them on): identical; with a frame dropped from the
    candidate, or its pixels shifted, it fails."""
    import torch
    from conftest import OPEN_GOP
    from harvest.video.readers import open_reader
    video = need(OPEN_GOP)
    with open_reader(video, decoder="pyav") as ref, \
            open_reader(video, decoder="pyav", device=torch.device("cpu")) as cand:
        if fault is not None:
            chunks = cand.chunks

            def broken():
                for c in chunks():
                    if fault == "drop" and c.start == 0:
                        c = type(c)(c.start, c.frames[:-1], None if c.pts is None else c.pts[:-1])
                    elif fault == "shift":
                        c = type(c)(c.start, c.frames.clamp(max=200), c.pts)
                    yield c
            cand.chunks = broken
        figures, failures = ga.compare_readers(ref, cand)
    assert "max abs diff" in figures
    if fault is None:
        assert failures == [] and "max abs diff 0," in figures
    elif fault == "drop":
        assert any("numbered or sized differently" in f for f in failures), failures
    else:
        assert any("pixels differ" in f for f in failures)
