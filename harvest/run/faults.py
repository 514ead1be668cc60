"""Fault injection for tests (documented, off unless a variable is set). The runner passes every
``HARVEST_FAULT_*`` variable of the driver on to its actors.

HARVEST_FAULT_HANG_ON=<substring>: a worker harvesting a source whose URI contains the substring
blocks in native code while holding the GIL (as decord does on some broken containers, dmlc/decord
#373), so only the runner's per-title timeout can end it.

HARVEST_FAULT_STALL_ON_NODE=<Ray node id>: a worker on that node waits (GIL released, up to
HARVEST_FAULT_STALL_SECONDS, default 300) before harvesting each title. It only fixes timing
(a title is surely running on that node when a test removes the node); it fails nothing.

HARVEST_FAULT_CRASH_ON=<substring>: the worker process harvesting a matching source exits at once
(``os._exit``), as a segfault or the OOM killer would end it: a system failure, not bad input.

HARVEST_FAULT_AUTO_BACKEND=<backend name>: a worker resolves ``--backend auto`` to that backend,
as a node of another type would (torch on a GPU node behind a CPU head); the driver, which never
reads it, resolves ``auto`` as usual.
"""
from __future__ import annotations

import ctypes
import os
import time

ENV_PREFIX = "HARVEST_FAULT_"


def fault_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def backend_here(requested: str) -> str:
    """The backend a worker loads for ``requested``: itself, or under HARVEST_FAULT_AUTO_BACKEND
    the named one in place of ``auto``."""
    name = os.environ.get(ENV_PREFIX + "AUTO_BACKEND")
    return name if name and requested == "auto" else requested


def maybe_hang(uri: str) -> None:
    needle = os.environ.get(ENV_PREFIX + "HANG_ON")
    if needle and needle in uri:
        ctypes.PyDLL(None).sleep(24 * 3600)   # PyDLL keeps the GIL held during the call
    needle = os.environ.get(ENV_PREFIX + "CRASH_ON")
    if needle and needle in uri:
        os._exit(70)
    node = os.environ.get(ENV_PREFIX + "STALL_ON_NODE")
    if node:
        import ray
        if ray.is_initialized() and ray.get_runtime_context().get_node_id() == node:
            time.sleep(float(os.environ.get(ENV_PREFIX + "STALL_SECONDS", "300")))
