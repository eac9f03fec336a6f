"""Omi "Realtime audio bytes" webhook: each POSTed chunk of PCM becomes one WAV object.

The Omi backend (1-second chunks) and the phone's webhook-only mode (one batch per
POST) post raw 16-bit mono PCM to the configured URL with ``sample_rate`` and
``uid`` in the query (three URL forms, see `parse_query`).  `receive_audio` checks
the token, validates the query, frames the audio as WAV and stores it under
``{uid folder}/{UTC timestamp}.wav`` in the bucket (or a local directory when run
locally; `names.uid_prefix` makes the folder), answering inside the sender's 30 s
timeout and only after reading the whole body (`body.read_body`), so that the
sender reads the answer.

The same URL takes Omi's "Conversation events" webhook: a JSON POST, with ``uid``
but no ``sample_rate``, is stored as received beside the audio
(`store_conversation`).
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
from urllib.parse import unquote_plus

import flask
import functions_framework

import body
import conversation
import names
import storage
import wav

# The Omi backend accepts 8 kHz (DevKit 1 v1.0.2) to 48 kHz; current devices send 16 kHz.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
SAMPLE_RATE_RE = re.compile(r"[1-9][0-9]{3,4}")

# No body may exceed what Cloud Run lets through (32 MiB), so that is the default cap
# and no cap may exceed it: the phone's 300 s batch (9.6 MB) and 120 s at 48 kHz
# (11.5 MB) both fit.
HARD_MAX_CHUNK_BYTES = body.MAX_REQUEST_BYTES
DEFAULT_MAX_CHUNK_BYTES = HARD_MAX_CHUNK_BYTES
# Body bytes one instance holds at once.  Each body is held about twice while it is
# framed and uploaded; 256 MiB takes 16 concurrent 11.5 MB batches with room to
# spare, and deploy.sh's memory is sized from it (see docs/performance.md).
DEFAULT_BODY_BUDGET_BYTES = 256 * 1024 * 1024
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


class Reject(Exception):
    """An answer that stores nothing: raised anywhere on a request's path, answered once by `receive_audio`.

    Its body is ``{"error": error}``, its log line's message `message` (by default
    ``rejected: {error}``).  What is left of the request body is read and dropped
    first, so that the sender reads the answer, unless `unread` says that the body
    will not be read to its end (cut short, or too slow): then the answer closes
    the connection.
    """

    def __init__(self, status: int, error: str, *, message: str = "", unread: bool = False, **headers: str) -> None:
        super().__init__(error)
        self.status, self.error, self.unread, self.headers = status, error, unread, headers
        self.message = message or f"rejected: {error}"


class QueryError(Reject):
    """The query string cannot be understood (400)."""

    def __init__(self, error: str) -> None:
        super().__init__(400, error)


@dataclass
class _Chunk:
    """A chunk seen by this instance, kept so that a retry of it is recognised."""

    received_at: datetime
    write_id: str
    response: dict | None = None  # set once stored


# The storage backend, built by the first request that needs it (not at import, so that
# tests import this module without credentials) and kept for the instance; or, when no
# credentials were found, that error, kept too (`instance_store`).
_store: storage.Store | storage.MissingCredentials | None = None
_store_lock = threading.Lock()
_recent: OrderedDict[tuple[str, str], _Chunk] = OrderedDict()
_recent_lock = threading.Lock()


@functions_framework.http
def receive_audio(request: flask.Request) -> flask.Response:
    """Store one chunk of Omi audio as a WAV object, or one conversation event.

    Args:
        request: ``POST ?sample_rate=RATE&uid=UID[&token=T]`` with raw PCM16 mono,
            or ``POST ?uid=UID[&token=T]`` with a JSON body (`store_conversation`).

    Returns:
        200 ``{"object", "bytes", "duration_seconds"}`` when stored (or already
        stored by an earlier attempt), 200 ``{"stored": null}`` for an empty body;
        a `Reject`'s ``{"error"}``: 4xx for a request to fix (400 for a body cut
        short, 408 for one still arriving at the sender's 30 s, 415 for audio posted
        as a form), 503 when storage is unavailable (retry), 500 when misconfigured.
        Every answer comes after the whole body is read, so the sender reads it.
    """
    started = time.monotonic()
    log = {"uid": None, "token": None, "object": None, "bytes": None}
    status, headers, unread = 200, {}, False
    try:
        if request.method != "POST":
            raise Reject(405, f"method {request.method} not allowed: Omi posts audio with POST", Allow="POST")
        params = parse_query(request.query_string)
        log["token"] = check_token(params.get("token", ""))
        uid = log["uid"] = validate_uid(params.get("uid"))
        check_allowed(uid)
        is_conversation = request.mimetype == "application/json"  # "Conversation events", not audio
        if is_conversation:
            sample_rate, limit, limit_name = 0, MAX_CONVERSATION_BYTES, "MAX_CONVERSATION_BYTES"
        elif request.mimetype in FORM_TYPES:
            raise Reject(415, FORM_POSTED)
        else:
            sample_rate = validate_sample_rate(params.get("sample_rate"))
            limit, limit_name = max_chunk_bytes(), "MAX_CHUNK_BYTES"
        declared = request.content_length
        if declared is not None and declared > limit:
            what = "for a conversation event" if is_conversation else "(MAX_CHUNK_BYTES)"
            raise Reject(413, f"body of {declared} bytes exceeds the {limit}-byte limit {what}")
        store = instance_store()
        key = idempotency_key(request.headers.get("Idempotency-Key", ""))
        with body.read_body(request, limit, body_budget_bytes(), started + body.BODY_ARRIVAL_SECONDS) as received:
            log["bytes"] = received.size
            if received.end is not body.BodyEnd.COMPLETE:
                raise incomplete(received, limit, limit_name)
            try:
                if is_conversation:
                    payload, message = store_conversation(store, uid, key, received, started)
                else:
                    payload, message = store_audio(store, uid, key, received, sample_rate, started)
            except storage.StorageUnavailable as exc:
                raise Reject(503, "storage is unavailable: retry later", message=f"storage failed: {exc}") from exc
            except storage.StorageRefused as exc:
                raise Reject(500, STORAGE_REFUSED, message=f"storage refused: {exc}") from exc
        log["object"] = payload.get("object", payload.get("conversation"))
    except Reject as refusal:
        status, headers, payload, message = refusal.status, refusal.headers, {"error": refusal.error}, refusal.message
        unread = refusal.unread or not body.discard_body(request)  # read to its end, the sender reads the answer
    severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
    _log(severity, message, **log, status=status, latency_ms=round(elapsed(started) * 1000, 2))
    return respond(request, status, payload, headers, unread)


def store_audio(
    store: storage.Store, uid: str, key: str, received: body.Body, sample_rate: int, started: float
) -> tuple[dict, str]:
    """Frame a whole body of PCM as WAV and store it; returns the answer and its log message."""
    if received.size == 0:
        return {"stored": None}, "empty body: nothing to store"
    chunk = _remember(uid, key)  # only a whole body is remembered: a cut-short one is not this chunk
    if chunk.response is not None:
        return {**chunk.response, "duplicate": True}, "duplicate: already stored"
    duration = wav.duration_seconds(received.size, sample_rate)
    metadata = {
        "sample_rate": str(sample_rate),
        "received_at": names.iso(chunk.received_at),
        "duration_seconds": str(duration),
        "pcm_bytes": str(received.size),
    }
    if key:
        metadata["idempotency_key"] = key
    audio = wav.frame(received.pieces, sample_rate)
    received.pieces.clear()  # the WAV is now the only copy: a large body is held twice, not three times
    stored = store.put(uid, chunk.received_at, audio, metadata, chunk.write_id, storage_seconds(started, key))
    chunk.response = {"object": stored.location, "bytes": received.size, "duration_seconds": duration}
    return chunk.response, "stored (found from an earlier attempt)" if stored.existed else "stored"


def store_conversation(
    store: storage.Store, uid: str, key: str, received: body.Body, started: float
) -> tuple[dict, str]:
    """Store one of Omi's conversation events as received, beside `uid`'s audio.

    The body is stored byte for byte under a name made from the conversation's
    start, its id and the body's digest (`storage.conversation_name`): a retried
    delivery finds its first attempt's object, a changed version goes beside the
    old one.

    Returns:
        ``{"conversation", "id", "bytes"}`` when stored (``"duplicate": true`` when
        already stored), ``{"stored": null, "ignored"}`` for Omi's other JSON
        webhooks, each with its log message.

    Raises:
        Reject: 400 for a body that is not a conversation, 503 when the instance
            has no room to parse it.
    """
    raw = b"".join(received.pieces)
    received.pieces.clear()
    if not received.hold(received.size * (CONVERSATION_BUDGET_FACTOR - 1)):  # the read bytes are counted already
        raise Reject(503, BUSY)
    try:
        event = conversation.classify(raw)
    except conversation.PayloadError as exc:
        raise Reject(400, str(exc)) from exc
    if isinstance(event, conversation.Ignored):
        return {"stored": None, "ignored": event.reason}, f"not stored: {event.reason}"
    received_at = _remember(uid, key).received_at  # a retry's first receipt: the same name if no start is sent
    metadata = {"conversation_id": event.conversation_id, "received_at": names.iso(received_at)}
    sent = {"started_at": event.started_at, "finished_at": event.finished_at, "title": event.title}
    metadata |= {name: value for name, value in sent.items() if value is not None}
    if key:
        metadata["idempotency_key"] = key
    starts_at = event.starts_at or received_at
    left = storage_seconds(started, key)
    stored = store.put_conversation(uid, starts_at, event.conversation_id, raw, metadata, left)
    response = {"conversation": stored.location, "id": event.conversation_id, "bytes": received.size}
    if stored.existed:
        return {**response, "duplicate": True}, "conversation already stored"
    return response, "conversation stored"


def incomplete(received: body.Body, limit: int, limit_name: str) -> Reject:
    """The answer to a body `body.read_body` did not get whole; nothing of it is kept."""
    if received.end is body.BodyEnd.TOO_LARGE:
        return Reject(413, f"body exceeds the {limit}-byte limit ({limit_name})")
    if received.end is body.BodyEnd.BUSY:
        return Reject(503, BUSY)
    if received.end is body.BodyEnd.TOO_SLOW:
        error = f"the body did not arrive within {body.BODY_ARRIVAL_SECONDS:g} s: nothing stored; send it again"
        return Reject(408, error, message=f"too slow: {received.detail}", unread=True)
    error = "the body was cut short (the connection ended before its last byte): nothing stored; send it again"
    return Reject(400, error, message=f"cut short: {received.detail}", unread=True)


def respond(
    request: flask.Request, status: int, payload: dict, headers: dict[str, str], unread: bool
) -> flask.Response:
    """The answer: one line of JSON; when the body was not read to its end, its connection ends with it."""
    text = json.dumps(payload) + "\n"  # a terminal's prompt starts on its own line after curl
    if unread:
        # Nothing more of the body will be read (see `body.stop_reading`).  Streamed, so
        # that functions-framework does not read the rest itself after the function.
        body.stop_reading(request.environ)
        headers = {**headers, "Connection": "close"}
        return flask.Response(iter([text]), status, headers, mimetype="application/json")
    return flask.Response(text, status, headers, mimetype="application/json")


if flask.has_app_context():  # functions-framework loads this module inside its app's context
    flask.current_app.wsgi_app = body.close_when_the_answer_says_so(flask.current_app.wsgi_app)


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
    if not names.is_valid_uid(value):
        raise QueryError(f"uid must be {names.UID_RULE}")
    return value


def check_token(given: str) -> str | None:
    """Which configured token `given` is ("current" or "previous"); None when none is configured.

    Raises:
        Reject: 500 when deployed without a token, 401 for a missing or wrong one.
    """
    tokens = configured_tokens()
    deployed = bool(os.environ.get("K_SERVICE"))
    if not tokens and deployed:
        raise Reject(500, "WEBHOOK_TOKEN is not set: a deployed function stores nothing without one; run deploy.sh")
    matched = matching_token(given, tokens)
    if tokens and matched is None:
        if deployed:
            raise Reject(401, "missing or wrong token: use the URL deploy.sh printed, ending in ?token=...")
        raise Reject(401, "missing or wrong token: add &token=... with the WEBHOOK_TOKEN this server was started with")
    return matched


def check_allowed(uid: str) -> None:
    """Raise Reject (403) when ALLOWED_UIDS is set and `uid` is not in it."""
    allowed = os.environ.get("ALLOWED_UIDS", "").strip()
    if allowed and uid not in {u.strip() for u in allowed.split(",")}:
        raise Reject(403, f"uid {uid!r} is not in ALLOWED_UIDS")


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


def storage_seconds(started: float, key: str) -> float:
    """Seconds left for storage now: to the sender's deadline (`storage_deadline_seconds`), at least 1 s."""
    return max(storage_deadline_seconds(retried=bool(key)) - elapsed(started), MIN_STORAGE_SECONDS)


def instance_store() -> storage.Store:
    """The storage backend, built by the first request that needs it and kept for the instance.

    Raises:
        Reject: 500 when storage is not configured, or, for the bucket, there are
            no credentials; that failure too is kept for the instance.
    """
    global _store
    if _store is None:
        with _store_lock:  # gen2 serves requests on many threads: build one client only
            if _store is None:
                try:
                    _store = storage.store_from_env()
                except storage.MissingCredentials as exc:
                    # Searching again on every request would repeat google-auth's whole search
                    # (files, then the metadata server) and say the same: once per instance.
                    _store = exc
                    _log("ERROR", f"storage cannot be used: {exc} ({exc.__cause__})")
                except storage.ConfigError as exc:
                    raise Reject(500, str(exc)) from exc
    if isinstance(_store, storage.MissingCredentials):
        raise Reject(500, str(_store))
    return _store


def idempotency_key(header: str) -> str:
    """The Idempotency-Key header as this instance uses it: "" when absent, too long or unprintable."""
    return header if IDEMPOTENCY_KEY_RE.fullmatch(header) else ""


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
