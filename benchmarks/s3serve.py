"""The benchmark's object store: moto's S3 server behind a proxy that adds latency.

    python benchmarks/s3serve.py --latency-ms 30 [--cache-mib 2048]
    # prints one JSON line, then serves until stdin ends

The store runs in a process of its own (``StoreProcess`` starts it), so the CPU that moto and
the proxy spend answering requests is not the benchmark client's: the client's CPU per object
(the fetch cost F of the limit) is measured in the client process only. On one machine the
store still competes for the same cores; its CPU time is reported beside the results.

``LatencyProxy`` is an asyncio reverse proxy on loopback: every request waits ``latency_ms``
(a real object store's time to first byte) and is then forwarded to moto over a kept-alive
connection; the answer is relayed whole. Clients reach it through boto3's ordinary settings
chain (``AWS_ENDPOINT_URL_S3``), nothing patched.

Why the cache (``--cache-mib``): moto spends about 2.5 ms of CPU on each GET of a 140 kB
photo, and the threaded proxy this replaced about 1 ms more, so on a 2-core machine the store
took over a third of the cores the client was measured on, a cost a real object store never
puts on its clients' machines. With the cache, moto still answers every write, listing and
the first GET of each object; the benchmark reads every object once before timing anything
(``prime``), so each timed GET pays the latency and the proxy's relay only. The store's CPU
is still measured and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
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
    """Reverse proxy on 127.0.0.1 that delays every request by ``latency_ms`` (see module doc).

    One asyncio loop in a thread answers every client connection (kept alive), so relaying
    costs little CPU; requests go on to moto from a small thread pool over kept-alive
    connections. With ``cache_bytes`` > 0 the proxy keeps the whole answers of plain object
    GETs (a CDN or S3's own front-end cache in front of the test server): a later GET or HEAD
    of the same object, or a single byte range of it, is answered from memory after the same
    delay, without moto's own CPU per request. Any other method clears the cache, so an
    object written after it was cached is never served stale.
    """

    def __init__(self, upstream: str, latency_ms: float, cache_bytes: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency_s = latency_ms / 1000.0
        self.cache_bytes = cache_bytes
        self.requests = 0
        self.upstream_requests = 0
        self.cache_hits = 0
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._counter_lock = threading.Lock()
        self._cached_bytes = 0
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(32, "s3serve-upstream")
        self._loop = asyncio.new_event_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, name="s3serve-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._client, sock=self._sock, backlog=256)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            clients = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for writer in list(self._writers):  # kept-alive clients would otherwise wait on
                writer.close()
            await asyncio.gather(*clients, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one client connection -----------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, headers)
                self.requests += 1
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                answer = self._from_cache(method, target, headers)
                if answer is None:
                    try:
                        answer = await self._loop.run_in_executor(
                            self._pool, self._forward, method, target, headers, body
                        )
                    except (OSError, http.client.HTTPException) as exc:  # moto unreachable
                        why = f"{type(exc).__name__}: {exc}".encode()
                        answer = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (
                            len(why),
                            why,
                        )
                writer.write(answer)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _from_cache(self, method: str, target: str, headers: dict[str, str]) -> bytes | None:
        if method not in ("GET", "HEAD"):
            if self._cache:
                self._cache.clear()
                self._cached_bytes = 0
            return None
        hit = self._cache.get((headers.get("host", ""), target))
        if hit is None or any(k in headers for k in _CONDITIONAL):
            return None
        wanted = headers.get("range")
        if wanted is None:
            status, extra, payload = "200 OK", [], hit.body
        else:
            span = _byte_range(wanted, len(hit.body))
            if span is None:
                return None  # several ranges or a malformed one: moto answers it
            lo, hi = span
            payload = hit.body[lo : hi + 1]
            status = "206 Partial Content"
            extra = [f"Content-Range: bytes {lo}-{hi}/{len(hit.body)}"]
        self.cache_hits += 1
        lines = [f"HTTP/1.1 {status}"]
        for key, value in hit.headers:
            if wanted is not None and key.lower().startswith("x-amz-checksum-"):
                continue  # the whole object's checksum does not fit a range
            lines.append(f"{key}: {value}")
        lines += [*extra, f"Content-Length: {len(payload)}", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        return head if method == "HEAD" else head + payload

    # --- a request moto answers (in the upstream pool) -------------------------------------

    def _upstream_conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            self._local.conn = conn
        return conn

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        sent = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        sent["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed
            conn = self._upstream_conn()
            try:
                conn.request(method, target, body=body or None, headers=sent)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        with self._counter_lock:
            self.upstream_requests += 1
        kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        declared = resp.getheader("Content-Length")
        length = declared if method == "HEAD" and declared else str(len(payload))
        lines = [f"HTTP/1.1 {resp.status} {resp.reason}", *(f"{k}: {v}" for k, v in kept)]
        lines += [f"Content-Length: {length}", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        if (
            method == "GET"
            and resp.status == 200
            and "?" not in target
            and "range" not in headers
            and not any(k in headers for k in _CONDITIONAL)
        ):
            self._keep((headers.get("host", ""), target), kept, payload)
        return head if method == "HEAD" else head + payload

    def _keep(self, key: tuple[str, str], headers: list[tuple[str, str]], payload: bytes) -> None:
        with self._counter_lock:  # called from the upstream pool
            if self._cached_bytes + len(payload) > self.cache_bytes or key in self._cache:
                return
            self._cached_bytes += len(payload)
            self._cache[key] = _Cached(headers, payload)


@dataclass(frozen=True)
class _Cached:
    headers: list[tuple[str, str]]
    body: bytes


#: Request headers that make a GET's answer depend on more than the object itself.
_CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and lower-cased headers of one request's head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, target, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by S3 clients
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte of a single ``bytes=`` range, or None."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec or size == 0:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # the last N bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 else None
        lo = int(first)
        hi = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (lo, hi) if lo <= hi else None


def serve(latency_ms: float, cache_mib: int = 0) -> None:
    """Start moto and the proxy, print their endpoints as one JSON line, serve until stdin ends."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    direct = f"http://{host}:{port}"
    proxy = LatencyProxy(direct, latency_ms, cache_mib << 20).start()
    print(json.dumps({"endpoint": proxy.endpoint, "direct": direct}), flush=True)
    sys.stdin.read()  # the parent closes our stdin (or dies) when it is done
    proxy.stop()
    server.stop()


class StoreProcess:
    """``s3serve.py`` in a child process; ``endpoint`` adds the latency, ``direct`` does not."""

    def __init__(self, latency_ms: float, cache_mib: int = 0, python: str = sys.executable) -> None:
        env = {**os.environ, **AWS_ENV}
        cmd = [python, os.path.abspath(__file__), "--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(
            [*cmd, "--cache-mib", str(cache_mib)],
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
        self.cache_mib = cache_mib

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


def prime(uris: list[str], endpoint: str) -> None:
    """GET every object once through the proxy at ``endpoint``, so its cache holds them."""
    client = s3_client(endpoint)

    def get(uri: str) -> None:
        bucket, _, key = uri[len("s3://") :].partition("/")
        client.get_object(Bucket=bucket, Key=key)["Body"].read()

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(get, dict.fromkeys(uris)))


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
    ap.add_argument(
        "--cache-mib", type=int, default=0, help="answer repeated object GETs from memory"
    )
    args = ap.parse_args(argv)
    serve(args.latency_ms, args.cache_mib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
