"""omi-audio compact: fold each finished UTC day of chunks into a few large objects.

One owner streaming 8 h a day stores 28,800 one-second chunks a day.  This
turns a day of them into one audio object per recording session (FLAC by
default: the same samples, bit for bit) and an index (see `compacted`), then
deletes the chunks.  Readers (`omi-audio export`, `omi-audio status`, the page)
give the same results either way.

The order of work makes every step safe to interrupt; a re-run finishes the job:

1. list the day's chunks and its folder; chunks the newest index already
   accounts for are not read again;
2. read every chunk (and the audio of an earlier compaction of the day, when
   a chunk arrived after it), drop duplicates (the same Idempotency-Key), and
   stream the samples into one file per session, keeping a chunk loose if its
   bytes could not be rebuilt exactly;
3. check each file by decoding it: its samples' SHA-256 must be that of the
   chunks' samples; upload it (a checksum-checked create that never replaces;
   its name holds its digest, so a re-run finds its own earlier upload);
4. write the next index: the commit;
5. delete the chunks it holds, each only if it is still the version listed
   (100 to a request; what a failed request left is listed and deleted one by one);
6. delete what the new index does not name: older indexes last.

A chunk that arrives for a compacted day later is read beside the index
until the next run folds it in.  A run on a compacted day with nothing new
is a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy
import soundfile

import names
import storage
import wav
from omi_audio import archive, compacted, console
from omi_audio.archive import Chunk

SUMMARY = "fold finished days of chunks into one object per session (FLAC), then delete the chunks"
DESCRIPTION = (
    "Fold each whole UTC day before --before of a uid's one-second chunks into one audio object per "
    "recording session and an index, then delete the chunks. export, status and the page read "
    "compacted days as before. Safe to interrupt: run it again to finish."
)
DEFAULT_AFTER_DAYS = 2  # deploy.sh's COMPACT_AFTER_DAYS: days that are left as chunks
DEFAULT_JOBS = 16  # concurrent reads and deletes: each is one small request
# An object in a day's folder that no index names is an upload of a run that did
# not commit: deleted only once this old, so that a run still going keeps its own.
UNCOMMITTED_AGE = timedelta(hours=1)
FLAC_MAX_RATE = 655350  # the highest sample rate a FLAC stream holds
WRITE_BYTES = 4 << 20  # samples reach a session's file (and its hash) in blocks of this many bytes
FORMS = ("flac", "wav")


class DayFailed(Exception):
    """A day could not be compacted now; nothing it holds was lost, and a re-run tries again."""


@dataclass
class DayResult:
    """What one run did (or, with --dry-run, would do) to one uid's day."""

    uid: str
    day: date
    action: str  # "compacted", "finished", "nothing to do", "would compact", "would finish"
    chunks: int = 0  # chunks the day's index holds after the run
    duplicates: int = 0
    left: int = 0  # chunks kept loose (their bytes could not be rebuilt exactly)
    objects: list[str] = field(default_factory=list)  # audio objects the index names
    planned: int = 0  # with --dry-run: the audio objects it would write
    chunk_bytes: int = 0  # what the chunks held, as WAV objects
    stored_bytes: int = 0  # what the audio objects hold
    deleted: int = 0  # objects deleted (or to delete)
    error: str | None = None


# ------------------------------------------------------------------- which days


def days_to_visit(store: storage.Store, uid: str, before: date) -> Iterator[date]:
    """The days before `before` that hold loose chunks, or a folder left unfinished; oldest first.

    Loose chunks are found one list call per day (the first chunk from a day's
    start on), so a year of chunks is not listed at once.
    """
    unfinished = {
        day
        for day, folder in compacted.list_days(store, uid).items()
        if day < before and (len(folder.indexes) != 1 or not folder.audio)
    }
    end = compacted.day_start(before)
    cursor: datetime | None = None
    while True:
        first = next(iter(store.list_chunks(uid, cursor, end, limit=1)), None)
        loose_day = first.parts.received_at.date() if first else None
        while unfinished and (loose_day is None or min(unfinished) < loose_day):
            day = min(unfinished)
            unfinished.discard(day)
            yield day
        if loose_day is None:
            return
        unfinished.discard(loose_day)
        yield loose_day
        cursor = compacted.day_end(loose_day)


