"""Is my audio still arriving?  A per-day view of what the function stored.

    omi-audio status [--uid UID] [--bucket NAME | --local-dir PATH] [--days N]
                     [--alert-after DURATION] [--gap SECONDS] [--at T] [--json] [--quiet]

For one uid (as the sender sends it), or with no ``--uid`` for every uid in the
store, it prints when the last chunk arrived and how long ago (and when the
last conversation started), then one row per UTC day over the last ``--days``
days: hours of audio, recording sessions, chunks, conversations (by start, the
newest version of each), first and last chunk, and the longest gap between two
chunks; a day with no audio is marked.  ``--json`` prints the same as one JSON
document, with each conversation's id, title, started_at and finished_at.

No audio and no conversation is downloaded.  Only the reported days are listed
(names and metadata, see `storage.GcsStore.list_chunks` and
`storage.GcsStore.list_conversations`).  When a uid has nothing in those days, its
last chunk is found by looking back in doubling windows, then halving the one
that holds it, with list calls that return at most one name each: about 40
small calls at most, over up to ten years, however large the archive.  With no
``--uid`` the uids come from one listing of the store's top-level folders.

Exit status: 0 when audio arrived within ``--alert-after`` (default 24 h), 3
when it did not (with no ``--uid``: when no uid received any), 1 when the store
cannot be read, 2 for bad arguments.  A cron job or Cloud Scheduler job can
alert on status 3.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

import names
import storage
from omi_audio import archive, compacted, console

DEFAULT_DAYS = 14
MAX_DAYS = 3660
DEFAULT_ALERT_AFTER = timedelta(hours=24)
# Exit status when nothing arrived within --alert-after: distinct from 1 (cannot read)
# and 2 (bad arguments), so that a scheduled job can tell "stale" from "broken".
EXIT_STALE = 3
# Looking back for the last chunk before the reported days: windows of 1, 2, 4, ...
# days, as far back as this; then the window that holds it is halved down to this.
LOOKBACK_LIMIT = timedelta(days=MAX_DAYS)
LOOKBACK_RESOLUTION = timedelta(minutes=1)


@dataclass
class Day:
    """What arrived for one uid on one UTC day."""

    date: str
    chunks: int = 0
    conversations: int = 0
    audio_seconds: float = 0.0
    sessions: int = 0
    first_chunk: str | None = None
    last_chunk: str | None = None
    longest_gap_seconds: float | None = None
    longest_gap_from: str | None = None

    @property
    def no_audio(self) -> bool:
        return self.chunks == 0


@dataclass
class UidStatus:
    """One uid's report."""

    uid: str
    last_chunk: str | None
    seconds_since_last: float | None
    stale: bool
    days: list[Day] = field(default_factory=list)
    names_listed: int = 0
    last_conversation: str | None = None  # when the latest conversation of the reported days started
    conversations: list[dict[str, str | None]] = field(default_factory=list)


# ------------------------------------------------------------------------ report


def report_uid(
    store: storage.Store,
    uid: str,
    now: datetime,
    days: int = DEFAULT_DAYS,
    alert_after: timedelta = DEFAULT_ALERT_AFTER,
    gap: float = archive.DEFAULT_GAP_SECONDS,
    quiet: bool = True,
    until: datetime | None = None,
) -> UidStatus:
    """`uid`'s last chunk and its last `days` UTC days up to `now`, listing only those days."""
    first_day = now.astimezone(UTC).date() - timedelta(days=days - 1)
    window_start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    selection = console.list_with_progress(store, uid, window_start, until, quiet)
    chunks = selection.chunks
    last = chunks[-1].received_at if chunks else last_chunk_before(store, uid, window_start)
    since_last = (now - last).total_seconds() if last else None
    status = UidStatus(
        uid,
        names.iso(last, "seconds") if last else None,
        since_last,
        stale=since_last is None or since_last > alert_after.total_seconds(),
        names_listed=len(chunks) + selection.duplicates,
    )
    by_day = {first_day + timedelta(days=i): Day(str(first_day + timedelta(days=i))) for i in range(days)}
    sessions_seen: dict[date, set[int]] = {}
    previous: archive.Chunk | None = None
    for session, run in enumerate(archive.sessions(chunks, gap)):
        for chunk in run:
            day = by_day.get(chunk.received_at.date())
            if day is not None:
                if day.chunks and previous is not None:
                    pause = (chunk.received_at - previous.received_at).total_seconds()
                    if day.longest_gap_seconds is None or pause > day.longest_gap_seconds:
                        day.longest_gap_seconds = pause
                        day.longest_gap_from = names.iso(previous.received_at, "seconds")
                day.chunks += 1
                if chunk.sample_rate:
                    day.audio_seconds += chunk.pcm_bytes // archive.FRAME_BYTES / chunk.sample_rate
                day.first_chunk = day.first_chunk or names.iso(chunk.received_at, "seconds")
                day.last_chunk = names.iso(chunk.received_at, "seconds")
                sessions_seen.setdefault(chunk.received_at.date(), set()).add(session)
            previous = chunk
    for when, seen in sessions_seen.items():
        by_day[when].sessions = len(seen)
    for info in archive.preferred_versions(store.list_conversations(uid, window_start, until)):
        if (day := by_day.get(info.parts.starts_at.date())) is not None:
            day.conversations += 1
        status.last_conversation = names.iso(info.parts.starts_at, "seconds")
        status.conversations.append(
            {
                "id": info.parts.conversation_id,
                "title": info.metadata.get("title"),
                "started_at": info.metadata.get("started_at"),
                "finished_at": info.metadata.get("finished_at"),
            }
        )
    status.days = list(by_day.values())
    return status


