"""The benchmark's object store: moto's S3 server behind a proxy that adds latency.

    python benchmarks/s3serve.py --latency-ms 30   # one JSON line, then serves until stdin ends

The store runs in a process of its own (``StoreProcess`` starts it), so the CPU that moto and
the proxy spend answering requests is not the benchmark client's: the client's CPU per object
(the fetch cost F of the limit) is measured in the client process only. On one machine the
store still competes for the same cores; its CPU time is reported beside the results.

``LatencyProxy`` is a threaded reverse proxy on loopback: every request waits ``latency_ms``
(a real object store's time to first byte) and is then forwarded to moto over a kept-alive
connection; the answer is relayed whole. Clients reach it through boto3's ordinary settings
chain (``AWS_ENDPOINT_URL_S3``), nothing patched.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "host",
    "content-length",
}

#: An empty AWS config file: nothing is read from ~/.aws (Hadoop's AWS SDK refuses /dev/null).
EMPTY_AWS_FILE = os.path.join(tempfile.gettempdir(), "prodclf-bench-empty-aws-config")
#: The benchmark's AWS settings: a fake account on loopback.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": EMPTY_AWS_FILE,
    "AWS_SHARED_CREDENTIALS_FILE": EMPTY_AWS_FILE,
}


class LatencyProxy:
    """Reverse proxy on 127.0.0.1 that delays every request by ``latency_ms`` (see module doc)."""

    def __init__(self, upstream: str, latency_ms: float) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency_s = latency_ms / 1000.0
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            conn: http.client.HTTPConnection | None = None

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._local = threading.local()

    def start(self) -> LatencyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _upstream(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            self._local.conn = conn
        return conn

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        with self._lock:
            self.requests += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed
            conn = self._upstream()
            try:
                conn.request(h.command, h.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        h.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                h.send_header(key, value)
        declared = resp.getheader("Content-Length")
        head = h.command == "HEAD"
        h.send_header("Content-Length", declared if head and declared else str(len(payload)))
        h.end_headers()
        if not head:
            h.wfile.write(payload)
        h.wfile.flush()


def serve(latency_ms: float) -> None:
    """Start moto and the proxy, print their endpoints as one JSON line, serve until stdin ends."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    direct = f"http://{host}:{port}"
    proxy = LatencyProxy(direct, latency_ms).start()
    print(json.dumps({"endpoint": proxy.endpoint, "direct": direct}), flush=True)
    sys.stdin.read()  # the parent closes our stdin (or dies) when it is done
    proxy.stop()
    server.stop()


class StoreProcess:
    """``s3serve.py`` in a child process; ``endpoint`` adds the latency, ``direct`` does not."""

    def __init__(self, latency_ms: float, python: str = sys.executable) -> None:
        env = {**os.environ, **AWS_ENV}
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the S3 store process exited ({self.proc.wait()})")
        info = json.loads(line)
        self.endpoint: str = info["endpoint"]
        self.direct: str = info["direct"]
        self.latency_ms = latency_ms

    def cpu_seconds(self) -> float:
        """User + system CPU the store process has used so far (moto and the proxy)."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def aws_env(endpoint: str) -> Iterator[None]:
    """The standard AWS settings pointing at ``endpoint``, for this process and its children."""
    if not os.path.exists(EMPTY_AWS_FILE):
        open(EMPTY_AWS_FILE, "w").close()
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, "AWS_ENDPOINT_URL_S3")}
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_client(endpoint: str, pool: int = 32) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/s3serve.py", description=__doc__)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    args = ap.parse_args(argv)
    serve(args.latency_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