# ------------------------------------------------------------------- one day


class SessionFile:
    """One session's samples streamed into a local file, with the SHA-256 of what went in."""

    def __init__(self, workdir: Path, rate: int, form: str, first: Chunk) -> None:
        self.rate = rate
        self.form = form if rate <= FLAC_MAX_RATE else "wav"
        self.first = first
        self.frames = 0
        self.digest = hashlib.sha256()
        self.pending = bytearray()
        fd, path = tempfile.mkstemp(prefix="session-", suffix=f".{self.form}", dir=workdir)
        os.close(fd)
        self.path = Path(path)
        if self.form == "flac":
            self.flac: soundfile.SoundFile | None = soundfile.SoundFile(
                path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16"
            )
            self.out = None
        else:
            self.flac = None
            self.out = open(path, "wb")
            self.out.write(wav.header(0, rate))

    def fits(self, frames: int) -> bool:
        """Whether `frames` more still fit (a WAV holds at most 4 GiB of samples)."""
        return self.form == "flac" or (self.frames + frames) * archive.FRAME_BYTES <= wav.MAX_DATA_SIZE

    def write(self, pcm: bytes) -> int:
        """Append whole frames; returns the frame they start at."""
        at = self.frames
        self.frames += len(pcm) // archive.FRAME_BYTES
        self.pending += pcm
        if len(self.pending) >= WRITE_BYTES:
            self._flush()
        return at

    def _flush(self) -> None:
        # Written in blocks, not a chunk at a time: each call into the encoder or the
        # hash lets go of the interpreter, and getting it back costs up to 5 ms while
        # the download threads hold it (measured: 3,000 one-chunk writes took 15 s).
        self.digest.update(self.pending)
        if self.flac is not None:
            self.flac.write(numpy.frombuffer(self.pending, dtype="<i2"))
        else:
            assert self.out is not None
            self.out.write(self.pending)
        self.pending.clear()

    def close(self) -> None:
        self._flush()
        if self.flac is not None:
            self.flac.close()
        elif self.out is not None:
            self.out.seek(0)
            self.out.write(wav.header(self.frames * archive.FRAME_BYTES, self.rate))
            self.out.close()

    def check(self) -> None:
        """Decode the file and compare its samples with what was written.

        Raises:
            DayFailed: they differ (the file is not kept).
        """
        decoded = hashlib.sha256()
        frames = 0
        for block in compacted.decoded_blocks(self.path, self.form):
            decoded.update(block)
            frames += len(block) // archive.FRAME_BYTES
        if decoded.digest() != self.digest.digest() or frames != self.frames:
            raise DayFailed(f"the {self.form.upper()} written does not decode to the chunks' samples")

    def name(self, uid: str, day: date) -> str:
        stamp = names.name_stamp(self.first.received_at)
        return f"{compacted.day_folder(uid, day)}{stamp}-{self.digest.hexdigest()[:16]}.{self.form}"

    def describe(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "form": self.form,
            "sample_rate": self.rate,
            "frames": self.frames,
            "pcm_sha256": self.digest.hexdigest(),
            "bytes": self.path.stat().st_size,
        }


def _listed_row(chunk: Chunk, metadata: dict[str, str]) -> dict[str, Any]:
    return {"name": chunk.name, "generation": chunk.generation, "size": chunk.size, "metadata": metadata}


