"""Reading a request body whole, within a byte cap, a memory budget and a deadline.

`read_body` reads what `main.receive_audio` keeps; `discard_body` reads and drops
what it refuses, so that the sender reads the answer instead of a reset.  A body
that is cut short, still arriving at its deadline, over its cap or over the
instance's budget is never taken for a whole one.  Bodies are read from the
request stream of functions-framework's server (gunicorn): at a deadline,
`BodyDeadlines` shuts the connection under a blocked read, and an answer to a body
not read to its end ends its connection (`stop_reading`,
`close_when_the_answer_says_so`).  Under a server that gives no socket (Werkzeug's),
reads are bounded in bytes only.
"""

from __future__ import annotations

import enum
import heapq
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import flask
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected

# Cloud Run refuses requests over 32 MiB before they reach us: no body can be larger.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# A body must arrive whole within the sender's own 30 s timeout, counted from the
# request's arrival: later, the sender has given up and nobody reads the answer, so a
# body still arriving then is dropped (408) instead of holding a thread and memory.
BODY_ARRIVAL_SECONDS = 30.0
# A rejected body is read and thrown away before the answer: a client that is still
# sending when the server closes gets a reset instead of the status (httpx then
# retries what a clean 4xx would have stopped).  Bounded in bytes (twice what Cloud
# Run lets through; reading it costs no memory) and in time: 2 s, plus the time its
# declared length takes at 4 MiB/s (a 32 KB chunk from the backend arrives in
# milliseconds; 32 MiB gets 10 s), never past the sender's own 30 s.  A client that
# trickles its body holds a thread no longer; the phone, on a slower link, never
# retries whether it reads the status or a reset.
DISCARD_MAX_BYTES = 2 * MAX_REQUEST_BYTES
DISCARD_MIN_SECONDS = 2.0
DISCARD_BYTES_PER_SECOND = 4 * 1024 * 1024
# Body bytes taken from the stream at a time (a kept body) or thrown away at a time (a
# rejected one).  Until a piece is complete gunicorn holds it, outside the body budget:
# at most 1 MiB per request.
READ_PIECE_BYTES = 1024 * 1024
DISCARD_PIECE_BYTES = 64 * 1024
# What reading a body raises when the client goes away or breaks its chunked encoding:
# the socket's own errors (gunicorn's NoMoreData is one), Werkzeug's (its development
# server and test client), and gunicorn's parse errors for a malformed chunk.
BROKEN_BODY_ERRORS = (OSError, ClientDisconnected, ParseException)


class BodyEnd(enum.Enum):
    """How reading a request body ended."""

    COMPLETE = "complete"
    TOO_LARGE = "too large"  # past the cap: reading stopped there
    BUSY = "busy"  # the instance already holds its BODY_BUDGET_BYTES of bodies
    CUT_SHORT = "cut short"  # ended before its Content-Length or its last chunk: the connection dropped
    TOO_SLOW = "too slow"  # still arriving at the deadline


@dataclass
class Body:
    """What arrived of a request body: `pieces` holds it only when `end` is COMPLETE."""

    end: BodyEnd
    pieces: list[bytes]
    size: int  # bytes that arrived, complete or not
    detail: str  # how it ended, for the log
    budget: int  # the instance's body budget for this request, in bytes
    held: int = 0  # bytes counted against the budget until the read_body block ends

    def hold(self, size: int) -> bool:
        """Count `size` more bytes (what the body grows into once parsed) until the block ends.

        False, counting nothing, when the instance's budget has no room for them.
        """
        if not BUDGET.take(size, self.held, self.budget):
            return False
        self.held += size
        return True


@contextmanager
def read_body(request: flask.Request, limit: int, budget: int, give_up_at: float) -> Iterator[Body]:
    """Read the whole body, at most `limit` bytes, until `give_up_at` (time.monotonic()).

    A body that ends before its Content-Length or its last chunk is CUT_SHORT, never
    taken for a whole one.  The bytes read count against the instance's `budget` as
    they arrive (a client that declares a large body and sends nothing holds
    nothing), and a complete body's stay counted until the block ends.
    """
    declared = request.content_length
    pieces: list[bytes] = []
    size = held = 0
    end, detail = BodyEnd.COMPLETE, ""
    deadline = DEADLINES.watch(request.environ, give_up_at)
    try:
        while True:
            piece = request.stream.read(min(READ_PIECE_BYTES, limit + 1 - size))
            if not piece:
                break
            size += len(piece)
            if size > limit:
                end = BodyEnd.TOO_LARGE
                break
            if not BUDGET.take(len(piece), held, budget):
                end = BodyEnd.BUSY
                break
            held += len(piece)
            pieces.append(piece)
    except BROKEN_BODY_ERRORS as exc:
        end, detail = BodyEnd.CUT_SHORT, f"{type(exc).__name__}: {exc}"
    finally:  # never left watched: the connection may carry the sender's next request
        late = DEADLINES.end(deadline)
    if end is BodyEnd.COMPLETE and declared is not None and size < declared:
        end = BodyEnd.CUT_SHORT  # gunicorn ends a body of known length at the end of the connection, silently
    if end is BodyEnd.CUT_SHORT and late:
        end = BodyEnd.TOO_SLOW  # the deadline shut the connection
    of_declared = f" of {declared}" if declared is not None else " (chunked)"
    detail = f"{size}{of_declared} bytes arrived; {detail or end.value}"
    if end is not BodyEnd.COMPLETE:
        pieces.clear()
        BUDGET.release(held)
        held = 0
    body = Body(end, pieces, size, detail, budget, held)
    try:
        yield body
    finally:
        BUDGET.release(body.held)


