"""Peak RSS of the Python workers under a process, sampled from a thread.

Spark's Python workers are forks of ``pyspark.daemon`` under the JVM (a child of the driver);
Ray's are the ``ray::`` processes under the Ray peer's process. Resident memory is sampled
every ``interval`` seconds (psutil); a worker's RSS counts the pages it shares with its
daemon, so the peak per worker is an upper bound of what it alone needs.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil

SPARK_WORKER = "pyspark.daemon"
RAY_WORKER = "ray::"


class RssSampler:
    def __init__(self, root_pid: int, marker: str, interval: float = 0.2) -> None:
        self.root = psutil.Process(root_pid)
        self.marker = marker
        self.interval = interval
        self.peak_worker = 0
        self.peak_total = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _matches(self, proc: psutil.Process) -> bool:
        cmd = " ".join(proc.cmdline())
        return self.marker in cmd

    def sample(self) -> None:
        total = 0
        for proc in self.root.children(recursive=True):
            try:
                if not self._matches(proc):
                    continue
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.workers_seen.add(proc.pid)
            total += rss
            self.peak_worker = max(self.peak_worker, rss)
        self.peak_total = max(self.peak_total, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict[str, float]:
        mib = 1024 * 1024
        return {
            "peak_worker_rss_mib": self.peak_worker / mib,
            "peak_workers_total_rss_mib": self.peak_total / mib,
            "workers": len(self.workers_seen),
        }
