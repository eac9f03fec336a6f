"""A loopback HTTP proxy in front of fake-gcs-server that counts what a client asks storage for.

Every request is relayed as is (except ``Accept-Encoding``, so that answers stay
readable) and recorded: list calls with the number of object names and folder
prefixes each answer held, and downloads.  Tests use it to show what a command
costs in Cloud Storage operations, e.g. that exporting one day of a 30-day
archive lists that day's names and no others.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_LIST_PATH = re.compile(r"/storage/v1/b/[^/]+/o")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    names: int  # object names in a list answer
    prefixes: int  # folder prefixes in a list answer

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and _LIST_PATH.fullmatch(self.path) is not None

    @property
    def is_download(self) -> bool:
        return self.method == "GET" and self.query.get("alt") == ["media"]


class CountingProxy:
    """``with CountingProxy(fake_gcs_url) as proxy: ... proxy.url ... proxy.list_calls ...``"""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("accept-encoding", "host")}
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    reply_headers = answer.getheaders()
                    status = answer.status
                finally:
                    upstream.close()
                split = urlsplit(self.path)
                names = prefixes = 0
                if _LIST_PATH.fullmatch(unquote(split.path)) and self.command == "GET" and status == 200:
                    document = json.loads(data or b"{}")
                    names, prefixes = len(document.get("items", [])), len(document.get("prefixes", []))
                with proxy._lock:
                    proxy.calls.append(Call(self.command, unquote(split.path), parse_qs(split.query), names, prefixes))
                self.send_response(status)
                for key, value in reply_headers:
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    @property
    def list_calls(self) -> list[Call]:
        return [call for call in self.calls if call.is_list]

    @property
    def names_listed(self) -> int:
        return sum(call.names for call in self.list_calls)

    @property
    def downloads(self) -> int:
        return sum(1 for call in self.calls if call.is_download)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
