"""The tagging job on a real Spark standalone cluster (master + one worker on loopback).

The master and worker are started from the pyspark distribution as subprocesses, and the
job goes through ``spark-submit --master spark://...`` exactly as in production, with
its Python code running in the worker's executor. The executor runs on this machine, so
it uses this virtualenv's Python (no environment archive needed). Outputs are read back
with pyarrow: no local SparkSession is started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pyspark
import pytest
from conftest import COLORS, ROOT, png_bytes
from support.outputs import without_churn

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.spark4]

SPARK_HOME = Path(pyspark.__file__).resolve().parent
JOB = ROOT / "jobs" / "tag_catalog.py"
RUN_DATE = "2024-05-01"
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 240
FAKE_GPUS = ["0", "1"]


@dataclass
class Cluster:
    master_url: str
    webui: str
    work_dir: Path
    logs: dict[str, Path]
    gpu_discovery: Path

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- {name} log ({path}) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYSPARK_"))}
    env.update(
        {
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a daemon and everything it started: its whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        # Executors and Python workers may outlive the daemon JVM in the same group.
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("standalone")
    work_dir = root / "worker-work"
    work_dir.mkdir()
    port, master_ui, worker_ui = _free_port(), _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    # The worker "has" two GPUs: its discovery script says so, and no GPU is there. Spark
    # schedules them all the same, so the GPU path is driven up to TensorFlow.
    gpus = root / "two-fake-gpus.sh"
    gpus.write_text(f"#!/bin/sh\necho '{json.dumps({'name': 'gpu', 'addresses': FAKE_GPUS})}'\n")
    gpus.chmod(0o755)
    env = {
        **_base_env(),
        "SPARK_WORKER_DIR": str(work_dir),
        "SPARK_DAEMON_MEMORY": "512m",
        "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount={len(FAKE_GPUS)} "
        f"-Dspark.worker.resource.gpu.discoveryScript={gpus}",
    }
    commands = {
        "master": [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(master_ui),
        ],
        "worker": [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            master_url,
            "--host",
            "127.0.0.1",
            "--cores",
            "2",
            "--memory",
            "2g",
            "--webui-port",
            str(worker_ui),
            "--work-dir",
            str(work_dir),
        ],
    }
    logs = {name: root / f"{name}.log" for name in commands}
    cl = Cluster(master_url, f"http://127.0.0.1:{master_ui}", work_dir, logs, gpus)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd in commands.items():
            with logs[name].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            dead = [name for name, p in zip(commands, procs, strict=True) if p.poll() is not None]
            if dead:
                pytest.fail(f"Spark {', '.join(dead)} exited during start\n{cl.log_tails()}")
            try:
                if cl.state().get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass  # the master's web UI is not up yet
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no worker registered with {master_url} within {START_TIMEOUT_S}s\n"
                    + cl.log_tails()
                )
            time.sleep(0.5)
        yield cl
    finally:
        for proc in reversed(procs):
            _stop(proc)


def spark_submit(cl: Cluster, *job_args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master",
        cl.master_url,
        "--deploy-mode",
        "client",
        "--driver-memory",
        "1g",
        "--executor-memory",
        "1g",
        "--conf",
        "spark.executor.cores=2",
        "--conf",
        "spark.cores.max=2",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        str(JOB),
        *job_args,
    ]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env=_base_env(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )


def build_catalog(root: Path, n_ok: int = 30) -> tuple[Path, list[tuple[Any, ...]]]:
    """Red/blue PNGs plus one corrupt and one missing image; returns (base, expected)."""
    images = root / "images"
    images.mkdir(parents=True)
    rows, expected = [], []
    for i in range(n_ok):
        color = "red" if i % 2 else "blue"
        path = images / f"p{i:03d}.png"
        path.write_bytes(png_bytes(COLORS[color]))
        rows.append((f"p{i:03d}", f"file://{path}"))
        expected.append((f"p{i:03d}", "ok", None, color))
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated, not an image")
    rows.append(("corrupt", f"file://{images}/corrupt.png"))
    expected.append(("corrupt", "error", "undecodable_image", None))
    rows.append(("missing", f"file://{images}/gone.png"))
    expected.append(("missing", "error", "not_found", None))
    base = root / "base"
    base.mkdir()
    frame = pd.DataFrame(rows, columns=["product_id", "image_uri"])
    frame.iloc[:16].to_parquet(base / "part-0.parquet", index=False)
    frame.iloc[16:].to_parquet(base / "part-1.parquet", index=False)
    return base, sorted(expected, key=repr)


def _app(cl: Cluster, name: str, timeout_s: float = 30) -> dict[str, Any]:
    """The master's record of the finished application ``name``."""
    deadline = time.monotonic() + timeout_s
    while True:
        apps = [a for a in cl.state().get("completedapps", []) if a.get("name") == name]
        if apps:
            return apps[0]
        if time.monotonic() > deadline:
            pytest.fail(f"application {name} not among the master's completed apps")
        time.sleep(0.5)