def last_chunk_before(store: storage.Store, uid: str, before: datetime) -> datetime | None:
    """When `uid`'s last chunk received before `before` arrived, or None within LOOKBACK_LIMIT.

    Never lists more than a minute of chunks: windows ending at `before` double
    (1, 2, 4, ... days) until one holds a chunk, each test a list call asking for
    one name; that window's older half is then halved down to a minute.
    """
    days = compacted.CompactedDays(store, uid, before - LOOKBACK_LIMIT, before)  # they hold chunks too

    def any_chunk(since: datetime, until: datetime) -> bool:
        if next(iter(store.list_chunks(uid, since, until, limit=1)), None) is not None:
            return True
        return bool(days.days_in(since, until)) and bool(days.chunks(since, until)[0])

    width, newer = timedelta(days=1), before
    while True:
        older = before - min(width, LOOKBACK_LIMIT)
        if any_chunk(older, newer):
            break
        if width >= LOOKBACK_LIMIT:
            return None
        newer, width = older, width * 2
    # The last chunk is in [older, newer) and nothing is in [newer, before).
    while newer - older > LOOKBACK_RESOLUTION:
        middle = older + (newer - older) / 2
        if any_chunk(middle, newer):
            older = middle
        else:
            newer = middle
    found = archive.select_chunks(store, uid, older, newer, days=days).chunks
    return found[-1].received_at if found else None


# ------------------------------------------------------------------------ output


def _clock(iso: str | None) -> str:
    return iso[11:19] if iso else "-"


def human_duration(seconds: float) -> str:
    """``45 s``, ``1 min 30 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``: how long ago, at a glance.

    Seconds are shown below 10 minutes, so that "1 min 30 s ago" never reads as the
    "1 min" an alert compares it with.
    """
    seconds = max(seconds, 0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 10 and int(seconds) % 60:
        return f"{minutes} min {int(seconds) % 60:02d} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_report(statuses: list[UidStatus], alert_after: timedelta, out) -> None:
    """The terminal view: a headline per uid, then one row per day."""
    limit = human_duration(alert_after.total_seconds())
    for n, status in enumerate(statuses):
        if n:
            out.write("\n")
        if status.last_chunk is None:
            headline = "no chunk found"
        else:
            when = status.last_chunk.replace("T", " ").replace("Z", " UTC")
            headline = f"last chunk {when}, {human_duration(status.seconds_since_last or 0)} ago"
        if status.last_conversation is not None:
            headline += f"; last conversation {status.last_conversation.replace('T', ' ').replace('Z', ' UTC')}"
        verdict = f"STALE: nothing for more than {limit}" if status.stale else "OK"
        out.write(console.terminal_text(f"{status.uid}: {headline}  [{verdict}]") + "\n")
        rows = [("DAY (UTC)", "AUDIO", "SESSIONS", "CHUNKS", "CONVERSATIONS", "FIRST", "LAST", "LONGEST GAP")]
        for day, empty_days in _fold_empty_days(status.days):
            conversations = str(day.conversations) if day.conversations else "-"
            if len(empty_days) > 1:  # days in a row with nothing at all: one row, not a screenful
                span = f"{day.date}..{empty_days[-1].date[5:]}"
                rows.append((span, "-", "-", "-", "-", "-", "-", f"no audio, {len(empty_days)} days"))
                continue
            if day.no_audio:
                rows.append((day.date, "-", "-", "-", conversations, "-", "-", "no audio"))
                continue
            gap = "-"
            if day.longest_gap_seconds is not None:
                gap = f"{console.duration(day.longest_gap_seconds)} after {_clock(day.longest_gap_from)}"
            rows.append(
                (
                    day.date,
                    console.duration(day.audio_seconds),
                    str(day.sessions),
                    str(day.chunks),
                    conversations,
                    _clock(day.first_chunk),
                    _clock(day.last_chunk),
                    gap,
                )
            )
        console.print_table(rows, "<>>>><<", out)


def _fold_empty_days(days: list[Day]) -> list[tuple[Day, list[Day]]]:
    """Each day to show, with the run of days from it that hold neither audio nor a conversation (or none)."""
    folded: list[tuple[Day, list[Day]]] = []
    for day in days:
        empty = day.no_audio and not day.conversations
        if empty and folded and folded[-1][1]:
            folded[-1][1].append(day)
        else:
            folded.append((day, [day] if empty else []))
    return folded


def as_json(statuses: list[UidStatus], now: datetime, alert_after: timedelta, stale: bool) -> str:
    uids = []
    for status in statuses:
        entry = asdict(status)
        for day, raw in zip(status.days, entry["days"], strict=True):
            raw["no_audio"] = day.no_audio
            raw["audio_seconds"] = round(raw["audio_seconds"], 3)
        uids.append(entry)
    document = {
        "now": names.iso(now, "seconds"),
        "alert_after_seconds": alert_after.total_seconds(),
        "stale": stale,
        "uids": uids,
    }
    return json.dumps(document, indent=2)


# --------------------------------------------------------------------------- CLI

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}


