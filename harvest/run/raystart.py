"""Starting (or joining) Ray for every command that needs it: ``harvest run``, ``train``,
``cluster``.

One line on stderr says what is happening before the ~20 s a local cluster takes to start, and
one when it is ready. Ray's own start-up chatter (the "started a local Ray instance" line with
the dashboard URL, INFO logs, the notice that token authentication is on) stays out of the
console unless ``verbose``; Ray's warnings and errors still show. Under ``ray job submit``
(``RAY_ADDRESS`` set) the driver joins the job's cluster instead of starting one.
"""
from __future__ import annotations

import logging
import os
import sys

QUIET_LEVEL = logging.WARNING
# Logged by Ray at WARNING level although nothing is wrong (a new local cluster turned token
# authentication on, as it should): shown only with ``verbose``.
NOTICES = {"ray._private.authentication.authentication_token_setup":
           ("Token authentication is enabled for this Ray cluster",)}


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _quiet_notices() -> None:
    for name, prefixes in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))


def starting_line(address: str | None) -> str:
    """What the console says before Ray starts or is joined."""
    if address:
        return f"connecting to the Ray cluster at {address} ..."
    return "starting a local Ray cluster (about 20 s; --verbose shows Ray's own log) ..."


def init_ray(verbose: bool = False, *, log_to_driver: bool = True, out=None, **kwargs):
    """``ray.init`` unless Ray is up already; returns the ``ray`` module.

    ``log_to_driver``: whether the workers' stdout/stderr (e.g. a training loop's epoch lines)
    reach this console; ``kwargs`` go to ``ray.init``."""
    import ray
    if ray.is_initialized():
        return ray
    out = out or sys.stderr
    print(f"ray: {starting_line(kwargs.get('address') or os.environ.get('RAY_ADDRESS'))}",
          file=out, flush=True)
    if not verbose:
        _quiet_notices()
        kwargs.setdefault("logging_level", QUIET_LEVEL)
        kwargs.setdefault("include_dashboard", False)   # ignored when joining a cluster
    ray.init(ignore_reinit_error=True, log_to_driver=log_to_driver, **kwargs)
    res = ray.cluster_resources()
    print(f"ray: ready ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)", file=out,
          flush=True)
    return ray
