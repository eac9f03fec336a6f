"""Omi "Realtime audio bytes" webhook: each POSTed chunk of PCM becomes one WAV object.

The Omi backend (1-second chunks) and the phone's webhook-only mode (one batch per
POST) post raw 16-bit mono PCM to the configured URL with ``sample_rate`` and
``uid`` in the query (three URL forms, see `parse_query`).  `receive_audio` checks
the token, validates the query, frames the audio as WAV and stores it under
``{uid folder}/{UTC timestamp}.wav`` in the bucket (or a local directory when run
locally; `storage.uid_prefix` makes the folder), answering inside the sender's 30 s
timeout and only after reading the whole body, so that the sender reads the answer.

The same URL takes Omi's "Conversation events" webhook: a JSON POST, with ``uid``
but no ``sample_rate``, is stored as received beside the audio
(`receive_conversation`).
"""

from __future__ import annotations

import enum
import heapq
import hmac
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote_plus

import flask
import functions_framework
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected

import conversation
import storage
import wav

# The Omi backend accepts 8 kHz (DevKit 1 v1.0.2) to 48 kHz; current devices send 16 kHz.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
SAMPLE_RATE_RE = re.compile(r"[1-9][0-9]{3,4}")

# Cloud Run refuses requests over 32 MiB before they reach us, so that is the default
# cap and no cap may exceed it: the phone's 300 s batch (9.6 MB) and 120 s at 48 kHz
# (11.5 MB) both fit.
HARD_MAX_CHUNK_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_CHUNK_BYTES = HARD_MAX_CHUNK_BYTES
# Body bytes one instance holds at once.  Each body is held about twice while it is
# framed and uploaded; 256 MiB takes 16 concurrent 11.5 MB batches with room to
# spare, and deploy.sh's memory is sized from it (see docs/performance.md).
DEFAULT_BODY_BUDGET_BYTES = 256 * 1024 * 1024
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
DISCARD_MAX_BYTES = 2 * HARD_MAX_CHUNK_BYTES
DISCARD_MIN_SECONDS = 2.0
DISCARD_BYTES_PER_SECOND = 4 * 1024 * 1024
# Storage deadlines, counted from the request's arrival.  A sender with an
# Idempotency-Key is the Omi backend: it retries after 1, 5 and 30 s, so answer 503
# early and let it.  A sender without one is the phone (or an older backend): it
# never retries and gives up at 30 s, so keep trying until a margin before that.
DEFAULT_STORAGE_DEADLINE_SECONDS = 20.0
DEFAULT_NO_RETRY_DEADLINE_SECONDS = 27.0
DEADLINE_BOUNDS_SECONDS = (1.0, 28.0)  # the answer must still reach a 30 s sender
MIN_STORAGE_SECONDS = 1.0  # storage is always tried, however long the body took to arrive
# A conversation event is one JSON document.  A day-long recording's transcript is a
# few MB: Omi's segment is ~330 bytes of JSON, one every ~5 s is 11,500 segments
# (3.8 MB) in 16 h of talk.  16 MiB holds 50,000 of them (59 h at one every 4.2 s),
# and a 2,000-segment conversation (0.6 MB) more than twenty times over.
MAX_CONVERSATION_BYTES = 16 * 1024 * 1024
# Parsed, a transcript takes ~3.7 times its bytes in Python objects (16 MiB of
# segments peaked at 59 MiB), beside the body itself: about five times its size, 2.5
# times what an audio body of that size takes (held twice).  The budget counts that.
CONVERSATION_BUDGET_FACTOR = 3
# Retries of one chunk come seconds apart; remember this many recent chunks per instance.
IDEMPOTENCY_CACHE_SIZE = 10_000
# Omi sends a uuid4; anything longer or unprintable is not used (the audio is still stored).
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")
# The parameters we read; each may appear once (or repeated with the same value).
QUERY_KEYS = ("sample_rate", "uid", "token")
# Body bytes taken from the stream at a time (a kept body) or thrown away at a time (a
# rejected one).  Until a piece is complete gunicorn holds it, outside the body budget:
# at most 1 MiB per request.
READ_PIECE_BYTES = 1024 * 1024
DISCARD_PIECE_BYTES = 64 * 1024
# What reading a body raises when the client goes away or breaks its chunked encoding:
# the socket's own errors (gunicorn's NoMoreData is one), Werkzeug's (its development
# server and test client), and gunicorn's parse errors for a malformed chunk.
BROKEN_BODY_ERRORS = (OSError, ClientDisconnected, ParseException)

