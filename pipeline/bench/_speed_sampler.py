"""Peak resident memory of Dask worker processes, sampled by a thread inside each worker.

Why our own sampler and not distributed's metrics: the worker's ``SystemMonitor`` records
RSS every 500 ms (``distributed.admin.system-monitor.interval``) and the scheduler keeps only
the latest value, so a kernel's temporaries that live for a fraction of a second are easily
missed, and there is no "peak since" query. A daemon thread in the worker process reading
``psutil.Process().memory_info().rss`` every ``interval`` seconds (a ~20 microsecond call)
catches them and keeps the peak since the last reset. ``ru_maxrss`` would be exact but
cannot be reset between measurements.

The functions are run on every worker with ``client.run``; each worker process keeps one
sampler in a module global.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil

DEFAULT_INTERVAL_S = 0.01


class _RssSampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="phyvlm-rss-sampler", daemon=True)
        self.interval = interval
        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            rss = self.process.memory_info().rss
            with self._lock:
                if rss > self.peak:
                    self.peak = rss

    def reset(self) -> int:
        rss = self.process.memory_info().rss
        with self._lock:
            self.baseline = self.peak = rss
        return rss

    def read(self) -> dict[str, int]:
        rss = self.process.memory_info().rss
        with self._lock:
            self.peak = max(self.peak, rss)
            return {"baseline": self.baseline, "peak": self.peak, "now": rss}

    def stop(self) -> None:
        self._stopped.set()


_SAMPLER: _RssSampler | None = None


def start_sampler(interval: float = DEFAULT_INTERVAL_S) -> int:
    """Start (once per process) the sampler; return the current RSS. Run with client.run."""
    global _SAMPLER
    if _SAMPLER is None or not _SAMPLER.is_alive():
        _SAMPLER = _RssSampler(interval)
        _SAMPLER.start()
    return _SAMPLER.reset()


def reset_peak() -> int:
    """Forget the peak (it restarts at the current RSS); return the current RSS."""
    if _SAMPLER is None:
        raise RuntimeError("the RSS sampler is not running in this process: call start_sampler")
    return _SAMPLER.reset()


def read_peak() -> dict[str, int]:
    """{"baseline": RSS at the last reset, "peak": highest RSS since, "now": RSS now}."""
    if _SAMPLER is None:
        raise RuntimeError("the RSS sampler is not running in this process: call start_sampler")
    return _SAMPLER.read()


class WorkerMemory:
    """Start samplers on every worker of ``client``; ``reset()`` then ``read()`` per measurement."""

    def __init__(self, client: Any, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.client = client
        self.idle = client.run(start_sampler, interval)  # {worker address: RSS}

    def reset(self) -> dict[str, int]:
        return self.client.run(reset_peak)

    def read(self) -> dict[str, dict[str, int]]:
        return self.client.run(read_peak)


class ProcessPeak(threading.Thread):
    """Peak RSS of this process (a benchmark's driver: search, graph, client-side steps)
    between ``start()`` and ``stop.set()``; ``start_rss`` is the RSS when it was made."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(name="phyvlm-driver-rss", daemon=True)
        self.interval = interval
        self.process = psutil.Process()
        self.start_rss = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)


def peak_figures(peaks: dict[str, dict[str, int]], driver: ProcessPeak) -> dict[str, Any]:
    """The memory columns of a benchmark row, MiB: each worker's peak and idle RSS
    (``WorkerMemory.read``), the largest worker peak, and the driver's peak and start."""
    mib = 2**20
    return {
        "worker_peak_mib": {a: round(p["peak"] / mib) for a, p in peaks.items()},
        "worker_idle_mib": {a: round(p["baseline"] / mib) for a, p in peaks.items()},
        "max_worker_peak_mib": round(max(p["peak"] for p in peaks.values()) / mib),
        "driver_peak_mib": round(driver.peak / mib),
        "driver_start_mib": round(driver.start_rss / mib),
    }
