"""Where prodclf's CPU goes on the benchmark's S3 store: CPU ms per image, per process.

    python benchmarks/cpu_split.py [--images 2000] [--reps 3] [--store-cache-mib 2048]
                                   [--boto3-only]

Runs the ``prodclf`` variant of ``bench.py`` (same catalog, bundle, store and Spark session
settings) and, around each timed run, reads the CPU time (user + system, psutil) of every
process it started: the Spark JVM, the Python workers (``pyspark.daemon`` and its forks), the
store (moto and the latency proxy) and this driver. CPU time, unlike wall time, barely moves
when other work shares the cores, so the split can be compared with the limit's parts (D, M,
F: ``limits.py``) even on a busy machine; the images/s column cannot. Prints one table per run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import photos  # noqa: E402
from peers import prodclf_peer  # noqa: E402
from s3serve import StoreProcess, aws_env, prime, s3_client  # noqa: E402


def group_of(proc: psutil.Process, driver: int, store: int) -> str:
    if proc.pid == driver:
        return "driver (this process)"
    if proc.pid == store:
        return "store (moto + proxy)"
    name = proc.name()
    if name.startswith("java"):
        return "Spark JVM"
    if "pyspark.daemon" in " ".join(proc.cmdline()):
        return "Python workers"
    return name


def cpu_by_group(driver: int, store: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of ``driver``'s process tree, reaped children included."""
    out: dict[int, tuple[str, float]] = {}
    root = psutil.Process(driver)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = (
                group_of(proc, driver, store),
                t.user + t.system + t.children_user + t.children_system,
            )
        except psutil.NoSuchProcess:
            continue
    return out


def split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> Any:
    groups: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        groups[name] = groups.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/cpu_split.py", description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--store-cache-mib", type=int, default=2048)
    ap.add_argument("--engine", choices=("auto", "tensorflow"), default="auto")
    ap.add_argument(
        "--boto3-only",
        action="store_true",
        help="every GET through boto3's get_object (storage.direct_get false)",
    )
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default="bench-workdir")
    args = ap.parse_args(argv)

    from bench import bench_session, cached_frame, make_bundle

    from prodclf.tagging.transforms import plan_partitions

    work = Path(args.workdir).resolve()
    files = photos.local_images("grocery-1000", args.images, work / "images", 1000)
    bundle_dir = make_bundle(work / "bundle")
    store = StoreProcess(args.latency_ms, args.store_cache_mib)
    try:
        uris = photos.upload(files, s3_client(store.direct))
        if args.store_cache_mib:
            prime(uris, store.endpoint)
        with aws_env(store.endpoint):
            spark = bench_session(f"local[{args.cores}]", "cpu-split")
            rows = photos.catalog_rows(uris, args.images)
            base = cached_frame(spark, rows)
            warm = cached_frame(spark, rows[: args.cores * 64])
            partitions = plan_partitions(args.images, spark.sparkContext.defaultParallelism, 2000)
            peer = prodclf_peer(
                spark,
                base,
                warm,
                f"file://{bundle_dir}",
                partitions,
                False,
                args.engine,
                direct_get=not args.boto3_only,
            )
            peer.warm()
            me = os.getpid()
            for rep in range(1, args.reps + 1):
                before, machine0 = cpu_by_group(me, store.proc.pid), psutil.cpu_times()
                t0 = time.perf_counter()
                peer.run()
                wall = time.perf_counter() - t0
                after, machine1 = cpu_by_group(me, store.proc.pid), psutil.cpu_times()
                groups = split(before, after)
                busy = (machine1.user + machine1.system) - (machine0.user + machine0.system)
                print(
                    f"run {rep}: {args.images / wall:.1f} images/s in {wall:.1f} s; the "
                    f"machine's non-nice CPU {busy / wall:.2f} of {psutil.cpu_count()} cores"
                )
                total = sum(groups.values())
                for name, cpu in sorted(groups.items(), key=lambda kv: -kv[1]):
                    print(f"  {name:24s} {1000 * cpu / args.images:6.2f} ms/image")
                print(f"  {'all':24s} {1000 * total / args.images:6.2f} ms/image")
            spark.stop()
    finally:
        store.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