# Audio arrives as the raw body (both Omi senders send application/octet-stream).  A
# form is the commonest curl mistake: `curl -d @tone.pcm` sends the file form-encoded
# with its line breaks stripped (12,680 of 32,000 bytes of a tone arrived), `-F` wraps
# it in multipart parts.  Either would be stored as damaged audio.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
FORM_POSTED = (
    "the audio was posted as a form, which damages it (curl -d strips its line breaks): "
    "send the raw bytes, with curl --data-binary @FILE -H 'Content-Type: application/octet-stream'"
)
# What a sender is told when the instance holds its BODY_BUDGET_BYTES of other bodies.
BUSY = "this instance is busy with other large bodies: retry in a few seconds"
# What a sender is told when storage refuses a write for good (audio or conversation).
STORAGE_REFUSED = (
    "storage refused the write: the bucket is missing or the function's service account lacks "
    "a permission on it; re-run deploy.sh, or check the bucket's IAM"
)


class QueryError(ValueError):
    """The query string cannot be understood."""


@dataclass
class _Chunk:
    """A chunk seen by this instance, kept so that a retry of it is recognised."""

    received_at: datetime
    write_id: str
    response: dict | None = None  # set once stored


_stores: dict[tuple[str, str, str], storage.GcsStore | storage.LocalStore] = {}
_stores_lock = threading.Lock()
_no_credentials: dict[tuple[str, str, str], str] = {}  # configurations whose store cannot be built
_recent: OrderedDict[tuple[str, str], _Chunk] = OrderedDict()
_recent_lock = threading.Lock()


