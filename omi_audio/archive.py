"""The archive's model: what is stored for a uid, read back as chunks, sessions and conversations.

Chunk names hold RECEIPT times, and the sender posts audio seconds after it was
spoken (see `capture`); conversations (see `storage.put_conversation`) are
timed on the clock of the captured audio.  This module puts the two on one
time line:

* `select_chunks`: the chunks received in a range, ordered, duplicates
  dropped; `sessions` splits them into recording sessions;
* `Conversation`: one stored conversation (its newest version), its span and
  its transcript as `Cue` rows, times relative to the start of its audio file;
* `captured`: each listed chunk with the capture time of its first sample;
* `plan_cut`: which samples of which chunks make a conversation's audio file,
  where each sits in it, and where the file must hold silence because no
  audio was stored (`Hole`).

Nothing here writes a file or downloads audio: `omi-audio export` does, from a `Cut`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import names
import storage
import wav
from omi_audio import compacted
from omi_audio.capture import capture_starts

FRAME_BYTES = wav.CHANNELS * wav.SAMPLE_WIDTH

# ---------------------------------------------------------------------- chunks


# Omi sends bursts of N one-second chunks every N seconds (N = 5 to 120), so inside
# one recording consecutive receipts are at most ~N + 1 s apart.  180 s covers the
# longest interval (120 s) plus the sender's whole retry backoff (1 + 5 + 30 s) with
# room for network jitter; any longer silence means the phone stopped sending.
DEFAULT_GAP_SECONDS = 180.0


@dataclass(slots=True)
class Chunk:
    """One stored chunk, as listed (no audio): only what ordering and sessions need."""

    name: str
    received_at: datetime
    seq: int
    size: int
    sample_rate: int | None  # from metadata; None when missing or unreadable
    pcm_bytes: int
    key: str | None = None
    generation: str = ""
    packed: compacted.Packed | None = None  # where a compacted day holds its samples; None: its own object


@dataclass
class Selection:
    """The chunks to export, in order, and what was left out on the way."""

    chunks: list[Chunk]
    duplicates: int
    skipped: list[str] = field(default_factory=list)  # objects named like chunks whose names cannot be read


def select_chunks(
    store: storage.Store,
    uid: str,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    days: compacted.CompactedDays | None = None,
) -> Selection:
    """List `uid`'s chunks received in ``[since, until)``, ordered, duplicates dropped.

    Only that range is listed, and only object names and metadata are read;
    compacted days in the range are read from their indexes (see `compacted`;
    one more list call, of those days' folders, or use `days` already listed),
    and a chunk both loose and in an index is taken once, from its object.
    Order: receipt time in the name, then the name's collision suffix as a
    number.  Of several chunks with the same ``idempotency_key`` metadata the
    first in that order is kept.  `progress` is called with 1 per name listed.
    An object named like a chunk but with no real time in its name is left out,
    named in one call to `warn`.
    """
    skipped: list[str] = []

    def unreadable(name: str) -> None:
        skipped.append(name)
        if warn:
            warn(f"skipped {name}: its name holds no real time")

    days = days or compacted.CompactedDays(store, uid, since, until)  # `days` may cover a wider range
    packed, dropped = days.chunks(since, until)
    if progress and packed:
        progress(len(packed))
    found: list[Chunk] = []
    for info in store.list_chunks(uid, since, until, unreadable=unreadable):
        if progress:
            progress(1)
        chunk = chunk_from_metadata(info.name, info.parts, info.size, info.metadata)
        chunk.generation = info.generation
        found.append(chunk)
    # A chunk still loose is read from its own object, even if a compacted day holds it
    # too (the compactor deletes it after its index is written).
    loose = {chunk.name for chunk in found}
    found.extend(chunk for chunk in packed if chunk.name not in loose)
    found.sort(key=lambda chunk: (chunk.received_at, chunk.seq, chunk.name))
    kept: list[Chunk] = []
    seen: set[str] = set()
    for chunk in found:
        if chunk.key is not None:
            if chunk.key in seen:
                continue
            seen.add(chunk.key)
            chunk.key = None  # no longer needed: keep the index small
        kept.append(chunk)
    return Selection(kept, dropped + len(found) - len(kept), skipped)


def chunk_from_metadata(name: str, parts: names.ChunkName, size: int, metadata: dict[str, str]) -> Chunk:
    """A chunk as its listing (or a compacted day's index) describes it."""
    rate = _positive_int(metadata.get("sample_rate"))
    pcm_bytes = _positive_int(metadata.get("pcm_bytes"))
    if pcm_bytes is None:
        pcm_bytes = max(size - wav.HEADER_SIZE, 0)
    return Chunk(name, parts.received_at, parts.seq, size, rate, pcm_bytes, metadata.get("idempotency_key"))


def _positive_int(value: str | None) -> int | None:
    """A metadata value as a positive whole number, or None when missing or unreadable."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):  # isdigit alone takes "²", which int() refuses
        return None
    try:
        number = int(text)
    except ValueError:  # more digits than int() converts
        return None
    return number if number > 0 else None


class SessionSplitter:
    """Where recording sessions begin, told one chunk at a time in receipt order.

    A session ends when the next chunk was received more than `gap` seconds
    after the previous one, or at another sample rate than the session's first
    known one.  An unknown rate (metadata missing, in a listing) never splits a session.
    """

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.last: datetime | None = None
        self.rate: int | None = None

    def starts_new(self, at: datetime, rate: int | None, force: bool = False) -> bool:
        """True when the chunk received `at` with `rate` begins a session (the first always does; so does `force`)."""
        new = (
            self.last is None
            or force
            or (at - self.last).total_seconds() > self.gap
            or (rate is not None and self.rate is not None and rate != self.rate)
        )
        if new:
            self.rate = None
        self.rate = self.rate or rate
        self.last = at
        return new


def sessions(chunks: Iterable[Chunk], gap: float) -> Iterator[list[Chunk]]:
    """`chunks` (in receipt order) as runs, one per recording session (see `SessionSplitter`)."""
    splitter = SessionSplitter(gap)
    run: list[Chunk] = []
    for chunk in chunks:
        if splitter.starts_new(chunk.received_at, chunk.sample_rate) and run:
            yield run
            run = []
        run.append(chunk)
    if run:
        yield run


# --------------------------------------------------------------------- capture

# Before any chunk says otherwise: the rate of every current Omi device.
ASSUMED_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class CapturedChunk:
    """A listed chunk and when its first sample was captured (reconstructed, UTC)."""

    chunk: Chunk
    start: datetime
    frames: int
    sample_rate: int

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.frames / self.sample_rate)


def captured(chunks: Sequence[Chunk]) -> list[CapturedChunk]:
    """`chunks` (in receipt order) with their reconstructed capture starts, in capture order.

    A chunk whose metadata holds no sample rate is taken at the rate of the
    chunks around it (the most common listed rate).
    """
    if not chunks:
        return []
    rates = Counter(chunk.sample_rate for chunk in chunks if chunk.sample_rate)
    fallback = rates.most_common(1)[0][0] if rates else ASSUMED_SAMPLE_RATE
    frames = [chunk.pcm_bytes // FRAME_BYTES for chunk in chunks]
    rate_of = [chunk.sample_rate or fallback for chunk in chunks]
    starts = capture_starts(
        [(chunk.received_at, n / rate) for chunk, n, rate in zip(chunks, frames, rate_of, strict=True)]
    )
    found = [
        CapturedChunk(chunk, start, n, rate)
        for chunk, start, n, rate in zip(chunks, starts, frames, rate_of, strict=True)
    ]
    return sorted(found, key=lambda c: c.start)


def audio_spans(chunks: Iterable[CapturedChunk], join: float = 1.0) -> list[tuple[datetime, datetime]]:
    """When audio was stored, as (start, end) capture times; spans less than `join` seconds apart are one."""
    spans: list[tuple[datetime, datetime]] = []
    for c in chunks:
        if c.frames == 0:
            continue
        if spans and (c.start - spans[-1][1]).total_seconds() <= join:
            spans[-1] = (spans[-1][0], max(spans[-1][1], c.end))
        else:
            spans.append((c.start, c.end))
    return spans


# ------------------------------------------------------------------------ cuts

# A conversation's audio file runs from this long before `started_at` to this long
# after `finished_at`.  Capture times are reconstructed to within about half a second
# and the recogniser's first and last words can sit right at the span's edges, so
# the pad keeps them in the file; two seconds is short enough not to pull much of a
# neighbouring conversation in.
CONVERSATION_PAD = timedelta(seconds=2)
# Chunks whose reconstructed starts are this close to back to back are joined
# without silence between them (a shift of at most this much).  `capture_starts` puts
# contiguous chunks exactly back to back (to the microsecond) and reports no hole
# shorter than its own tolerance (0.25 s), so this only absorbs rounding to frames.
JOIN_SECONDS = 0.1
# The chunks listed around a conversation: audio captured in its span is received
# after it was captured, by up to a batch (the phone's 300 s is the longest in use)
# plus the sender's retries (1 + 5 + 30 s and each attempt's 30 s wait); 10 minutes
# covers that.  The same margin before the span gives the capture model the whole
# batch that holds the span's first sample.
RECEIPT_MARGIN = timedelta(minutes=10)
# A conversation's audio file holds no more silence than this in one place.  A hole
# up to this long keeps its length, so that time in the file is true time: a lost
# batch at the app's usual intervals (5 to 60 s), a short storage outage.  A longer
# one (the phone offline for an hour) is cut to this length, its middle left out,
# and the transcript after it moves with the audio: an hour of silence is no use to
# a listener, and a crafted span around a few seconds of audio cannot fill a disk.
MAX_HOLE = timedelta(seconds=60)


@dataclass(frozen=True)
class Piece:
    """Frames ``[skip, skip + frames)`` of one chunk's PCM, at frame `at` of the file."""

    chunk: CapturedChunk
    skip: int
    frames: int
    at: int


@dataclass(frozen=True)
class Hole:
    """Frames ``[at, at + frames)`` of the file with no stored audio: silence.

    `left_out` frames more had no audio either and are not in the file (see
    `MAX_HOLE`): they were taken out of the hole's middle, at ``at + frames // 2``.
    """

    at: int
    frames: int
    left_out: int = 0


@dataclass
class Cut:
    """A conversation's audio file: `frames` at `sample_rate`, its first sample captured at `start`."""

    start: datetime
    sample_rate: int
    frames: int
    pieces: list[Piece]
    holes: list[Hole]
    coverage: float  # the share of the conversation's own span (pads excluded) that holds stored audio
    other_rate: int = 0  # chunks in the window left out because their sample rate differs

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def end(self) -> datetime:
        """Capture time of the file's last sample."""
        left_out = sum(h.left_out for h in self.holes)
        return self.start + timedelta(seconds=(max(self.frames - 1, 0) + left_out) / self.sample_rate)

    def in_file(self, seconds: float) -> float:
        """Where the moment captured `seconds` after `start` is in the file, in seconds from its first sample.

        Before a stretch left out of a long hole, that is `seconds` itself; after
        it, less what was left out; inside it, where it was taken out.
        """
        shift = 0.0
        for hole in self.holes:
            if not hole.left_out:
                continue
            taken_at = (hole.at + hole.frames // 2) / self.sample_rate
            if seconds < taken_at + shift:
                break
            if seconds < taken_at + shift + hole.left_out / self.sample_rate:
                return taken_at
            shift += hole.left_out / self.sample_rate
        return seconds - shift


def _frames_between(earlier: datetime, later: datetime, rate: int) -> int:
    """Whole frames from `earlier` to `later` at `rate`, rounded to the nearest (negative if before)."""
    micro = (later - earlier) // timedelta(microseconds=1)
    return (micro * rate + 500_000) // 1_000_000


def plan_cut(
    chunks: Sequence[CapturedChunk],
    started_at: datetime,
    finished_at: datetime,
    pad: timedelta = CONVERSATION_PAD,
    max_hole: timedelta = MAX_HOLE,
) -> Cut | None:
    """The audio file for a conversation spanning ``[started_at, finished_at]``, or None when no audio is stored.

    The file holds the stored audio from ``started_at - pad`` to ``finished_at +
    pad``: it starts at the first stored sample in that window and ends at the
    last.  Each chunk's samples go where their capture time puts them,
    unchanged; a chunk whose start is within `JOIN_SECONDS` of the previous
    one's end (or before it) follows it directly, so no sample is ever dropped
    or repeated inside the file; only samples outside the window are left out.
    What no chunk covers between two chunks is a `Hole` of silence, as long as
    it lasted up to `max_hole`; a longer one is cut to `max_hole` (its middle
    left out).  The file's rate is the one most of the window's audio has;
    chunks at another rate are left out (counted in `other_rate`).
    """
    window_start, window_end = started_at - pad, max(finished_at, started_at) + pad
    inside = [c for c in chunks if c.frames and c.start < window_end and c.end > window_start]
    if not inside:
        return None
    by_rate = Counter()
    for c in inside:
        by_rate[c.sample_rate] += c.frames
    rate = by_rate.most_common(1)[0][0]
    total = _frames_between(window_start, window_end, rate)
    join = round(JOIN_SECONDS * rate)
    placed: list[Piece] = []  # at: frames from window_start
    cursor = 0
    for c in inside:
        if c.sample_rate != rate:
            continue
        at = _frames_between(window_start, c.start, rate)
        if placed and at - cursor <= join:
            at = cursor  # back to back with the previous chunk (or overlapping it: jitter)
        skip = max(0, -at)
        at = max(at, cursor if placed else 0)
        take = min(c.frames - skip, total - at)
        if take <= 0:
            continue
        placed.append(Piece(c, skip, take, at))
        cursor = at + take
    if not placed:
        return None
    low, high = _frames_between(window_start, started_at, rate), _frames_between(window_start, finished_at, rate)
    if high > low:
        coverage = sum(max(0, min(p.at + p.frames, high) - max(p.at, low)) for p in placed) / (high - low)
    else:
        coverage = 1.0
    # The file: from the first stored sample to the last, long holes cut short.
    longest = round(max_hole.total_seconds() * rate)
    shift = placed[0].at  # frames of the window not in the file, so far
    pieces: list[Piece] = []
    holes: list[Hole] = []
    cursor = 0
    for piece in placed:
        at = piece.at - shift
        if at > cursor:
            left_out = max(0, at - cursor - longest)
            holes.append(Hole(cursor, at - cursor - left_out, left_out))
            shift += left_out
            at -= left_out
        pieces.append(Piece(piece.chunk, piece.skip, piece.frames, at))
        cursor = at + piece.frames
    start = window_start + timedelta(seconds=placed[0].at / rate) if placed[0].at else window_start
    return Cut(start, rate, cursor, pieces, holes, coverage, sum(1 for c in inside if c.sample_rate != rate))


# --------------------------------------------------------------- conversations

# Where a transcript segment may carry the speaker's name, beside the diarised label.
SPEAKER_NAME_FIELDS = ("speaker_name", "person_name", "name")
# Omi's Developer API marks no segment as the wearer's (no "is_user"): it names the
# wearer's own by their profile name, or this when they have none.
API_WEARER_NAME = "User"
# The metadata "source" of a conversation `omi-audio import` stored from the Developer API.
IMPORTED_SOURCE = "developer-api"


def preferred_versions(infos: Iterable[storage.ConversationInfo]) -> list[storage.ConversationInfo]:
    """One version per conversation id, sorted by start: the webhook's received last, else the import's.

    The webhook's body is the fuller one (``is_user`` on each segment, the whole
    ``structured``); an imported copy stands in only for a conversation the webhook
    never delivered, even when it was stored later (an import running while the
    webhook delivers the same conversation, or a clock ahead on the importing machine).
    """
    infos = list(infos)
    delivered = {info.parts.conversation_id for info in infos if info.metadata.get("source") != IMPORTED_SOURCE}
    return storage.newest_versions(
        info
        for info in infos
        if info.metadata.get("source") != IMPORTED_SOURCE or info.parts.conversation_id not in delivered
    )


_SPEAKER_LABEL_RE = re.compile(r"SPEAKER_0*(\d+)")


@dataclass(frozen=True)
class Cue:
    """One transcript line: seconds from the audio file's first sample, who spoke, what was said."""

    start: float
    end: float
    speaker: str
    text: str


@dataclass
class Conversation:
    """One stored conversation version, as its body says, with the span it covers (UTC)."""

    info: storage.ConversationInfo
    body: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.info.parts.conversation_id

    @property
    def structured(self) -> dict[str, Any]:
        value = self.body.get("structured")
        return value if isinstance(value, dict) else {}

    @property
    def title(self) -> str:
        title = self.structured.get("title")
        return title.strip() if isinstance(title, str) else ""

    def text_field(self, name: str) -> str:
        value = self.structured.get(name)
        return value if isinstance(value, str) else ""

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def cues(self, cut: Cut | None = None) -> list[Cue]:
        """The transcript as cues in start order, timed from the first sample of `cut`, its audio file.

        Without one, from where the file would start (`CONVERSATION_PAD` before
        `started_at`).  A cue before the file's first sample starts at 0.
        """
        file_start = cut.start if cut is not None else self.started_at - CONVERSATION_PAD
        offset = (self.started_at - file_start).total_seconds()
        in_file = cut.in_file if cut is not None else (lambda seconds: seconds)
        cues = []
        for segment in self.segments:
            text = segment.get("text")
            start, end = _seconds(segment.get("start")), _seconds(segment.get("end"))
            if not isinstance(text, str) or not text.strip() or start is None:
                continue
            end = start if end is None or end < start else end
            cues.append(
                Cue(
                    max(in_file(start + offset), 0.0),
                    max(in_file(end + offset), 0.0),
                    speaker_of(segment),
                    text.strip(),
                )
            )
        return sorted(cues, key=lambda cue: (cue.start, cue.end))


def speaker_of(segment: dict[str, Any]) -> str:
    """ "You" for the wearer (``is_user``, or the Developer API's "User"), else the speaker's name, else "Speaker N"."""
    if segment.get("is_user") is True or ("is_user" not in segment and segment.get("speaker_name") == API_WEARER_NAME):
        return "You"
    for name_field in SPEAKER_NAME_FIELDS:
        name = segment.get(name_field)
        if isinstance(name, str) and name.strip():
            return " ".join(name.split())
    number = segment.get("speaker_id")
    if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
        return f"Speaker {number}"
    label = segment.get("speaker")
    if isinstance(label, str) and (match := _SPEAKER_LABEL_RE.fullmatch(label.strip())):
        return f"Speaker {int(match[1])}"
    return "Speaker"


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def parse_time(value: object) -> datetime | None:
    """A time in a stored conversation's body (``isoformat()``, or with ``Z``; spaces around it ignored), in UTC.

    `names.parse_time` of the text, which the function reads without the spaces
    and only up to `conversation.MAX_TIME_CHARS`: a body may hold what the
    function could not read, and the export reads what it can.
    """
    return names.parse_time(value.strip() if isinstance(value, str) else value)


# A conversation Omi made lasts minutes, at most hours.  One whose span or transcript
# reaches further than this from its start is not placed on the time line (every
# chunk of its span would be listed): it is skipped, named in a warning.
MAX_CONVERSATION_SPAN = timedelta(hours=48)
# The times a conversation may hold: from 1970 (a phone whose clock was reset says
# 1970, none says earlier) to before 9999.  Chunks are listed from minutes to a day
# around a conversation, which the calendar's own ends (years 1 and 9999) cannot hold.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def safe_text(value: Any) -> Any:
    """Parsed JSON with each lone surrogate in its strings (keys too) replaced by U+FFFD.

    JSON may carry one (``"\\ud800"``), and no UTF-8 writer (a file, the page, a
    terminal) can encode it: made safe once, where a conversation is read.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE_RE.sub("\ufffd", value)
    if isinstance(value, list):
        return [safe_text(item) for item in value]
    if isinstance(value, dict):
        return {safe_text(key): safe_text(item) for key, item in value.items()}
    return value


def conversation_from(info: storage.ConversationInfo, body: bytes) -> Conversation:
    """The conversation stored as `info` with body `body`, its text made safe (`safe_text`).

    Its span: `started_at`, else the time its name was stored under; to
    `finished_at`, else the end of its last transcript segment.

    Raises:
        ValueError: it cannot be read or placed; the message says why: the body
            is not a JSON object, a time is outside `EARLIEST_TIME` to
            `LATEST_TIME`, or its span or a transcript time reaches more than
            `MAX_CONVERSATION_SPAN` from its start.
    """
    try:
        document = safe_text(json.loads(body))
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    raw_segments = document.get("transcript_segments")
    segments = [s for s in raw_segments if isinstance(s, dict)] if isinstance(raw_segments, list) else []
    limit = MAX_CONVERSATION_SPAN.total_seconds()
    for n, segment in enumerate(segments, 1):
        for key in ("start", "end"):
            value = segment.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > limit:
                raise ValueError(f"transcript segment {n}'s {key} is more than {_hours(limit)} from the start")
    started_at = parse_time(document.get("started_at")) or info.parts.starts_at.astimezone(UTC)
    finished_at = parse_time(document.get("finished_at"))
    for key, moment in (("started_at", started_at), ("finished_at", finished_at)):
        if moment is not None and not EARLIEST_TIME <= moment < LATEST_TIME:
            years = f"{EARLIEST_TIME.year} to {LATEST_TIME.year - 1}"
            raise ValueError(f"{key} {moment.isoformat()} is out of range ({years})")
    if finished_at is None or finished_at < started_at:
        last = max((end for s in segments if (end := _seconds(s.get("end"))) is not None), default=0.0)
        finished_at = started_at + timedelta(seconds=max(last, 0.0))
    if finished_at - started_at > MAX_CONVERSATION_SPAN:
        span = (finished_at - started_at).total_seconds()
        raise ValueError(f"it spans {_hours(span)}, more than {_hours(limit)}")
    return Conversation(info, document, started_at, finished_at, segments)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h"


def overlaps(conversation: Conversation, since: datetime | None, until: datetime | None) -> bool:
    """True when the conversation's span meets ``[since, until)`` (a zero-length one: when it lies in it)."""
    if until is not None and conversation.started_at >= until:
        return False
    if since is None:
        return True
    return conversation.finished_at > since or conversation.started_at >= since


def conversation_range(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """The `starts_at` range to list for conversations that overlap ``[since, until)``."""
    return (since - storage.CONVERSATION_LOOKBACK if since else None), until


def chunk_range(
    conversations: Sequence[Conversation], since: datetime | None, until: datetime | None
) -> tuple[datetime, datetime]:
    """The receipt times to list once for the chunks of all `conversations` (and the day around them).

    From `RECEIPT_MARGIN` before the earliest audio file's start (or `since`) to
    `RECEIPT_MARGIN` after the latest one's end (or `until`).
    """
    low = min(c.started_at for c in conversations) - CONVERSATION_PAD
    high = max(c.finished_at for c in conversations) + CONVERSATION_PAD
    if since is not None:
        low = min(low, since)
    if until is not None:
        high = max(high, until)
    return low - RECEIPT_MARGIN, high + RECEIPT_MARGIN
