"""``omi-audio export --by conversation``: each stored conversation back as audio, WebVTT and JSON.

For every conversation (its newest version) whose span overlaps the range:

* ``<stem>.wav`` (or ``.flac``): its stored audio from `archive.CONVERSATION_PAD`
  before ``started_at`` to that long after ``finished_at``, from the first
  stored sample to the last, cut from the stored chunks by their reconstructed
  capture times with every sample unchanged, and silence where nothing was
  stored between them (each such hole is listed): as long as it lasted up to
  `archive.MAX_HOLE`, cut to that beyond (see `archive.plan_cut`);
* ``<stem>.vtt``: the transcript, one cue per segment, the speaker as a voice
  tag, times from the audio file's first sample (moving with the audio past a hole cut short);
* ``<stem>.json``: the conversation as stored, plus ``audio_start`` and
  ``audio_end`` (capture times of the file's first and last sample, UTC),
  ``audio_seconds`` and ``gaps``.

A stored conversation that cannot be read or placed (see `archive.conversation_from`)
is skipped, named in a warning; the others are exported.

The stem is the start (UTC) and the title, e.g. ``2026-11-30_1403_Product-launch-planning``.
Files appear under their final names only once whole, the ``.json`` last, so a
conversation whose ``.json`` is there was finished (``--skip-existing`` relies on it).
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import names
import storage
from omi_audio import archive, vtt

# A stem holds at most this many bytes (UTF-8) of the title: with the 15-byte date, a
# collision suffix and ".flac" a name stays near 110 bytes, far below the 255 bytes
# that ext4, APFS, NTFS and exFAT allow, and short enough to read in a file list.
MAX_TITLE_BYTES = 80
UNTITLED = "untitled"
# Apostrophes are dropped, not made separators: "Sam's notes" reads "Sams-notes".
_DROPPED = frozenset("'\u2019\u02bc`")
# The keys the export adds to the conversation as stored, in its .json.
ADDED_KEYS = ("audio_start", "audio_end", "audio_seconds", "gaps")
# Silence is written in blocks of this many bytes (holes can be hours long).
SILENCE_BLOCK_BYTES = 1 << 20


# ----------------------------------------------------------------------- names


def title_part(title: str) -> str:
    """The title as a file name part: letters and digits of any script, the rest as single ``-``.

    Emoji, punctuation, spaces, '/', control and direction marks become
    separators (apostrophes vanish); the result is cut, at a character, to
    `MAX_TITLE_BYTES` of UTF-8; an empty result is ``untitled``.
    """
    kept: list[str] = []
    for char in unicodedata.normalize("NFC", title):
        if char in _DROPPED:
            continue
        category = unicodedata.category(char)
        if category[0] in "LN" or (category in ("Mn", "Mc") and kept and kept[-1] != "-"):
            kept.append(char)
        elif kept and kept[-1] != "-":
            kept.append("-")
    part, size = "", 0
    for char in "".join(kept).strip("-"):
        size += len(char.encode("utf-8"))
        if size > MAX_TITLE_BYTES:
            break
        part += char
    return part.strip("-") or UNTITLED


def conversation_stem(started_at: datetime, title: str, taken: set[str]) -> str:
    """``YYYY-MM-DD_HHMM_Title`` (start in UTC), unique within `taken` (compared case-blind), added to it.

    Names sort by start.  A name already taken gets ``-2``, ``-3``, ...: two
    files never differ only in case, which macOS and Windows would merge.
    """
    t = started_at.astimezone(UTC)
    stem = f"{t.year:04d}-{t.month:02d}-{t.day:02d}_{t.hour:02d}{t.minute:02d}_{title_part(title)}"
    candidate, n = stem, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate.casefold())
    return candidate


# ---------------------------------------------------------------------- plan


@dataclass
class Planned:
    """One conversation to export: its files' stem, and its cut (None: no stored audio)."""

    conversation: archive.Conversation
    stem: str
    cut: archive.Cut | None
    holes: list[archive.Hole] = field(default_factory=list)  # as written (planned ones plus unreadable chunks)
    kept: bool = False
    loudness: str | None = None  # its audio file's, measured as written (`omi_audio.loudness`)

    def gaps(self) -> list[dict[str, float]]:
        """Each hole inside the conversation's own span: its start and length in the file, in seconds,
        and what was left out of a long one.

        Silence in the file's `archive.CONVERSATION_PAD` before ``started_at`` or
        after ``finished_at`` is not a hole: the pad is the export's margin, not
        part of the conversation, so a hole reaching into it is cut at the span's edge.
        """
        cut = self.cut
        if cut is None:
            return []
        rate = cut.sample_rate
        low = round(cut.in_file((self.conversation.started_at - cut.start).total_seconds()) * rate)  # frames
        high = round(cut.in_file((self.conversation.finished_at - cut.start).total_seconds()) * rate)
        found = []
        for hole in self.holes:
            start, end = max(hole.at, low), min(hole.at + hole.frames, high)
            if end <= start:
                continue
            gap = {"start": start / rate, "seconds": (end - start) / rate}
            if hole.left_out and start <= hole.at + hole.frames // 2 <= end:
                gap["left_out"] = hole.left_out / rate
            found.append(gap)
        return found