@functions_framework.http
def receive_audio(request: flask.Request) -> flask.Response:
    """Store one chunk of Omi audio as a WAV object, or one conversation event.

    Args:
        request: ``POST ?sample_rate=RATE&uid=UID[&token=T]`` with raw PCM16 mono,
            or ``POST ?uid=UID[&token=T]`` with a JSON body (`receive_conversation`).

    Returns:
        200 ``{"object", "bytes", "duration_seconds"}`` when stored (or already
        stored by an earlier attempt), 200 ``{"stored": null}`` for an empty body,
        4xx ``{"error"}`` for a request to fix (400 too for a body cut short, 408
        for one still arriving at the sender's 30 s: neither is stored; 415 for
        audio posted as a form), 503 when
        storage is unavailable (retry), 500 when the function is misconfigured.
        Every answer comes after the whole body is read, so the sender can read it.
    """
    started = time.monotonic()
    log = {"uid": None, "token": None, "object": None, "bytes": None}

    def answer(status: int, body: dict, *, message: str, unread: bool = False, **headers: str) -> flask.Response:
        severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        _log(severity, message, **log, status=status, latency_ms=round(elapsed(started) * 1000, 2))
        payload = json.dumps(body) + "\n"  # a terminal's prompt starts on its own line after curl
        if unread:
            # The body was not read to its end, and nothing more of it will be: the
            # connection ends with this answer (see `stop_reading`).  Streamed, so that
            # functions-framework does not read the rest itself after the function.
            stop_reading(request.environ)
            headers["Connection"] = "close"
            return flask.Response(iter([payload]), status, headers, mimetype="application/json")
        return flask.Response(payload, status, headers, mimetype="application/json")

    def reject(status: int, error: str, **headers: str) -> flask.Response:
        read_to_end = discard_body(request, time.monotonic() + discard_seconds(request.content_length))
        return answer(status, {"error": error}, message=f"rejected: {error}", unread=not read_to_end, **headers)

    def refuse_incomplete(body: Body, limit: int, limit_name: str) -> flask.Response:
        """The answer to a body read_body did not get whole; nothing of it is kept."""
        if body.end is BodyEnd.TOO_LARGE:
            return reject(413, f"body exceeds the {limit}-byte limit ({limit_name})")
        if body.end is BodyEnd.BUSY:
            return reject(503, BUSY)
        if body.end is BodyEnd.TOO_SLOW:
            error = f"the body did not arrive within {BODY_ARRIVAL_SECONDS:g} s: nothing stored; send it again"
            return answer(408, {"error": error}, message=f"too slow: {body.detail}", unread=True)
        error = "the body was cut short (the connection ended before its last byte): nothing stored; send it again"
        return answer(400, {"error": error}, message=f"cut short: {body.detail}", unread=True)

    if request.method != "POST":
        return reject(405, f"method {request.method} not allowed: Omi posts audio with POST", Allow="POST")

    try:
        params = parse_query(request.query_string)
    except QueryError as exc:
        return reject(400, str(exc))

    tokens = configured_tokens()
    if not tokens and os.environ.get("K_SERVICE"):
        return reject(500, "WEBHOOK_TOKEN is not set: a deployed function stores nothing without one; run deploy.sh")
    log["token"] = matching_token(params.get("token", ""), tokens)
    if tokens and log["token"] is None:
        if os.environ.get("K_SERVICE"):
            return reject(401, "missing or wrong token: use the URL deploy.sh printed, ending in ?token=...")
        return reject(401, "missing or wrong token: add &token=... with the WEBHOOK_TOKEN this server was started with")

    try:
        uid = validate_uid(params.get("uid"))
    except QueryError as exc:
        return reject(400, str(exc))
    log["uid"] = uid

    allowed = os.environ.get("ALLOWED_UIDS", "").strip()
    if allowed and uid not in {u.strip() for u in allowed.split(",")}:
        return reject(403, f"uid {uid!r} is not in ALLOWED_UIDS")

    if request.mimetype == "application/json":  # the "Conversation events" webhook, not audio
        return receive_conversation(request, uid, started, log, answer, reject, refuse_incomplete)

    if request.mimetype in FORM_TYPES:
        return reject(415, FORM_POSTED)

    try:
        sample_rate = validate_sample_rate(params.get("sample_rate"))
    except QueryError as exc:
        return reject(400, str(exc))

    limit = max_chunk_bytes()
    declared = request.content_length
    if declared is not None and declared > limit:
        return reject(413, f"body of {declared} bytes exceeds the {limit}-byte limit (MAX_CHUNK_BYTES)")

    try:
        store = store_from_env()
    except storage.ConfigError as exc:
        return reject(500, str(exc))

    with read_body(request, limit, started + BODY_ARRIVAL_SECONDS) as body:
        log["bytes"] = body.size
        if body.end is not BodyEnd.COMPLETE:
            return refuse_incomplete(body, limit, "MAX_CHUNK_BYTES")
        if body.size == 0:
            return answer(200, {"stored": None}, message="empty body: nothing to store")

        key = request.headers.get("Idempotency-Key", "")
        key = key if IDEMPOTENCY_KEY_RE.fullmatch(key) else ""
        chunk = _remember(uid, key)  # only a whole body is remembered: a cut-short one is not this chunk
        if chunk.response is not None:
            log["object"] = chunk.response["object"]
            return answer(200, {**chunk.response, "duplicate": True}, message="duplicate: already stored")

        duration = wav.duration_seconds(body.size, sample_rate)
        metadata = {
            "sample_rate": str(sample_rate),
            "received_at": chunk.received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "duration_seconds": str(duration),
            "pcm_bytes": str(body.size),
        }
        if key:
            metadata["idempotency_key"] = key
        audio = wav.frame(body.pieces, sample_rate)
        body.pieces.clear()  # the WAV is now the only copy: a large body is held twice, not three times
        deadline = storage_deadline_seconds(retried=bool(key))
        try:
            left = max(deadline - elapsed(started), MIN_STORAGE_SECONDS)
            stored = store.put(uid, chunk.received_at, audio, metadata, chunk.write_id, left)
        except storage.StorageUnavailable as exc:
            return answer(503, {"error": "storage is unavailable: retry later"}, message=f"storage failed: {exc}")
        except storage.StorageRefused as exc:
            return answer(500, {"error": STORAGE_REFUSED}, message=f"storage refused: {exc}")
        del audio
    log["object"] = stored.location
    chunk.response = {"object": stored.location, "bytes": body.size, "duration_seconds": duration}
    return answer(200, chunk.response, message="stored (found from an earlier attempt)" if stored.existed else "stored")