def discard_seconds(declared: int | None) -> float:
    """How long a rejected body of `declared` bytes (None: chunked) may take to be read and dropped."""
    return min(DISCARD_MIN_SECONDS + (declared or 0) / DISCARD_BYTES_PER_SECOND, BODY_ARRIVAL_SECONDS)


def discard_body(request: flask.Request) -> bool:
    """Read what the client is still sending and throw it away, in constant memory.

    Returns:
        True once the body is read to its end; False if it is longer than
        DISCARD_MAX_BYTES (declared or read), still arriving after its
        `discard_seconds`, or broken off.
    """
    declared = request.content_length
    give_up_at = time.monotonic() + discard_seconds(declared)
    if declared is not None and declared > DISCARD_MAX_BYTES:
        return False
    read = 0
    ended = False
    deadline = DEADLINES.watch(request.environ, give_up_at)
    try:
        while read <= DISCARD_MAX_BYTES and not ended:
            piece = request.stream.read(DISCARD_PIECE_BYTES)
            read += len(piece)
            ended = not piece
    except BROKEN_BODY_ERRORS:
        pass
    finally:
        late = DEADLINES.end(deadline)
    return ended and not late


class BodyBudget:
    """Body bytes this instance holds at once; over it a request gets 503, never an OOM kill."""

    def __init__(self) -> None:
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, size: int, held: int, budget: int) -> bool:
        """Count `size` more bytes for a request that already holds `held`; False when over `budget`."""
        with self._lock:
            if self.in_use > held and self.in_use + size > budget:
                return False  # a request alone always fits: the cap is at most the budget
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


BUDGET = BodyBudget()


@dataclass(order=True)
class _Deadline:
    at: float
    sock: socket.socket | None = field(compare=False)
    reading: bool = field(default=True, compare=False)
    passed: bool = field(default=False, compare=False)


class BodyDeadlines:
    """Ends the reading of bodies still arriving at their deadline; one thread per instance.

    A read from the request stream blocks in recv(), and a socket timeout bounds each
    recv(), not the whole body: a client sending a byte a second never trips it.  At a
    deadline this shuts that request's connection (gunicorn, the server
    functions-framework runs, hands it to the application as
    ``environ["gunicorn.socket"]``): a blocked recv() returns at once as the end of
    the stream, and gunicorn drops the connection after the function returns instead
    of draining it.  Only the reading side would keep the answer writable, but
    nobody waits for it: a body still arriving at its deadline is from a sender
    that has given up, or a rejected one that is not a real sender's.  Under a
    server that gives no socket, reads are bounded in bytes only.  (A
    threading.Timer per request cost 0.5 ms.)
    """

    def __init__(self) -> None:
        self._due: list[_Deadline] = []  # a heap, earliest first
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, environ: dict, at: float) -> _Deadline:
        deadline = _Deadline(at, environ.get("gunicorn.socket"))
        if deadline.sock is None:
            return deadline
        with self._changed:
            heapq.heappush(self._due, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="body-deadlines", daemon=True)
                self._thread.start()
            elif self._due[0] is deadline:
                self._changed.notify()
        return deadline

    def end(self, deadline: _Deadline) -> bool:
        """Stop watching; True if the deadline passed while the body was being read."""
        with self._changed:
            deadline.reading, deadline.sock = False, None
            while self._due and not self._due[0].reading:
                heapq.heappop(self._due)
            return deadline.passed

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._due and (not self._due[0].reading or self._due[0].at <= now):
                    deadline = heapq.heappop(self._due)
                    if deadline.reading:
                        deadline.passed = True
                        with suppress(OSError):  # the client may be gone already
                            deadline.sock.shutdown(socket.SHUT_RDWR)
                self._changed.wait(self._due[0].at - now if self._due else None)


DEADLINES = BodyDeadlines()


def stop_reading(environ: dict) -> None:
    """Shut the request's connection for reading: nothing more of its body will be read.

    Otherwise gunicorn reads what is left of an unread body after the answer: before
    the next request of a kept-alive connection, checking its time limit only between
    1 KiB reads (a client sending a byte every half second would hold a server thread
    for as long as it went on), and for up to 2 s as it closes a connection, on the
    thread that accepts new ones.  Shut for reading, the connection gives every later
    read what has already arrived, then its end, at once; the answer can still be
    written.  Under a server that gives no socket, there is nothing to shut.
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        with suppress(OSError):  # the client may be gone, or a deadline shut the connection already
            sock.shutdown(socket.SHUT_RD)


def close_when_the_answer_says_so(wsgi_app: Callable) -> Callable:
    """WSGI middleware: an answer with ``Connection: close`` ends its connection under gunicorn too.

    WSGI leaves connections to the server, and gunicorn drops an application's
    Connection header (hop-by-hop, PEP 3333) and keeps the connection alive.  Its
    start_response is a method of its own response, whose force_close() is what
    gunicorn calls itself when it will not keep a connection: the answer then says
    ``Connection: close`` and the connection is closed after it.  Flask's
    development server reads the header itself.

    This reaches past WSGI into gunicorn's response object (``start_response.__self__``),
    on purpose and only here.  Nothing public does the same: gunicorn's only public
    switch is its ``keepalive`` setting, which would close every connection (the Omi
    backend's kept-alive ones too), and a response without a length is chunked under
    HTTP/1.1 rather than closed.  `stop_reading` alone (a public socket call) frees
    the thread as well: two tokenless tricklers of 100 MB, 2 threads, a real chunk
    stored in 0.27-0.49 s without this, 0.18-0.20 s with it.  But the 401 then says
    ``Connection: keep-alive`` on a connection about to be closed, and a sender that
    believes it reuses a dead connection.  Under another server the getattr finds
    nothing and the answer is left as it is.
    """

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable:
            if any(name.lower() == "connection" and value.strip().lower() == "close" for name, value in headers):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return app
