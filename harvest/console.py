"""How every console command (``harvest``, ``train``, ``evaluate``, ``cluster``,
``export-head``, ``people``) and every ``jobs/*.py`` script ends its process.

A process that has imported torch and read Parquet through a Python file object (fsspec)
aborts in interpreter finalisation in roughly a third to a half of runs on the 2-core machine
("terminate called without an active exception", exit 134, after all work was done and every
file written): a C++ thread pool torn down while still joinable. A command's exit status is
what scripts and ``ray job submit`` read, so the commands do not run finalisation: output is
flushed, Ray (if this process started or joined it) is shut down, then the process ends with
the command's own status (``os._exit``). The ``*_main(argv)`` functions themselves return their
status, so tests call them in-process as before.
"""
from __future__ import annotations

import importlib
import os
import sys


def finish(code: int | None) -> None:
    """End the process with ``code`` (module doc): flush, shut Ray down, ``os._exit``."""
    code = 0 if code is None else int(code)
    try:
        if "ray" in sys.modules:
            import ray
            if ray.is_initialized():
                ray.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def run(module: str, function: str) -> None:
    """Run ``module.function()`` (a command's main) and end the process with its status."""
    try:
        code = getattr(importlib.import_module(module), function)()
    except SystemExit as e:                 # argparse: --help (0), a usage error (2)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finish(code)


def harvest() -> None:
    run("harvest.cli", "main")


def train() -> None:
    run("training.cli", "train_main")


def evaluate() -> None:
    run("training.cli", "evaluate_main")


def cluster() -> None:
    run("training.cli", "cluster_main")


def export_head() -> None:
    run("training.cli", "export_main")


def people() -> None:
    run("training.people.cli", "main")