def receive_conversation(
    request: flask.Request,
    uid: str,
    started: float,
    log: dict[str, object],
    answer: Callable[..., flask.Response],
    reject: Callable[..., flask.Response],
    refuse_incomplete: Callable[..., flask.Response],
) -> flask.Response:
    """Store one of Omi's conversation events as received, beside `uid`'s audio.

    The request passed the same checks as audio (method, token, uid,
    ALLOWED_UIDS).  The body is stored byte for byte under a name made from the
    conversation's start, its id and the body's digest (`storage.conversation_name`):
    a retried delivery finds its first attempt's object, a changed version goes
    beside the old one.

    Returns:
        200 ``{"conversation", "id", "bytes"}`` when stored (``"duplicate": true``
        when already stored), 200 ``{"stored": null, "ignored"}`` for Omi's other
        JSON webhooks, 400 for a body that is not a conversation, 413 over
        MAX_CONVERSATION_BYTES, 503 when storage is unavailable (retry).
    """
    limit = MAX_CONVERSATION_BYTES
    declared = request.content_length
    if declared is not None and declared > limit:
        return reject(413, f"body of {declared} bytes exceeds the {limit}-byte limit for a conversation event")

    try:
        store = store_from_env()
    except storage.ConfigError as exc:
        return reject(500, str(exc))

    with read_body(request, limit, started + BODY_ARRIVAL_SECONDS) as body:
        log["bytes"] = body.size
        if body.end is not BodyEnd.COMPLETE:
            return refuse_incomplete(body, limit, "MAX_CONVERSATION_BYTES")
        raw = b"".join(body.pieces)
        body.pieces.clear()
        parsing = body.size * (CONVERSATION_BUDGET_FACTOR - 1)  # the read bytes are counted already
        if not _body_budget.take(parsing, body.size):
            return answer(503, {"error": BUSY}, message=f"rejected: {BUSY}")
        try:
            try:
                event = conversation.classify(raw)
            except conversation.PayloadError as exc:
                return answer(400, {"error": str(exc)}, message=f"rejected: {exc}")
            if isinstance(event, conversation.Ignored):
                return answer(200, {"stored": None, "ignored": event.reason}, message=f"not stored: {event.reason}")

            key = request.headers.get("Idempotency-Key", "")
            key = key if IDEMPOTENCY_KEY_RE.fullmatch(key) else ""
            received_at = _remember(uid, key).received_at  # a retry's first receipt: the same name if no start is sent
            metadata = {
                "conversation_id": event.conversation_id,
                "received_at": received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            }
            sent = {"started_at": event.started_at, "finished_at": event.finished_at, "title": event.title}
            metadata |= {name: value for name, value in sent.items() if value is not None}
            if key:
                metadata["idempotency_key"] = key
            deadline = storage_deadline_seconds(retried=bool(key))
            try:
                left = max(deadline - elapsed(started), MIN_STORAGE_SECONDS)
                starts_at = event.starts_at or received_at
                stored = store.put_conversation(uid, starts_at, event.conversation_id, raw, metadata, left)
            except storage.StorageUnavailable as exc:
                return answer(503, {"error": "storage is unavailable: retry later"}, message=f"storage failed: {exc}")
            except storage.StorageRefused as exc:
                return answer(500, {"error": STORAGE_REFUSED}, message=f"storage refused: {exc}")
        finally:
            _body_budget.release(parsing)
    log["object"] = stored.location
    response = {"conversation": stored.location, "id": event.conversation_id, "bytes": body.size}
    if stored.existed:
        return answer(200, {**response, "duplicate": True}, message="conversation already stored")
    return answer(200, response, message="conversation stored")


def parse_query(raw: bytes) -> dict[str, str]:
    """Read ``sample_rate``, ``uid`` and ``token`` from any of Omi's three URL forms.

    * merged (current backend): ``?token=T&sample_rate=16000&uid=U`` (percent-encoded);
    * legacy (older backend): ``?token=T?sample_rate=16000&uid=U``, where a standard
      parser would put ``sample_rate`` inside the token's value;
    * app webhook-only mode: ``?uid=U&sample_rate=16000``.

    A literal ``?`` can only appear in the legacy form (the merged form encodes
    it), so both ``&`` and ``?`` separate parameters.

    Raises:
        QueryError: a parameter we read is given twice with different values.
    """
    text = raw.decode("latin-1")
    found: dict[str, str] = {}
    for part in re.split(r"[&?]", text):
        name, _, value = part.partition("=")
        name = unquote_plus(name, encoding="utf-8", errors="surrogateescape")
        if name not in QUERY_KEYS:
            continue
        value = unquote_plus(value, encoding="utf-8", errors="surrogateescape")
        if found.setdefault(name, value) != value:
            raise QueryError(f"{name} is given twice with different values; give it once")
    return found


