"""How the archive names what it stores, and how it writes and reads times: pure, the standard library only.

The function (through `storage`), the omi-audio tools and deploy.sh's retention
rule (run by the deploying user's own python3) all name a uid's folder here, so
that each spells it the same way:

* a uid's folder (`uid_prefix`, back with `uid_from_prefix`), a chunk's name
  (`object_name`, `parse_object_name`) and a conversation's
  (`conversation_name`, `parse_conversation_name`);
* `name_stamp`, the fixed-width UTC stamp in every name; `iso`, a time as the
  archive writes it in metadata and documents; `parse_time`, an ISO 8601 time read back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

# deploy.sh runs this module on the deploying user's python3, which may be older than 3.11's datetime.UTC.
UTC = timezone.utc  # noqa: UP017

_STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # how `name_stamp` reads back

# A uid is whatever the sender sends: an Omi uid (28 letters and digits), or, from
# the phone's webhook-only mode, the device's name ("Omi DevKit 2", "Zoë's Omi").
# 128 bytes of UTF-8 is four times the longest Omi uid; escaped it stays far below
# Cloud Storage's 1,024-byte object names.
MAX_UID_BYTES = 128
UID_RULE = f"1 to {MAX_UID_BYTES} bytes (UTF-8) of printable characters"
# Uids made only of these characters (and not '.' or '..') are their own prefix,
# as they always were.  Any other uid is escaped: each byte of its UTF-8 outside
# `_ESCAPE_KEEPS` becomes "~XX" (upper-case hex).  Such a prefix always holds a
# "~", which a plain uid never does, so no two uids share a prefix.
_PLAIN_UID_RE = re.compile(r"[A-Za-z0-9._-]+")
_ESCAPE_KEEPS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PREFIX_PATTERN = r"(?:[A-Za-z0-9._-]|~[0-9A-F]{2}){1,384}"
NAME_RE = re.compile(
    rf"(?P<prefix>{_PREFIX_PATTERN})/(?P<stamp>\d{{8}}T\d{{6}}\.\d{{6}}Z)(?:-(?P<seq>[1-9]\d{{0,8}}))?\.wav"
)

# Conversations live in one folder under the uid's.  Its name starts with a letter,
# so it sorts after every chunk name (stamps start with a digit): listing a range of
# audio never meets a conversation, and listing conversations never meets audio.
CONVERSATIONS_FOLDER = "conversations"
# Omi's conversation ids are uuid4s (36 bytes); four times the longest Omi uid is room
# for any other sender, and escaped (at most 3 characters a byte) the whole name stays
# far below Cloud Storage's 1,024 bytes.
MAX_CONVERSATION_ID_BYTES = 128
CONVERSATION_ID_RULE = f"a string of 1 to {MAX_CONVERSATION_ID_BYTES} bytes (UTF-8)"
# The id part of a name escapes "_" too (unlike a uid folder), so that "_" only
# separates the stamp, the id and the digest.
_ID_ESCAPE_KEEPS = _ESCAPE_KEEPS - frozenset(b"_")
# 128 bits of the body's sha256 tell versions of one conversation apart.
CONVERSATION_DIGEST_HEX = 32
CONVERSATION_NAME_RE = re.compile(
    rf"(?P<prefix>{_PREFIX_PATTERN})/{CONVERSATIONS_FOLDER}/(?P<stamp>\d{{8}}T\d{{6}}\.\d{{6}}Z)"
    rf"_(?P<id>(?:[A-Za-z0-9-]|~[0-9A-F]{{2}}){{1,{3 * MAX_CONVERSATION_ID_BYTES}}})"
    rf"_(?P<digest>[0-9a-f]{{{CONVERSATION_DIGEST_HEX}}})\.json"
)


@dataclass(frozen=True)
class ChunkName:
    """The parts of an object name."""

    uid: str
    received_at: datetime
    seq: int


@dataclass(frozen=True)
class ConversationName:
    """The parts of a conversation's object name."""

    uid: str
    starts_at: datetime
    conversation_id: str
    digest: str


def object_name(uid: str, received_at: datetime, seq: int = 0) -> str:
    """Return the object name for a chunk of `uid` received at `received_at` (UTC)."""
    return f"{uid_prefix(uid)}/{name_stamp(received_at)}{f'-{seq}' if seq else ''}.wav"


def name_stamp(at: datetime) -> str:
    """``YYYYMMDDTHHMMSS.ffffffZ`` in UTC: the fixed-width stamp in every object name.

    Zero-padded even before year 1000 (strftime's %Y is not), so that names sort
    in time order whatever the time (`name_range` relies on it).
    """
    t = at.astimezone(UTC)
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond:06d}Z"


