"""Distribution at the edge: Ray actors harvest titles; the driver schedules, times out, retries and
records.

Each actor loads the face backend once (``TitleWorker``) and writes its shards and records itself.
The driver's rules:

- the pool is sized by the CPUs/GPUs of the nodes alive now; an actor is given titles only once it
  is alive (its ``ready()`` answered), so no title ever waits on an actor that cannot be scheduled;
  pending actors the cluster has no room for are killed;
- a title's deadline (``title_timeout``) counts only from the moment it is handed to a live actor;
  a title over it gets its actor killed and a "failed" record (not retried: it would hang again);
  an actor may harvest ``titles_per_worker`` titles at once (one slot each), and a title over its
  deadline beside others is run again alone first (a hang stops every title in the process, so
  the one that hung is only known when it hangs alone);
- a system failure (actor, worker process or node died) is not the title's fault: the title goes
  back to the queue, up to ``max_attempts`` attempts; bad input (the worker's own "failed" record)
  is final;
- the run always ends: when no actor can be started (no room, or every start fails) the titles
  left are recorded failed with the reason.

Every title ends with exactly one record (``attempts`` says how many tries it took) and at most one
shard; temporary files left by a writer that died are removed before its title is redone.
"""
from __future__ import annotations

import math
import posixpath
import time
from dataclasses import dataclass

from harvest.dataset import storage
from harvest.config import HarvestConfig, RunOptions
from harvest.run.faults import fault_env
from harvest.dataset.schema import STATUS_DONE
from harvest.run.sources import Source, list_sources
from harvest.run.worker import TitleWorker, config_hash, finish, new_record, requested_config_hash

PROGRESS_EVERY = 1.0          # seconds between progress polls of the running actors
CAPACITY_EVERY = 2.0          # seconds between looks at the alive nodes


@dataclass(frozen=True)
class Plan:
    sources: list          # every source found
    todo: list             # sources to harvest now
    skipped: list          # records of titles already done with this config
    config_hash: str       # of the setup ``auto`` resolves to on the driver
    backend: str
    requested_hash: str    # of the config as given (``requested_config_hash``): resume compares it


def plan_run(input_url: str, output_url: str, config: HarvestConfig,
             options: RunOptions) -> Plan:
    sources = list_sources(input_url)
    backend, cfg_hash = config_hash(config)
    requested = requested_config_hash(config)
    fs, root = storage.open_fs(output_url)
    records = storage.read_records(fs, root)
    todo, skipped = [], []
    for s in sources:
        rec = records.get(s.title_id)
        if rec and rec["status"] == STATUS_DONE and up_to_date(rec, requested, cfg_hash):
            skipped.append(rec)
        elif rec and rec["status"] != STATUS_DONE and not options.retry_failed:
            skipped.append(rec)
        else:
            todo.append(s)
    return Plan(sources, todo, skipped, cfg_hash, backend, requested)


def up_to_date(record: dict, requested_hash: str, cfg_hash: str) -> bool:
    """Whether a done title's shard is the one this run asks for: harvested for the same request
    (the config as given, ``auto`` unresolved: equal on any mix of node types, where the worker's
    ``auto`` may mean another backend than the driver's), or with exactly the setup ``auto``
    resolves to here (the only test for a record written before requested hashes)."""
    return (record.get("requested_config_hash") == requested_hash
            or record.get("config_hash") == cfg_hash)


def system_errors() -> tuple:
    """Ray's "the machinery died" exceptions: actor, worker process, node, object owner."""
    import ray.exceptions as rex
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
             "LocalRayletDiedError", "RaySystemError", "ActorPlacementGroupRemoved",
             "OutOfMemoryError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def _ray():
    from harvest.run.raystart import init_ray
    return init_ray(log_to_driver=False)    # no-op when up; honours RAY_ADDRESS