def validate_sample_rate(value: str | None) -> int:
    """Return the sample rate as an int, or raise QueryError saying what is wrong."""
    if value is None:
        raise QueryError("missing sample_rate: add ?sample_rate=16000 (Omi adds it itself)")
    if not SAMPLE_RATE_RE.fullmatch(value) or not MIN_SAMPLE_RATE <= int(value) <= MAX_SAMPLE_RATE:
        shown = value if len(value) <= 20 else value[:20] + "..."
        raise QueryError(f"sample_rate {shown!r} is not a whole number from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}")
    return int(value)


def validate_uid(value: str | None) -> str:
    """Return the uid if it is safe as an object name prefix, else raise QueryError."""
    if value is None:
        raise QueryError("missing uid: add &uid=<your Omi user id> (Omi adds it itself)")
    if not storage.is_valid_uid(value):
        raise QueryError(f"uid must be {storage.UID_RULE}")
    return value


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


@contextmanager
def read_body(request: flask.Request, limit: int, give_up_at: float) -> Iterator[Body]:
    """Read the whole body, at most `limit` bytes, until `give_up_at` (time.monotonic()).

    A body that ends before its Content-Length or its last chunk is CUT_SHORT, never
    taken for a whole one.  The bytes read count against the instance's body budget
    as they arrive (a client that declares a large body and sends nothing holds
    nothing), and a complete body's stay counted until the block ends.
    """
    declared = request.content_length
    pieces: list[bytes] = []
    size = held = 0
    end, detail = BodyEnd.COMPLETE, ""
    deadline = _body_deadlines.watch(request.environ, give_up_at)
    try:
        while True:
            piece = request.stream.read(min(READ_PIECE_BYTES, limit + 1 - size))
            if not piece:
                break
            size += len(piece)
            if size > limit:
                end = BodyEnd.TOO_LARGE
                break
            if not _body_budget.take(len(piece), held):
                end = BodyEnd.BUSY
                break
            held += len(piece)
            pieces.append(piece)
    except BROKEN_BODY_ERRORS as exc:
        end, detail = BodyEnd.CUT_SHORT, f"{type(exc).__name__}: {exc}"
    finally:  # never left watched: the connection may carry the sender's next request
        late = _body_deadlines.end(deadline)
    if end is BodyEnd.COMPLETE and declared is not None and size < declared:
        end = BodyEnd.CUT_SHORT  # gunicorn ends a body of known length at the end of the connection, silently
    if end is BodyEnd.CUT_SHORT and late:
        end = BodyEnd.TOO_SLOW  # the deadline shut the connection
    of_declared = f" of {declared}" if declared is not None else " (chunked)"
    detail = f"{size}{of_declared} bytes arrived; {detail or end.value}"
    if end is not BodyEnd.COMPLETE:
        pieces.clear()
        _body_budget.release(held)
        held = 0
    try:
        yield Body(end, pieces, size, detail)
    finally:
        _body_budget.release(held)


def discard_seconds(declared: int | None) -> float:
    """How long a rejected body of `declared` bytes (None: chunked) may take to be read and dropped."""
    return min(DISCARD_MIN_SECONDS + (declared or 0) / DISCARD_BYTES_PER_SECOND, BODY_ARRIVAL_SECONDS)


def discard_body(request: flask.Request, give_up_at: float) -> bool:
    """Read what the client is still sending and throw it away, in constant memory.

    Returns:
        True once the body is read to its end; False if it is longer than
        DISCARD_MAX_BYTES (declared or read), still arriving at `give_up_at`,
        or broken off.
    """
    declared = request.content_length
    if declared is not None and declared > DISCARD_MAX_BYTES:
        return False
    read = 0
    ended = False
    deadline = _body_deadlines.watch(request.environ, give_up_at)
    try:
        while read <= DISCARD_MAX_BYTES and not ended:
            piece = request.stream.read(DISCARD_PIECE_BYTES)
            read += len(piece)
            ended = not piece
    except BROKEN_BODY_ERRORS:
        pass
    finally:
        late = _body_deadlines.end(deadline)
    return ended and not late


class BodyBudget:
    """Body bytes this instance holds at once; over it a request gets 503, never an OOM kill."""

    def __init__(self) -> None:
        self.in_use = 0
        self._lock = threading.Lock()

    def take(self, size: int, held: int = 0) -> bool:
        """Count `size` more bytes for a request that already holds `held`; False when over the budget."""
        with self._lock:
            if self.in_use > held and self.in_use + size > body_budget_bytes():
                return False  # a request alone always fits: the cap is at most the budget
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


_body_budget = BodyBudget()


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


_body_deadlines = BodyDeadlines()


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


