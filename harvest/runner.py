"""Distribution at the edge: Ray actors harvest titles; the driver schedules, times out and records.

Each actor loads the face backend once (``TitleWorker``) and writes its shards and records itself.
The driver gives each title a deadline; a title that outlives it (e.g. decord stuck in native code
holding the GIL) gets its actor killed and a "failed" record, and a fresh actor takes its place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from harvest import storage
from harvest.config import HarvestConfig, RunOptions
from harvest.faults import fault_env
from harvest.schema import STATUS_DONE
from harvest.sources import Source, list_sources
from harvest.worker import TitleWorker, config_hash, finish, new_record


@dataclass(frozen=True)
class Plan:
    sources: list          # every source found
    todo: list             # sources to harvest now
    skipped: list          # records of titles already done with this config
    config_hash: str
    backend: str


def plan_run(input_url: str, output_url: str, config: HarvestConfig,
             options: RunOptions) -> Plan:
    sources = list_sources(input_url)
    backend, cfg_hash = config_hash(config)
    fs, root = storage.open_fs(output_url)
    records = storage.read_records(fs, root)
    todo, skipped = [], []
    for s in sources:
        rec = records.get(s.title_id)
        if rec and rec["status"] == STATUS_DONE and rec["config_hash"] == cfg_hash:
            skipped.append(rec)
        elif rec and rec["status"] != STATUS_DONE and not options.retry_failed:
            skipped.append(rec)
        else:
            todo.append(s)
    return Plan(sources, todo, skipped, cfg_hash, backend)


def _ray():
    import ray
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)   # honours RAY_ADDRESS
    return ray


def _actor_class(ray):
    @ray.remote(max_restarts=0, max_task_retries=0)
    class HarvestActor:
        def __init__(self, output_url, config, options, threads):
            self.worker = TitleWorker(output_url, config, options, threads=threads)

        def process(self, source: Source) -> dict:
            return self.worker.process(source)
    return HarvestActor


def harvest_sources(plan: Plan, output_url: str, config: HarvestConfig, options: RunOptions,
                    on_record=None) -> list[dict]:
    """Harvest ``plan.todo`` on Ray; returns one record per source (order of completion)."""
    todo, backend_name, cfg_hash = plan.todo, plan.backend, plan.config_hash
    if not todo:
        return []
    ray = _ray()
    Actor = _actor_class(ray)
    n = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // options.cpus_per_worker))
    n = max(1, min(n, len(todo)))
    threads = max(1, int(options.cpus_per_worker))
    actor_opts = dict(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
                      runtime_env={"env_vars": fault_env()} if fault_env() else None)
    fs, root = storage.open_fs(output_url)

    def spawn():
        return Actor.options(**actor_opts).remote(output_url, config, options, threads)

    idle = [spawn() for _ in range(n)]
    queue = list(todo)
    running: dict = {}          # ObjectRef -> (actor, source, started)
    records = []

    def done(record):
        records.append(record)
        if on_record:
            on_record(record)

    while queue or running:
        while queue and idle:
            actor, source = idle.pop(), queue.pop(0)
            running[actor.process.remote(source)] = (actor, source, time.monotonic())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        for ref in ready:
            actor, source, started = running.pop(ref)
            try:
                done(ray.get(ref))
                idle.append(actor)
            except Exception as exc:  # noqa: BLE001 - the actor died: record it, replace it
                _fail(fs, root, source, cfg_hash, backend_name, f"worker died: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}", started, done)
                ray.kill(actor)
                idle.append(spawn())
        now = time.monotonic()
        for ref, (actor, source, started) in list(running.items()):
            if now - started > options.title_timeout:
                running.pop(ref)
                ray.kill(actor, no_restart=True)
                _fail(fs, root, source, cfg_hash, backend_name,
                      f"TimeoutError: title did not finish within {options.title_timeout:g} s "
                      f"(worker killed)", started, done)
                idle.append(spawn())
    for actor in idle:
        ray.kill(actor)
    return records


def _fail(fs, root, source, cfg_hash, backend, error, started, done):
    record = new_record(source, cfg_hash, backend)
    started_perf = time.perf_counter() - (time.monotonic() - started)
    record = finish(record, error, started_perf)
    storage.write_record(fs, root, record)
    done(record)
