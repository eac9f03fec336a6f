"""Omi "Realtime audio bytes" webhook: each POSTed chunk of PCM becomes one WAV object.

The Omi backend posts raw 16-bit mono PCM to the configured URL with
``sample_rate`` and ``uid`` in the query (three URL forms, see `parse_query`).
`receive_audio` checks the token, validates the query, frames the audio as WAV
and stores it under ``{uid}/{UTC timestamp}.wav`` in the bucket (or a local
directory when run locally), answering well inside the sender's 30 s timeout.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import unquote_plus

import flask
import functions_framework

import storage
import wav

# The Omi backend accepts 8 kHz (DevKit 1 v1.0.2) to 48 kHz; current devices send 16 kHz.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
SAMPLE_RATE_RE = re.compile(r"[1-9][0-9]{3,4}")

# Cloud Functions refuses requests over 32 MiB; no cap may exceed that.
HARD_MAX_CHUNK_BYTES = 32 * 1024 * 1024
# Default cap: the largest WAV that GCS takes in one atomic request (8 MiB), i.e.
# 262 s of 16 kHz audio, over twice the largest batch an older Omi backend posts.
DEFAULT_MAX_CHUNK_BYTES = 8 * 1024 * 1024 - wav.HEADER_SIZE - 1
# Omi gives up after 30 s; answer 503 before that so it retries rather than times out.
DEFAULT_STORAGE_DEADLINE_SECONDS = 20.0
# Retries of one chunk come seconds apart; remember this many recent chunks per instance.
IDEMPOTENCY_CACHE_SIZE = 10_000
# Omi sends a uuid4; anything longer or unprintable is not used (the audio is still stored).
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")
# The parameters we read; each may appear once (or repeated with the same value).
QUERY_KEYS = ("sample_rate", "uid", "token")
READ_PIECE_BYTES = 1024 * 1024
# Buffers above this get their own memory mapping, returned to the OS when freed
# (glibc's starting threshold, held there; see `_unmap_large_buffers`).
LARGE_BODY_BYTES = 128 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


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
    """Store one chunk of Omi audio as a WAV object.

    Args:
        request: ``POST ?sample_rate=RATE&uid=UID[&token=T]`` with raw PCM16 mono.

    Returns:
        200 ``{"object", "bytes", "duration_seconds"}`` when stored (or already
        stored by an earlier attempt), 200 ``{"stored": null}`` for an empty body,
        4xx ``{"error"}`` for a request to fix, 503 when storage is unavailable.
    """
    started = time.perf_counter()
    log = {"uid": None, "object": None, "bytes": None}

    def answer(status: int, body: dict, *, message: str, unread: bool = False, **headers: str) -> flask.Response:
        severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        _log(severity, message, **log, status=status, latency_ms=latency_ms)
        payload = json.dumps(body)
        if unread:
            # The body was not read. A streamed answer stops functions-framework's
            # after_request from reading it all into memory; Connection: close asks
            # the server to drop the connection rather than drain it.
            headers["Connection"] = "close"
            response = flask.Response(iter([payload]), status, headers, mimetype="application/json")
        else:
            response = flask.Response(payload, status, headers, mimetype="application/json")
        return response

    def reject(status: int, error: str, **headers: str) -> flask.Response:
        return answer(status, {"error": error}, message=f"rejected: {error}", unread=True, **headers)

    if request.method != "POST":
        return reject(405, f"method {request.method} not allowed: Omi posts audio with POST", Allow="POST")

    try:
        params = parse_query(request.query_string)
    except QueryError as exc:
        return reject(400, str(exc))

    expected_token = os.environ.get("WEBHOOK_TOKEN", "")
    if expected_token and not hmac.compare_digest(
        params.get("token", "").encode("utf-8", "surrogateescape"), expected_token.encode("utf-8", "surrogateescape")
    ):
        return reject(401, "missing or wrong token: use the URL deploy.sh printed, ending in ?token=...")

    try:
        sample_rate = validate_sample_rate(params.get("sample_rate"))
        uid = validate_uid(params.get("uid"))
    except QueryError as exc:
        return reject(400, str(exc))
    log["uid"] = uid

    allowed = os.environ.get("ALLOWED_UIDS", "").strip()
    if allowed and uid not in {u.strip() for u in allowed.split(",")}:
        return reject(403, f"uid {uid} is not in ALLOWED_UIDS")

    limit = max_chunk_bytes()
    if request.content_length is not None and request.content_length > limit:
        return reject(413, f"body of {request.content_length} bytes exceeds the {limit}-byte limit (MAX_CHUNK_BYTES)")
    if (request.content_length or 0) > LARGE_BODY_BYTES:
        _unmap_large_buffers()

    try:
        store = store_from_env()
    except storage.ConfigError as exc:
        return reject(500, str(exc))

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
    try:
        stored = store.put(
            uid,
            chunk.received_at,
            audio,
            metadata,
            chunk.write_id,
            storage_deadline_seconds(),
        )
    except storage.StorageUnavailable as exc:
        return answer(503, {"error": f"storage unavailable, retry later: {exc}"}, message=f"storage failed: {exc}")
    log["object"] = stored.location
    chunk.response = {"object": stored.location, "bytes": size, "duration_seconds": duration}
    return answer(200, chunk.response, message="stored (found from an earlier attempt)" if stored.existed else "stored")


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


def max_chunk_bytes() -> int:
    """The body cap: MAX_CHUNK_BYTES if set, never above Cloud Functions' 32 MiB."""
    configured = os.environ.get("MAX_CHUNK_BYTES", "").strip()
    value = int(configured) if configured.isdigit() else DEFAULT_MAX_CHUNK_BYTES
    return min(value, HARD_MAX_CHUNK_BYTES)


def storage_deadline_seconds() -> float:
    """How long one chunk may spend on storage retries (STORAGE_DEADLINE_SECONDS)."""
    try:
        value = float(os.environ.get("STORAGE_DEADLINE_SECONDS", DEFAULT_STORAGE_DEADLINE_SECONDS))
    except ValueError:
        return DEFAULT_STORAGE_DEADLINE_SECONDS
    return value if 0 < value < 30 else DEFAULT_STORAGE_DEADLINE_SECONDS


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


_large_buffers_unmapped = False


def _unmap_large_buffers() -> None:
    """Have glibc map each buffer over LARGE_BODY_BYTES on its own, and unmap it when freed.

    Left alone, glibc raises that threshold after the first large free and keeps
    later large buffers in per-thread arenas: eight concurrent 3.84 MB bodies
    then peaked at 3.9 times their size in RSS, instead of 1.7 (bench/measure.py).
    Done at the first large body, so instances that only see 1-second chunks
    never load ctypes.
    """
    global _large_buffers_unmapped
    if _large_buffers_unmapped:
        return
    _large_buffers_unmapped = True
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_BODY_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator keeps its own counsel


def _log(severity: str, message: str, **fields: object) -> None:
    """One JSON line on stdout, which Cloud Logging reads as a structured entry."""
    sys.stdout.write(json.dumps({"severity": severity, "message": message, **fields}) + "\n")
    sys.stdout.flush()
