"""A loopback HTTP/1.1 proxy that adds a fixed delay to every request.

It stands in for real Cloud Storage latency in front of fake-gcs-server (which
answers in about a millisecond): each request is held for `delay` seconds and
then relayed byte for byte over one upstream connection per client connection.
It parses no more than the framing (Content-Length or chunked), so that its own
CPU cost stays far below the latency it adds.  Used by the export tests and by
``bench/export_bench.py``, which runs it as ``python tests/latency_proxy.py
UPSTREAM_URL DELAY_SECONDS`` in a process of its own.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
from urllib.parse import urlsplit

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


class LatencyProxy:
    """``with LatencyProxy("http://127.0.0.1:4443", 0.02) as proxy: ... proxy.url ...``"""

    def __init__(self, upstream: str, delay: float) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.delay = delay
        self.requests = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=256))
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        _nodelay(client_w)
        upstream_r = upstream_w = None
        try:
            while True:
                try:
                    head = await client_r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                match = _CONTENT_LENGTH.search(head)
                body = await client_r.readexactly(int(match[1])) if match else b""
                self.requests += 1
                await asyncio.sleep(self.delay)
                if upstream_w is None:
                    upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
                    _nodelay(upstream_w)
                upstream_w.write(head + body)
                reply = await upstream_r.readuntil(b"\r\n\r\n")
                client_w.write(reply)
                status = int(reply.split(b" ", 2)[1])
                if head.startswith(b"HEAD ") or status in (204, 304) or status < 200:
                    pass
                elif match := _CONTENT_LENGTH.search(reply):
                    client_w.write(await upstream_r.readexactly(int(match[1])))
                elif _CHUNKED.search(reply):
                    while True:
                        line = await upstream_r.readuntil(b"\r\n")
                        client_w.write(line)
                        size = int(line.split(b";")[0], 16)
                        if size == 0:  # then trailers, if any, and an empty line
                            while (trailer := await upstream_r.readuntil(b"\r\n")) != b"\r\n":
                                client_w.write(trailer)
                            client_w.write(b"\r\n")
                            break
                        client_w.write(await upstream_r.readexactly(size + 2))
                else:  # delimited by the connection's end
                    client_w.write(await upstream_r.read())
                    return
                await client_w.drain()
                if _CLOSE.search(head) or _CLOSE.search(reply):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> None:
    """``python tests/latency_proxy.py UPSTREAM_URL DELAY_SECONDS``: serve until killed.

    Prints the proxy's URL on the first line of stdout once it is listening.
    """
    upstream, delay = sys.argv[1], float(sys.argv[2])
    with LatencyProxy(upstream, delay) as proxy:
        print(proxy.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
