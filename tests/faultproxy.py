"""A fault-injecting HTTP reverse proxy in front of the loopback S3 server (moto).

The code under test reaches it exactly as it would reach a flaky S3: through boto3's
ordinary settings chain (``AWS_ENDPOINT_URL_S3`` pointing at the proxy), nothing patched.
For a configurable share of requests the proxy answers with a fault instead of the real
response; every other request is forwarded to moto (method, path, query, headers, body)
and the response relayed. The choice is a seeded pseudo-random function of (method,
path, how many times that request was seen before), so a run injects the same faults
into the same requests whatever the thread interleaving is.

Faults:

``slowdown``  503 with an S3 ``SlowDown`` XML error (throttling).
``internal``  500 with an S3 ``InternalError`` XML error.
``reset``     the connection is reset (SO_LINGER 0, RST) before any response byte.
``stall``     no response at all until the client gives up (its read timeout) or
              ``stall_max_s`` passes; how long each stall was held is recorded.
``cut``       the real status line and headers, half the body, then a reset.
``huge``      (for ``rules`` only) a 200 declaring a ``Content-Length`` of 1 TB, then no
              body until the client gives up: a client that reads such an object whole
              would hang or run out of memory.
``bad_key``   403 ``InvalidAccessKeyId``, ``bad_signature`` 403 ``SignatureDoesNotMatch``,
``expired``   400 ``ExpiredToken``: the store rejecting the credentials (never per object).
``denied``    403 ``AccessDenied``.

``rules`` pins a fault to one path for every request (a permanently failing object).
``hold(paths)`` holds the requests for some paths, unanswered, until ``release()``, and
``hold_after(n)`` holds every request after the next ``n``: a run can be caught mid-way.
``hold_matching(predicate, after)`` holds the requests ``predicate(method, path)`` selects
once ``after`` of them have gone through (a write caught half-way: some objects written,
the rest not). Held requests still unanswered when the proxy stops are dropped (reset),
never forwarded: a killed client's pending write never lands after its death.
``fail_after(n, kind)`` answers every request (of ``methods``) after the next ``n`` with
``kind``: a store that breaks down mid-run.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOWDOWN = "slowdown"
INTERNAL = "internal"
RESET = "reset"
STALL = "stall"
CUT = "cut"
HUGE = "huge"
BAD_KEY = "bad_key"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
DENIED = "denied"
TRANSIENT_KINDS = (SLOWDOWN, INTERNAL, RESET, STALL, CUT)
#: kind -> (status, S3 error code)
CREDENTIAL_ANSWERS = {
    BAD_KEY: (403, "InvalidAccessKeyId"),
    BAD_SIGNATURE: (403, "SignatureDoesNotMatch"),
    EXPIRED: (400, "ExpiredToken"),
    DENIED: (403, "AccessDenied"),
}
KINDS = (*TRANSIENT_KINDS, HUGE, *CREDENTIAL_ANSWERS)

HUGE_LENGTH = 10**12
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


def s3_error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 (port 0) that injects S3 faults; see module doc."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        kinds: Iterable[str] = TRANSIENT_KINDS,
        seed: int = 0,
        methods: Iterable[str] = ("GET",),
        rules: dict[str, str] | None = None,
        stall_max_s: float = 60.0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.kinds = tuple(kinds)
        self.seed = seed
        self.methods = {m.upper() for m in methods}
        self.rules: dict[str, str] = dict(rules or {})
        self.stall_max_s = stall_max_s
        bad = [k for k in (*self.kinds, *self.rules.values()) if k not in KINDS]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}")

        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()
        #: faults injected, by kind
        self.injected: Counter[str] = Counter()
        #: every request: (method, path, outcome) with outcome a fault kind or "forwarded"
        self.log: list[tuple[str, str, str]] = []
        #: (path, kind, seconds the connection was held before the client hung up)
        self.held: list[tuple[str, str, float]] = []
        self._held_paths: set[str] = set()
        self._passes_left: int | None = None
        self._hold_if: Callable[[str, str], bool] | None = None
        self._hold_if_after = 0
        self._fail_after: tuple[int, str] | None = None
        self._released = threading.Event()
        self._released.set()
        self._stopping = threading.Event()
        #: requests currently held by ``hold``
        self.waiting = 0

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up mid-response are part of the game

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", daemon=True
        )

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- holding requests -------------------------------------------------------------

    def hold(self, paths: Iterable[str]) -> None:
        """Hold every request for these paths (no answer at all) until ``release``."""
        with self._lock:
            self._held_paths = set(paths)
            self._released.clear()

    def hold_after(self, n: int) -> None:
        """Let ``n`` more requests through, then hold every later one until ``release``."""
        with self._lock:
            self._passes_left = n
            self._released.clear()

    def hold_matching(self, predicate: Callable[[str, str], bool], after: int = 0) -> None:
        """Let ``after`` requests that ``predicate(method, path)`` selects through, then hold
        every later one it selects until ``release``; other requests pass."""
        with self._lock:
            self._hold_if = predicate
            self._hold_if_after = after
            self._released.clear()

    def fail_after(self, n: int, kind: str) -> None:
        """Forward ``n`` more requests, then answer every later one with ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._fail_after = (n, kind)

    def release(self) -> None:
        with self._lock:
            self._held_paths = set()
            self._passes_left = None
            self._hold_if = None
            self._released.set()

    # --- what happened ----------------------------------------------------------------

    def requests_for(self, path: str) -> list[str]:
        """The outcome of every request for ``path``, in order."""
        with self._lock:
            return [outcome for _, p, outcome in self.log if p == path]

    def forwarded(self) -> int:
        with self._lock:
            return sum(1 for *_, outcome in self.log if outcome == "forwarded")

    # --- the request path -------------------------------------------------------------

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            n = self._seen[(method, path)]
            self._seen[(method, path)] += 1
        if path in self.rules:
            return self.rules[path]
        if self._fail_after is not None and method in self.methods:
            with self._lock:
                left, kind = self._fail_after
                if left <= 0:
                    return kind
                self._fail_after = (left - 1, kind)
        if method not in self.methods or not self.rate or not self.kinds:
            return None
        rng = random.Random(f"{self.seed}/{method}/{path}/{n}")
        if rng.random() < self.rate:
            return self.kinds[rng.randrange(len(self.kinds))]
        return None

    def _wait_if_held(self, method: str, path: str) -> None:
        with self._lock:
            if self._hold_if is not None:
                if not self._hold_if(method, path):
                    return
                if self._hold_if_after > 0:
                    self._hold_if_after -= 1
                    return
            elif path not in self._held_paths:
                if self._passes_left is None:
                    return
                if self._passes_left > 0:
                    self._passes_left -= 1
                    return
            self.waiting += 1
        try:
            while not self._released.wait(0.2):
                if self._stopping.is_set():
                    return
        finally:
            with self._lock:
                self.waiting -= 1

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command.upper()
        path = urlsplit(h.path).path
        body = _read_body(h)
        self._wait_if_held(method, path)
        if self._stopping.is_set():
            _reset(h)  # held until the proxy stopped: never forwarded late
            return
        fault = self._decide(method, path)
        with self._lock:
            self.log.append((method, path, fault or "forwarded"))
            if fault:
                self.injected[fault] += 1
        head = method == "HEAD"  # a HEAD answer has no body, errors included
        if fault == SLOWDOWN:
            xml = s3_error_xml("SlowDown", "Please reduce your request rate.")
            _send(h, 503, "Slow Down", xml, head=head)
        elif fault == INTERNAL:
            xml = s3_error_xml("InternalError", "injected")
            _send(h, 500, "Internal Server Error", xml, head=head)
        elif fault in CREDENTIAL_ANSWERS:
            status, code = CREDENTIAL_ANSWERS[fault]
            _send(h, status, "Refused", s3_error_xml(code, "injected"), head=head)
        elif fault == RESET:
            _reset(h)
        elif fault == STALL:
            self._hold_until_client_leaves(h, path, STALL)
        elif fault == HUGE:
            h.send_response_only(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(HUGE_LENGTH))
            h.send_header("ETag", '"faultproxy-huge"')
            h.end_headers()
            h.wfile.flush()
            self._hold_until_client_leaves(h, path, HUGE)
        else:
            status, reason, headers, payload, length = self._forward(h, method, body)
            if fault == CUT and payload:
                _send(h, status, reason, payload[: len(payload) // 2], headers, len(payload))
                _reset(h)
            elif head:  # no body, and the upstream's Content-Length (the object's size)
                _send(h, status, reason, payload, headers, length, head=True)
            else:
                _send(h, status, reason, payload, headers)

    def _forward(
        self, h: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes, int | None]:
        """The upstream's status, reason, end-to-end headers, body and Content-Length."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            conn.request(method, h.path, body=body if body else None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            declared = resp.getheader("Content-Length")
            length = int(declared) if declared is not None else None
            return resp.status, resp.reason, out, payload, length
        finally:
            conn.close()

    def _hold_until_client_leaves(self, h: BaseHTTPRequestHandler, path: str, kind: str) -> None:
        """Send nothing more; return when the client closes the connection (or at the cap)."""
        sock = h.connection
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.stall_max_s and not self._stopping.is_set():
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        break  # orderly close by the client
                except OSError:
                    break  # reset by the client
                break  # the client sent something: it has given up on this response
        with self._lock:
            self.held.append((path, kind, time.monotonic() - t0))
        _reset(h)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    reason: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    length: int | None = None,
    head: bool = False,
) -> None:
    h.send_response_only(status, reason)
    for key, value in headers or [("Content-Type", "application/xml")]:
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    if not head:
        h.wfile.write(body)
    h.wfile.flush()


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0): no FIN, no more bytes."""
    h.close_connection = True
    sock = h.connection
    with contextlib.suppress(OSError):
        h.wfile.flush()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The handler's file objects hold references: close them so the socket really closes now.
    for f in (h.rfile, h.wfile):
        with contextlib.suppress(OSError):
            f.close()
    sock.close()
