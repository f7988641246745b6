"""Throughput benchmark: prodclf against fair peers, images on S3 behind latency, and the limit.

    python benchmarks/bench.py [--images N] [--reps N] [--storage s3|file] [--latency-ms MS]
                               [--images-source grocery-1000|grocery-orig|synthetic] ...

``make bench`` runs the default comparison. Every variant classifies the same catalog with the
same SavedModel (MobileNet v1 alpha 0.25 at 224x224, the shared pretrained weights) on the same
cores; each is built once, warmed, then timed with the same object, in alternating repetitions
(A B C A B C ...; a Spark variant is warmed again before each of its repetitions, since PySpark
stops Python workers idle for a minute). See ``peers.py`` (the variants), ``s3serve.py`` (the
store and the latency proxy, in a process of their own), ``limits.py`` (D, M, F and LF),
``memory.py`` (worker RSS), ``gpu.py`` (``--gpu``), ``report.py`` (the table). Results:
``<workdir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import limits  # noqa: E402
import photos  # noqa: E402
import report  # noqa: E402
from memory import RAY_WORKER, SPARK_WORKER, RssSampler  # noqa: E402
from peers import (  # noqa: E402
    Peer,
    RayPeerProcess,
    databricks_peer,
    predict_batch_peer,
    prodclf_peer,
    ray_peers,
    ship_modules,
)

SHARED_WEIGHTS = ROOT.parent / "shared/weights/mobilenet_2_5_224_tf_no_top.h5"
VARIANTS = (
    "prodclf",
    "prodclf/tensorflow",
    "prodclf/boto3",
    "predict_batch_udf/documented",
    "predict_batch_udf/prodclf",
    "databricks/documented",
    "databricks/prodclf",
    "ray/documented",
    "ray/prodclf",
)
#: Variants that differ from another only in how objects are fetched from S3.
S3_ONLY_VARIANTS = ("prodclf/boto3",)
S3A_JARS = [
    ROOT / ".cache/jars" / n for n in ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")
]


def make_bundle(dest: Path, classes: int = 10) -> Path:
    """The bench bundle: MobileNet v1 0.25 (shared ImageNet weights) with a 10-class head."""
    if (dest / "bundle.json").exists():
        return dest
    import keras

    from prodclf.images import PreprocessSpec
    from prodclf.model.bundle import BundleMeta, Label, export_bundle

    keras.utils.set_random_seed(0)
    weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.exists() else None
    backbone = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights=weights, pooling="avg"
    )
    out = keras.layers.Dense(classes, activation="softmax")(backbone.output)
    model = keras.Model(backbone.input, out)
    meta = BundleMeta(
        model_name="bench-mobilenet-0.25",
        model_version="1",
        labels=tuple(Label(f"class-{i}", str(i)) for i in range(classes)),
        preprocessing=PreprocessSpec(224, 224, "rgb", "symmetric"),
    )
    export_bundle(model, meta, f"file://{dest}")
    return dest


def machine_facts() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except OSError:
        commit = "unknown"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "loadavg_before": list(os.getloadavg()),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__)
    ap.add_argument("--images", type=int, default=2000, help="catalog size of the comparison")
    ap.add_argument("--reps", type=int, default=3, help="alternating timed repetitions")
    ap.add_argument("--images-source", choices=photos.SOURCES, default="grocery-1000")
    ap.add_argument("--size", type=int, default=1000, help="px of grocery-1000 and synthetic")
    ap.add_argument("--storage", choices=("s3", "file"), default="s3")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added to every S3 request")
    ap.add_argument(
        "--store-cache-mib",
        type=int,
        default=2048,
        help="the proxy answers repeated GETs from memory (0: moto answers each; s3serve.py)",
    )
    ap.add_argument(
        "--variants", default=None, help="comma-separated (default: all that apply to --storage)"
    )
    ap.add_argument("--no-ray", action="store_true", help="leave the Ray peers out")
    ap.add_argument("--ray-python", default=str(ROOT / ".venv-ray/bin/python"))
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local[N], limits")
    ap.add_argument("--scale", default="1000,5000,20000", help="prodclf catalog sizes ('' none)")
    ap.add_argument("--executors", default="10,50", help="projection: executor counts")
    ap.add_argument("--executor-cores", type=int, default=4, help="projection: cores each")
    ap.add_argument("--no-limits", action="store_true", help="skip measuring D, M, F and LF")
    ap.add_argument("--gpu", action="store_true", help="GPU executors (see gpu.py)")
    ap.add_argument("--tasks-per-gpu", type=int, default=4)
    ap.add_argument("--workdir", default="bench-workdir")
    ap.add_argument("--write-readme", metavar="FILE", help="fill FILE's bench block")
    args = ap.parse_args(argv)
    if args.variants is None:
        s3_only = S3_ONLY_VARIANTS if args.storage == "file" else ()
        args.variants = ",".join(v for v in VARIANTS if v not in s3_only)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.storage == "file" and set(args.variants.split(",")) & set(S3_ONLY_VARIANTS):
        ap.error(f"{', '.join(S3_ONLY_VARIANTS)} compare(s) S3 fetches: use --storage s3")
    return args


def time_peer(peer: Peer, sampler_root: int, marker: str, store: Any) -> dict[str, Any]:
    cpu0 = store.cpu_seconds() if store else 0.0
    with RssSampler(sampler_root, marker) as rss:
        times0 = psutil.cpu_times()
        t0 = time.perf_counter()
        answer = peer.run()
        seconds = time.perf_counter() - t0
        times1 = psutil.cpu_times()
    out: dict[str, Any] = {}
    if isinstance(answer, dict) and "seconds" in answer:
        seconds = answer["seconds"]  # the Ray peer times its own execution (steady rate)
        out["seconds_cold"] = answer.get("seconds_cold")
    out.update({"seconds": seconds, **rss.result()})
    # Over the whole timed call: for Ray that includes its actors' start-up and warm rows.
    out["busy_cores"] = report.busy_cores(times0, times1, psutil.cpu_count() or 1)
    if store:
        out["store_cpu_s"] = store.cpu_seconds() - cpu0
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [v for v in args.variants.split(",") if not (args.no_ray and v.startswith("ray/"))]
    command = "python benchmarks/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    gpu_addresses: list[str] = []
    if args.gpu:
        import gpu

        gpu_addresses = gpu.preflight()
    ray_wanted = [v.split("/", 1)[1] for v in wanted if v.startswith("ray/")]
    if ray_wanted and not Path(args.ray_python).exists():
        raise SystemExit(f"no {args.ray_python}: run `make bench-ray-env` or pass --no-ray")
    spark_peers = ("databricks/", "predict_batch_udf/")
    if args.storage == "s3" and any(v.startswith(spark_peers) for v in wanted):
        if not all(p.is_file() for p in S3A_JARS):
            raise SystemExit("binaryFile on s3a needs the s3a jars: run `make s3a-jars`")
        os.environ["PRODCLF_SPARK_JARS"] = ",".join(str(p) for p in S3A_JARS)

    facts = machine_facts()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = photos.local_images(args.images_source, args.images, work / "images", args.size)
    bundle_dir = make_bundle(work / "bundle")
    bundle = f"file://{bundle_dir}"
    blobs = [p.read_bytes() for p in files]
    print(f"catalog: {len(files)} photos ({args.images_source}), bundle {bundle_dir}", flush=True)

    store = None
    from s3serve import StoreProcess, aws_env, prime, s3_client

    if args.storage == "s3":
        store = StoreProcess(args.latency_ms, args.store_cache_mib)
        uris = photos.upload(files, s3_client(store.direct))
        if args.store_cache_mib:
            prime(uris, store.endpoint)
        endpoint_env = aws_env(store.endpoint)
    else:
        uris = photos.file_uris(files)
        endpoint_env = None
    results: dict[str, Any] = {
        "command": command,
        "argv": sys.argv if argv is None else argv,
        "machine": facts,
        "images": args.images,
        "objects": len(uris),
        "mean_object_bytes": sum(map(len, blobs)) / len(blobs),
        "images_source": args.images_source,
        "storage": args.storage,
        "latency_ms": args.latency_ms if store else None,
        "store_cache_mib": args.store_cache_mib if store else None,
        "reps": args.reps,
        "gpu": {"addresses": gpu_addresses, "tasks_per_gpu": args.tasks_per_gpu}
        if args.gpu
        else None,
        "variants": {},
    }
    try:
        if endpoint_env:
            endpoint_env.__enter__()
        readings: list[dict[str, Any]] = []

        def read_limit(when: str) -> None:
            print(f"measuring the limit (D, M, F), {when} the variants", flush=True)
            lite = bundle_dir / "model.tflite"
            lim = limits.measure(
                blobs,
                str(bundle_dir / "saved_model"),
                args.cores,
                min(args.images, 2000),
                (uris, store.endpoint) if store else None,
                gpu=args.gpu,
                lite_model=str(lite) if lite.exists() else None,
            )
            readings.append(lim)
            print(
                f"  D {lim['D']:.1f}/s  M {lim['M']:.1f}/s  F "
                + (f"{lim['F']:.1f}/s" if lim["F"] else "-")
                + f"  LF {lim['LF']:.1f}/s"
                + (
                    f"  (LiteRT: M {lim['M_lite']:.1f}/s, LF {lim['LF_lite']:.1f}/s)"
                    if "M_lite" in lim
                    else ""
                ),
                flush=True,
            )

        if not args.no_limits:
            read_limit("before")
        run_comparison(args, wanted, ray_wanted, results, uris, files, bundle, store)
        if not args.no_limits:
            read_limit("after")
            results["limits"] = limits.combine(readings)
        report.set_ratios(results)
    finally:
        if endpoint_env:
            endpoint_env.__exit__(None, None, None)
        if store:
            store.stop()
    facts["loadavg_after"] = list(os.getloadavg())

    out = work / "results.json"
    out.write_text(json.dumps(results, indent=2))
    block = report.markdown(results)
    print("\n" + block + f"\n\nresults: {out}")
    if args.write_readme:
        report.write_readme_block(Path(args.write_readme), block)
        print(f"wrote the table into {args.write_readme}")
    return 0


#: The catalog's columns, as every variant reads them.
CATALOG_SCHEMA = "product_id string, image_uri string"


def bench_session(master: str, app_name: str, conf: dict[str, str] | None = None) -> Any:
    """The benchmarks' SparkSession (no UI, 4 GiB driver, Arrow batches of 256 rows), with
    this directory's modules shipped to its Python workers."""
    from prodclf.config import SparkConfig
    from prodclf.session import create_session

    settings = {"spark.ui.enabled": "false", "spark.driver.memory": "4g", **(conf or {})}
    spark = create_session(
        SparkConfig(master=master, app_name=app_name, conf=tuple(settings.items())),
        arrow_batch_size=256,
    )
    ship_modules(spark)
    return spark