def read_conversations(
    store: storage.Store,
    uid: str,
    since: datetime | None,
    until: datetime | None,
    jobs: int,
    warn: Callable[[str], None],
) -> tuple[list[archive.Conversation], list[str]]:
    """One version of every conversation of `uid` whose span overlaps ``[since, until)``, by start.

    Lists the conversations that began from `storage.CONVERSATION_LOOKBACK`
    before `since`, reads the version of each that `archive.preferred_versions`
    picks (small JSON documents, `jobs` at a time), each on its own: one that cannot be read or placed
    (`archive.conversation_from`) is skipped, named in one call to `warn`.

    Returns:
        The conversations, and the names of the objects skipped.
    """
    infos = archive.preferred_versions(store.list_conversations(uid, *archive.conversation_range(since, until)))
    skipped: list[str] = []

    def read(info: storage.ConversationInfo) -> archive.Conversation | None:
        body = store.read(info.name)  # a storage failure stops the export: a retry may succeed
        try:
            return archive.conversation_from(info, body)
        except ValueError as exc:
            warn(f"skipped {info.name}: {exc}")
            skipped.append(info.name)
            return None

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="conversations") as pool:
        found = [c for c in pool.map(read, infos) if c is not None]
    found = [c for c in found if archive.overlaps(c, since, until)]
    return sorted(found, key=lambda c: (c.started_at, c.id)), sorted(skipped)


def plan(
    conversations: Sequence[archive.Conversation], chunks: Sequence[archive.CapturedChunk], out_dir: Path | None
) -> list[Planned]:
    """Stem and cut of each conversation; a stem whose .json in `out_dir` is another conversation's is not used."""
    taken: set[str] = set()
    planned = []
    starts = [c.start for c in chunks]  # in order: `archive.captured` sorts by capture start
    longest = max((c.end - c.start for c in chunks), default=timedelta(0))
    for conversation in conversations:
        while True:
            stem = conversation_stem(conversation.started_at, conversation.title, taken)
            if out_dir is None or _owner(out_dir / f"{stem}.json") in (None, conversation.id):
                break
        # Only the chunks that can reach into its padded span: a month holds a million.
        low = bisect.bisect_left(starts, conversation.started_at - archive.CONVERSATION_PAD - longest)
        high = bisect.bisect_left(starts, conversation.finished_at + archive.CONVERSATION_PAD)
        cut = archive.plan_cut(chunks[low:high], conversation.started_at, conversation.finished_at)
        planned.append(Planned(conversation, stem, cut, list(cut.holes) if cut else []))
    return planned


def _owner(path: Path) -> str | None:
    """The conversation id in an exported .json, or None when there is none (or it is unreadable)."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    owner = document.get("id") if isinstance(document, dict) else None
    return owner if isinstance(owner, str) else ""


def document_of(item: Planned) -> dict[str, Any]:
    """The .json: the conversation as stored, plus where its audio file sits in time."""
    cut = item.cut
    return {
        **item.conversation.body,
        "audio_start": names.iso(cut.start) if cut else None,
        "audio_end": names.iso(cut.end) if cut else None,
        "audio_seconds": cut.seconds if cut else 0.0,
        "gaps": item.gaps(),
    }


def cues_of(item: Planned) -> list[archive.Cue]:
    """The transcript timed from the audio file's first sample (without audio: from where it would start)."""
    return item.conversation.cues(item.cut)


