"""A pyspark daemon that records every model load: a test double, not a hook.

Like ``crashing_daemon``: a job run with ``spark.python.daemon.module=counting_daemon``
(this directory on ``PYTHONPATH``) gets pyspark's own daemon, except that before it forks
any worker, ``prodclf.model.runtime.load_predictor`` is wrapped to append the worker's pid
to the file ``PRODCLF_TEST_LOADS`` each time a model is loaded.
"""

from __future__ import annotations

import os
from typing import Any

LOADS_ENV = "PRODCLF_TEST_LOADS"


def arm(path: str) -> None:
    from prodclf.model import runtime

    real = runtime.load_predictor

    def load_predictor(*args: Any, **kwargs: Any) -> Any:
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    runtime.load_predictor = load_predictor


if __name__ == "__main__":
    arm(os.environ[LOADS_ENV])
    from pyspark import daemon

    daemon.manager()