def duration_arg(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``2d``; a bare number is hours."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else 0.0
    if not 0 < seconds <= LOOKBACK_LIMIT.total_seconds():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90m, 24h or 2d")
    return timedelta(seconds=seconds)


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days from 1 to {MAX_DAYS}")
    return int(text)


SUMMARY = "Is audio still arriving? Last chunk, and per day audio, sessions and gaps"
DESCRIPTION = "Show whether audio is still arriving: last chunk, and per UTC day audio, sessions and gaps."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `omi-audio status`."""
    parser.add_argument(
        "--uid", type=console.uid_arg, help="one uid, as the sender sends it (default: every uid in the store)"
    )
    console.add_source_arguments(parser)
    parser.add_argument(
        "--days", type=_days, default=DEFAULT_DAYS, metavar="N", help=f"UTC days to show (default {DEFAULT_DAYS})"
    )
    parser.add_argument(
        "--alert-after",
        type=duration_arg,
        default=DEFAULT_ALERT_AFTER,
        metavar="DURATION",
        help=f"exit {EXIT_STALE} when nothing arrived for longer than this (default 24h; e.g. 90m, 2d)",
    )
    parser.add_argument(
        "--gap",
        type=console.positive_float,
        default=archive.DEFAULT_GAP_SECONDS,
        metavar="SECONDS",
        help=f"a longer pause starts a new session (default {archive.DEFAULT_GAP_SECONDS:g}, as omi-audio export)",
    )
    parser.add_argument(
        "--at",
        type=console.time_arg(False),
        metavar="T",
        help="report as of this time instead of now (ISO 8601, UTC default); chunks after it are ignored",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `omi-audio status`; returns the exit status."""
    store = console.open_store(args, parser)
    now = args.at or datetime.now(UTC)
    until = args.at + timedelta(microseconds=1) if args.at else None  # --at T includes a chunk received at T
    try:
        uids = [args.uid] if args.uid else store.list_uids()
    except Exception as exc:
        console.say(f"error: could not list {store.location('')}: {exc}")
        return 1
    statuses: list[UidStatus] = []
    for uid in uids:
        try:
            status = report_uid(store, uid, now, args.days, args.alert_after, args.gap, args.quiet, until)
            if args.uid and status.last_chunk is None and status.last_conversation is None:
                # Nothing at all: a typo, or the folder name `gcloud storage ls` shows, is not "stale".
                known = console.resolve_uid(store, uid)
                if known != uid:
                    status = report_uid(store, known, now, args.days, args.alert_after, args.gap, args.quiet, until)
            statuses.append(status)
        except console.UnknownUid as exc:
            console.say(f"error: {exc}")
            return 1
        except Exception as exc:
            where = store.location(storage.uid_prefix(uid) + "/")
            console.say(f"error: could not list {where}: {exc}")
            return 1
    stale = all(status.stale for status in statuses)
    if args.json:
        print(as_json(statuses, now, args.alert_after, stale))
    elif statuses:
        format_report(statuses, args.alert_after, sys.stdout)
    if not statuses:
        console.say(f"no uid has any chunk in {store.location('')}")
    elif stale:
        console.say(
            f"stale: no audio arrived in the last {human_duration(args.alert_after.total_seconds())}"
            + (f" for uid {args.uid}" if args.uid else " for any uid")
        )
    return EXIT_STALE if stale else 0
