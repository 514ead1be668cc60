"""dlib's face descriptor in a persistent child process, so that it overlaps detection.

``dlib.face_recognition_model_v1.compute_face_descriptor`` holds the GIL for the whole call
(~100 ms per 150x150 chip on one core of this build: no BLAS), so in a thread it stalls the
detector thread as well. Here it runs in a child process (``python -m
harvest.faces.dlib_descriptor MODEL SIZE``, started with ``subprocess``: no fork of a threaded
parent, nothing re-imported from the parent's ``__main__``, so it works inside a Ray actor).

Protocol, little-endian, over the child's stdin/stdout (the child moves its own stdout to
stderr first, so a stray print cannot corrupt it):
  parent -> child  ``<qI`` (job id, n) then n*SIZE*SIZE*3 uint8 RGB chip bytes;
  child -> parent  ``<qI`` (job id, n) then n*128 float64 descriptors (dlib's doubles, so the
                   values equal the in-process call); job -1, n 0 once the model is loaded.
The parent closing the child's stdin is the shutdown; the child also exits when the parent
dies (end of file on stdin, or a broken pipe on stdout), and it ignores SIGINT (Ctrl-C in a
terminal reaches the whole process group; the parent decides).

``DescriptorProcess`` is the parent side: ``submit`` never blocks (a sender thread writes), a
reader thread collects results, ``result`` waits for one. If the child dies, every waiting
and later call raises ``ChildDied`` with the exit code (its traceback is on stderr).
"""
from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
import threading
import weakref

import numpy as np

_HEAD = struct.Struct("<qI")
DIM = 128
_READY = -1


class ChildDied(RuntimeError):
    """The descriptor process exited or its pipes broke."""


def _read_exact(stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            break
        buf += part
    return bytes(buf)


class _Shared:
    """What the reader and sender threads share with the parent object. The threads hold only
    this (not the ``DescriptorProcess``), so dropping the object runs its finalizer."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.cond = threading.Condition()
        self.results: dict[int, np.ndarray] = {}
        self.discarded: set[int] = set()
        self.ready = False
        self.closed = False
        self.error: str | None = None
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()

    def read_loop(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                head = _read_exact(out, _HEAD.size)
                if len(head) < _HEAD.size:
                    break
                job, n = _HEAD.unpack(head)
                body = _read_exact(out, n * DIM * 8)
                if len(body) < n * DIM * 8:
                    break
                with self.cond:
                    if job == _READY:
                        self.ready = True
                    elif job in self.discarded:
                        self.discarded.discard(job)
                    else:
                        self.results[job] = np.frombuffer(body, np.float64).reshape(n, DIM)
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        self.died("its output ended")

    def send_loop(self) -> None:
        stdin = self.proc.stdin
        while True:
            msg = self.outbox.get()
            if msg is None:
                return
            try:
                stdin.write(msg)
                stdin.flush()
            except (OSError, ValueError):
                self.died("its input broke")
                return

    def died(self, how: str) -> None:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        with self.cond:
            if self.error is None:
                self.error = (f"dlib descriptor process {self.proc.pid} was closed" if self.closed
                              else f"dlib descriptor process {self.proc.pid} died ({how}; exit "
                                   f"code {code}); its traceback, if any, is on stderr")
            self.cond.notify_all()

    def shutdown(self) -> None:
        """Stop the child: end of its input, then kill after 5 s; wait for it."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.outbox.put(None)               # the sender stops after what it has queued
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DescriptorProcess:
    """One child process computing dlib descriptors of aligned chips."""

    def __init__(self, model_path: str, chip_size: int = 150, start_timeout: float = 120.0):
        self.chip_size = int(chip_size)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.faces.dlib_descriptor", model_path, str(chip_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.pid = proc.pid
        self._s = s = _Shared(proc)
        self._next_job = 0
        for target, what in ((s.read_loop, "read"), (s.send_loop, "send")):
            threading.Thread(target=target, daemon=True,
                             name=f"dlib-descriptor-{what}-{self.pid}").start()
        # the child stops when this object is closed, collected, or at interpreter exit
        self._finalizer = weakref.finalize(self, s.shutdown)
        with s.cond:
            started = s.cond.wait_for(lambda: s.ready or s.error is not None,
                                      timeout=start_timeout)
        if not started:
            self.close()
            raise ChildDied(f"dlib descriptor process {self.pid} did not start "
                            f"within {start_timeout:g} s")
        self._raise_if_dead()

    @property
    def alive(self) -> bool:
        return self._s.error is None and not self._s.closed and self._s.proc.poll() is None

    def _raise_if_dead(self) -> None:
        if self._s.error is not None:
            raise ChildDied(self._s.error)
        if self._s.closed:
            raise ChildDied(f"dlib descriptor process {self.pid} was closed")
        code = self._s.proc.poll()
        if code is not None:            # the reader has not seen the end of its output yet
            raise ChildDied(f"dlib descriptor process {self.pid} died (exit code {code}); "
                            "its traceback, if any, is on stderr")

    def check(self) -> None:
        """Raise ``ChildDied`` if the child has died or was closed."""
        self._raise_if_dead()

    def submit(self, chips: np.ndarray) -> int:
        """Queue (n, S, S, 3) uint8 RGB chips; returns the job id. Does not block."""
        chips = np.ascontiguousarray(chips, np.uint8)
        s = self.chip_size
        if chips.ndim != 4 or chips.shape[1:] != (s, s, 3):
            raise ValueError(f"expected (n, {s}, {s}, 3) chips, got {chips.shape}")
        with self._s.cond:
            self._raise_if_dead()
            job = self._next_job
            self._next_job += 1
        self._s.outbox.put(_HEAD.pack(job, len(chips)) + chips.tobytes())
        return job

    def result(self, job: int, timeout: float | None = None) -> np.ndarray:
        """(n, 128) float64 descriptors of a submitted job (each job's result is taken once)."""
        s = self._s
        with s.cond:
            ok = s.cond.wait_for(lambda: job in s.results or s.error is not None or s.closed,
                                 timeout=timeout)
            if job in s.results:
                return s.results.pop(job)
            self._raise_if_dead()
            if not ok:
                raise TimeoutError(f"dlib descriptor job {job}: no result in {timeout} s")
            raise ChildDied(f"dlib descriptor process {self.pid}: job {job} lost")

    def discard(self, job: int) -> None:
        """Drop a job's result (now or when it arrives)."""
        with self._s.cond:
            if self._s.results.pop(job, None) is None:
                self._s.discarded.add(job)

    def compute(self, chips: np.ndarray) -> np.ndarray:
        return self.result(self.submit(chips))

    def close(self) -> None:
        self._finalizer()


def _child(model_path: str, size: int) -> int:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                        # anything printed goes to stderr, not the protocol
    inp = sys.stdin.buffer
    import dlib
    facerec = dlib.face_recognition_model_v1(model_path)
    out.write(_HEAD.pack(_READY, 0))
    out.flush()
    chip_bytes = size * size * 3
    while True:
        head = _read_exact(inp, _HEAD.size)
        if len(head) < _HEAD.size:
            return 0                     # parent closed our input (or died)
        job, n = _HEAD.unpack(head)
        body = _read_exact(inp, n * chip_bytes)
        if len(body) < n * chip_bytes:
            return 0
        chips = np.frombuffer(body, np.uint8).reshape(n, size, size, 3)
        desc = np.array(facerec.compute_face_descriptor([np.ascontiguousarray(c) for c in chips]),
                        np.float64).reshape(n, DIM)
        try:
            out.write(_HEAD.pack(job, n) + desc.tobytes())
            out.flush()
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
