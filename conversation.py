"""Omi's JSON webhooks: which payloads are conversations to store, and what their names need.

The "Conversation events" webhook posts each finished conversation as a JSON
object with a string ``id`` (and ``started_at``, ``structured.title``, a
transcript, ...).  An owner may paste the same URL into the "Realtime
transcript" (``{"segments", "session_id"}``) or "Day summary" (``{"summary",
...}``) fields too: those are recognised and not stored.  Pure: bytes in, a
`Conversation`, an `Ignored` or a `PayloadError` out; storing is `main`'s job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import names
import storage

# Kept in the object's metadata so that omi-audio status can list titles without downloads.
# Cloud Storage allows 8 KiB of custom metadata in all; 200 characters (at most 800
# bytes of UTF-8) is a long title and leaves room for the rest.
MAX_TITLE_CHARS = 200
# A time as Python's isoformat() writes it is 32 characters; longer is not a time.
MAX_TIME_CHARS = 64
MISSING_ID = (
    'the JSON object has no "id": a conversation event (Omi\'s "Conversation events" webhook) '
    "carries the conversation's id as a string"
)


class PayloadError(ValueError):
    """The body is not a conversation event; the message says what is wrong."""


@dataclass(frozen=True)
class Conversation:
    """What storing a conversation needs from its payload (the body itself is stored as received)."""

    conversation_id: str
    starts_at: datetime | None  # started_at, else created_at, in UTC; None when neither is a time
    started_at: str | None  # as sent
    finished_at: str | None  # as sent
    title: str | None


@dataclass(frozen=True)
class Ignored:
    """Another of Omi's JSON webhooks: answered 2xx, not stored."""

    reason: str


def classify(body: bytes) -> Conversation | Ignored:
    """Read a JSON webhook's body.

    Raises:
        PayloadError: not JSON, not a JSON object, or no id a name can hold.
    """
    if not body:
        raise PayloadError("the body is empty: a conversation event is a JSON object with a string id")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"the body is not JSON ({exc}): a conversation event is a JSON object") from None
    except RecursionError:
        raise PayloadError("the body is JSON nested too deeply to read: a conversation event is not") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"the body is JSON but {_kind(payload)}, not an object: a conversation event is one")
    if "id" not in payload:
        if "segments" in payload:
            return Ignored("a realtime transcript (segments, no id): this URL stores conversation events")
        if "summary" in payload:
            return Ignored("a day summary (summary, no id): this URL stores conversation events")
        raise PayloadError(MISSING_ID)
    conversation_id = payload["id"]
    if not storage.is_valid_conversation_id(conversation_id):
        raise PayloadError(f'"id" must be {storage.CONVERSATION_ID_RULE}; got {_kind(conversation_id)}')
    structured = payload.get("structured")
    title = structured.get("title") if isinstance(structured, dict) else None
    return Conversation(
        conversation_id,
        starts_at=names.parse_time(payload.get("started_at"), MAX_TIME_CHARS)
        or names.parse_time(payload.get("created_at"), MAX_TIME_CHARS),
        started_at=_as_sent(payload.get("started_at")),
        finished_at=_as_sent(payload.get("finished_at")),
        title=title[:MAX_TITLE_CHARS] if isinstance(title, str) else None,
    )


def _as_sent(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_TIME_CHARS else None


def _kind(value: object) -> str:
    """What a JSON value is, in words: ``an array``, ``null``, ``a string of 3 bytes``."""
    if isinstance(value, str):
        return f"a string of {len(value.encode('utf-8', 'surrogatepass'))} bytes"
    return {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