class Day:
    """One uid's day being compacted: what was listed, and what the run decided."""

    def __init__(self, store: storage.Store, uid: str, day: date) -> None:
        self.store = store
        self.uid = uid
        self.day = day
        self.folder = compacted.DayFolder(day, [], [])
        for info in store.list_objects(compacted.day_folder(uid, day)):
            (self.folder.indexes if compacted.index_number(info.name) is not None else self.folder.audio).append(info)
        self.folder.indexes.sort(key=lambda info: compacted.index_number(info.name) or 0)
        self.index = compacted.read_index(store, self.folder.newest) if self.folder.newest else None
        since, until = compacted.day_start(day), compacted.day_end(day)
        self.loose = list(store.list_chunks(uid, since, until))
        accounted = self.index.folded() if self.index else set()
        self.new = [info for info in self.loose if (info.name, info.generation) not in accounted]

    def chunks(self) -> tuple[list[Chunk], dict[str, dict[str, str]]]:
        """Every chunk of the day (packed and new), in reading order, and each one's metadata."""
        metadata: dict[str, dict[str, str]] = {}
        found: list[Chunk] = []
        rewritten = {info.name for info in self.new}  # a new version of a folded chunk replaces it
        if self.index is not None:
            found.extend(chunk for chunk in self.index.packed_chunks() if chunk.name not in rewritten)
            metadata.update({row["name"]: row["metadata"] for row in self.index.chunks})
        for info in self.new:
            chunk = archive.chunk_from_metadata(info.name, info.parts, info.size, info.metadata)
            chunk.generation = info.generation
            found.append(chunk)
            metadata[info.name] = info.metadata
        found.sort(key=lambda chunk: (chunk.received_at, chunk.seq, chunk.name))
        return found, metadata


