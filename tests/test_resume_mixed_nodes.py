"""Resume on a cluster whose nodes resolve ``--backend auto`` differently (issue #19).

A CPU head resolves ``auto`` to insightface; a GPU worker resolves it to torch. The worker's
records and shards say what ran (torch, its config hash); the driver must still recognise those
titles as done for the same request and skip them. The GPU worker is emulated on this CPU
machine by fault injection (torch made "usable" in the worker only); everything else is real:
videos, models, shards, manifest, and in the second test Ray actors in their own processes.
"""
import dataclasses
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, SHARED, need, write_no_face_video
from harvest.config import HarvestConfig, RunOptions
from harvest.run.runner import plan_run
from harvest.dataset.schema import read_metadata
from harvest.run.worker import requested_config_hash

SCRFD_500M = SHARED / "models" / "scrfd_500m_bnkps.onnx"


@pytest.fixture(scope="module")
def titles(tmp_path_factory):
    """Two short titles: one with faces (two shots), one without."""
    from harvest.samples import ShotSpec, make_clip
    d = tmp_path_factory.mktemp("titles")
    make_clip(str(d / "labelled.mp4"), [ShotSpec((0, 1), 25, 0), ShotSpec((2,), 25, 1)],
              width=480, height=270, face_size=(90, 120))
    write_no_face_video(str(d / "no_faces.mp4"), frames=20)
    return d


def records_of(out):
    return {rec["title_id"]: rec for rec in
            (json.loads((out / "manifest" / n).read_text()) for n in os.listdir(out / "manifest"))}


def shard_files(out):
    return {n: hashlib.sha256((out / "shards" / n).read_bytes()).hexdigest()
            for n in os.listdir(out / "shards")}


def check_records_say_what_ran(out, config):
    """Every title done by torch; records and shard metadata carry the resolved hash (torch) and
    the requested one (auto), the same in both."""
    recs = records_of(out)
    assert len(recs) == 2 and all(r["status"] == "done" for r in recs.values()), recs
    requested = requested_config_hash(config)
    for rec in recs.values():
        assert rec["backend"] == "torch" and rec["requested_config_hash"] == requested
        meta = read_metadata(pq.read_schema(out / "shards" / f"{rec['title_id']}.parquet"))
        assert meta["backend"] == "torch" and meta["config_hash"] == rec["config_hash"]
        assert meta["requested_config_hash"] == requested
    return recs


def test_titles_a_gpu_worker_did_are_skipped_by_a_cpu_driver(titles, tmp_path, monkeypatch):
    """Record level, one process: a worker where auto means torch harvests the titles; then the
    driver, with no GPU visible (auto means insightface), plans the re-run: nothing to do."""
    from harvest.faces.torch_backend import TorchFaceBackend
    from harvest.run.sources import list_sources
    from harvest.run.worker import TitleWorker
    config = HarvestConfig(backend="auto", models=need(FACE_PACK), det_stride=2)
    out = tmp_path / "out"
    with monkeypatch.context() as m:       # the GPU worker: torch is the first usable backend
        m.setattr(TorchFaceBackend, "usable", classmethod(lambda cls, model_dir: True))
        worker = TitleWorker(str(out), config, threads=2)
        for source in list_sources(str(titles)):
            worker.process(source)
    recs = check_records_say_what_ran(out, config)

    plan = plan_run(str(titles), str(out), config, RunOptions())      # the CPU head
    assert plan.backend == "insightface" and plan.config_hash not in {
        r["config_hash"] for r in recs.values()}
    assert plan.todo == [] and {r["title_id"] for r in plan.skipped} == set(recs)

    # a different request is still redone: another setting, or another model pack
    other = dataclasses.replace(config, det_threshold=0.6)
    assert len(plan_run(str(titles), str(out), other, RunOptions()).todo) == 2
    pack = tmp_path / "pack"            # the same embedder, another detector
    pack.mkdir()
    os.symlink(need(FACE_PACK / "mobilefacenet_128.onnx"), pack / "mobilefacenet_128.onnx")
    os.symlink(need(SCRFD_500M), pack / "scrfd_500m_bnkps.onnx")
    repacked = dataclasses.replace(config, models=str(pack))
    assert len(plan_run(str(titles), str(out), repacked, RunOptions()).todo) == 2

    # a record written before requested hashes: today's comparison (the hash resolved here)
    tid = sorted(recs)[0]
    old = {k: v for k, v in recs[tid].items() if k != "requested_config_hash"}
    (out / "manifest" / f"{tid}.json").write_text(json.dumps(old))
    assert [s.title_id for s in plan_run(str(titles), str(out), config, RunOptions()).todo] == [tid]
    old["config_hash"] = plan.config_hash
    (out / "manifest" / f"{tid}.json").write_text(json.dumps(old))
    assert plan_run(str(titles), str(out), config, RunOptions()).todo == []


def test_ray_rerun_on_mixed_nodes_skips_every_done_title(titles, tmp_path, monkeypatch, capsys,
                                                         ray_cluster):
    """The real command on real Ray: the actors resolve auto to torch (HARVEST_FAULT_AUTO_BACKEND,
    read in the worker processes only), the driver to insightface. The second run harvests
    nothing and leaves shards and records as they were."""
    from harvest.cli import EXIT_OK, main
    monkeypatch.setenv("HARVEST_FAULT_AUTO_BACKEND", "torch")
    out = tmp_path / "out"
    argv = ["run", "--input", str(titles), "--output", str(out), "--models", need(FACE_PACK),
            "--det-stride", "2", "--no-progress", "--workers", "1", "--cpus-per-worker", "2"]
    assert main(argv) == EXIT_OK
    config = HarvestConfig(backend="auto", models=need(FACE_PACK), det_stride=2)
    recs = check_records_say_what_ran(out, config)
    shards = shard_files(out)
    capsys.readouterr()

    assert main(argv) == EXIT_OK
    assert "2 already done, 0 to harvest (backend insightface" in capsys.readouterr().err
    assert records_of(out) == recs and shard_files(out) == shards
