"""GPU utilisation sampling for the benchmarks (bench/harvest.py, bench/schedule.py)."""
from __future__ import annotations


class GpuSampler:
    """Mean GPU utilisation (%) over a run, sampled every 0.2 s in a thread through NVML
    (``torch.cuda.utilization``); ``mean`` is None without a GPU or NVML."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self._stop = enabled, [], None

    def __enter__(self):
        if self.enabled:
            import threading
            import torch
            self._stop = threading.Event()

            def loop():
                while not self._stop.wait(0.2):
                    try:
                        self.samples.append(torch.cuda.utilization())
                    except Exception:  # noqa: BLE001 - no NVML: no figure
                        return
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None
