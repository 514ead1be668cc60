"""Fault injection for tests (documented, off unless the variable is set).

HARVEST_FAULT_HANG_ON=<substring>: a worker harvesting a source whose URI contains the substring
blocks in native code while holding the GIL (as decord does on some broken containers, dmlc/decord
#373), so only the runner's per-title timeout can end it.
"""
from __future__ import annotations

import ctypes
import os

ENV_PREFIX = "HARVEST_FAULT_"


def fault_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def maybe_hang(uri: str) -> None:
    needle = os.environ.get(ENV_PREFIX + "HANG_ON")
    if needle and needle in uri:
        ctypes.PyDLL(None).sleep(24 * 3600)   # PyDLL keeps the GIL held during the call
