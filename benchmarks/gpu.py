"""``--gpu``: the same comparison on a GPU executor, several tasks sharing one GPU.

Spark schedules GPUs only with a cluster manager, so the session is ``local-cluster`` (a
standalone master and one worker, in-process launchers) whose worker and executor find their
GPUs with ``gpu_discovery.sh`` (nvidia-smi), and each task asks for ``1/tasks_per_gpu`` of a
GPU (``spark.task.resource.gpu.amount``, e.g. 0.25: four tasks per GPU). prodclf runs with
``use_gpu=True`` (each task's predictor on the GPU Spark gave it); the peers let TensorFlow
place the model (the GPU when one is visible). M is measured on the GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DISCOVERY_SCRIPT = Path(__file__).resolve().parent / "gpu_discovery.sh"


def task_gpu_amount(tasks_per_gpu: int) -> str:
    if tasks_per_gpu < 1:
        raise ValueError(f"tasks per GPU must be at least 1, not {tasks_per_gpu}")
    return "1" if tasks_per_gpu == 1 else repr(1.0 / tasks_per_gpu)


def gpu_spark_conf(
    cores: int,
    tasks_per_gpu: int = 4,
    gpus: int = 1,
    executor_memory_mb: int = 8192,
    script: Path = DISCOVERY_SCRIPT,
    python: str = sys.executable,
) -> tuple[str, dict[str, str]]:
    """(master, settings) for a one-executor ``local-cluster`` with ``gpus`` shared GPUs."""
    if cores < 1 or gpus < 1:
        raise ValueError("cores and gpus must be at least 1")
    return f"local-cluster[1,{cores},{executor_memory_mb}]", {
        "spark.worker.resource.gpu.amount": str(gpus),
        "spark.worker.resource.gpu.discoveryScript": str(script),
        "spark.executor.resource.gpu.amount": str(gpus),
        "spark.executor.resource.gpu.discoveryScript": str(script),
        "spark.task.resource.gpu.amount": task_gpu_amount(tasks_per_gpu),
        "spark.executor.cores": str(cores),
        "spark.task.cpus": "1",
        "spark.executor.memory": f"{executor_memory_mb}m",
        "spark.pyspark.python": python,
    }


def discover(script: Path = DISCOVERY_SCRIPT) -> list[str]:
    """The GPU addresses the discovery script reports; SystemExit with one line when none."""
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench --gpu: {why}; run it on a machine with an NVIDIA GPU")
    addresses: list[str] = json.loads(proc.stdout)["addresses"]
    return addresses


def tensorflow_gpus(python: str = sys.executable) -> int:
    code = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    return int(lines[-1]) if proc.returncode == 0 and lines and lines[-1].isdigit() else 0


def preflight(python: str = sys.executable) -> list[str]:
    """Stop with one line unless a GPU is there and this TensorFlow can use it."""
    addresses = discover()
    if not tensorflow_gpus(python):
        raise SystemExit(
            "bench --gpu: TensorFlow here sees no GPU (tensorflow-cpu?): install "
            "tensorflow[and-cuda]==2.21.0 in the environment first"
        )
    return addresses
