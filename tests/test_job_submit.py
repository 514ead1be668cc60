"""`ray job submit` against a real local head (GCS, raylet, dashboard, job agent): a harvest job
and a train job succeed and leave valid outputs.

Ray 2.60 turns token authentication on for a head started while a token exists (e.g. the
~/.ray/auth_token a local ``ray.init()`` wrote). The test does not depend on that file: it makes
its own token and gives the head and the client ``RAY_AUTH_MODE=token`` with
``RAY_AUTH_TOKEN_PATH`` pointing at it (a job's driver inherits them from the head).
The head runs as ``ray start --head --block``; SIGTERM to that process stops exactly this
cluster (``ray stop`` would stop every Ray on the machine). The two jobs are submitted at once
(one harvest actor and one training worker fit the head's 2 CPUs together), so the test waits
for one head start and the slower job, not for the sum.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import FACE_PACK, REPO, need
from harvest.dataset.validate import validate_main


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head with its dashboard on 127.0.0.1 free ports; yields (dashboard URL, env)."""
    if not shutil.which("ray"):
        pytest.skip("the ray CLI is not on PATH")
    d = tmp_path_factory.mktemp("ray-head")
    token = d / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}   # SIGTERM: stop now, no drain wait
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent, agent_grpc, client, rt_env, metrics = _free_ports(7)
    # a short temp dir: Ray's unix socket paths must stay under 108 bytes
    temp_dir = f"/tmp/mfjob-{secrets.token_hex(4)}"
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--ray-client-server-port", str(client), "--runtime-env-agent-port", str(rt_env),
           "--metrics-export-port", str(metrics), "--temp-dir", temp_dir]
    log = open(d / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (d / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break                      # up (401: the token is required)
            except OSError:
                assert time.monotonic() < deadline, (d / "head.log").read_text()[-3000:]
                time.sleep(1)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)   # `ray start --block` stops its own processes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(url, env, job_id, log, *entrypoint) -> subprocess.Popen:
    """`ray job submit` in the background (it waits for the job, streaming its logs into
    ``log``)."""
    cmd = ["ray", "job", "submit", "--address", url, "--submission-id", job_id,
           "--working-dir", str(REPO), "--", *entrypoint]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def finish(url, env, job_id, log, proc, timeout=300):
    """-> (returncode of `ray job submit`, its output, whether `ray job status` says the job
    succeeded)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    status = subprocess.run(["ray", "job", "status", "--address", url, job_id], env=env,
                            capture_output=True, text=True, timeout=60)
    return (proc.returncode, log.read_text(errors="replace"),
            f"job '{job_id}' succeeded" in (status.stdout + status.stderr).lower())


def test_harvest_and_train_jobs_succeed(head, tmp_path):
    from harvest.samples import make_sample_set
    from training.synthetic import SyntheticSpec, write_dataset
    url, env = head
    make_sample_set(str(tmp_path / "videos"), n_titles=1)
    data = write_dataset(str(tmp_path / "syn"), 4, SyntheticSpec(dim=32), seed=3)
    out, runs = tmp_path / "harvest-out", tmp_path / "runs"
    harvest_id, train_id = f"harvest-{secrets.token_hex(4)}", f"train-{secrets.token_hex(4)}"
    harvest_log, train_log = tmp_path / "harvest.log", tmp_path / "train.log"
    harvest = submit(url, env, harvest_id, harvest_log,
                     "harvest", "run", "--input", str(tmp_path / "videos"), "--output", str(out),
                     "--models", need(FACE_PACK), "--det-size", "320", "--no-progress")
    train = submit(url, env, train_id, train_log,
                   "train", "--head", "imptriplet", "--shards", data["shards"],
                   "--output", str(runs), "--name", "job", "--workers", "1",
                   "--epochs", "2", "--batch-size", "256", "--val-titles", "title003")
    try:
        code, log, ok = finish(url, env, harvest_id, harvest_log, harvest)
        assert code == 0 and ok, log[-6000:]
        assert "1/1 done" in log
        records = [json.loads(p.read_text()) for p in (out / "manifest").glob("*.json")]
        assert len(records) == 1 and records[0]["status"] == "done"
        assert validate_main(str(out)) == 0

        code, log, ok = finish(url, env, train_id, train_log, train)
        assert code == 0 and ok, log[-6000:]
        assert "final metrics" in log and "best checkpoint" in log
        assert list((runs / "job").glob("checkpoint_*")), list((runs / "job").rglob("*"))[:20]
    finally:
        for proc in (harvest, train):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