def test_tag_job_runs_on_standalone_cluster(
    cluster: Cluster, color_bundle: Path, tmp_path: Path
) -> None:
    base, expected = build_catalog(tmp_path)
    commodity = tmp_path / "commodity"
    run_id = "cluster-run-1"

    t0 = time.monotonic()
    result = spark_submit(
        cluster,
        "--base-library",
        str(base),
        "--commodity-library",
        str(commodity),
        "--model",
        str(color_bundle),
        "--run-date",
        RUN_DATE,
        "--run-id",
        run_id,
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, (
        f"spark-submit exited {result.returncode} after {elapsed:.0f}s\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}\n"
        + cluster.log_tails()
    )

    table = pq.read_table(commodity / "tags_history").to_pandas()
    got = sorted(
        ((r.product_id, r.status, r.error_code, r.category) for r in table.itertuples()),
        key=repr,
    )
    got = [tuple(None if pd.isna(v) else v for v in row) for row in got]
    assert got == expected
    assert set(table["run_id"]) == {run_id}
    assert {str(d) for d in table["run_date"]} == {RUN_DATE}

    manifest_path = commodity / "_runs" / f"{run_id}.json"
    assert manifest_path.is_file()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["run_id"] == run_id
    assert manifest["ok"] == 30
    assert manifest["errors"] == {"not_found": 1, "undecodable_image": 1}
    assert manifest["rows_written"] == manifest["products_in"] == 32
    # The job prints the manifest it wrote (which says where), and the report's churn.
    lines = result.stdout.splitlines()
    start = lines.index("{")
    printed = json.loads("\n".join(lines[start : lines.index("}", start) + 1]))
    assert printed["manifest_uri"] == manifest_path.as_uri()
    assert without_churn(printed) == manifest

    # It ran on the cluster: the master lists the application as finished, and the
    # worker's executor for it ran the tasks.
    app = _app(cluster, f"prodclf-tag-{run_id}")
    assert app["state"] == "FINISHED"
    assert app["cores"] == 2
    executor_logs = list((cluster.work_dir / app["id"]).glob("*/stderr"))
    assert executor_logs, f"no executor directory for {app['id']} under {cluster.work_dir}"
    assert any("Finished task" in p.read_text(errors="replace") for p in executor_logs)


def test_refusal_through_spark_submit(cluster: Cluster, color_bundle: Path, tmp_path: Path) -> None:
    base, _ = build_catalog(tmp_path, n_ok=2)
    before = sorted(p.name for p in base.iterdir())
    apps_before = len(cluster.state().get("completedapps", []))
    inside = base / "commodity"

    result = spark_submit(
        cluster,
        "--base-library",
        str(base),
        "--commodity-library",
        str(inside),
        "--model",
        str(color_bundle),
        "--run-date",
        RUN_DATE,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    # spark-submit merges the Python driver's stderr into its own stdout (PythonRunner),
    # so the one-line refusal is looked for in both streams.
    errors = [ln for ln in output.splitlines() if ln.startswith("prodclf: error:")]
    assert len(errors) == 1, output
    assert "inside the base library" in errors[0]
    assert not inside.exists()
    assert sorted(p.name for p in base.iterdir()) == before
    # Refused before any SparkSession: nothing was submitted to the master.
    assert len(cluster.state().get("completedapps", [])) == apps_before
    assert not cluster.state().get("activeapps")


def test_a_gpu_task_without_a_usable_gpu_fails_the_run(
    cluster: Cluster, color_bundle: Path, tmp_path: Path
) -> None:
    """Submitted as in production (``infra/submit.sh``, ``PRODCLF_GPU=1``) to a worker whose
    GPUs TensorFlow cannot use (tensorflow-cpu here): each task gets a GPU from Spark, and
    the run fails in one line instead of tagging on the CPU as if nothing were wrong."""
    base, _ = build_catalog(tmp_path, n_ok=16)
    commodity = tmp_path / "commodity"
    run_id = "cluster-gpu-1"
    # The packed environment is not needed on this machine (the executors run this
    # virtualenv's Python, set last below), but submit.sh ships one: an empty archive.
    archive = tmp_path / "env.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    env = {
        **_base_env(),
        "PRODCLF_MASTER": cluster.master_url,
        "PRODCLF_ENV_ARCHIVE": str(archive),
        "PRODCLF_DRIVER_PYTHON": sys.executable,
        "PRODCLF_EXECUTOR_CORES": "2",
        "PRODCLF_EXECUTOR_MEMORY": "1g",
        "PRODCLF_EXECUTOR_MEMORY_OVERHEAD": "512m",
        "PRODCLF_DRIVER_MEMORY": "1g",
        "PRODCLF_GPU": "1",
        "PRODCLF_GPU_DISCOVERY_SCRIPT": str(cluster.gpu_discovery),
        # No task retries: each attempt would fail the same way, only later.
        "PRODCLF_SPARK_ARGS": f"--conf spark.pyspark.python={sys.executable} "
        "--conf spark.driver.host=127.0.0.1 --conf spark.ui.enabled=false "
        "--conf spark.cores.max=2 --conf spark.task.maxFailures=1",
    }
    cmd = [
        str(ROOT / "infra" / "submit.sh"),
        *("--base-library", str(base), "--commodity-library", str(commodity)),
        *("--model", str(color_bundle), "--run-date", RUN_DATE, "--run-id", run_id),
    ]
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )

    output = result.stdout + result.stderr
    assert result.returncode == 3, output[-6000:] + cluster.log_tails()
    errors = [ln for ln in output.splitlines() if ln.startswith("prodclf: error:")]
    assert len(errors) == 1, output[-6000:]
    assert re.fullmatch(
        rf"prodclf: error: run {run_id} failed, nothing published: GpuUnavailable: Spark gave "
        r"this task GPU [01], but TensorFlow in the worker sees no GPU: the executors need "
        r"tensorflow\[and-cuda\] .*"
        r"or set inference.use_gpu: false",
        errors[0],
    ), errors[0]
    assert not (commodity / "_runs" / f"{run_id}.json").exists()
    assert not list((commodity / "tags_history").glob(f"**/run_id={run_id}/*.parquet"))
    app = _app(cluster, f"prodclf-tag-{run_id}")
    assert app["cores"] == 2
