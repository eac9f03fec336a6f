"""A loopback HTTP proxy in front of fake-gcs-server: it records, delays and breaks storage requests.

A client's storage calls reach fake-gcs-server through it (``STORAGE_EMULATOR_HOST``
points at the proxy).  Every request is recorded in `seen` (list answers with the
number of object names and folder prefixes they held), so a test can say what a
command costs in Cloud Storage operations.  Modes, any of them at once:

* ``delay``: hold every request that many seconds before forwarding it, standing in
  for real Cloud Storage latency (fake-gcs-server answers in about a millisecond);
  each client connection keeps one upstream connection, so the proxy's own cost
  stays far below the latency it adds;
* faults, armed with `arm` for requests of one kind:

  * ``"503"``: answer 503 without forwarding (storage overloaded);
  * ``"reset"``: drop the connection without forwarding (storage down);
  * ``"cut"``: forward, so storage does the work, then drop the connection
    before the response (a response lost on the way back);
  * ``"hang"``: never answer and never forward (storage stuck);
  * ``"hang-after"``: forward, then never answer (stuck after doing the work);
  * ``"trickle"``: forward, then send the answer one byte at a time (a stalled link);

  hangs and trickles end when the client goes away, when `release` or `stop` is
  called, or after `HANG_LIMIT_SECONDS`, so no test can leave a thread behind for long;
* answers as Cloud Storage gives them where fake-gcs-server does not:

  * ``resumable_preconditions``: fake-gcs-server ignores ``ifGenerationMatch`` on a
    resumable upload (the library's path for bodies over 8 MiB); Cloud Storage
    refuses to start one for a name already taken.  The proxy checks the name
    upstream and answers 412 itself;
  * ``delete_preconditions``: fake-gcs-server deletes an object whatever
    ``ifGenerationMatch`` a delete names; Cloud Storage answers 412 when the object
    is another generation.  The proxy reads the generation upstream and answers 412;
  * ``batches``: fake-gcs-server has no batch endpoint (``/batch/storage/v1``, up
    to 100 requests in one multipart/mixed body, as the compactor sends its
    deletes).  The proxy answers it as Cloud Storage does: each part is handled as
    if sent alone (recorded, faults and preconditions applied, forwarded), and the
    answers go back as the parts of one multipart/mixed answer;
  * ``taken_status=403``: to a caller without ``storage.objects.delete`` (our
    function's role), Cloud Storage may answer a write to a taken name with 403
    rather than 412.  The proxy turns every 412 into that 403.

``python tests/storage_proxy.py UPSTREAM_URL DELAY_SECONDS`` serves a delaying proxy
in a process of its own (``bench/export_bench.py``), printing its URL once listening.
"""

from __future__ import annotations

import email.parser
import http.client
import json
import re
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote, urlsplit

FAULTS = ("503", "reset", "cut", "hang", "hang-after", "trickle")
HANG_LIMIT_SECONDS = 60.0
TRICKLE_SECONDS = 0.2
# Hop-by-hop headers are the proxy's own business, not passed through; without
# Accept-Encoding the answers stay readable, so list answers can be counted.
DROPPED_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "accept-encoding",
}
_LIST_PATH = re.compile(r"/storage/v1/b/[^/]+/o")


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
    path: str  # as requested, query included
    action: str  # "forwarded" or the fault applied
    names: int = 0  # object names in a list answer
    prefixes: int = 0  # folder prefixes in a list answer

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and _LIST_PATH.fullmatch(unquote(urlsplit(self.path).path)) is not None

    @property
    def is_download(self) -> bool:
        return self.method == "GET" and self.query.get("alt") == ["media"]


