"""Run a chain of generator stages either inline or as threads joined by bounded queues.

A stage is a function ``Iterator[In] -> Iterator[Out]`` (so it may batch across items). With
``threaded=True`` each stage runs in its own thread, so decode, detection and embedding overlap
(decord, OpenCV and onnxruntime release the GIL while they work). Each stage's busy time (time in
its own code, not waiting on its neighbours) is recorded in ``StageTimes``.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

Stage = Callable[[Iterator], Iterator]
_END = object()


@dataclass
class StageTimes:
    busy: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.busy[name] = self.busy.get(name, 0.0) + seconds


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _timed(name: str, stage: Stage, upstream: Iterable, times: StageTimes) -> Iterator:
    waited = [0.0]

    def pull():
        it = iter(upstream)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                waited[0] += time.perf_counter() - t0
                return
            waited[0] += time.perf_counter() - t0
            yield item

    gen = stage(pull())
    while True:
        t0, w0 = time.perf_counter(), waited[0]
        try:
            item = next(gen)
        except StopIteration:
            times.add(name, time.perf_counter() - t0 - (waited[0] - w0))
            return
        times.add(name, time.perf_counter() - t0 - (waited[0] - w0))
        yield item


def run_chain(source: Iterable, stages: list[tuple[str, Stage]], *, threaded: bool = True,
              queue_size: int = 2, times: StageTimes | None = None) -> Iterator:
    """Yield the outputs of the last stage. Exceptions in any stage re-raise in the caller."""
    times = times if times is not None else StageTimes()
    if not threaded:
        it: Iterable = source
        for name, stage in stages:
            it = _timed(name, stage, it, times)
        yield from it
        return

    stop = threading.Event()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def drain(q: queue.Queue) -> Iterator:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def pump(items: Iterable, out: queue.Queue) -> None:
        try:
            for item in items:
                if not put(out, item):
                    return
            put(out, _END)
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            put(out, _Failure(exc))

    queues = [queue.Queue(maxsize=queue_size) for _ in range(len(stages) + 1)]
    threads = [threading.Thread(target=pump, args=(source, queues[0]), daemon=True,
                                name="stage-source")]
    for k, (name, stage) in enumerate(stages):
        items = _timed(name, stage, drain(queues[k]), times)
        threads.append(threading.Thread(target=pump, args=(items, queues[k + 1]), daemon=True,
                                        name=f"stage-{name}"))
    for t in threads:
        t.start()
    try:
        yield from drain(queues[-1])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