def _actor_class(ray):
    # Threads: one per title it harvests at once (``titles_per_worker``, sharing the one loaded
    # backend), and one that answers progress() meanwhile (max_concurrency is set at spawn).
    @ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)
    class HarvestActor:
        def __init__(self, output_url, config, options, threads):
            self.worker = TitleWorker(output_url, config, options, threads=threads)
            self.fs, self.root = storage.open_fs(output_url)

        def ready(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def process(self, source: Source, attempt: int) -> dict:
            record = self.worker.process(source)
            record["attempts"] = attempt
            storage.write_record(self.fs, self.root, record)
            return record

        def progress(self, title_id: str) -> dict | None:
            return self.worker.progress(title_id)
    return HarvestActor


def capacity(ray, options: RunOptions) -> int:
    """How many actors the nodes alive now can hold (0 when none fits)."""
    total: dict = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for k, v in node.get("Resources", {}).items():
                total[k] = total.get(k, 0.0) + v
    fits = [math.floor(total.get(k, 0.0) / need + 1e-9)
            for k, need in (("CPU", options.cpus_per_worker), ("GPU", options.gpus_per_worker))
            if need > 0]
    return min(fits) if fits else len([n for n in ray.nodes() if n.get("Alive")])


def clean_temp_files(fs, root: str, title_ids) -> list[str]:
    """Remove the temporary files (``.<title_id>....tmp-*``) a killed writer left for these titles."""
    prefixes = tuple(f".{t}." for t in title_ids)
    removed = []
    for d in (storage.SHARDS_DIR, storage.RECORDS_DIR):
        base = posixpath.join(root, d)
        if not prefixes or not fs.exists(base):
            continue
        for p in fs.ls(base, detail=False):
            name = posixpath.basename(p.rstrip("/"))
            if name.startswith(prefixes) and storage.is_temp_name(name):
                fs.rm(p)
                removed.append(p)
    return removed


class _Run:
    """The driver's state for one ``harvest_sources`` call."""

    def __init__(self, ray, plan, output_url, config, options, on_record, on_progress):
        self.ray, self.plan, self.options = ray, plan, options
        self.on_record, self.on_progress = on_record, on_progress
        self.fs, self.root = storage.open_fs(output_url)
        Actor = _actor_class(ray)
        env = fault_env()
        opts = dict(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
                    max_concurrency=options.titles_per_worker + 1,
                    runtime_env={"env_vars": env} if env else None)
        threads = max(1, int(options.cpus_per_worker))
        self.spawn_actor = lambda: Actor.options(**opts).remote(output_url, config, options, threads)
        self.queue = list(plan.todo)
        self.attempts = {s.title_id: 0 for s in plan.todo}
        self.pending: dict = {}     # ready ref -> (actor, spawned at)
        self.idle: list = []        # (actor, node_id): one entry per free title slot
        self.running: dict = {}     # process ref -> (actor, node_id, source, started)
        self.reserved: dict = {}    # process ref -> slots it holds beyond its own (a solo run)
        self.solo: set = set()      # title_ids to run alone on a worker (timed out beside others)
        self.polls: dict = {}       # progress ref -> process ref
        self.positions: dict = {}   # title_id -> last progress dict
        self.records: list = []
        self.start_failures = 0     # consecutive actor starts that failed
        self.last_error = ""
        self.starved_since = None
        self.cap, self.cap_at = 0, -math.inf
        self.poll_at = time.monotonic()

    # -- bookkeeping ---------------------------------------------------------------------------
    def record(self, record: dict) -> None:
        self.records.append(record)
        self.positions.pop(record["title_id"], None)
        if self.on_record:
            self.on_record(record)

    def fail(self, source: Source, error: str, seconds: float = 0.0) -> None:
        record = new_record(source, self.plan.config_hash, self.plan.backend,
                            self.plan.requested_hash)
        record = finish(record, error, time.perf_counter() - seconds)
        record["attempts"] = self.attempts[source.title_id]      # 0: never reached a worker
        storage.write_record(self.fs, self.root, record)
        self.record(record)

    def kill(self, actor) -> None:
        """Kill an actor and forget its free slots; its running titles come back through
        ``finished`` as system failures (retried), except the one a deadline killed it for."""
        self.idle = [slot for slot in self.idle if slot[0] is not actor]
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def live(self) -> dict:
        """Started actors (by identity) -> titles running on each."""
        out = {id(a): [a, 0] for a, _ in self.idle}
        for a, *_ in self.running.values():
            out.setdefault(id(a), [a, 0])[1] += 1
        return out

    def held(self) -> int:
        return len(self.pending) + len(self.live())

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        clean_temp_files(self.fs, self.root, self.attempts)
        try:
            while self.queue or self.running:
                self.size_pool()
                self.dispatch()
                self.wait()
                self.check_deadlines()
                self.give_up_if_stuck()
                self.poll_progress()
        finally:
            for actor, *_ in list(self.pending.values()) + self.idle + list(self.running.values()):
                self.kill(actor)
        return self.records

    def size_pool(self) -> None:
        """Spawn actors up to the pool size; drop pending ones the run no longer needs or the
        alive nodes have no room for. Without ``workers`` the size follows the alive nodes (at
        least one, so an autoscaler sees demand); with it, pending actors wait for new nodes."""
        now = time.monotonic()
        if now - self.cap_at >= CAPACITY_EVERY:
            self.cap, self.cap_at = capacity(self.ray, self.options), now
        per = self.options.titles_per_worker
        want = min(self.options.workers or max(1, self.cap),
                   math.ceil((len(self.queue) + len(self.running)) / per))
        live = len(self.live())
        while self.held() < want:
            actor = self.spawn_actor()
            self.pending[actor.ready.remote()] = (actor, now)
        surplus = self.held() - max(want, live)
        for ref in sorted(self.pending, key=lambda r: -self.pending[r][1])[:max(0, surplus)]:
            self.kill(self.pending.pop(ref)[0])
        if not self.queue:                      # nothing left to hand out: free the idle actors
            for actor, running in list(self.live().values()):
                if running == 0:
                    self.kill(actor)
        for ref, (actor, since) in list(self.pending.items()):
            if now - since > self.options.start_timeout:
                self.pending.pop(ref)
                self.kill(actor)
                self.start_failed(f"actor did not start within {self.options.start_timeout:g} s")

    def start_failed(self, error: str) -> None:
        self.start_failures += 1
        self.last_error = error

    def dispatch(self) -> None:
        """Hand queued titles to free slots, the least busy actor's first. A title that timed out
        while sharing a worker runs alone next time (all of one idle actor's slots), so a hang
        is blamed on the title that hangs and not on the one beside it."""
        while self.queue and self.idle:
            live = self.live()
            k = next((i for i, s in enumerate(self.queue) if s.title_id not in self.solo), None)
            free = [a for a, n in live.values() if n == 0]
            if self.solo and free:
                k = next((i for i, s in enumerate(self.queue) if s.title_id in self.solo), k)
            if k is None:
                return                      # only solo titles left and no actor is free
            source = self.queue.pop(k)
            if source.title_id in self.solo:
                actor = free[0]
                node = next(n for a, n in self.idle if a is actor)
                extra = sum(a is actor for a, _ in self.idle) - 1
                self.idle = [slot for slot in self.idle if slot[0] is not actor]
            else:
                i = min(range(len(self.idle)), key=lambda i: live[id(self.idle[i][0])][1])
                (actor, node), extra = self.idle.pop(i), 0
            self.attempts[source.title_id] += 1
            ref = actor.process.remote(source, self.attempts[source.title_id])
            self.running[ref] = (actor, node, source, time.monotonic())
            self.reserved[ref] = extra
            self.positions[source.title_id] = {"title_id": source.title_id, "node_id": node,
                                               "frames": 0, "total": 0, "fps": 0.0,
                                               "attempt": self.attempts[source.title_id]}

    def wait(self) -> None:
        refs = list(self.running) + list(self.pending)
        if not refs:
            time.sleep(0.2)
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.5)
        for ref in ready:
            if ref in self.pending:
                self.started(ref)
            else:
                self.finished(ref)

    def started(self, ref) -> None:
        actor, _ = self.pending.pop(ref)
        try:
            node = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor could not start (node gone, bad models)
            self.kill(actor)
            self.start_failed(_one_line(exc))
            return
        self.start_failures = 0
        self.idle.extend([(actor, node)] * self.options.titles_per_worker)

    def finished(self, ref) -> None:
        actor, node, source, started = self.running.pop(ref)
        extra = self.reserved.pop(ref, 0)
        try:
            record = self.ray.get(ref)
        except system_errors() as exc:
            self.kill(actor)
            tid, n = source.title_id, self.attempts[source.title_id]
            clean_temp_files(self.fs, self.root, [tid])
            if n < self.options.max_attempts:
                self.positions.pop(tid, None)
                self.queue.insert(0, source)     # next live actor takes it
            else:
                self.fail(source, f"worker died on each of {n} attempts (max_attempts "
                                  f"{self.options.max_attempts}): {_one_line(exc)}",
                          time.monotonic() - started)
            return
        except Exception as exc:  # noqa: BLE001 - a bug in the worker, not a dead machine
            self.kill(actor)
            clean_temp_files(self.fs, self.root, [source.title_id])
            self.fail(source, f"worker error: {_one_line(exc)}", time.monotonic() - started)
            return
        self.idle.extend([(actor, node)] * (1 + extra))
        self.record(record)

    def check_deadlines(self) -> None:
        """A title over ``title_timeout`` gets its actor killed. Alone on it, the title fails
        (it would hang again). Beside other titles, a hang in one (holding the GIL, say) stops
        them all, so the titles over the deadline go back to the queue to run alone, up to
        ``max_attempts``; the others on the actor come back through ``finished`` as a lost
        worker (retried)."""
        now = time.monotonic()
        for ref, (actor, _, source, started) in list(self.running.items()):
            if ref not in self.running or now - started <= self.options.title_timeout:
                continue
            shared = [r for r, (a, *_) in self.running.items() if a is actor and r != ref]
            self.kill(actor)
            over = [ref] + [r for r in shared if now - self.running[r][3] > self.options.title_timeout]
            for r in over:
                _, _, src, began = self.running.pop(r)
                self.reserved.pop(r, None)
                tid = src.title_id
                clean_temp_files(self.fs, self.root, [tid])
                if shared and self.attempts[tid] < self.options.max_attempts:
                    self.solo.add(tid)
                    self.positions.pop(tid, None)
                    self.queue.insert(0, src)
                else:
                    self.fail(src, f"TimeoutError: title did not finish within "
                                   f"{self.options.title_timeout:g} s (worker killed"
                                   f"{', ran alone' if tid in self.solo else ''})", now - began)

    def give_up_if_stuck(self) -> None:
        """Titles queued and no live actor: wait for one to start, but not forever."""
        if not self.queue or self.idle or self.running:
            self.starved_since = None
            return
        now = time.monotonic()
        self.starved_since = self.starved_since or now
        reason = None
        if self.start_failures >= self.options.max_attempts:
            reason = f"{self.start_failures} actor starts failed in a row; last: {self.last_error}"
        elif now - self.starved_since > self.options.start_timeout:
            reason = (f"no actor ({self.options.cpus_per_worker:g} CPU, "
                      f"{self.options.gpus_per_worker:g} GPU) came alive within "
                      f"{self.options.start_timeout:g} s ({self.cap} fit on the alive nodes)")
        if reason:
            while self.queue:
                self.fail(self.queue.pop(0), f"no worker could be started: {reason}")

    def poll_progress(self) -> None:
        """Ask each running actor where its title is, without ever blocking on one."""
        if self.polls:
            ready, _ = self.ray.wait(list(self.polls), num_returns=len(self.polls), timeout=0)
            for ref in ready:
                pref = self.polls.pop(ref)
                try:
                    pos = self.ray.get(ref)
                except Exception:  # noqa: BLE001 - the actor died; finished() handles it
                    continue
                if pref in self.running and pos:
                    source = self.running[pref][2]
                    if pos.get("title_id") == source.title_id:
                        self.positions[source.title_id].update(pos)
        now = time.monotonic()
        if now - self.poll_at < PROGRESS_EVERY:
            return
        self.poll_at = now
        busy = set(self.polls.values())
        for pref, (actor, _, source, _) in self.running.items():
            if pref not in busy:
                self.polls[actor.progress.remote(source.title_id)] = pref
        if self.on_progress is not None:
            self.on_progress([dict(p) for p in self.positions.values()])


def harvest_sources(plan: Plan, output_url: str, config: HarvestConfig, options: RunOptions,
                    on_record=None, on_progress=None) -> list[dict]:
    """Harvest ``plan.todo`` on Ray; returns one record per source (order of completion).

    ``on_record(record)`` is called as each title ends; ``on_progress(positions)`` about every
    second with one dict per running title: title_id, node_id, attempt, frames (decoded so far),
    total (frames the container reports), fps (frames decoded per second of this attempt).
    """
    if not plan.todo:
        return []
    return _Run(_ray(), plan, output_url, config, options, on_record, on_progress).run()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()