def already_complete(out_dir: Path, item: Planned, output: Any) -> bool:  # output: export.OutputFormat
    """True when `out_dir` holds this version's .json, .vtt and audio exactly as planned."""
    try:
        document = json.loads((out_dir / f"{item.stem}.json").read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(document, dict) or not (out_dir / f"{item.stem}.vtt").is_file():
        return False
    stored = {k: v for k, v in document.items() if k not in ADDED_KEYS}
    if stored != item.conversation.body or {k: document.get(k) for k in ADDED_KEYS} != {
        k: v for k, v in document_of(item).items() if k in ADDED_KEYS
    }:
        return False
    if item.cut is None:
        return True
    found = output.writer.frames(out_dir / f"{item.stem}{output.suffix}")
    return found == (item.cut.sample_rate, item.cut.frames)


# ---------------------------------------------------------------------- write


def write_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary file in its folder, then renamed."""
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            os.fchmod(out.fileno(), 0o644)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_transcript_and_document(out_dir: Path, item: Planned) -> None:
    """The .vtt, then the .json (last: its presence says the conversation is whole)."""
    cues = cues_of(item)
    write_text(out_dir / f"{item.stem}.vtt", vtt.document((c.start, c.end, c.speaker, c.text) for c in cues))
    write_text(out_dir / f"{item.stem}.json", json.dumps(document_of(item), ensure_ascii=False, indent=2) + "\n")


class AudioCut:
    """One conversation's audio file being written, piece by piece, silence in its holes."""

    def __init__(self, out_dir: Path, item: Planned, output: Any, warn: Callable[[str], None]) -> None:
        assert item.cut is not None
        self.item, self.cut, self.warn = item, item.cut, warn
        self.final = out_dir / f"{item.stem}{output.suffix}"
        self.written = 0  # frames
        self.holes: list[archive.Hole] = []
        self.left_out = {hole.at: hole.left_out for hole in self.cut.holes if hole.left_out}
        self.writer = output.writer(out_dir, self.cut.sample_rate)  # last: nothing here fails once its file exists

    def _silence(self, frames: int) -> None:
        if frames <= 0:
            return
        self.holes.append(archive.Hole(self.written, frames, self.left_out.get(self.written, 0)))
        left = frames * archive.FRAME_BYTES
        block = bytes(min(left, SILENCE_BLOCK_BYTES))
        while left:
            n = min(left, len(block))
            self.writer.write(memoryview(block)[:n], hole=True)
            left -= n
        self.written += frames

    def add(self, piece: archive.Piece, data: bytes | None, check: Callable[[bytes], tuple[int, memoryview]]) -> None:
        """Write `piece` from its chunk's object bytes `data` (None: vanished), after any hole before it."""
        self._silence(piece.at - self.written)
        name = piece.chunk.chunk.name
        usable = 0
        if data is None:
            self.warn(f"{self.item.stem}: {name} disappeared before it could be read; silence in its place")
        else:
            try:
                rate, pcm = check(data)
            except ValueError as exc:
                self.warn(f"{self.item.stem}: {name} is not a usable WAV chunk ({exc}); silence in its place")
            else:
                if rate != self.cut.sample_rate:
                    self.warn(f"{self.item.stem}: {name} is at {rate} Hz, not {self.cut.sample_rate}; silence instead")
                else:
                    frames = pcm[piece.skip * archive.FRAME_BYTES : (piece.skip + piece.frames) * archive.FRAME_BYTES]
                    usable = len(frames) // archive.FRAME_BYTES
                    self.writer.write(frames)
                    self.written += usable
        self._silence(piece.frames - usable)

    def finish(self) -> None:
        self._silence(self.cut.frames - self.written)
        self.writer.finish(self.final)
        self.item.loudness = self.writer.loudness.text()
        merged: list[archive.Hole] = []
        for hole in self.holes:
            if merged and merged[-1].at + merged[-1].frames == hole.at:
                last = merged[-1]
                merged[-1] = archive.Hole(last.at, last.frames + hole.frames, last.left_out + hole.left_out)
            else:
                merged.append(hole)
        self.item.holes = merged

    def discard(self) -> None:
        self.writer.discard()


def export(
    items: Sequence[Planned],
    out_dir: Path,
    output: Any,  # export.OutputFormat
    download: Callable[[list[archive.Chunk]], Iterable[tuple[archive.Chunk, bytes | None]]],
    check: Callable[[bytes], tuple[int, memoryview]],
    progress: Callable[[int], None] | None,
    warn: Callable[[str], None],
) -> None:
    """Write every item's files; `download(chunks)` yields (chunk, bytes or None) in order.

    Every chunk any conversation needs is fetched in one ordered stream, so the
    downloads of the next conversation overlap the writing of this one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        if item.cut is None:
            write_transcript_and_document(out_dir, item)
    jobs = [(item, piece) for item in items if item.cut is not None for piece in item.cut.pieces]
    current: AudioCut | None = None

    def finish() -> None:
        nonlocal current
        if current is not None:
            current.finish()
            write_transcript_and_document(out_dir, current.item)  # its audio whole, its .json says so
            current = None

    try:
        stream = download([piece.chunk.chunk for _, piece in jobs])
        for (item, piece), (_, data) in zip(jobs, stream, strict=True):
            if current is not None and current.item is not item:
                finish()
            if current is None:
                current = AudioCut(out_dir, item, output, warn)
            current.add(piece, data, check)
            if progress:
                progress(1)
        finish()
    finally:
        if current is not None:
            current.discard()


# ----------------------------------------------------------------------- page


def page_conversation(item: Planned, suffix: str) -> dict[str, Any]:
    """One conversation as the page takes it (see `page.write_index`)."""
    conversation, cut = item.conversation, item.cut
    return {
        "stem": item.stem,
        "id": conversation.id,
        "title": conversation.title,
        "emoji": conversation.text_field("emoji"),
        "overview": conversation.text_field("overview"),
        "category": conversation.text_field("category"),
        "started_at": names.iso(conversation.started_at),
        "finished_at": names.iso(conversation.finished_at),
        "audio": f"{item.stem}{suffix}" if cut else None,
        "audio_start": names.iso(cut.start) if cut else None,
        "audio_seconds": cut.seconds if cut else 0.0,
        "coverage": cut.coverage if cut else 0.0,
        "gaps": item.gaps(),
        "cues": [{"start": c.start, "end": c.end, "speaker": c.speaker, "text": c.text} for c in cues_of(item)],
        **({"loudness": item.loudness} if item.loudness is not None else {}),  # none for a file kept from before
    }