def compact_day(
    store: storage.Store,
    uid: str,
    day: date,
    form: str = "flac",
    dry_run: bool = False,
    jobs: int = DEFAULT_JOBS,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> DayResult:
    """Compact (or finish compacting) one uid's day; see the module's docstring for the steps.

    Raises:
        DayFailed: stopped before its commit, or a delete failed after it; a re-run resumes.
    """
    now = now or datetime.now(UTC)
    state = Day(store, uid, day)
    if not state.new:
        return finish(store, state, state.index, dry_run, jobs, now, "finished")
    chunks, metadata = state.chunks()
    kept, duplicates = drop_duplicates(chunks)
    if dry_run:
        sessions = _planned_sessions(kept)
        result = DayResult(uid, day, "would compact", len(kept), len(duplicates), 0)
        result.planned = sessions
        result.chunk_bytes = sum(chunk.size for chunk in kept)
        kept_loose = {(row["name"], row["generation"]) for row in state.index.left} if state.index else set()
        result.deleted = sum(1 for info in state.loose if (info.name, info.generation) not in kept_loose)
        return result
    with tempfile.TemporaryDirectory(prefix="omi-audio-compact-") as work:
        index = write_day(store, state, kept, duplicates, metadata, form, jobs, Path(work), progress)
    return finish(store, state, index, dry_run, jobs, now, "compacted")


def drop_duplicates(chunks: list[Chunk]) -> tuple[list[Chunk], list[tuple[Chunk, Chunk]]]:
    """(the first chunk of each Idempotency-Key and every chunk with none, (dropped, the one kept) pairs)."""
    kept: list[Chunk] = []
    first_of: dict[str, Chunk] = {}
    dropped: list[tuple[Chunk, Chunk]] = []
    for chunk in chunks:
        if chunk.key is not None:
            if chunk.key in first_of:
                dropped.append((chunk, first_of[chunk.key]))
                continue
            first_of[chunk.key] = chunk
        kept.append(chunk)
    return kept, dropped


def _planned_sessions(chunks: list[Chunk]) -> int:
    splitter = archive.SessionSplitter(archive.DEFAULT_GAP_SECONDS)
    return sum(1 for chunk in chunks if splitter.starts_new(chunk.received_at, chunk.sample_rate))


def write_day(
    store: storage.Store,
    state: Day,
    kept: list[Chunk],
    duplicates: list[tuple[Chunk, Chunk]],
    metadata: dict[str, dict[str, str]],
    form: str,
    jobs: int,
    work: Path,
    progress: Callable[[int], None] | None,
) -> compacted.Index:
    """Steps 2 to 4: the day's audio objects written and checked, then its next index; returns it."""
    uid, day = state.uid, state.day
    rows: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = list(state.index.left) if state.index else []
    objects: list[dict[str, Any]] = []
    splitter = archive.SessionSplitter(archive.DEFAULT_GAP_SECONDS)
    session: SessionFile | None = None
    session_rows: list[dict[str, Any]] = []

    def close_session() -> None:
        nonlocal session
        if session is None:
            return
        session.close()
        session.check()
        name = session.name(uid, day)
        upload(store, session, name, day)
        objects.append(session.describe(name))
        for row in session_rows:
            row["object"] = name
        rows.extend(session_rows)
        session_rows.clear()
        session.path.unlink(missing_ok=True)
        session = None

    for chunk, data in compacted.download_chunks(store, kept, jobs, work):
        if progress:
            progress(1)
        if data is None:
            if chunk.packed is not None:
                raise DayFailed(f"{chunk.packed.object} is gone: the day's earlier compaction cannot be read")
            continue  # deleted since it was listed: not ours to keep
        try:
            rate, data_size, pcm, tail = split_chunk(data)
        except ValueError as exc:
            if chunk.packed is not None:
                raise DayFailed(f"{chunk.name} does not read back from {chunk.packed.object}: {exc}") from exc
            left.append({"name": chunk.name, "generation": chunk.generation, "reason": str(exc)})
            continue
        frames = len(pcm) // archive.FRAME_BYTES
        if splitter.starts_new(chunk.received_at, rate) or session is None or not session.fits(frames):
            close_session()
            session = SessionFile(work, rate, form, chunk)
        row = _listed_row(chunk, metadata[chunk.name])
        row.update(rate=rate, data_size=data_size, tail=tail.hex(), first_frame=session.write(pcm))
        session_rows.append(row)
    close_session()
    duplicate_rows = list(state.index.duplicates) if state.index else []
    for chunk, original in duplicates:
        duplicate_rows.append({**_listed_row(chunk, metadata[chunk.name]), "kept": original.name})
    number = state.index.number + 1 if state.index else 1
    index = compacted.Index(uid, day, number, objects, rows, duplicate_rows, left)
    path = work / "index.json.gz"
    index.write(path)
    try:
        store.put_file(
            compacted.index_name(uid, day, number), path, compacted.INDEX_CONTENT_TYPE, compacted.day_end(day)
        )
    except storage.NameTaken as exc:
        raise DayFailed("another run committed this day first; run again") from exc
    return index


def split_chunk(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(sample rate, header data size, whole-frame PCM, trailing half frame) of a chunk object.

    Raises:
        ValueError: not a WAV the function writes, or not rebuilt byte for byte from those parts.
    """
    rate, data_size = wav.parse_header(data)
    whole = data_size - data_size % archive.FRAME_BYTES
    pcm = bytes(data[wav.HEADER_SIZE : wav.HEADER_SIZE + whole])
    tail = bytes(data[wav.HEADER_SIZE + whole : wav.HEADER_SIZE + data_size])
    if wav.frame([pcm, tail], rate) != data:
        raise ValueError("its bytes are not the WAV the function writes for its samples")
    return rate, data_size, pcm, tail


def upload(store: storage.Store, session: SessionFile, name: str, day: date) -> None:
    """Create `name` from the session's file; an object already there must decode to the same samples."""
    try:
        store.put_file(name, session.path, f"audio/{session.form}", compacted.day_end(day))
        return
    except storage.NameTaken:
        pass
    with tempfile.TemporaryDirectory(dir=session.path.parent) as folder:  # an earlier run's upload
        there = Path(folder) / "held"
        store.download(name, there)
        digest = hashlib.sha256()
        for block in compacted.decoded_blocks(there, session.form):
            digest.update(block)
    if digest.digest() != session.digest.digest():
        raise DayFailed(f"{name} is already taken by other samples")


def finish(
    store: storage.Store,
    state: Day,
    index: compacted.Index | None,
    dry_run: bool,
    jobs: int,
    now: datetime,
    action: str,
) -> DayResult:
    """Steps 5 and 6: delete the loose chunks `index` holds, then whatever it does not name."""
    result = DayResult(state.uid, state.day, action)
    if index is not None:
        result.chunks, result.duplicates, result.left = len(index.chunks), len(index.duplicates), len(index.left)
        result.objects = [item["name"] for item in index.objects]
        result.chunk_bytes = sum(row["size"] for row in index.chunks)
        result.stored_bytes = sum(item["bytes"] for item in index.objects)
    folded = {(row["name"], row["generation"]) for row in (*index.chunks, *index.duplicates)} if index else set()
    chunks = [info for info in state.loose if (info.name, info.generation) in folded]
    named = set(result.objects)
    superseded = {item["name"] for item in state.index.objects} if state.index else set()
    current = compacted.index_name(state.uid, state.day, index.number) if index else None
    garbage = [
        info
        for info in state.folder.audio
        if info.name not in named and (info.name in superseded or now - info.created >= UNCOMMITTED_AGE)
    ]
    old_indexes = [info for info in state.folder.indexes if index is not None and info.name != current]
    todo = [(info.name, info.generation) for info in (*chunks, *garbage)]
    if not todo and not old_indexes:
        result.action = "nothing to do"
        return result
    result.deleted = len(todo) + len(old_indexes)
    if dry_run:
        result.action = "would finish" if action == "finished" else "would compact"
        return result
    own = compacted.per_thread(store)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="delete") as pool:
        batches = [todo[start : start + storage.BATCH_DELETES] for start in range(0, len(todo), storage.BATCH_DELETES)]
        list(pool.map(lambda batch: own().delete_many(batch), batches))
        left = held(store, state) & set(todo)  # a batch, or a part of one, that failed
        list(pool.map(lambda item: own().delete(*item), sorted(left)))
    for info in old_indexes:  # the index goes last
        store.delete(info.name, info.generation)
    return result


def held(store: storage.Store, state: Day) -> set[tuple[str, str]]:
    """(name, generation) of every chunk and compacted object the day holds now."""
    since, until = compacted.day_start(state.day), compacted.day_end(state.day)
    chunks = {(info.name, info.generation) for info in store.list_chunks(state.uid, since, until)}
    folder = store.list_objects(compacted.day_folder(state.uid, state.day))
    return chunks | {(info.name, info.generation) for info in folder}


# ------------------------------------------------------------------- verify


def verify_day(store: storage.Store, uid: str, day: date, index: compacted.Index) -> list[str]:
    """What is wrong with a compacted day: each audio object decoded and checked against its index."""
    problems = []
    held = {info.name for info in store.list_objects(compacted.day_folder(uid, day))}
    frames_used: dict[str, int] = {}
    for row in index.chunks:
        end = row["first_frame"] + row["data_size"] // archive.FRAME_BYTES
        frames_used[row["object"]] = max(frames_used.get(row["object"], 0), end)
    with tempfile.TemporaryDirectory(prefix="omi-audio-verify-") as work:
        for item in index.objects:
            if item["name"] not in held:
                problems.append(f"{item['name']} is missing")
                continue
            path = Path(work) / "object"
            store.download(item["name"], path)
            digest, frames = hashlib.sha256(), 0
            for block in compacted.decoded_blocks(path, item["form"]):
                digest.update(block)
                frames += len(block) // archive.FRAME_BYTES
            if (digest.hexdigest(), frames) != (item["pcm_sha256"], item["frames"]):
                problems.append(f"{item['name']} does not hold the samples its index records")
            if frames_used.get(item["name"], 0) != item["frames"]:
                problems.append(f"{item['name']}: its chunks do not account for its {item['frames']} frames")
            path.unlink()
    return problems


def verify_store(store: storage.Store, uids: list[str] | None, report: Callable[[str], None]) -> tuple[int, int]:
    """Check every compacted day of `uids` (default: all); returns (days checked, days that failed)."""
    checked = failed = 0
    for uid in uids if uids is not None else store.list_uids():
        days = compacted.CompactedDays(store, uid)
        for day in sorted(days.folders()):
            try:
                index = days.index(day)
                problems = verify_day(store, uid, day, index) if index else ["no index: an unfinished run"]
            except Exception as exc:  # unreadable index, a storage error: say so, check the rest
                problems = [f"{type(exc).__name__}: {exc}"]
            checked += 1
            failed += bool(problems)
            count = f"{len(index.chunks):,} chunks in {len(index.objects)} object(s)" if index else ""
            verdict = "; ".join(problems) if problems else f"ok, {count}"
            report(f"{console.terminal_text(uid)} {day.isoformat()}: {console.terminal_text(verdict)}")
    return checked, failed


# ------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    console.add_source_arguments(parser)
    parser.add_argument("--uid", type=console.uid_arg, help="only this uid (default: every uid in the store)")
    parser.add_argument(
        "--before",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help=f"compact the days before this date (default: {DEFAULT_AFTER_DAYS} days before today; never today)",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be written and deleted; change nothing")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compact nothing: download every compacted day's audio and check its samples against the index",
    )
    parser.add_argument(
        "--format", choices=FORMS, default="flac", help="audio objects as FLAC (default; the same samples) or WAV"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        choices=range(1, 65),
        metavar="N",
        help=f"concurrent reads and deletes (default {DEFAULT_JOBS})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def default_before(today: date, after_days: int = DEFAULT_AFTER_DAYS) -> date:
    return today - timedelta(days=after_days)


def compact_store(
    store: storage.Store,
    before: date,
    uids: list[str] | None = None,
    form: str = "flac",
    dry_run: bool = False,
    report: Callable[[DayResult], None] | None = None,
    progress: console.Progress | None = None,
    jobs: int = DEFAULT_JOBS,
    now: datetime | None = None,
) -> list[DayResult]:
    """Compact every listed day of `uids` (default: all) before `before`; never today or later."""
    now = now or datetime.now(UTC)
    before = min(before, now.date())
    results = []
    for uid in uids if uids is not None else store.list_uids():
        for day in days_to_visit(store, uid, before):
            try:
                result = compact_day(store, uid, day, form, dry_run, jobs, now, progress.update if progress else None)
            except (DayFailed, storage.StorageUnavailable, storage.StorageRefused, OSError, ValueError) as exc:
                result = DayResult(uid, day, "failed", error=str(exc))
            except Exception as exc:  # a storage error from the client library: the next run retries
                result = DayResult(uid, day, "failed", error=f"{type(exc).__name__}: {exc}")
            results.append(result)
            if report:
                report(result)
    return results


def describe(result: DayResult) -> str:
    head = f"{console.terminal_text(result.uid)} {result.day.isoformat()}: {result.action}"
    if result.error:
        return f"{head}: {console.terminal_text(result.error)}"
    if result.action == "nothing to do":
        return head
    parts = [f"{result.chunks:,} chunks"]
    if result.planned:
        parts.append(f"{result.planned} session object(s) and an index")
    elif result.objects:
        parts.append(f"{len(result.objects)} audio object(s)")
    if result.stored_bytes and result.chunk_bytes:
        parts.append(f"{result.stored_bytes / result.chunk_bytes:.0%} of the chunks' bytes")
    if result.duplicates:
        parts.append(f"{result.duplicates} duplicate(s) dropped")
    if result.left:
        parts.append(f"{result.left} chunk(s) kept loose (not rebuilt exactly)")
    verb = "to delete" if result.action.startswith("would") else "deleted"
    parts.append(f"{result.deleted:,} object(s) {verb}")
    return f"{head}: " + ", ".join(parts)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `omi-audio compact`; returns the exit status (1 when a day failed: run it again)."""
    store = console.open_store(args, parser)
    now = datetime.now(UTC)
    today = now.date()
    before = args.before or default_before(today)
    if before > today:
        console.say(f"note: --before {before} is after today; compacting the days before today ({today})")
    uids = [console.resolve_uid(store, args.uid)] if args.uid else None
    if args.verify:
        checked, failed = verify_store(store, uids, print)
        if not checked:
            console.say("no compacted day to check")
        if failed:
            console.say(f"{failed} compacted day(s) failed the check")
        return 1 if failed else 0
    progress = console.Progress(None, args.quiet, desc="compacting")
    results = compact_store(
        store, before, uids, args.format, args.dry_run, lambda result: print(describe(result)), progress, args.jobs, now
    )
    if progress.bar is not None:
        progress.bar.close()
    if not results:
        console.say(f"nothing to compact before {min(before, today)}")
    failed = [result for result in results if result.action == "failed"]
    if failed:
        console.say(f"{len(failed)} day(s) failed and were left as they were: run omi-audio compact again")
        return 1
    return 0
