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

import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import unquote_plus

import flask
import functions_framework

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
# spare, and deploy.sh's memory is sized from it (see the README's Performance).
DEFAULT_BODY_BUDGET_BYTES = 256 * 1024 * 1024
# A rejected body is read and thrown away before the answer: a client that is still
# sending when the server closes gets a reset instead of the status (httpx then
# retries what a clean 4xx would have stopped).  Bounded in bytes (twice what Cloud
# Run lets through) and in time (the sender's own 30 s timeout).
DISCARD_MAX_BYTES = 2 * HARD_MAX_CHUNK_BYTES
DISCARD_MAX_SECONDS = 30.0
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
READ_PIECE_BYTES = 1024 * 1024
DISCARD_PIECE_BYTES = 64 * 1024

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
        4xx ``{"error"}`` for a request to fix, 503 when storage is unavailable
        (retry), 500 when the function is misconfigured.  Every answer comes after
        the whole body is read, so the sender can read it.
    """
    started = time.monotonic()
    log = {"uid": None, "token": None, "object": None, "bytes": None}

    def answer(status: int, body: dict, *, message: str, close: bool = False, **headers: str) -> flask.Response:
        severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        _log(severity, message, **log, status=status, latency_ms=round(elapsed(started) * 1000, 2))
        payload = json.dumps(body)
        if close:
            # The body is still unread: a streamed answer stops functions-framework from
            # reading it into memory, and the connection is closed instead of drained.
            headers["Connection"] = "close"
            return flask.Response(iter([payload]), status, headers, mimetype="application/json")
        return flask.Response(payload, status, headers, mimetype="application/json")

    def reject(status: int, error: str, **headers: str) -> flask.Response:
        read_to_end = discard_body(request.stream, request.content_length, started + DISCARD_MAX_SECONDS)
        return answer(status, {"error": error}, message=f"rejected: {error}", close=not read_to_end, **headers)

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
        return reject(401, "missing or wrong token: use the URL deploy.sh printed, ending in ?token=...")

    try:
        uid = validate_uid(params.get("uid"))
    except QueryError as exc:
        return reject(400, str(exc))
    log["uid"] = uid

    allowed = os.environ.get("ALLOWED_UIDS", "").strip()
    if allowed and uid not in {u.strip() for u in allowed.split(",")}:
        return reject(403, f"uid {uid!r} is not in ALLOWED_UIDS")

    if request.mimetype == "application/json":  # the "Conversation events" webhook, not audio
        return receive_conversation(request, uid, started, log, answer, reject)

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

    # Reserve what the body will hold before reading it (the cap, for a chunked body).
    reserved = min(declared, limit) if declared is not None else limit
    if not _body_budget.reserve(reserved):
        return reject(503, "this instance is busy with other large bodies: retry in a few seconds")
    try:
        pieces, size = read_body(request.stream, limit)
        if pieces is None:
            return reject(413, f"body exceeds the {limit}-byte limit (MAX_CHUNK_BYTES)")
        log["bytes"] = size
        if size == 0:
            return answer(200, {"stored": None}, message="empty body: nothing to store")

        key = request.headers.get("Idempotency-Key", "")
        key = key if IDEMPOTENCY_KEY_RE.fullmatch(key) else ""
        chunk = _remember(uid, key)
        if chunk.response is not None:
            log["object"] = chunk.response["object"]
            return answer(200, {**chunk.response, "duplicate": True}, message="duplicate: already stored")

        duration = wav.duration_seconds(size, sample_rate)
        metadata = {
            "sample_rate": str(sample_rate),
            "received_at": chunk.received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "duration_seconds": str(duration),
            "pcm_bytes": str(size),
        }
        if key:
            metadata["idempotency_key"] = key
        audio = wav.frame(pieces, sample_rate)
        pieces.clear()  # the WAV is now the only copy: a large body is held twice, not three times
        deadline = storage_deadline_seconds(retried=bool(key))
        try:
            left = max(deadline - elapsed(started), MIN_STORAGE_SECONDS)
            stored = store.put(uid, chunk.received_at, audio, metadata, chunk.write_id, left)
        except storage.StorageUnavailable as exc:
            return answer(503, {"error": "storage is unavailable: retry later"}, message=f"storage failed: {exc}")
        except storage.StorageRefused as exc:
            return answer(500, {"error": STORAGE_REFUSED}, message=f"storage refused: {exc}")
        del audio
    finally:
        _body_budget.release(reserved)
    log["object"] = stored.location
    chunk.response = {"object": stored.location, "bytes": size, "duration_seconds": duration}
    return answer(200, chunk.response, message="stored (found from an earlier attempt)" if stored.existed else "stored")


def receive_conversation(
    request: flask.Request,
    uid: str,
    started: float,
    log: dict[str, object],
    answer: Callable[..., flask.Response],
    reject: Callable[..., flask.Response],
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

    reserved = (min(declared, limit) if declared is not None else limit) * CONVERSATION_BUDGET_FACTOR
    if not _body_budget.reserve(reserved):
        return reject(503, "this instance is busy with other large bodies: retry in a few seconds")
    try:
        pieces, size = read_body(request.stream, limit)
        if pieces is None:
            return reject(413, f"body exceeds the {limit}-byte limit for a conversation event")
        log["bytes"] = size
        body = b"".join(pieces)
        pieces.clear()
        try:
            event = conversation.classify(body)
        except conversation.PayloadError as exc:
            return reject(400, str(exc))
        if isinstance(event, conversation.Ignored):
            return answer(200, {"stored": None, "ignored": event.reason}, message=f"not stored: {event.reason}")

        key = request.headers.get("Idempotency-Key", "")
        key = key if IDEMPOTENCY_KEY_RE.fullmatch(key) else ""
        received_at = _remember(uid, key).received_at  # a retry's first receipt: the same name if no start is sent
        metadata = {
            "conversation_id": event.conversation_id,
            "received_at": received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        sent = {"started_at": event.started_at, "finished_at": event.finished_at, "title": event.title}
        metadata |= {name: value for name, value in sent.items() if value is not None}
        if key:
            metadata["idempotency_key"] = key
        deadline = storage_deadline_seconds(retried=bool(key))
        try:
            left = max(deadline - elapsed(started), MIN_STORAGE_SECONDS)
            starts_at = event.starts_at or received_at
            stored = store.put_conversation(uid, starts_at, event.conversation_id, body, metadata, left)
        except storage.StorageUnavailable as exc:
            return answer(503, {"error": "storage is unavailable: retry later"}, message=f"storage failed: {exc}")
        except storage.StorageRefused as exc:
            return answer(500, {"error": STORAGE_REFUSED}, message=f"storage refused: {exc}")
    finally:
        _body_budget.release(reserved)
    log["object"] = stored.location
    response = {"conversation": stored.location, "id": event.conversation_id, "bytes": size}
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


def read_body(stream: BinaryIO, limit: int) -> tuple[list[bytes] | None, int]:
    """Read the whole body in pieces, never holding more than `limit` + 1 bytes.

    Returns:
        (pieces, total size), or (None, size read) once the body passes `limit`.
    """
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = stream.read(min(READ_PIECE_BYTES, limit + 1 - size))
        if not piece:
            return pieces, size
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return None, size


def discard_body(stream: BinaryIO, declared: int | None, give_up_at: float) -> bool:
    """Read what the client is still sending and throw it away, in constant memory.

    Returns:
        True once the body is read to its end; False if it is longer than
        DISCARD_MAX_BYTES (declared or read) or still arriving at `give_up_at`.
    """
    if declared is not None and declared > DISCARD_MAX_BYTES:
        return False
    read = 0
    while read <= DISCARD_MAX_BYTES and time.monotonic() < give_up_at:
        piece = stream.read(DISCARD_PIECE_BYTES)
        if not piece:
            return True
        read += len(piece)
    return False


class BodyBudget:
    """Body bytes this instance may hold at once; over it a request gets 503, never an OOM kill."""

    def __init__(self) -> None:
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.in_use and self.in_use + size > body_budget_bytes():
                return False  # one body alone always fits: the cap is at most the budget
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.in_use -= size


_body_budget = BodyBudget()


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
    """The storage backend for the current configuration, built once per instance."""
    key = tuple(os.environ.get(name, "") for name in ("GCS_BUCKET_NAME", "LOCAL_AUDIO_DIR", "K_SERVICE"))
    store = _stores.get(key)
    if store is None:
        with _stores_lock:  # gen2 serves requests on many threads: build one client only
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = storage.store_from_env()
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