def cached_frame(spark: Any, rows: list[tuple[str, str]]) -> Any:
    """Catalog ``rows`` as a DataFrame, cached and counted here, before any timer."""
    df = spark.createDataFrame(rows, CATALOG_SCHEMA).cache()
    df.count()
    return df


def run_comparison(
    args: argparse.Namespace,
    wanted: list[str],
    ray_wanted: list[str],
    results: dict[str, Any],
    uris: list[str],
    files: list[Path],
    bundle: str,
    store: Any,
) -> None:
    from prodclf.tagging.transforms import plan_partitions

    bundle_dir = bundle[len("file://") :]
    conf: dict[str, str] = {}
    master = f"local[{args.cores}]"
    if args.gpu:
        import gpu

        master, conf = gpu.gpu_spark_conf(args.cores, args.tasks_per_gpu)
    spark = bench_session(master, "prodclf-bench", conf)
    rows = photos.catalog_rows(uris, args.images)
    warm_n = min(args.images, max(args.cores * 64, 64))
    base, warm = cached_frame(spark, rows), cached_frame(spark, rows[:warm_n])
    partitions = plan_partitions(args.images, spark.sparkContext.defaultParallelism, 2000)
    if args.storage == "s3":
        bucket = photos.BUCKET
        paths = [u.replace(f"s3://{bucket}/", f"s3a://{bucket}/", 1) for _, u in rows]
    else:
        paths = [u[len("file://") :] for _, u in rows]

    peers: list[Peer] = []
    ray_proc = None
    try:
        for name in wanted:
            if name in ("prodclf", "prodclf/tensorflow", "prodclf/boto3"):
                engine = "tensorflow" if name == "prodclf/tensorflow" else "auto"
                direct = name != "prodclf/boto3"
                peers.append(
                    prodclf_peer(spark, base, warm, bundle, partitions, args.gpu, engine, direct)
                )
            elif name.startswith("predict_batch_udf/"):
                dec = name.split("/", 1)[1]
                peers.append(
                    predict_batch_peer(spark, paths, paths[:warm_n], bundle_dir, partitions, dec)
                )
            elif name.startswith("databricks/"):
                dec = name.split("/", 1)[1]
                peers.append(
                    databricks_peer(spark, paths, paths[:warm_n], bundle_dir, partitions, dec)
                )
        if ray_wanted:
            uris_file = Path(args.workdir).resolve() / "ray-uris.json"
            uris_file.write_text(json.dumps([u for _, u in rows]))
            cfg = {
                "uris_file": str(uris_file),
                "bundle_dir": bundle_dir,
                "cpus": args.cores,
                "warm_n": warm_n,
                "gpus": len(results["gpu"]["addresses"]) if results["gpu"] else 0,
                "gpu_per_actor": 1.0 / args.tasks_per_gpu if results["gpu"] else 0,
            }
            log = Path(args.workdir).resolve() / "ray-peer.log"
            ray_proc = RayPeerProcess(args.ray_python, cfg, dict(os.environ), log)
            peers += ray_peers(ray_proc, ray_wanted)
        by_name = {p.name: p for p in peers}
        order = [n for n in wanted if n in by_name]

        timings: dict[str, list[dict[str, Any]]] = {n: [] for n in order}
        for name in order:
            print(f"warming {name}", flush=True)
            by_name[name].warm()
        for rep in range(args.reps):
            for name in order:
                peer = by_name[name]
                is_ray = name.startswith("ray/")
                if not is_ray:
                    # PySpark stops Python workers idle for a minute: after the Ray variants
                    # the next Spark variant would pay worker start and model load in its
                    # timed run. Ray keeps its actors (and measures its start-up itself).
                    peer.warm()
                root = ray_proc.proc.pid if is_ray and ray_proc else os.getpid()
                t = time_peer(peer, root, RAY_WORKER if is_ray else SPARK_WORKER, store)
                timings[name].append(t)
                print(
                    f"  rep {rep + 1}/{args.reps} {name:>30}: {args.images / t['seconds']:8.1f} "
                    f"images/s ({t['seconds']:.1f} s, {t['busy_cores']:.2f} cores busy, "
                    f"worker RSS {t['peak_worker_rss_mib']:.0f} MiB)",
                    flush=True,
                )
        for name in order:
            runs = timings[name]
            summary = report.summarize([r["seconds"] for r in runs], args.images)
            summary["peak_worker_rss_mib"] = max(r["peak_worker_rss_mib"] for r in runs)
            summary["peak_workers_total_rss_mib"] = max(
                r["peak_workers_total_rss_mib"] for r in runs
            )
            summary["runs"] = runs
            summary["notes"] = by_name[name].notes
            results["variants"][name] = summary

        sizes = [int(s) for s in args.scale.split(",") if s.strip()]
        scale = []
        for n in sizes:
            rows_n = photos.catalog_rows(uris, n)
            df = cached_frame(spark, rows_n)
            parts = plan_partitions(n, spark.sparkContext.defaultParallelism, 2000)
            peer = prodclf_peer(spark, df, warm, bundle, parts, args.gpu)
            peer.warm()  # the workers started and the model loaded, as in the comparison
            t = time_peer(peer, os.getpid(), SPARK_WORKER, store)
            df.unpersist()
            scale.append({"images": n, "images_per_s": n / t["seconds"], **t})
            print(f"  scale {n:>8} images: {n / t['seconds']:8.1f} images/s", flush=True)
        results["scale"] = scale
        if "prodclf" in results["variants"] or scale:
            rate = scale[-1]["images_per_s"] if scale else results["variants"]["prodclf"]["median"]
            executors = [int(x) for x in args.executors.split(",") if x.strip()]
            results["projection_rate"] = rate
            results["projection"] = report.projection(
                rate, args.cores, 10_000_000, executors, args.executor_cores
            )
    finally:
        if ray_proc:
            ray_proc.close()
        spark.stop()


if __name__ == "__main__":
    raise SystemExit(main())