def is_valid_uid(uid: str) -> bool:
    """True for any uid a sender may send: non-empty, printable, at most MAX_UID_BYTES."""
    return bool(uid) and uid.isprintable() and len(uid.encode("utf-8", "surrogatepass")) <= MAX_UID_BYTES


def uid_prefix(uid: str) -> str:
    """The folder that holds `uid`'s chunks: never contains "/", is never "." or "..".

    Raises:
        ValueError: `uid` is not valid (see `is_valid_uid`).
    """
    if not is_valid_uid(uid):
        raise ValueError(f"uid must be {UID_RULE}")
    if _PLAIN_UID_RE.fullmatch(uid) and uid not in (".", ".."):
        return uid
    return _escape(uid, _ESCAPE_KEEPS)


def uid_from_prefix(prefix: str) -> str | None:
    """The uid whose folder is `prefix`, or None if `uid_prefix` never makes it."""
    try:
        uid = _unescape(prefix) if "~" in prefix else prefix
        return uid if uid_prefix(uid) == prefix else None
    except ValueError:  # not UTF-8 once unescaped, or not a uid
        return None


def parse_object_name(name: str) -> ChunkName | None:
    """Return the parts of a chunk's object name, or None if it is not one (or names no real time)."""
    match = NAME_RE.fullmatch(name)
    uid = match and uid_from_prefix(match["prefix"])
    if not uid:
        return None
    try:
        received_at = datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # the shape of a stamp, but no such time (month 13, February 30)
        return None
    return ChunkName(uid, received_at, int(match["seq"] or 0))


def is_valid_conversation_id(conversation_id: object) -> bool:
    """True for an id a name can hold: a non-empty string of at most MAX_CONVERSATION_ID_BYTES of UTF-8."""
    if not isinstance(conversation_id, str) or not conversation_id:
        return False
    try:
        return len(conversation_id.encode("utf-8")) <= MAX_CONVERSATION_ID_BYTES
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry ("\ud800")
        return False


def conversation_name(uid: str, starts_at: datetime, conversation_id: str, sha256: str) -> str:
    """The object name of conversation `conversation_id`'s version whose body has digest `sha256` (hex).

    The same id and bytes always make the same name (a retried delivery finds
    its first attempt's object); changed bytes make another (a new version).

    Raises:
        ValueError: the uid or the id is not valid.
    """
    digest = sha256[:CONVERSATION_DIGEST_HEX]
    return f"{conversation_prefix(uid)}{name_stamp(starts_at)}_{_escape_id(conversation_id)}_{digest}.json"


def conversation_prefix(uid: str) -> str:
    """The folder (ending in "/") that holds `uid`'s conversations."""
    return f"{uid_prefix(uid)}/{CONVERSATIONS_FOLDER}/"


def _escape_id(conversation_id: str) -> str:
    if not is_valid_conversation_id(conversation_id):
        raise ValueError(f"id must be {CONVERSATION_ID_RULE}")
    return _escape(conversation_id, _ID_ESCAPE_KEEPS)


def _escape(text: str, keeps: frozenset[int]) -> str:
    """`text` with each byte of its UTF-8 outside `keeps` written as ``~XX`` (upper-case hex)."""
    return "".join(chr(byte) if byte in keeps else f"~{byte:02X}" for byte in text.encode("utf-8"))


def _unescape(escaped: str) -> str:
    """What `_escape` made `escaped` from.

    Raises:
        UnicodeError: the bytes are not UTF-8 (or `escaped` holds a character `_escape` never writes).
    """
    return re.sub(r"~([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), escaped).encode("latin-1").decode("utf-8")


def parse_conversation_name(name: str) -> ConversationName | None:
    """Return the parts of a conversation's object name, or None if `conversation_name` never makes it."""
    match = CONVERSATION_NAME_RE.fullmatch(name)
    uid = match and uid_from_prefix(match["prefix"])
    if not uid:
        return None
    try:
        conversation_id = _unescape(match["id"])
        if _escape_id(conversation_id) != match["id"]:  # one spelling per id
            return None
    except ValueError:  # not UTF-8, or too long
        return None
    starts_at = datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)
    return ConversationName(uid, starts_at, conversation_id, match["digest"])


def iso(moment: datetime, timespec: str = "microseconds") -> str:
    """`moment` in UTC as ISO 8601 ending in ``Z`` (``2025-03-01T14:30:00.000000Z``); text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_time(value: object, max_chars: int | None = None) -> datetime | None:
    """An ISO 8601 time in UTC (a time without an offset is taken as UTC), or None.

    None when `value` is not a string, is longer than `max_chars`, or is not a
    time Python's ``datetime.fromisoformat`` reads (``isoformat()``, or with
    ``Z``) that UTC can hold.
    """
    if not isinstance(value, str) or (max_chars is not None and len(value) > max_chars):
        return None
    try:
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: in UTC, before year 1 or after 9999
        return None