@dataclass
class StorageProxy:
    """``with StorageProxy(fake_gcs_url) as proxy: ... proxy.url ... proxy.arm("503") ... proxy.list_calls``"""

    upstream: str
    delay: float = 0.0
    resumable_preconditions: bool = False
    delete_preconditions: bool = False
    batches: bool = False
    taken_status: int = 412
    seen: list[Seen] = field(default_factory=list)

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

    def start(self) -> StorageProxy:
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

    def __enter__(self) -> StorageProxy:
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

    @property
    def list_calls(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.is_list]

    @property
    def names_listed(self) -> int:
        return sum(call.names for call in self.list_calls)

    @property
    def downloads(self) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.is_download)

    def reset(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.seen.clear()

    def _decide(self, method: str, path: str) -> tuple[str, Seen]:
        with self._lock:
            action = "forward"
            for rule in self._rules:
                if rule.match(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    action = rule.fault
                    break
            seen = Seen(method, path, "forwarded" if action == "forward" else action)
            self.seen.append(seen)
            return action, seen


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    owner: StorageProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._conns.discard(self.connection)
        if self._upstream is not None:
            self._upstream.close()
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
        if self.owner.batches and self.command == "POST" and urlsplit(self.path).path == "/batch/storage/v1":
            self._batch(body)
            return
        action, seen = self.owner._decide(self.command, self.path)
        if self.owner.delay:
            time.sleep(self.owner.delay)
        if action == "503":
            payload = b'{"error": {"code": 503, "message": "injected"}}'
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
        if self._taken_by_precondition(body):
            self._refuse_taken(seen)
            return
        if self._another_generation():
            self._refuse_taken(seen, 412)
            return
        status, reason, headers, payload = self._forward(body)
        if status == 412:
            self._refuse_taken(seen)
            return
        if status == 200 and seen.is_list:
            document = json.loads(payload or b"{}")
            seen.names, seen.prefixes = len(document.get("items", [])), len(document.get("prefixes", []))
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

    def _batch(self, body: bytes) -> None:
        """Answer a JSON API batch: each part as if it came alone, the answers as one multipart/mixed."""
        action, _ = self.owner._decide(self.command, self.path)
        if self.owner.delay:
            time.sleep(self.owner.delay)
        if action != "forward":
            self._answer(503, "Service Unavailable", [("Content-Type", "application/json")], b"{}")
            self.wfile.write(b"{}")
            return
        request = email.parser.BytesParser().parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        boundary = f"batch_{uuid.uuid4().hex}"
        answer = []
        for part in request.get_payload():
            line = part.get_payload(decode=False).split("\n", 1)[0]
            method, path, _ = line.strip().split(" ", 2)
            path = urlsplit(path)._replace(scheme="", netloc="").geturl()
            status, reason, payload = self._one_of_batch(method, path)
            answer.append(
                f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{part['Content-ID']}>\r\n\r\n"
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n{payload.decode()}\r\n"
            )
        payload = ("".join(answer) + f"--{boundary}--\r\n").encode()
        self._answer(200, "OK", [("Content-Type", f"multipart/mixed; boundary={boundary}")], payload)
        self.wfile.write(payload)

    def _one_of_batch(self, method: str, path: str) -> tuple[int, str, bytes]:
        """One part of a batch, recorded and answered as if it had come alone."""
        action, _ = self.owner._decide(method, path)
        if action != "forward":
            return 503, "Service Unavailable", b'{"error": {"code": 503, "message": "injected"}}'
        query = parse_qs(urlsplit(path).query)
        if method == "DELETE" and self.owner.delete_preconditions and "ifGenerationMatch" in query:
            held = self._upstream_object(urlsplit(path).path)
            if held is not None and str(held.get("generation")) != query["ifGenerationMatch"][0]:
                return 412, "Precondition Failed", b'{"error": {"code": 412, "message": "precondition"}}'
        conn = http.client.HTTPConnection(self.owner._upstream_host, self.owner._upstream_port, timeout=30)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.reason, response.read()
        finally:
            conn.close()

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
        return self._upstream_object(f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}") is not None

    def _another_generation(self) -> bool:
        """A delete asking ifGenerationMatch=G of an object that is now another generation."""
        url = urlsplit(self.path)
        wanted = parse_qs(url.query).get("ifGenerationMatch")
        if not (self.owner.delete_preconditions and self.command == "DELETE" and wanted):
            return False
        held = self._upstream_object(url.path)
        return held is not None and str(held.get("generation")) != wanted[0]

    def _upstream_object(self, path: str) -> dict | None:
        """An object's metadata as fake-gcs-server holds it, or None if there is no such object."""
        conn = http.client.HTTPConnection(self.owner._upstream_host, self.owner._upstream_port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            payload = response.read()
            return json.loads(payload) if response.status == 200 else None
        finally:
            conn.close()

    def _refuse_taken(self, seen: Seen, status: int | None = None) -> None:
        """Answer a write to a taken name as Cloud Storage does: 412, or 403 to a caller that may not delete."""
        status = status or self.owner.taken_status
        if status == 403:
            message = "does not have storage.objects.delete access to the Google Cloud Storage object."
        else:
            message = "At least one of the pre-conditions you specified did not hold."
        payload = json.dumps({"error": {"code": status, "message": message}}).encode()
        with self.owner._lock:
            self.owner.seen.append(Seen(self.command, self.path, f"taken-{status}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream on this connection's own upstream connection; return the whole answer."""
        if self._upstream is None:
            upstream = self.owner._upstream_host, self.owner._upstream_port
            self._upstream = http.client.HTTPConnection(*upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED_HEADERS}
        try:
            self._upstream.request(self.command, self.path, body=body, headers=headers)
            response = self._upstream.getresponse()
            payload = response.read() if self.command != "HEAD" else b""
        except BaseException:
            self._upstream.close()
            self._upstream = None
            raise
        if response.will_close:
            self._upstream.close()
            self._upstream = None
        return response.status, response.reason, response.getheaders(), payload

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in DROPPED_HEADERS and name.lower() != "content-length":
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


def main() -> None:
    """``python tests/storage_proxy.py UPSTREAM_URL DELAY_SECONDS``: serve until killed."""
    with StorageProxy(sys.argv[1], delay=float(sys.argv[2])) as proxy:
        print(proxy.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
