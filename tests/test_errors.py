"""Worker setup errors: raised on a worker, found by the driver in the job's failure text."""

from __future__ import annotations

import pytest

from prodclf.errors import RunFailed, worker_setup_error, worker_setup_fails_run

pytestmark = pytest.mark.spark4

# How a worker's exception reaches the driver: inside the JVM's stage failure (abridged from
# a run of test_cluster.py's GPU test), once per task attempt.
STAGE_FAILURE = """An error occurred while calling o312.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 20.0 \
failed 4 times, most recent failure: Lost task 1.3 in stage 20.0 (TID 617) (127.0.0.1 executor \
0): org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/prodclf/model/runtime.py", line 138, in gpu_device
    raise GpuUnavailable(
prodclf.errors.GpuUnavailable: Spark gave this task GPU 0, but TensorFlow in the worker sees \
no GPU: do this

\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException
"""


def test_a_worker_setup_error_fails_the_run_in_one_line() -> None:
    with pytest.raises(RunFailed) as info, worker_setup_fails_run("run r1"):
        raise RuntimeError(STAGE_FAILURE)
    assert str(info.value) == (
        "run r1 failed, nothing published: GpuUnavailable: Spark gave this task GPU 0, but "
        "TensorFlow in the worker sees no GPU: do this"
    )
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    "failure",
    [
        "Job aborted: prodclf.errors.RowError: not a worker setup error",
        "Job aborted: ValueError: GpuUnavailable: a name, not the worker's exception",
        "",
    ],
)
def test_other_job_failures_pass_through(failure: str) -> None:
    with pytest.raises(RuntimeError) as info, worker_setup_fails_run("run r1"):
        raise RuntimeError(failure)
    assert not isinstance(info.value, RunFailed)
    assert str(info.value) == failure


def test_every_worker_setup_error_is_found() -> None:
    for name in ("GpuUnavailable", "VersionSkew"):
        assert worker_setup_error(f"...\nprodclf.errors.{name}: why\n") == f"{name}: why"
