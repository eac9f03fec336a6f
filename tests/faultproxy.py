"""A small HTTP proxy on loopback that injects storage faults.

It sits between the function's storage client and fake-gcs-server
(``STORAGE_EMULATOR_HOST`` points at the proxy) and forwards each request,
unless a fault is armed for requests of that kind:

* ``"503"``: answer 503 without forwarding (storage overloaded);
* ``"reset"``: drop the connection without forwarding (storage down);
* ``"cut"``: forward, so storage does the work, then drop the connection
  before the response (a response lost on the way back);
* ``"hang"``: never answer and never forward (storage stuck);
* ``"hang-after"``: forward, then never answer (stuck after doing the work);
* ``"trickle"``: forward, then send the answer one byte at a time (a stalled link).

Hangs and trickles end when the client goes away, when `release` or `stop` is called, or
after `HANG_LIMIT_SECONDS`, so no test can leave a thread behind for long.

Two settings make the stand-in answer as Cloud Storage does where fake-gcs-server
does not:

* ``resumable_preconditions``: fake-gcs-server ignores ``ifGenerationMatch`` on a
  resumable upload (the library's path for bodies over 8 MiB); Cloud Storage
  refuses to start one for a name already taken.  The proxy checks the name
  upstream and answers 412 itself.
* ``taken_status=403``: to a caller without ``storage.objects.delete`` (our
  function's role), Cloud Storage may answer a write to a taken name with 403
  rather than 412.  The proxy turns every 412 into that 403.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, urlsplit

FAULTS = ("503", "reset", "cut", "hang", "hang-after", "trickle")
HANG_LIMIT_SECONDS = 60.0
TRICKLE_SECONDS = 0.2
# Hop-by-hop headers are the proxy's own business, not passed through.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def is_upload(method: str, path: str) -> bool:
    """An object write (the JSON API's media/multipart/resumable upload)."""
    return method == "POST" and path.startswith("/upload/")


def is_any(method: str, path: str) -> bool:
    return True


@dataclass
class _Rule:
    fault: str
    match: Callable[[str, str], bool]
    times: int | None  # None: until cleared


@dataclass
class Seen:
    """One request the proxy received and what it did with it."""

    method: str
    path: str
    action: str  # "forwarded" or the fault applied


@dataclass
class FaultProxy:
    """Forward to `upstream` (``http://host:port``), injecting armed faults."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)
    resumable_preconditions: bool = False
    taken_status: int = 412

    def __post_init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._conns: set[socket.socket] = set()
        target = urlsplit(self.upstream)
        self._upstream_host, self._upstream_port = target.hostname, target.port
        self._server = self._serve(0)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _serve(self, port: int) -> _Server:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        return server

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every hang and close every client connection."""
        self._release.set()
        self.down()

    def down(self) -> None:
        """Stop listening and drop every connection: storage is unreachable."""
        self._server.shutdown()
        self._server.server_close()
        self.drop_connections()
        self._thread.join(5)

    def up(self) -> None:
        """Listen again on the same port after `down`."""
        self._server = self._serve(self._server.server_address[1])
        self.start()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def arm(self, fault: str, *, times: int | None = None, match: Callable[[str, str], bool] = is_upload) -> None:
        """Apply `fault` to the next `times` matching requests (all of them if None)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self._rules.append(_Rule(fault, match, times))

    def clear(self) -> None:
        """Disarm every fault and end the hangs in progress."""
        with self._lock:
            self._rules.clear()
        self.release()

    def release(self) -> None:
        """End the hangs in progress (their connections are dropped unanswered)."""
        self._release.set()
        self._release = threading.Event()

    def drop_connections(self) -> None:
        """Reset every open client connection, as a storage restart would."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _reset(conn)

    def count(self, action: str | None = None, match: Callable[[str, str], bool] = is_upload) -> int:
        """How many matching requests were seen (with `action`, if given)."""
        with self._lock:
            return sum(1 for s in self.seen if match(s.method, s.path) and action in (None, s.action))

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            for rule in self._rules:
                if rule.match(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    return rule.fault
            return "forward"

    def _record(self, method: str, path: str, action: str) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, action))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True

    def _proxy(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        action = self.owner._decide(self.command, self.path)
        self.owner._record(self.command, self.path, "forwarded" if action == "forward" else action)
        if action == "503":
            payload = b'{"error": {"code": 503, "message": "injected: service unavailable"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if action == "reset":
            self._drop()
            return
        if action == "hang":
            self._hang()
            return
        taken = self._taken_by_precondition(body)
        if taken:
            self._refuse_taken()
            return
        status, reason, headers, payload = self._forward(body)
        if status == 412:
            self._refuse_taken()
            return
        if action == "cut":
            self._drop()
            return
        if action == "hang-after":
            self._hang()
            return
        self._answer(status, reason, headers, payload)
        if action == "trickle":
            self._trickle(payload)
            return
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _proxy

    def _taken_by_precondition(self, body: bytes) -> bool:
        """A resumable upload asking ifGenerationMatch=0 for a name that exists (Cloud Storage refuses it)."""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not (
            self.owner.resumable_preconditions
            and self.command == "POST"
            and query.get("uploadType") == ["resumable"]
            and query.get("ifGenerationMatch") == ["0"]
        ):
            return False
        bucket = url.path.split("/b/", 1)[1].split("/", 1)[0]
        name = (query.get("name") or [json.loads(body or b"{}").get("name", "")])[0]
        conn = http.client.HTTPConnection(self.owner._upstream_host, self.owner._upstream_port, timeout=30)
        try:
            conn.request("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()

    def _refuse_taken(self) -> None:
        """Answer a write to a taken name as Cloud Storage does: 412, or 403 to a caller that may not delete."""
        if self.owner.taken_status == 403:
            message = "does not have storage.objects.delete access to the Google Cloud Storage object."
        else:
            message = "At least one of the pre-conditions you specified did not hold."
        payload = json.dumps({"error": {"code": self.owner.taken_status, "message": message}}).encode()
        self.owner._record(self.command, self.path, f"taken-{self.owner.taken_status}")
        self.send_response(self.owner.taken_status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.owner._upstream_host, self.owner._upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read() if self.command != "HEAD" else b""
            return response.status, response.reason, response.getheaders(), payload
        finally:
            conn.close()

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.flush()

    def _trickle(self, payload: bytes) -> None:
        """Send the body one byte per TRICKLE_SECONDS: each read is quick, the whole is not."""
        release = self.owner._release
        give_up = time.monotonic() + HANG_LIMIT_SECONDS
        for i in range(len(payload)):
            if release.wait(TRICKLE_SECONDS) or time.monotonic() > give_up:
                break
            self.wfile.write(payload[i : i + 1])
            self.wfile.flush()
        self._drop()

    def _hang(self) -> None:
        """Answer nothing until released, the client leaves, or the limit passes."""
        release = self.owner._release
        give_up = time.monotonic() + HANG_LIMIT_SECONDS
        while not release.is_set() and time.monotonic() < give_up:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(65536, socket.MSG_PEEK):
                        break  # the client closed its end
                except OSError:
                    break
                time.sleep(0.05)
        self._drop()

    def _drop(self) -> None:
        _reset(self.connection)
        self.close_connection = True


def _reset(conn: socket.socket) -> None:
    """Close with RST, so the peer sees a dropped connection, not a clean end."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
