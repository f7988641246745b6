"""Progress of a long run on the driver: products done of total, images/s, ETA.

A daemon thread polls Spark's status tracker every ``interval_s`` seconds for the jobs of
one job group (the run's write) and logs one line. Products done are estimated from the
tagging stage's completed tasks: the products are hash-partitioned into equal tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

log = logging.getLogger("prodclf.progress")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """``with Progress(sc, group, total, tasks, interval_s, label):`` around the write."""

    def __init__(
        self, sc: Any, group: str, total: int, tasks: int, interval_s: float, label: str
    ) -> None:
        self.sc = sc
        self.group = group
        self.total = total
        self.tasks = max(1, tasks)
        self.interval_s = interval_s
        self.label = label
        self.samples: list[list[float]] = []  # [seconds since start, products done]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def done(self) -> int:
        """Products done so far, estimated from the tagging stage's completed tasks."""
        tracker = self.sc.statusTracker()
        best = 0
        for job_id in tracker.getJobIdsForGroup(self.group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else []:
                stage = tracker.getStageInfo(stage_id)
                if stage is not None and stage.numTasks == self.tasks:
                    best = max(best, stage.numCompletedTasks)
        return min(self.total, round(self.total * best / self.tasks))

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = _duration((self.total - done) / rate) if rate > 0 else "unknown"
        return (
            f"{self.label}: {done} of {self.total} products ({pct:.0f}%), "
            f"{rate:.1f} images/s, ETA {eta}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                elapsed = time.perf_counter() - self._t0
                done = self.done()
                self.samples.append([round(elapsed, 1), done])
                log.info(self.line(done, elapsed))
            except Exception as exc:  # the tracker is best effort; never fail the run
                log.debug("progress unavailable: %s", exc)

    def __enter__(self) -> Progress:
        self._t0 = time.perf_counter()
        self.sc.setJobGroup(self.group, self.label)
        if self.interval_s > 0 and self.total > 0:
            self._thread = threading.Thread(target=self._run, name="prodclf-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sc.setLocalProperty("spark.jobGroup.id", None)
        self.sc.setLocalProperty("spark.job.description", None)
