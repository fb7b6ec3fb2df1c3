"""Fault injection for the transient-fault test (test_transient_faults.py).

``S3FaultProxy``: a small HTTP/1.1 reverse proxy on 127.0.0.1 between the S3 clients
(delta-rs' object_store for the Delta warehouse, boto3 in the MLflow server and in Dagster's
compute log manager) and the real S3 gateway. It forwards requests byte for byte (the Host
header included, so SigV4 signatures still verify upstream) and, on a deterministic
schedule, answers one instead with a transient fault, never forwarding it:

- ``503``: ``503 SlowDown`` (S3 throttling) with S3's XML error body;
- ``500``: ``500 InternalError`` with S3's XML error body;
- ``reset``: the connection is dropped (TCP RST) without any response;
- ``timeout``: ``400 RequestTimeout`` (S3's "socket connection ... not read from or written
  to within the timeout period"), transient for S3 and retried by the AWS SDKs, but a 4xx
  that delta-rs' object_store does not retry: it reaches the asset, whose RetryPolicy has
  to absorb it.

A faulted request never reaches the store, so the fault is transient in the strict sense:
the same request sent again succeeds. Every request is recorded (method, path, what it
got) so the test can prove that faults fired and on which tables. ``when(predicate)``
returns an event set by the first request matching it: the test schedules the other faults
(a Postgres restart, an MLflow outage) on what the run is doing, not on sleeps.

Only the standard library.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCALHOST = "127.0.0.1"
MODES = ("503", "500", "reset")
_ERRORS = {
    "timeout": (400, "Bad Request", "RequestTimeout",
                "Your socket connection to the server was not read from or written to within "
                "the timeout period. Idle connections will be closed."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
}
# hop-by-hop headers and what the proxy re-frames itself
_DROP_REQUEST = {"connection", "keep-alive", "proxy-connection", "expect", "transfer-encoding", "te"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding"}


@dataclass
class Request:
    seq: int
    method: str
    target: str  # unquoted path and query, e.g. "/quant/warehouse/labels/_delta_log/..."
    fault: str | None = None  # the injected fault, or None when forwarded
    status: int | None = None  # upstream's status when forwarded


@dataclass
class FaultPlan:
    """Which requests get a fault: among the requests ``applies`` accepts, the
    ``every``-th, ``2*every``-th, ... one, the fault mode cycling through ``modes``; and
    before that, each ``(predicate, mode)`` of ``once`` faults the first request that its
    predicate accepts, then never again. Deterministic in the request order; ``every=0``
    and no ``once`` inject nothing.

    A request (method and target) that got an ``every`` fault gets none again and is not
    counted: a transient fault does not hit a request's retry. Counted, a step whose attempt
    makes a multiple of ``every * len(modes)`` requests would meet the same fault at the same
    request on every attempt, and a retry policy could never get past a fault that a real
    store would not repeat (seen: a Delta commit dropped on all 4 attempts of a step)."""

    every: int = 0
    modes: tuple[str, ...] = MODES
    applies: Callable[[str, str], bool] = lambda method, target: True
    once: list[tuple[Callable[[str, str], bool], str]] = field(default_factory=list)
    _matched: int = field(default=0, repr=False)
    _fired: int = field(default=0, repr=False)
    _faulted: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def decide(self, method: str, target: str) -> str | None:
        for rule in self.once:
            predicate, mode = rule
            if predicate(method, target):
                self.once.remove(rule)
                return mode
        if self.every <= 0 or not self.applies(method, target) or (method, target) in self._faulted:
            return None
        self._matched += 1
        if self._matched % self.every:
            return None
        mode = self.modes[self._fired % len(self.modes)]
        self._fired += 1
        self._faulted.add((method, target))
        return mode


class S3FaultProxy:
    """Reverse proxy to ``upstream`` (``http://host:port``) with fault injection; a context
    manager (serves in a daemon thread until exit)."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or LOCALHOST, parsed.port or 80)
        self.plan = plan or FaultPlan()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._triggers: list[tuple[Callable[[str, str], bool], threading.Event]] = []
        self._server = ThreadingHTTPServer((LOCALHOST, 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy",
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self._server.server_address[1]}"

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan

    def when(self, predicate: Callable[[str, str], bool]) -> threading.Event:
        """An event set by the first request (from now on) that ``predicate(method, target)``
        accepts, before the request is answered."""
        event = threading.Event()
        with self._lock:
            self._triggers.append((predicate, event))
        return event

    def _admit(self, method: str, target: str) -> Request:
        with self._lock:
            request = Request(len(self.requests), method, target)
            request.fault = self.plan.decide(method, target)
            self.requests.append(request)
            fired = [(p, e) for p, e in self._triggers if p(method, target)]
            for trigger in fired:
                self._triggers.remove(trigger)
        for _, event in fired:
            event.set()
        return request

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def faults(self, where: Callable[[Request], bool] = lambda r: True) -> Counter:
        """Injected faults by mode among the recorded requests ``where`` accepts."""
        return Counter(r.fault for r in self.snapshot() if r.fault and where(r))


def table_of(target: str) -> str | None:
    """The warehouse table a request is about (object path or listing prefix), if any."""
    path, _, query = target.partition("?")
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[1] == "warehouse":
        return parts[2]
    prefix = urllib.parse.parse_qs(query).get("prefix", [""])[0]
    bits = prefix.split("/")
    if len(bits) >= 2 and bits[0] == "warehouse":
        return bits[1]
    return None


def under(target: str, folder: str) -> bool:
    """Whether the request is about an object under ``folder`` of the bucket (path-style
    object key, or a listing's prefix)."""
    path, _, query = target.partition("?")
    parts = path.strip("/").split("/", 1)
    if len(parts) == 2 and parts[1].startswith(folder + "/"):
        return True
    prefix = urllib.parse.parse_qs(query).get("prefix", [""])[0]
    return prefix.startswith(folder + "/")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy: S3FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        request = proxy._admit(self.command, urllib.parse.unquote(self.path))
        if request.fault == "reset":
            self.close_connection = True
            # linger 0: close() sends RST, the client sees the connection drop mid-request
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if request.fault is not None:
            status, reason, code, message = _ERRORS[request.fault]
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{self.path.split('?')[0]}</Resource>"
                f"<RequestId>fault-{request.seq}</RequestId></Error>"
            ).encode()
            head = [("Content-Type", "application/xml"), ("Content-Length", str(len(payload))),
                    ("x-amz-request-id", f"fault-{request.seq}")]
            if status == 503:
                head.append(("Retry-After", "1"))
            self._respond(status, reason, head, b"" if self.command == "HEAD" else payload)
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _DROP_REQUEST]
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        try:
            response = self._forward(headers, body)
        except (OSError, http.client.HTTPException) as exc:
            # the store itself failed: a 502 (clients retry it), recorded as such
            request.status = 502
            payload = f"<Error><Code>BadGateway</Code><Message>{exc!r}</Message></Error>".encode()
            self._respond(502, "Bad Gateway", [("Content-Length", str(len(payload)))], payload)
            return
        status, reason, upstream_headers, data = response
        request.status = status
        bodyless = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        out = [(k, v) for k, v in upstream_headers if k.lower() not in _DROP_RESPONSE]
        if not bodyless:
            out = [(k, v) for k, v in out if k.lower() != "content-length"]
            out.append(("Content-Length", str(len(data))))
        self._respond(status, reason, out, b"" if bodyless else data)

    def _forward(self, headers: Iterable[tuple[str, str]], body: bytes):
        headers = list(headers)
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream,  # type: ignore[attr-defined]
                                                            timeout=120)
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers:
                    conn.putheader(key, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    conn.close()
                    self._upstream = None
                return response.status, response.reason, response.getheaders(), data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.BadStatusLine):
                conn.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _respond(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        lines.append("\r\n")
        self.wfile.write("".join(lines).encode("latin-1") + body)
        self.wfile.flush()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
