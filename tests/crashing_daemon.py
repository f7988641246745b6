"""A pyspark daemon whose Python workers crash once, mid-task: a test double, not a hook.

Spark starts Python workers through ``spark.python.daemon.module`` (default
``pyspark.daemon``). A job run with ``spark.python.daemon.module=crashing_daemon`` (this
directory on ``PYTHONPATH``) gets pyspark's own daemon, except that before it forks any
worker, ``prodclf.storage.objects.fetch_image_bytes`` is wrapped: the worker that makes
its ``PRODCLF_TEST_CRASH_AT``-th object fetch first kills itself with ``os._exit``, as an
out-of-memory kill or a segfault in a native decoder would: with a crash point past the
first Arrow batch, after the task has already handed rows to its writer. The marker file
``PRODCLF_TEST_CRASH_MARKER`` is created atomically before the crash, so it happens
exactly once per job: the retried task (and every other worker) runs normally.
"""

from __future__ import annotations

import os
import threading
from typing import Any

MARKER_ENV = "PRODCLF_TEST_CRASH_MARKER"
AT_ENV = "PRODCLF_TEST_CRASH_AT"
EXIT_CODE = 57


def arm(marker: str, crash_at: int) -> None:
    from prodclf.storage import objects

    real = objects.fetch_image_bytes
    lock = threading.Lock()
    fetches = 0

    def fetch_image_bytes(ref: Any, cfg: Any) -> bytes:
        nonlocal fetches
        with lock:
            fetches += 1
            n = fetches
        if n == crash_at:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass  # crashed once already: behave
            else:
                os.write(fd, f"{os.getpid()} {ref.uri}\n".encode())
                os.close(fd)
                os._exit(EXIT_CODE)
        data: bytes = real(ref, cfg)
        return data

    objects.fetch_image_bytes = fetch_image_bytes


if __name__ == "__main__":
    # Counters start at zero in every forked worker: each one counts its own fetches.
    arm(os.environ[MARKER_ENV], int(os.environ.get(AT_ENV, "9")))
    from pyspark import daemon

    daemon.manager()
