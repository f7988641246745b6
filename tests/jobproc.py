"""Running ``prodclf tag`` as its own process, and reading what it wrote without Spark.

A job in its own process has its own JVM and Python workers, which read the AWS settings
when they start: that is how a run is pointed at the fault proxy (``AWS_ENDPOINT_URL_S3``)
or given another Spark master (``local[2,2]`` allows a task retry) while the tests' own
SparkSession keeps talking to moto directly. It is also the production path: the console
entry, ``--config`` YAML, exit codes and the manifest printed on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml
from conftest import COLORS, ROOT, png_bytes

JOB_TIMEOUT_S = 300


def make_bucket(s3: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def color_products(s3: Any, bucket: str, n: int, prefix: str = "p") -> dict[str, str]:
    """``n`` red/blue PNG products on S3: product_id -> expected category."""
    expected = {}
    for i in range(n):
        color = "red" if i % 2 else "blue"
        pid = f"{prefix}{i:03d}"
        s3.put_object(Bucket=bucket, Key=f"img/{pid}.png", Body=png_bytes(COLORS[color]))
        expected[pid] = color
    return expected


def write_base(path: Path, rows: list[dict[str, Any]], parts: int = 2) -> Path:
    """A base library of ``parts`` Parquet files with string columns."""
    path.mkdir(parents=True)
    frame = pd.DataFrame(rows).astype({"product_id": "string", "image_uri": "string"})
    step = -(-len(frame) // parts)
    for i in range(parts):
        frame.iloc[i * step : (i + 1) * step].to_parquet(path / f"part-{i}.parquet", index=False)
    return path


def write_config(
    path: Path,
    storage: Mapping[str, Any] | None = None,
    inference: Mapping[str, Any] | None = None,
    spark_conf: Mapping[str, str] | None = None,
) -> Path:
    data = {
        "storage": dict(storage or {}),
        "inference": {"use_gpu": False, **(inference or {})},
        "spark": {
            "conf": {
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": "2",
                "spark.driver.memory": "1g",
                **(spark_conf or {}),
            }
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def job_env(s3_endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment (AWS credentials included) for a job of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.update({"PYSPARK_PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    env.update(extra)
    return env


def tag_argv(
    base: Path | str,
    out: Path | str,
    model: Path | str,
    run_date: str,
    run_id: str,
    config: Path,
    master: str = "local[2]",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prodclf",
        "--log-level",
        "WARNING",
        "tag",
        "--base-library",
        str(base),
        "--commodity-library",
        str(out),
        "--model",
        str(model),
        "--run-date",
        run_date,
        "--run-id",
        run_id,
        "--master",
        master,
        "--config",
        str(config),
    ]


@dataclass
class JobProcess:
    """A ``prodclf tag`` process in its own session (process group), output to files."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_hard()
            raise AssertionError(f"job still running after {timeout}s\n{self.tail()}") from None

    def pids(self) -> list[int]:
        """Every live process of this job: its session (driver, JVM, daemons, workers)."""
        return session_pids(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_hard(self) -> None:
        """SIGKILL the driver and everything it started, one pid at a time: no cleanup runs.

        The JVM goes first: killed alone, the Python driver would let the JVM shut down
        gracefully (it exits on its stdin closing) and abort the Spark job itself.
        """
        for _ in range(5):
            pids = self.pids()
            if not pids:
                break
            pids.sort(key=lambda p: (p == self.proc.pid, p))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            time.sleep(0.2)

    def tail(self, chars: int = 6000) -> str:
        return self.output()[-chars:]

    def manifest_printed(self) -> dict[str, Any]:
        lines = self.stdout.read_text().splitlines()
        start = lines.index("{")
        data: dict[str, Any] = json.loads("\n".join(lines[start : lines.index("}", start) + 1]))
        return data


def session_pids(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (a job started with start_new_session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp session ...; comm may contain spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def start_job(argv: list[str], env: dict[str, str], logs: Path) -> JobProcess:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return JobProcess(proc, out, err, time.monotonic())


@contextlib.contextmanager
def running_job(argv: list[str], env: dict[str, str], logs: Path) -> Iterator[JobProcess]:
    """A job that is always cleaned up: whatever is left of its process group is killed."""
    job = start_job(argv, env, logs)
    try:
        yield job
    finally:
        job.kill_hard()


# --- reading the commodity library as a downstream consumer would ------------------------


def read_partition(out: Path, run_date: str, run_id: str | None = None) -> pd.DataFrame:
    """The tags_history rows of one ``run_date`` (every run, or ``run_id``'s), read with
    pyarrow (hidden ``.``/``_`` paths ignored, as readers do); ``run_id`` as a column."""
    day = out / "tags_history" / f"run_date={run_date}"
    parts = sorted(p for p in day.glob("run_id=*") if run_id in (None, p.name[7:]))
    frames = []
    for part in parts:
        frame = pq.read_table(part).to_pandas()
        frame["run_id"] = part.name[len("run_id=") :]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["product_id", "status", "error_code", "run_id"])
    frame = pd.concat(frames, ignore_index=True)
    return frame.astype(object).where(frame.notna(), None)


def outcome(frame: pd.DataFrame, *cols: str) -> dict[str, tuple[Any, ...]]:
    """product_id -> (status, error_code, *cols); fails on a duplicate product row."""
    ids = frame["product_id"].tolist()
    dupes = sorted({p for p in ids if ids.count(p) > 1})
    assert not dupes, f"duplicate rows for {dupes}"
    return {
        r["product_id"]: (r["status"], r["error_code"], *(r[c] for c in cols))
        for r in frame.to_dict("records")
    }


def manifests(out: Path) -> dict[str, dict[str, Any]]:
    runs = out / "_runs"
    if not runs.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


def complete_runs(out: Path, run_date: str) -> list[str]:
    """The runs of ``run_date`` a downstream consumer may read (docs/data-contracts.md's rule).

    Complete means: a manifest for that ``run_date`` and ``run_id`` whose ``rows_written``
    is the number of rows in the run's own tags_history partition.
    """
    found = []
    for run_id, m in manifests(out).items():
        if m["run_date"] != run_date:
            continue
        if m["rows_written"] == len(read_partition(out, run_date, run_id)):
            found.append(run_id)
    return sorted(found)


def current_rows(out: Path) -> pd.DataFrame:
    """tags_current as a pyarrow reader sees it: through the pointer."""
    pointer = json.loads((out / "tags_current" / "_CURRENT.json").read_text())
    frame: pd.DataFrame = pq.read_table(out / pointer["snapshot"]).to_pandas()
    return frame.astype(object).where(frame.notna(), None)


def staging_debris(out: Path) -> list[Path]:
    """What an unfinished Spark write leaves in the library: hidden staging directories."""
    places = [out / "tags_history", out / "tags_current" / "_v"]
    return sorted(
        p
        for d in places
        if d.is_dir()
        for p in d.iterdir()
        if p.name.startswith((".spark-staging", "_temporary"))
    )


def uncommitted_parts(out: Path) -> list[Path]:
    """Parquet files an unfinished write has produced so far (not visible to readers)."""
    return [p for d in staging_debris(out) for p in d.rglob("part-*.parquet")]
