"""Shared fixtures: the real test material in ../shared, one local Ray for the session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CROWD = SHARED / "data" / "crowd.mp4"
OPEN_GOP = SHARED / "data" / "open_gop.mp4"
FACE_PACK = SHARED / "models" / "face-pack"
BCL_CHECKPOINT = SHARED / "models" / "bcl_iccv2019_mlp_256-256-128-64-64.pth.tar"
SCRFD_2_5G = FACE_PACK / "scrfd_2.5g_bnkps.onnx"


def need(path: Path) -> str:
    """The path of a piece of shared test material. Missing material skips the test on a
    developer's machine but FAILS it under CI (``$CI`` set): CI must never pass untested."""
    if not path.exists():
        msg = f"test material {path} not present (shared/ is looked up beside the repository root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return str(path)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance (2 CPUs, as on CI) shared by every test that needs Ray."""
    import ray
    if not ray.is_initialized():
        # address="local": always a fresh in-process cluster, never one that happens to run here
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def write_no_face_video(path: str, frames: int = 40, size=(320, 180), fps: float = 25.0) -> str:
    """A real (decodable) video of moving gradients with no faces in it."""
    import cv2
    w, h = size
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    xs = np.linspace(0, 255, w, dtype=np.float32)
    for i in range(frames):
        row = ((xs + 4 * i) % 255).astype(np.uint8)
        frame = np.dstack([np.tile(row, (h, 1)), np.full((h, w), 90, np.uint8),
                           np.tile(row[::-1], (h, 1))])
        out.write(frame)
    out.release()
    return path


@pytest.fixture(autouse=True)
def _no_fault_injection(monkeypatch):
    for k in list(os.environ):
        if k.startswith("HARVEST_FAULT_"):
            monkeypatch.delenv(k)


_HOLD = """
import sys
from harvest.dataset import storage
with storage.exclusive(*storage.open_fs(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


class LockHolder:
    """Another process holding an output's lock (``harvest.dataset.storage.exclusive``) until
    ``release()`` (it ends normally) or ``kill()`` (it dies holding it)."""

    def __init__(self, url, command: str):
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(url), command],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(60)