if flask.has_app_context():  # functions-framework loads this module inside its app's context
    flask.current_app.wsgi_app = close_when_the_answer_says_so(flask.current_app.wsgi_app)


def configured_tokens() -> dict[str, str]:
    """The tokens accepted now: WEBHOOK_TOKEN and, during a rotation, WEBHOOK_TOKEN_PREVIOUS."""
    tokens = {"current": os.environ.get("WEBHOOK_TOKEN", ""), "previous": os.environ.get("WEBHOOK_TOKEN_PREVIOUS", "")}
    return {which: token for which, token in tokens.items() if token}


def matching_token(given: str, tokens: dict[str, str]) -> str | None:
    """Which configured token `given` is ("current" or "previous"), compared in constant time."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    matched = None
    for which, token in tokens.items():  # every token is compared, whichever matches
        if hmac.compare_digest(given_bytes, token.encode("utf-8", "surrogateescape")):
            matched = matched or which
    return matched


def elapsed(started: float) -> float:
    return time.monotonic() - started


def _setting(name: str, default: float, low: float, high: float) -> float:
    """A numeric setting from the environment; the default when unset, unreadable or out of bounds."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if low <= value <= high else default


def max_chunk_bytes() -> int:
    """The body cap: MAX_CHUNK_BYTES if set, never above Cloud Run's 32 MiB."""
    return int(_setting("MAX_CHUNK_BYTES", DEFAULT_MAX_CHUNK_BYTES, 1, HARD_MAX_CHUNK_BYTES))


def body_budget_bytes() -> int:
    """Body bytes one instance may hold at once (BODY_BUDGET_BYTES), at least one largest body."""
    return max(int(_setting("BODY_BUDGET_BYTES", DEFAULT_BODY_BUDGET_BYTES, 1, 2**40)), max_chunk_bytes())


def storage_deadline_seconds(*, retried: bool) -> float:
    """Seconds from a request's arrival to its answer when storage fails.

    STORAGE_DEADLINE_SECONDS for senders that retry (they send an Idempotency-Key),
    NO_RETRY_DEADLINE_SECONDS for those that do not; each within DEADLINE_BOUNDS_SECONDS.
    """
    if retried:
        return _setting("STORAGE_DEADLINE_SECONDS", DEFAULT_STORAGE_DEADLINE_SECONDS, *DEADLINE_BOUNDS_SECONDS)
    return _setting("NO_RETRY_DEADLINE_SECONDS", DEFAULT_NO_RETRY_DEADLINE_SECONDS, *DEADLINE_BOUNDS_SECONDS)


def store_from_env() -> storage.GcsStore | storage.LocalStore:
    """The storage backend for the current configuration, built once per instance.

    Raises:
        storage.ConfigError: storage is not configured, or, for the bucket, there
            are no credentials; that failure too is kept for the instance.
    """
    key = tuple(os.environ.get(name, "") for name in ("GCS_BUCKET_NAME", "LOCAL_AUDIO_DIR", "K_SERVICE"))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:  # gen2 serves requests on many threads: build one client only
            store = _stores.get(key)
            if store is None and key not in _no_credentials:
                try:
                    store = _stores[key] = storage.store_from_env()
                except storage.MissingCredentials as exc:
                    # Searching again on every request would repeat google-auth's whole search
                    # (files, then the metadata server) and say the same: once per instance.
                    _no_credentials[key] = str(exc)
                    _log("ERROR", f"storage cannot be used: {exc} ({exc.__cause__})")
    if store is None:
        raise storage.MissingCredentials(_no_credentials[key])
    return store


def _remember(uid: str, key: str) -> _Chunk:
    """Return this instance's record of the chunk with Idempotency-Key `key`.

    A retry gets back the first attempt's receipt time and write id, so it
    targets the same object name and recognises that object as its own if the
    first attempt did land.
    """
    now = datetime.now(UTC)
    if not key:
        return _Chunk(now, uuid.uuid4().hex)
    with _recent_lock:
        chunk = _recent.get((uid, key))
        if chunk is None:
            chunk = _recent[(uid, key)] = _Chunk(now, uuid.uuid4().hex)
            if len(_recent) > IDEMPOTENCY_CACHE_SIZE:
                _recent.popitem(last=False)
        return chunk


def _log(severity: str, message: str, **fields: object) -> None:
    """One JSON line on stdout, which Cloud Logging reads as a structured entry."""
    sys.stdout.write(json.dumps({"severity": severity, "message": message, **fields}) + "\n")
    sys.stdout.flush()
