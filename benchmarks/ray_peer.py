"""The Ray Data peer, run by the benchmark under ``.venv-ray/bin/python`` (``make bench-ray-env``).

    python benchmarks/ray_peer.py '{"uris_file": ..., "bundle_dir": ..., "cpus": 2, "warm_n": 128}'

Starts Ray once (``num_cpus=cpus``), prints one JSON line, then answers JSON commands on stdin,
one per line: ``{"cmd": "run", "decoder": "prodclf", "warm": false}`` runs the pipeline
and prints ``{"seconds": ...}``; ``{"cmd": "quit"}`` ends. The pipeline: ``ray.data.from_items``
of the catalog's URIs, ``map_batches`` with an actor pool of ``cpus`` actors, each holding the
model and fetching (boto3, 16 threads; the standard AWS settings chain) and decoding its rows
with the same decoders as the Spark peers, then the same SavedModel in batches of 64; the
dataset is consumed with ``iter_batches`` (nothing collected on the driver).

Ray Data starts the actor pool for each execution, so an execution cannot reuse the actors a
warm-up started. The warm runs execute ``warm_n`` rows (actor start-up, model loads and those
rows); a timed run executes the same ``warm_n`` rows followed by the catalog, and its
``seconds`` is its time less the last warm run's: the catalog's own time, the start-up
subtracted rather than timed. ``seconds_cold`` is the whole timed execution.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

BATCH = 64


class Tagger:
    def __init__(self, bundle_dir: str, decoder_name: str) -> None:
        import boto3
        import tensorflow as tf
        from botocore.config import Config
        from decoders import decoder

        self.tf = tf
        self.model = tf.saved_model.load(os.path.join(bundle_dir, "saved_model"))
        self.decode = decoder(decoder_name)
        self.pool = ThreadPoolExecutor(16)
        self.client = boto3.client("s3", config=Config(max_pool_connections=16))

    def fetch(self, uri: str) -> bytes:
        if uri.startswith("file://"):
            with open(uri[len("file://") :], "rb") as fh:
                return fh.read()
        bucket, key = uri[len("s3://") :].split("/", 1)
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from decoders import to_model_input

        uris = [str(u) for u in batch["uri"]]
        pixels = np.stack([self.decode(b) for b in self.pool.map(self.fetch, uris)])
        probs = [
            np.asarray(self.model.serve(self.tf.constant(to_model_input(pixels[i : i + BATCH]))))
            for i in range(0, len(pixels), BATCH)
        ]
        return {"uri": np.asarray(uris), "confidence": np.concatenate(probs).max(axis=1)}


def run(ray: Any, uris: list[str], cfg: dict[str, Any], decoder_name: str) -> float:
    """Seconds to execute the pipeline on ``uris``, actor start-up included."""
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=cfg["cpus"] * 4)
    ds = ds.map_batches(
        Tagger,
        fn_constructor_kwargs={"bundle_dir": cfg["bundle_dir"], "decoder_name": decoder_name},
        batch_size=BATCH,
        compute=ray.data.ActorPoolStrategy(size=cfg["cpus"]),
        num_cpus=1,
        num_gpus=cfg.get("gpu_per_actor", 0),
    )
    t0 = time.perf_counter()  # the plan is lazy: execution starts with iter_batches
    rows = sum(len(b["uri"]) for b in ds.iter_batches(batch_size=None))
    seconds = time.perf_counter() - t0
    if rows != len(uris):
        raise RuntimeError(f"Ray returned {rows} rows for {len(uris)}")
    return seconds


def main() -> int:
    cfg = json.loads(sys.argv[1])
    try:
        import ray

        with open(cfg["uris_file"]) as fh:
            uris = json.load(fh)
        ray.init(
            num_cpus=cfg["cpus"],
            num_gpus=cfg.get("gpus", 0),
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ray": ray.__version__, "cpus": cfg["cpus"]}), flush=True)
    warm_seconds: dict[str, list[float]] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            lead = uris[: cfg["warm_n"]]
            if cmd.get("warm"):
                seconds = run(ray, lead, cfg, cmd["decoder"])
                warm_seconds.setdefault(cmd["decoder"], []).append(seconds)
                answer: dict[str, Any] = {"seconds": seconds, "images": len(lead)}
            else:
                cold = run(ray, lead + uris, cfg, cmd["decoder"])
                # The last warm run: Ray's worker processes were up, as they are now.
                startup = warm_seconds[cmd["decoder"]][-1]
                answer = {"seconds": cold - startup, "seconds_cold": cold, "images": len(uris)}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(answer), flush=True)
    ray.shutdown()
    print(json.dumps({"bye": True}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
