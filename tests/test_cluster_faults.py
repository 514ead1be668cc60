"""The harvest on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: real GCS and raylets,
one CPU per worker node) while machinery dies: a node removed under a running title, a worker
process that crashes, a title that hangs, bad input, and the driver killed mid-run.

Fault injection (harvest/run/faults.py) only fixes timing (a title waits on the node until the node is
gone) or plays a process death (``os._exit``); the node loss and the driver kill are real.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import FACE_PACK, REPO, need
from harvest.run import runner
from harvest.cli import EXIT_OK, EXIT_TITLES_FAILED, main
from harvest.run.sources import list_sources
from harvest.dataset.validate import validate_main

N_TITLES = 6


@pytest.fixture(scope="module")
def cluster():
    """Head with no CPU (it only runs GCS and the driver's raylet) + one 1-CPU worker node."""
    import ray
    from ray.cluster_utils import Cluster
    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()
    if was_up:   # give later tests the session Ray conftest made
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six short labelled clips (two shots of 25 frames, 640x360)."""
    from harvest.samples import ShotSpec, make_clip
    d = tmp_path_factory.mktemp("clips")
    for i in range(N_TITLES):
        make_clip(str(d / f"clip_{i}.mp4"), [ShotSpec((i % 5, (i + 1) % 5), 25, i),
                                             ShotSpec(((i + 2) % 5,), 25, 100 + i)], seed=i)
    return d


def run_args(input_dir, out, *extra):
    return ["run", "--input", str(input_dir), "--output", str(out), "--models", need(FACE_PACK),
            "--det-size", "320", "--no-progress", *extra]


def records_of(out):
    return {json.loads(p.read_text())["source"].rsplit("/", 1)[-1]: json.loads(p.read_text())
            for p in (out / "manifest").glob("*.json")}


def assert_each_title_once(out, n):
    names = [p.name for p in out.rglob("*")]
    assert not [x for x in names if ".tmp-" in x], names
    assert len(list((out / "manifest").glob("*.json"))) == n
    assert len(list((out / "shards").glob("*.parquet"))) == n
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == n and len({r["title_id"] for r in lines}) == n
    assert validate_main(str(out)) == 0


def test_node_lost_under_a_running_title(cluster, clips, tmp_path, monkeypatch, capsys):
    """3 nodes; the worker node running a title is removed: the title is retried on the node
    left, the replacement actor the cluster has no room for is dropped, the run completes."""
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.setenv("HARVEST_FAULT_STALL_ON_NODE", extra.node_id)
    monkeypatch.setenv("HARVEST_FAULT_STALL_SECONDS", "90")
    out = tmp_path / "out"
    # a temporary file left by a writer killed in an earlier run: the run must clean it
    first = list_sources(str(clips))[0].title_id
    (out / "shards").mkdir(parents=True)
    (out / "shards" / f".{first}.parquet.tmp-0123456789abcdef").write_bytes(b"PAR1 partial")

    victim, seen = {}, []
    real = runner.harvest_sources

    def on_progress(positions):
        seen.extend(positions)
        for p in positions:
            if p["node_id"] == extra.node_id and not victim:
                victim.update(p)          # a title is running on that node: take the node away
                cluster.remove_node(extra)

    monkeypatch.setattr(runner, "harvest_sources",
                        lambda *a, **k: real(*a, **{**k, "on_progress": on_progress}))
    t0 = time.monotonic()
    code = main(run_args(clips, out, "--title-timeout", "120", "--start-timeout", "60"))
    elapsed = time.monotonic() - t0
    summary = capsys.readouterr().out
    print(summary, f"\nnode-loss run: {elapsed:.1f} s")
    assert victim, "no title was seen running on the extra node"
    assert code == EXIT_OK, summary
    recs = {r["title_id"]: r for r in records_of(out).values()}
    assert recs[victim["title_id"]]["status"] == "done"
    assert recs[victim["title_id"]]["attempts"] == 2
    assert all(r["attempts"] == 1 for t, r in recs.items() if t != victim["title_id"])
    assert all(r["status"] == "done" for r in recs.values())
    assert_each_title_once(out, N_TITLES)
    assert "frames/s" in summary.splitlines()[0]


def test_crash_is_retried_timeout_and_bad_input_are_not(cluster, clips, tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("good.mp4", "hang.mp4", "crash.mp4"):
        shutil.copy(clips / "clip_0.mp4", d / name)
    (d / "empty.mp4").write_bytes(b"")
    monkeypatch.setenv("HARVEST_FAULT_HANG_ON", "hang.mp4")
    monkeypatch.setenv("HARVEST_FAULT_CRASH_ON", "crash.mp4")
    out = tmp_path / "out"
    code = main(run_args(d, out, "--title-timeout", "12", "--max-attempts", "2"))
    assert code == EXIT_TITLES_FAILED
    recs = records_of(out)
    assert recs["good.mp4"]["status"] == "done" and recs["good.mp4"]["attempts"] == 1
    assert recs["hang.mp4"]["status"] == "failed" and recs["hang.mp4"]["attempts"] == 1
    assert recs["hang.mp4"]["error"].startswith("TimeoutError")
    assert recs["empty.mp4"]["status"] == "failed" and recs["empty.mp4"]["attempts"] == 1
    assert "empty" in recs["empty.mp4"]["error"]
    assert recs["crash.mp4"]["status"] == "failed" and recs["crash.mp4"]["attempts"] == 2
    assert "worker died on each of 2 attempts" in recs["crash.mp4"]["error"]
    assert validate_main(str(out)) == 0


def test_no_room_for_any_actor_ends_the_run(cluster, clips, tmp_path):
    """Actors that no alive node can hold (a GPU on a CPU-only cluster) are never given titles;
    the run ends after --start-timeout with every title failed and the reason."""
    out = tmp_path / "out"
    t0 = time.monotonic()
    code = main(run_args(clips, out, "--gpus-per-worker", "1", "--start-timeout", "5"))
    assert time.monotonic() - t0 < 60
    assert code == EXIT_TITLES_FAILED
    recs = records_of(out)
    assert len(recs) == N_TITLES
    for r in recs.values():
        assert r["status"] == "failed" and r["attempts"] == 0
        assert r["error"].startswith("no worker could be started: no actor (1 CPU, 1 GPU)")


def _cpus_free(ray, want, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ray.available_resources().get("CPU", 0) >= want:
            return True
        time.sleep(0.5)
    return False


def test_driver_killed_then_rerun_gives_identical_shards(cluster, clips, tmp_path):
    """SIGKILL the `harvest run` driver after its first title; the same command again skips the
    done titles, finishes the rest, and every shard is byte-identical to an uninterrupted run."""
    import ray
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        shutil.copy(clips / f"clip_{i}.mp4", d / f"clip_{i}.mp4")
    ref = tmp_path / "ref"
    assert main(run_args(d, ref)) == EXIT_OK

    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    cmd = [sys.executable, "-m", "harvest", *run_args(d, out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = [r for r in records_of(out).values() if r["status"] == "done"] \
                if (out / "manifest").exists() else []
            if done:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the dead driver's job is over: its actors are gone and their CPUs free again
    total = ray.cluster_resources().get("CPU", 0)
    assert _cpus_free(ray, total), ray.available_resources()
    n_done = sum(r["status"] == "done" for r in records_of(out).values())
    assert 1 <= n_done < 4

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    assert f"{n_done} already done" in rerun.stderr
    assert_each_title_once(out, 4)
    for shard in (ref / "shards").glob("*.parquet"):
        assert (out / "shards" / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_titles_sharing_a_worker_give_the_same_shards(cluster, clips, tmp_path):
    """One 1-CPU worker harvesting two titles at once (``--titles-per-worker 2``, one loaded
    backend shared by both threads) writes the same shards, byte for byte, as one at a time."""
    import hashlib
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        shutil.copy(clips / f"clip_{i}.mp4", d / f"clip_{i}.mp4")
    seen = []
    runs = {}
    for per in (1, 2):
        out = tmp_path / f"out{per}"
        assert main(run_args(d, out, "--workers", "1", "--titles-per-worker", str(per))) == EXIT_OK
        assert_each_title_once(out, 3)
        runs[per] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in (out / "shards").glob("*.parquet")}
    assert runs[1] == runs[2]

    # both slots of the one actor are handed out at once: the driver's own view of the run
    from harvest.config import HarvestConfig, RunOptions
    config = HarvestConfig(models=need(FACE_PACK), det_size=320)
    options = RunOptions(workers=1, titles_per_worker=2, progress=False)
    plan = runner.plan_run(str(d), str(tmp_path / "out3"), config, options)
    records = runner.harvest_sources(plan, str(tmp_path / "out3"), config, options,
                                     on_progress=lambda pos: seen.append(len(pos)))
    assert [r["status"] for r in records] == ["done"] * 3
    assert max(seen) == 2


def test_a_hung_title_takes_the_title_beside_it_down_and_that_one_is_retried(cluster, clips, tmp_path,
                                                                              monkeypatch):
    """Two titles share a worker; one hangs holding the GIL, so both stop and the worker is
    killed at the deadline. Which one hung cannot be told, so each runs again alone: the hung
    one times out alone and fails, the one beside it is done on its second attempt."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("good.mp4", "hang.mp4"):
        shutil.copy(clips / "clip_0.mp4", d / name)
    monkeypatch.setenv("HARVEST_FAULT_HANG_ON", "hang.mp4")
    out = tmp_path / "out"
    code = main(run_args(d, out, "--titles-per-worker", "2", "--title-timeout", "12",
                         "--max-attempts", "2"))
    assert code == EXIT_TITLES_FAILED
    recs = records_of(out)
    assert recs["hang.mp4"]["status"] == "failed" and recs["hang.mp4"]["attempts"] == 2
    assert recs["hang.mp4"]["error"].startswith("TimeoutError")
    assert "ran alone" in recs["hang.mp4"]["error"]
    assert recs["good.mp4"]["status"] == "done" and recs["good.mp4"]["attempts"] == 2
    assert validate_main(str(out)) == 0
