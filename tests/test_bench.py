"""The benchmark harness (benchmarks/): what it measures with, never how fast anything is.

No timing is asserted except the latency proxy's lower bound (it must really delay).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import decode_parts  # noqa: E402
import gpu  # noqa: E402
import int8  # noqa: E402
import limits  # noqa: E402
import report  # noqa: E402
from s3serve import LatencyProxy, s3_client  # noqa: E402

pytestmark = pytest.mark.slow


# --- the latency proxy -----------------------------------------------------------------------


def _min_get_seconds(client: Any, tries: int = 3) -> tuple[float, bytes]:
    best, body = float("inf"), b""
    for _ in range(tries):
        t0 = time.perf_counter()
        body = client.get_object(Bucket="lat", Key="k")["Body"].read()
        best = min(best, time.perf_counter() - t0)
    return best, body


def test_latency_proxy_delays_every_request() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        direct = f"http://{host}:{port}"
        s3_client(direct).create_bucket(Bucket="lat")
        s3_client(direct).put_object(Bucket="lat", Key="k", Body=b"x" * 50_000)
        with LatencyProxy(direct, 0) as plain, LatencyProxy(direct, 200) as slow:
            _, plain_body = _min_get_seconds(s3_client(plain.endpoint))
            slow_s, slow_body = _min_get_seconds(s3_client(slow.endpoint))
        assert plain_body == slow_body == b"x" * 50_000
        # The fastest of three GETs through the 200 ms proxy still took 200 ms.
        assert slow_s >= 0.2
        assert slow.requests >= 3
    finally:
        server.stop()


def test_latency_proxy_cache_answers_repeated_reads_and_never_serves_stale() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        direct = s3_client(f"http://{host}:{port}")
        direct.create_bucket(Bucket="cached")
        first = bytes(range(256)) * 200
        direct.put_object(Bucket="cached", Key="k", Body=first)
        with LatencyProxy(f"http://{host}:{port}", 0, cache_bytes=1 << 20) as proxy:
            client = s3_client(proxy.endpoint)
            reads = [client.get_object(Bucket="cached", Key="k")["Body"].read() for _ in range(3)]
            assert reads == [first] * 3
            assert (proxy.upstream_requests, proxy.cache_hits) == (1, 2)

            part = client.get_object(Bucket="cached", Key="k", Range="bytes=1000-1099")
            assert part["Body"].read() == first[1000:1100]
            assert part["ContentRange"] == f"bytes 1000-1099/{len(first)}"
            tail = client.get_object(Bucket="cached", Key="k", Range="bytes=-10")["Body"].read()
            assert tail == first[-10:]
            assert client.head_object(Bucket="cached", Key="k")["ContentLength"] == len(first)
            assert (proxy.upstream_requests, proxy.cache_hits) == (1, 5)

            # A write through the proxy clears the cache: the next read is the new object.
            client.put_object(Bucket="cached", Key="k", Body=b"second")
            assert client.get_object(Bucket="cached", Key="k")["Body"].read() == b"second"
            listed = client.list_objects_v2(Bucket="cached")["Contents"]
            assert [o["Key"] for o in listed] == ["k"]
            assert proxy.upstream_requests == 4  # the put, the read after it, the listing
        with LatencyProxy(f"http://{host}:{port}", 0) as plain:  # no cache: moto answers all
            client = s3_client(plain.endpoint)
            for _ in range(2):
                assert client.get_object(Bucket="cached", Key="k")["Body"].read() == b"second"
            assert (plain.upstream_requests, plain.cache_hits) == (2, 0)
    finally:
        server.stop()


def test_latency_proxy_answers_502_when_the_store_is_unreachable() -> None:
    import socket

    from botocore.exceptions import ClientError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        LatencyProxy(f"http://127.0.0.1:{port}", 0, cache_bytes=1 << 20) as proxy,
        pytest.raises(ClientError) as err,
    ):
        s3_client(proxy.endpoint).get_object(Bucket="gone", Key="k")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert proxy.upstream_requests == 0 and proxy.cache_hits == 0


# --- the limit -------------------------------------------------------------------------------


def test_limit_is_the_harmonic_combination() -> None:
    # The issue's numbers: D 547, M 685, F 1421 -> LF 251.
    assert limits.limit_rate(547, 685, 1421) == pytest.approx(250.5, abs=0.1)
    assert limits.limit_rate(100, 100, None) == pytest.approx(50.0)  # file://: no fetch cost
    assert limits.limit_rate(1e9, 80, 1e9) == pytest.approx(80.0, rel=1e-6)
    with pytest.raises(ValueError):
        limits.limit_rate(0, 1, 1)


@pytest.mark.parametrize("via", ["boto3", "prodclf"])
def test_the_fetch_cost_reads_every_object_whole(s3_endpoint: str, s3: Any, via: str) -> None:
    """F's two clients: boto3's get_object (the issue's F) and the tag job's own fetch."""
    bucket = f"fetch-cost-{via}"
    s3.create_bucket(Bucket=bucket)
    sizes = [1000, 2000, 6000]
    uris = []
    for n, size in enumerate(sizes):
        s3.put_object(Bucket=bucket, Key=f"img/{n}.jpg", Body=os.urandom(size))
        uris.append(f"s3://{bucket}/img/{n}.jpg")
    before = os.environ.get("AWS_ENDPOINT_URL_S3")
    cost = limits.fetch_cost(uris, s3_endpoint, threads=2, via=via)
    assert cost["mean_object_bytes"] == pytest.approx(sum(sizes) / 3)
    assert cost["cpu_s_per_object"] > 0
    assert os.environ.get("AWS_ENDPOINT_URL_S3") == before  # the settings are restored
    # The limit's reading runs it in a spawned process, away from the harness's heap.
    alone = limits.fetch_cost_alone(uris, s3_endpoint, via=via)
    assert alone["mean_object_bytes"] == pytest.approx(sum(sizes) / 3)
    with pytest.raises(ValueError, match="via must be"):
        limits.fetch_cost(uris, s3_endpoint, via="curl")


# --- fair peers: the object warmed is the object timed ---------------------------------------


@pytest.fixture(scope="module")
def bench_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SavedModel bundle taking the bench's 224x224x3 input."""
    import keras

    from prodclf.images import PreprocessSpec
    from prodclf.model.bundle import BundleMeta, Label, export_bundle

    inputs = keras.Input(shape=(224, 224, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs)
    )
    dest = tmp_path_factory.mktemp("bench-bundle") / "bundle"
    meta = BundleMeta(
        model_name="bench-test",
        model_version="1",
        labels=(Label("a", "1"), Label("b", "2")),
        preprocessing=PreprocessSpec(224, 224, "rgb", "symmetric"),
    )
    export_bundle(keras.Model(inputs, outputs), meta, f"file://{dest}")
    return dest


def test_peers_load_the_model_once_per_worker_over_warm_and_timed_runs(
    spark: Any, bench_bundle: Path, tmp_path: Path
) -> None:
    import peers
    import photos

    files = photos.local_images("synthetic", 8, tmp_path / "images", size=96)
    paths = [str(p) for p in files]
    peers.ship_modules(spark)
    log = tmp_path / "loads.txt"
    built = [
        peers.predict_batch_peer(
            spark, paths, paths[:4], str(bench_bundle), 2, "prodclf", str(log)
        ),
        peers.databricks_peer(
            spark, paths, paths[:4], str(bench_bundle), 2, "documented", str(log)
        ),
    ]
    for peer in built:
        log.write_text("")
        peer.warm()
        assert log.read_text(), f"{peer.name}: the warm-up never loaded the model"
        peer.run()
        # A worker that has the model never loads it again. (Whether the warm-up reached every
        # idle worker depends on the workers earlier tests left in this session's pool.)
        loads = Counter(log.read_text().split())
        assert set(loads.values()) == {1}, f"{peer.name}: loads per worker pid {dict(loads)}"


# --- GPU mode --------------------------------------------------------------------------------


def test_gpu_conf_shares_one_gpu_between_tasks() -> None:
    master, conf = gpu.gpu_spark_conf(8, tasks_per_gpu=4, executor_memory_mb=4096)
    assert master == "local-cluster[1,8,4096]"
    assert conf["spark.task.resource.gpu.amount"] == "0.25"
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.worker.resource.gpu.amount"] == "1"
    script = conf["spark.executor.resource.gpu.discoveryScript"]
    assert script == conf["spark.worker.resource.gpu.discoveryScript"]
    assert os.access(script, os.X_OK)
    assert gpu.gpu_spark_conf(2, tasks_per_gpu=1)[1]["spark.task.resource.gpu.amount"] == "1"
    with pytest.raises(ValueError):
        gpu.task_gpu_amount(0)


def _fake_nvidia_smi(folder: Path, body: str) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_gpu_discovery_script_reports_gpus_as_spark_expects(tmp_path: Path) -> None:
    env = _fake_nvidia_smi(tmp_path / "two", "printf '0\\n1\\n'")
    out = subprocess.run([str(gpu.DISCOVERY_SCRIPT)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_gpu_mode_fails_in_one_line_without_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _fake_nvidia_smi(tmp_path / "none", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    out = subprocess.run([str(gpu.DISCOVERY_SCRIPT)], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(SystemExit) as stop:
        gpu.preflight()
    message = str(stop.value)
    assert "\n" not in message
    assert message.startswith("bench --gpu: no GPU")


# What --gpu's Spark session does with 4 cores and one GPU for argv[2] tasks: each task reports
# the GPU addresses prodclf reads (prodclf.model.runtime.task_gpu_addresses) and its worker.
GPU_PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import gpu
from pyspark.sql import SparkSession

master, conf = gpu.gpu_spark_conf(4, tasks_per_gpu=int(sys.argv[2]), executor_memory_mb=1024)
builder = SparkSession.builder.master(master).config("spark.ui.enabled", "false")
for key, value in conf.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()

def probe(rows):
    import os
    from prodclf.model.runtime import task_gpu_addresses
    time.sleep(1)  # long enough for the tasks Spark runs at once to overlap
    yield task_gpu_addresses(), os.getpid()

got = spark.sparkContext.parallelize(range(4), 4).mapPartitions(probe).collect()
spark.stop()
print(json.dumps(got))
"""


@pytest.mark.cluster
def test_gpu_mode_runs_two_tasks_at_once_on_one_gpu(tmp_path: Path) -> None:
    """The ``--gpu`` session for real (``local-cluster``, the discovery script, 0.5 of a GPU
    per task) on one GPU that a stand-in nvidia-smi reports: Spark schedules it, so the
    harness is checked here before a GPU machine's time is spent on it. The executor has
    4 cores: the GPU, not the cores, limits the tasks to two at once."""
    env = _fake_nvidia_smi(tmp_path / "one", "printf '0\\n'")
    env["PYSPARK_PYTHON"] = sys.executable
    out = subprocess.run(
        [sys.executable, "-c", GPU_PROBE, str(BENCH), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    tasks = json.loads(out.stdout.strip().splitlines()[-1])
    assert [gpus for gpus, _ in tasks] == [["0"]] * 4
    # Two tasks at a time: two Python workers, reused by the next two (4 with the cores' limit).
    assert len({pid for _, pid in tasks}) == 2


# --- results ---------------------------------------------------------------------------------


def _results() -> dict[str, Any]:
    return {
        "command": "python benchmarks/bench.py --images 10",
        "machine": {
            "date": "2026-01-01T00:00:00+00:00",
            "cores": 2,
            "cpu": "test cpu",
            "ram_gib": 8.0,
            "commit": "abc1234",
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [2.0, 1.0, 1.0],
        },
        "images": 10,
        "images_source": "synthetic",
        "storage": "s3",
        "latency_ms": 30.0,
        "reps": 3,
        "variants": {
            "prodclf": {**report.summarize([1.0, 2.0, 4.0], 10), "peak_worker_rss_mib": 512.0}
        },
        "limits": {
            "cores": 2,
            "D": 20.0,
            "D_documented_decoder": 10.0,
            "M": 20.0,
            "M_one_process_default_threads": 20.0,
            "M_one_process_per_core_one_thread": 15.0,
            "M_device": "cpu",
            "F": None,
            "LF": 10.0,
            "M_lite": 40.0,
            "M_lite_one_process": 40.0,
            "M_lite_one_process_per_core": 30.0,
            "LF_lite": 12.5,
            "F_prodclf": 100.0,
            "LF_lite_prodclf_fetch": 16.0,
        },
    }


def test_the_limit_keeps_each_rates_best_reading_and_recomputes_the_limits() -> None:
    first = {"cores": 2, "D": 100.0, "M": 50.0, "F": 400.0, "M_lite": 100.0, "F_prodclf": 800.0}
    second = {"cores": 2, "D": 80.0, "M": 100.0, "F": 200.0, "M_lite": 80.0, "F_prodclf": 400.0}
    lim = limits.combine([first, second])
    assert (lim["D"], lim["M"], lim["F"], lim["M_lite"]) == (100.0, 100.0, 400.0, 100.0)
    assert lim["LF"] == pytest.approx(1 / (1 / 100 + 1 / 100 + 1 / 400))
    assert lim["LF_lite"] == pytest.approx(1 / (1 / 100 + 1 / 100 + 1 / 400))
    assert lim["LF_lite_prodclf_fetch"] == pytest.approx(1 / (1 / 100 + 1 / 100 + 1 / 800))
    assert lim["readings"] == [first, second]
    results = {"variants": {"prodclf": {"median": 40.0}}, "limits": lim}
    report.set_ratios(results)
    assert results["variants"]["prodclf"]["E_over_LF"] == pytest.approx(40 * 0.0225)
    with pytest.raises(ValueError):
        limits.combine([])


def test_the_store_share_is_the_median_of_its_runs() -> None:
    runs = [{"seconds": 10.0, "store_cpu_s": 5.0}, {"seconds": 4.0, "store_cpu_s": 4.0}, {}]
    assert report.store_share({"runs": runs}, cores=2) == pytest.approx(0.375)
    assert report.store_share({"runs": [{"seconds": 1.0}]}, cores=2) is None


def test_busy_cores_count_every_busy_state_once_and_idle_and_iowait_as_idle() -> None:
    from collections import namedtuple

    # Linux's counters as psutil names them; guest time is already inside user time.
    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = Times(100, 0, 50, 1000, 10, 0, 0, 0, 0, 0)
    # 10 s on 2 cores: 12 user (6 of it guest), 2 nice, 3 system, 1 irq+softirq, 2 idle-ish
    after = Times(112, 2, 53, 1001, 11, 0.5, 0.5, 0, 6, 0)
    assert report.busy_cores(before, after, cores=2) == pytest.approx(2 * 18 / 20)
    assert report.busy_cores(before, before, cores=2) == 0.0
    runs = [{"busy_cores": 1.9}, {"busy_cores": 1.5}, {"busy_cores": 1.7}, {}]
    assert report.median_busy_cores({"runs": runs}) == 1.7
    assert report.median_busy_cores({"runs": [{"seconds": 1.0}]}) is None


def test_summary_is_median_and_spread_of_rates() -> None:
    s = report.summarize([1.0, 2.0, 4.0], 10)
    assert (s["min"], s["median"], s["max"]) == (2.5, 5.0, 10.0)


def test_readme_block_is_replaced_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# head\n\n{report.START}\nold table\n{report.END}\n\ntail\n")
    block = report.markdown(_results())
    report.write_readme_block(readme, block)
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith(f"# head\n\n{report.START}\n")
    assert text.endswith(f"{report.END}\n\ntail\n")
    assert "| prodclf | 5.0 | 2.5 - 10.0 | 0.50 | 0.40 | 0.31 |  |  |  | 512 |" in text
    assert "LF_lite 12.5/s" in text
    assert "LF_lite with prodclf's fetch 16.0/s" in text
    assert "readings" not in text  # one reading: nothing to say
    results = _results()
    results["limits"]["readings"] = [{"LF_lite": 11.0}, {"LF_lite": 12.5}]
    assert (
        "Each rate is the best of 2 readings, before and after the variants (LF_lite from "
        "each reading alone: 11.0/s and 12.5/s)." in report.markdown(results)
    )
    assert "python benchmarks/bench.py --images 10" in text
    report.write_readme_block(readme, block)  # idempotent
    assert readme.read_text() == text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        report.write_readme_block(readme, block)


def test_the_scale_runs_give_the_jobs_fixed_part_and_its_marginal_rate() -> None:
    # about 0.5 s of fixed part and 10 images/s, each run off the line by some noise
    scale = [
        {"images": 10, "seconds": 1.5, "images_per_s": 10 / 1.5},
        {"images": 20, "seconds": 2.8, "images_per_s": 20 / 2.8},
        {"images": 40, "seconds": 4.35, "images_per_s": 40 / 4.35},
    ]
    fixed, marginal = report.fixed_and_marginal(scale) or (0.0, 0.0)
    assert fixed == pytest.approx(0.725)  # the least-squares line, worked out by hand
    assert marginal == pytest.approx(1 / 0.0925)
    exact = [{"images": n, "seconds": 0.5 + n / 10, "images_per_s": 0.0} for n in (10, 20, 40)]
    assert report.fixed_and_marginal(exact) == pytest.approx((0.5, 10.0))
    assert report.fixed_and_marginal(scale[:1]) is None
    falling = [{"images": 10, "seconds": 2}, {"images": 20, "seconds": 1}]
    assert report.fixed_and_marginal(falling) is None
    flat = [{"images": 10, "seconds": 2}, {"images": 20, "seconds": 2}]
    assert report.fixed_and_marginal(flat) is None
    text = report.markdown({**_results(), "scale": exact})
    assert "a fixed part of 0.5 s per job and a marginal rate of 10.0 images/s (0.80 of" in text


def test_catalog_cycles_over_the_uploaded_objects() -> None:
    rows = __import__("photos").catalog_rows(["a", "b"], 5)
    assert [u for _, u in rows] == ["a", "b", "a", "b", "a"]
    assert len({p for p, _ in rows}) == 5
    assert np.isfinite(limits.limit_rate(1, 1, 1))


# --- the command line ---------------------------------------------------------------------------


def test_variants_that_only_compare_s3_fetches_are_left_out_of_file_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import bench

    s3 = bench.parse_args([]).variants.split(",")
    local = bench.parse_args(["--storage", "file"]).variants.split(",")
    assert s3 == list(bench.VARIANTS)
    assert local == [v for v in bench.VARIANTS if v != "prodclf/boto3"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--storage", "file", "--variants", "prodclf,prodclf/boto3"])
    assert "prodclf/boto3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "prodclf,spark/magic"])


# --- int8: what quantization would cost in accuracy ------------------------------------------


def test_int8_compares_the_bundles_own_model_with_its_quantization(color_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = np.zeros((40, 8, 8, 3), dtype=np.uint8)
    truth = []
    for i in range(40):
        red = i % 2 == 0
        pixels[i, ..., 0 if red else 2] = rng.integers(120, 255)
        pixels[i, ..., 2 if red else 0] = rng.integers(0, 60)
        truth.append("red" if red else "blue")
    result = int8.compare(color_bundle, pixels[:10], pixels, truth)
    assert result["float"]["accuracy"] == 1.0  # the bundle's exact weights tell red from blue
    for name in ("int8", "float16"):
        assert 0.0 <= result[name]["accuracy"] <= 1.0
        assert 0.0 <= result[name]["top1_agreement_with_float"] <= 1.0
        assert result[name]["model_bytes"] > 0
    assert result["images"] == 40
    with pytest.raises(ValueError, match="none, int8 or float16"):
        int8.quantize(color_bundle, "int4", pixels[:2])
    wrong = ["blue" if t == "red" else "red" for t in truth]
    assert int8.compare(color_bundle, pixels[:10], pixels, wrong)["float"]["accuracy"] == 0.0


def float_tensors(model: bytes) -> int:
    from prodclf.model.lite import interpreter_class

    details = interpreter_class()(model_content=model).get_tensor_details()
    return sum(d["dtype"] == np.float32 for d in details)


def test_int8_keeps_the_most_disturbed_layers_in_float_when_asked(color_bundle: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    truth = ["red"] * 20
    result = int8.compare(color_bundle, pixels[:10], pixels, truth, keep=(1, 2))
    assert {"int8_float1", "int8_float2"} <= set(result)
    models = int8.keep_float(color_bundle, pixels[:10], [1, 2])
    full = int8.quantize(color_bundle, "int8", pixels[:10])
    # each layer left in float computes in float: more float32 tensors in the model
    assert float_tensors(full) < float_tensors(models[1]) < float_tensors(models[2])
    assert result["int8_float2"]["top1_agreement_with_float"] >= 0.0
    with pytest.raises(SystemExit):
        int8.main(["--bundle", str(color_bundle), "--keep-float", "0"])


def test_int8_reads_the_grocery_splits_coarse_labels(tmp_path: Path) -> None:
    (tmp_path / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),x,y\n"
        "Golden-Delicious,0,Apple,0,a,b\nGranny-Smith,1,Apple,0,a,b\nOat-Milk,2,Oatghurt,1,a,b\n"
    )
    (tmp_path / "test.txt").write_text("test/a/1.jpg, 0, 0\ntest/b/2.jpg, 2, 1\n")
    assert int8.grocery_split(tmp_path, "test") == [
        (tmp_path / "test/a/1.jpg", "Apple"),
        (tmp_path / "test/b/2.jpg", "Oatghurt"),
    ]


# --- the decoder's parts ----------------------------------------------------------------


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth blocks compress like photos
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(
    "size", [(1000, 1000), (900, 1000), (870, 600), (500, 460), (300, 2000), (2000, 1800)]
)
def test_the_draft_scale_is_the_one_pillow_picks(size: tuple[int, int]) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(_jpeg(size, 0)))
    img.draft("RGB", (decode_parts.SIZE, decode_parts.SIZE))
    scale = decode_parts.draft_scale(*size)
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))


def test_the_decoders_parts_compose_to_its_own_pixels() -> None:
    blobs = [_jpeg((1000, 1000), 1), _jpeg((640, 480), 2), _jpeg((1200, 900), 3)]
    out = decode_parts.measure(blobs, reps=1)
    assert set(out["prodclf"]["parts_ms"]) == {"open", "decode", "resize", "array"}
    assert all(ms > 0 for ms in out["prodclf"]["parts_ms"].values())
    # The parts timed are the steps of the same computation, not a look-alike.
    assert out["parts_reproduce_prodclf"] == {"mean_abs_diff": 0.0, "max_abs_diff": 0}
    assert set(out["others"]) <= {"simplejpeg", "opencv"}
