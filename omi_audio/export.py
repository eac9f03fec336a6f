"""Turn a user's one-second chunks back into one WAV file per recording session.

    omi-audio export --uid UID --out DIR [--bucket NAME | --local-dir PATH]
                     [--since T] [--until T] [--gap SECONDS] [--format wav|flac]
                     [--by session|conversation] [--skip-existing] [--list] [--quiet] [--jobs N]

``--by conversation`` writes one audio file, WebVTT transcript and JSON document
per stored conversation instead (see `omi_audio.conversations`).  Either way an
``index.html`` to browse and play them is written beside the files (`page`).

The chunks are the objects ``receive_audio`` stored (see `storage`); only the
names received in ``[--since, --until)`` are listed, so a day costs a day's
listing however long the archive.  They are ordered by the receipt time in their
names (then by the name's collision suffix as a number), duplicates left by a
sender retry (same ``idempotency_key`` metadata) keep only the first, and a new
session starts when two consecutive chunks were received more than ``--gap``
seconds apart or when the sample rate changes.

Each session's audio is exactly the concatenation of its chunks' PCM frames.  It
is streamed into a temporary file in DIR while later chunks download on a
bounded pool, the header sizes are written last, and only then is the file
renamed to ``{uid folder}_{YYYYMMDDTHHMMSS.ffffff}Z.wav`` (the uid's folder name
in storage, cut short with a hash when too long for a file name, then the
session's first receipt time), so an interrupted export
never leaves a truncated file under a final name.  A session longer than one WAV
file can hold (4 GiB) is split into ``…Z_part01.wav``, ``…Z_part02.wav``, ...
``--format flac`` writes lossless FLAC through libsndfile instead (no size
limit, no parts).  ``--skip-existing`` keeps a session whose files in DIR already
hold exactly its planned audio and downloads nothing for it, so a re-run resumes
an interrupted export.  Memory stays bounded by the download window, whatever the
session length.

Exit status: 0 when at least one session was written, kept or listed, 1 when
nothing matches or the source cannot be read, 2 for bad arguments, 3 when
``--by conversation`` skipped a stored conversation it could not read or place
(each named in a warning; the others are written), 130 when interrupted.

Text from storage (titles, object names, error messages) reaches the terminal
only through `console.terminal_text`, with its control characters replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import sys
import threading
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

import names
import storage
import wav
from omi_audio import archive, compacted, console, conversations, loudness, page
from omi_audio.archive import DEFAULT_GAP_SECONDS, Chunk, Selection

_T = TypeVar("_T")

# Concurrent downloads.  One small object costs tens of milliseconds on real GCS.
DEFAULT_JOBS = 16
MAX_JOBS = 256
# The most PCM one WAV file can hold, in whole frames; longer sessions become parts.
MAX_PART_BYTES = wav.MAX_DATA_SIZE - wav.MAX_DATA_SIZE % (wav.CHANNELS * wav.SAMPLE_WIDTH)
FRAME_BYTES = archive.FRAME_BYTES
# File names are at most 255 bytes on ext4, APFS and NTFS.  A uid's folder in storage
# can be 384 characters (128 bytes of UTF-8, each escaped as ~XX), so in file names it
# is cut to this length: room is left for "_", the 23-character stamp, a "-N" collision
# suffix, "_partNN" and ".flac" (198 bytes in all with a one-digit N), with room to spare.
MAX_UID_IN_FILE_NAME = 160
# A cut folder name ends in "~~" and this many hex digits of the uid's SHA-256: no
# folder name holds "~~" ("~" itself is escaped), so it never equals another uid's.
UID_HASH_DIGITS = 16
# Exit status of an export that skipped a stored conversation it could not read or
# place: distinct from 1 (nothing exported), so that a script sees what was left out.
EXIT_SKIPPED = 3


@dataclass
class Session:
    """A run of chunks with no gap longer than the limit and one sample rate."""

    start: datetime
    end: datetime
    sample_rate: int | None
    frames: int = 0
    chunks: int = 0
    files: list[str] = field(default_factory=list)
    first: int = 0  # position of its first chunk in the selection (planned sessions)
    loudness: list[str] = field(default_factory=list)  # each written file's (`omi_audio.loudness`)

    @property
    def seconds(self) -> float | None:
        return self.frames / self.sample_rate if self.sample_rate else None


@dataclass
class Summary:
    """What an export did."""

    sessions: list[Session]
    chunks: int
    duplicates: int
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------- names


def session_base_name(uid: str, start: datetime, taken: set[str]) -> str:
    """The file name stem for a session that starts at `start`, unique within `taken`.

    ``{uid folder}_{YYYYMMDDTHHMMSS.ffffff}Z``: the uid as its folder in storage
    is named (``storage.uid_prefix``: a plain uid is itself, a device name such
    as "Omi DevKit 2" becomes ``Omi~20DevKit~202``, never a path; see
    `uid_in_file_name` for a long one), so names sort chronologically.  Two
    sessions starting in the same microsecond (a sample-rate change) get
    ``-1``, ``-2``, ...
    """
    stem = f"{uid_in_file_name(uid)}_{storage.name_stamp(start)}"
    candidate, n = stem, 0
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate)
    return candidate


def uid_in_file_name(uid: str) -> str:
    """The uid's folder name in storage, cut short with a hash of the uid when too long for a file name.

    A folder of more than MAX_UID_IN_FILE_NAME characters keeps its start (never
    half an escape), then ``~~`` and UID_HASH_DIGITS hex digits of the uid's
    SHA-256: still one uid's alone, and the same in every file of that uid.
    """
    folder = storage.uid_prefix(uid)
    if len(folder) <= MAX_UID_IN_FILE_NAME:
        return folder
    head = folder[: MAX_UID_IN_FILE_NAME - 2 - UID_HASH_DIGITS]
    if "~" in head[-2:]:
        head = head[: head.rindex("~")]
    return f"{head}~~{hashlib.sha256(uid.encode('utf-8')).hexdigest()[:UID_HASH_DIGITS]}"


def part_name(base: str, part: int, parts_known: bool, suffix: str = ".wav") -> str:
    """``base.wav`` for a session in one file, ``base_partNN.wav`` for one split in parts."""
    return f"{base}_part{part:02d}{suffix}" if parts_known else f"{base}{suffix}"


# ------------------------------------------------------------------------ list


def plan_sessions(
    uid: str, chunks: Iterable[Chunk], gap: float, part_limit: int = MAX_PART_BYTES, suffix: str = ".wav"
) -> Iterator[Session]:
    """The sessions an export would write, from names and metadata alone (no audio).

    A corrupt object cannot be seen without downloading it, so an export may
    write fewer chunks than planned here.
    """
    taken: set[str] = set()
    first = 0
    for run in archive.sessions(chunks, gap):
        start = run[0].received_at
        rate = next((chunk.sample_rate for chunk in run if chunk.sample_rate), None)
        session = Session(start, run[-1].received_at, rate, chunks=len(run), first=first)
        base = session_base_name(uid, start, taken)
        parts, part_bytes = 1, 0
        for chunk in run:
            pcm = chunk.pcm_bytes - chunk.pcm_bytes % FRAME_BYTES
            if part_bytes + pcm > part_limit and part_bytes:
                parts, part_bytes = parts + 1, 0
            session.frames += pcm // FRAME_BYTES
            part_bytes += pcm
        session.files = [part_name(base, n, parts > 1, suffix) for n in range(1, parts + 1)]
        first += len(run)
        yield session


# ---------------------------------------------------------------------- export


def temporary_path(out_dir: Path, suffix: str) -> Path:
    """A new name for a file being written; it takes its final name only once whole."""
    return out_dir / f".export-{os.urandom(8).hex()}{suffix}.tmp"


class _PartWriter:
    """One output WAV being written (the standard library's `wave`): a temporary file until `finish` renames it."""

    def __init__(self, out_dir: Path, sample_rate: int) -> None:
        self.path = temporary_path(out_dir, ".wav")
        self.file: BinaryIO | None = None
        self.wave: wave.Wave_write | None = None
        try:  # named before it exists: a Ctrl-C or SIGTERM anywhere from here removes it
            self.file = open(self.path, "xb")
            self.wave = wave.open(self.file, "wb")  # closed by `finish` or `discard`
            self.wave.setnchannels(wav.CHANNELS)
            self.wave.setsampwidth(wav.SAMPLE_WIDTH)
            self.wave.setframerate(sample_rate)
        except BaseException:
            self.discard()
            raise
        self.size = 0
        self.loudness = loudness.Meter(sample_rate)  # measured as written: the file is never read back

    @staticmethod
    def frames(path: Path) -> tuple[int, int] | None:
        """(sample rate, frames) of a finished WAV we wrote, or None if it is not whole."""
        try:
            with open(path, "rb") as f:
                rate, size = wav.parse_header(f.read(wav.HEADER_SIZE))
                if os.fstat(f.fileno()).st_size != wav.HEADER_SIZE + size:
                    return None
        except (OSError, ValueError):
            return None
        return rate, size // FRAME_BYTES

    def write(self, pcm: memoryview, hole: bool = False) -> None:
        """Append `pcm`; `hole`: it is silence standing in for audio that was never stored."""
        assert self.wave is not None
        self.wave.writeframesraw(pcm)
        self.size += len(pcm)
        if hole:
            self.loudness.hole(len(pcm) // FRAME_BYTES)
        else:
            self.loudness.add(pcm)

    def finish(self, final: Path) -> None:
        assert self.wave is not None and self.file is not None
        self.wave.close()  # writes the header's sizes
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, final)

    def discard(self) -> None:
        """Remove the unfinished file; harmless after `finish` or a failed start."""
        if self.wave is not None:
            with contextlib.suppress(OSError, ValueError):
                self.wave.close()
        if self.file is not None:
            self.file.close()
        self.path.unlink(missing_ok=True)


class _FlacWriter:
    """One output FLAC being written through libsndfile, renamed by `finish` once whole."""

    def __init__(self, out_dir: Path, sample_rate: int) -> None:
        import soundfile  # a tools dependency (requirements-tools.txt), needed for FLAC only

        self.path = temporary_path(out_dir, ".flac")
        self.fd: int | None = None
        self.file: soundfile.SoundFile | None = None
        try:  # as in _PartWriter: an interruption from here on removes the file
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self.file = soundfile.SoundFile(
                self.fd, "w", samplerate=sample_rate, channels=1, format="FLAC", subtype="PCM_16", closefd=False
            )
        except BaseException:
            self.discard()
            raise
        self.size = 0
        self.loudness = loudness.Meter(sample_rate)

    @staticmethod
    def frames(path: Path) -> tuple[int, int] | None:
        """(sample rate, frames) of a finished FLAC, or None if libsndfile cannot read it to its last frame."""
        import soundfile

        try:
            with soundfile.SoundFile(str(path)) as flac:
                if flac.format != "FLAC" or flac.channels != 1:
                    return None
                # The header states the total even when the file was cut short later:
                # reading the last frame shows whether it is really there.
                if flac.frames and (flac.seek(flac.frames - 1) != flac.frames - 1 or len(flac.read(1)) != 1):
                    return None
                return flac.samplerate, flac.frames
        except (OSError, RuntimeError, soundfile.LibsndfileError):
            return None

    def write(self, pcm: memoryview, hole: bool = False) -> None:
        assert self.file is not None
        self.file.buffer_write(pcm, dtype="int16")
        self.size += len(pcm)
        if hole:
            self.loudness.hole(len(pcm) // FRAME_BYTES)
        else:
            self.loudness.add(pcm)

    def finish(self, final: Path) -> None:
        assert self.file is not None and self.fd is not None
        self.file.close()  # libsndfile writes the stream's totals on close
        fd, self.fd = self.fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, final)

    def discard(self) -> None:
        """Remove the unfinished file; harmless after `finish` or a failed start."""
        try:
            if self.file is not None:
                self.file.close()
        finally:
            fd, self.fd = self.fd, None
            if fd is not None:
                os.close(fd)
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class OutputFormat:
    """How sessions are written: file suffix, writer, and the most PCM one file holds."""

    suffix: str
    writer: type[_PartWriter] | type[_FlacWriter]
    part_limit: int
    max_sample_rate: int


FORMATS = {
    "wav": OutputFormat(".wav", _PartWriter, MAX_PART_BYTES, wav.MAX_SAMPLE_RATE),
    # FLAC counts frames in 36 bits: no 4 GiB limit, so a session is always one file.
    # libsndfile refuses a FLAC rate above 655,350 Hz (the most a FLAC frame header can state).
    "flac": OutputFormat(".flac", _FlacWriter, sys.maxsize, 655_350),
}


def already_complete(out_dir: Path, session: Session, output: OutputFormat) -> bool:
    """True when `session`'s planned files are all in `out_dir` and hold exactly its audio.

    Files appear under their final names only once whole (they are renamed into
    place), so a session an interrupted export finished passes; one that has
    grown since (it was still being recorded), or whose file is missing or
    different, does not.
    """
    frames = 0
    for name in session.files:
        found = output.writer.frames(out_dir / name)
        if found is None or (session.sample_rate is not None and found[0] != session.sample_rate):
            return False
        frames += found[1]
    return frames == session.frames


def resume_plan(
    uid: str, selection: Selection, out_dir: Path, gap: float, output: OutputFormat
) -> tuple[Selection, set[str], list[Session]]:
    """What is left to do when the sessions already complete in `out_dir` are kept.

    Returns the chunks still to export, the names of chunks that must start a new
    session (the first after a kept session: without it two sessions on either
    side could merge), and the kept sessions.
    """
    planned = list(plan_sessions(uid, selection.chunks, gap, output.part_limit, output.suffix))
    kept = [s for s in planned if already_complete(out_dir, s, output)] if out_dir.is_dir() else []
    if not kept:
        return selection, set(), []
    skip = {s.first for s in kept}
    todo: list[Chunk] = []
    starts: set[str] = set()
    for session in planned:
        if session.first in skip:
            continue
        chunks = selection.chunks[session.first : session.first + session.chunks]
        starts.add(chunks[0].name)
        todo.extend(chunks)
    return Selection(todo, selection.duplicates, selection.skipped), starts, kept


def check_chunk(data: bytes, max_sample_rate: int = wav.MAX_SAMPLE_RATE) -> tuple[int, memoryview]:
    """Return (sample rate, whole-frame PCM) of one stored chunk.

    A half sample at the end of an odd-sized chunk is left out so that the
    frames after it stay aligned.

    Raises:
        ValueError: not a PCM16 mono WAV as the function writes them, truncated,
            or at a sample rate above `max_sample_rate` (what the output can hold).
    """
    rate, size = wav.parse_header(data)
    if rate > max_sample_rate:
        raise ValueError(f"sample rate {rate} Hz is more than the output format holds ({max_sample_rate} Hz)")
    expected = wav.HEADER_SIZE + size + (size & 1)
    if len(data) != expected:
        raise ValueError(f"header says {size} bytes of audio but the object holds {len(data) - wav.HEADER_SIZE}")
    return rate, memoryview(data)[wav.HEADER_SIZE : wav.HEADER_SIZE + size - size % FRAME_BYTES]


def export_sessions(
    store: storage.Store,
    uid: str,
    selection: Selection,
    out_dir: Path,
    gap: float = DEFAULT_GAP_SECONDS,
    jobs: int = DEFAULT_JOBS,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    part_limit: int | None = None,
    output: OutputFormat = FORMATS["wav"],
    starts: set[str] | frozenset[str] = frozenset(),
    taken: set[str] | None = None,
) -> Summary:
    """Write one file per session of `selection` into `out_dir`, streaming.

    Sessions are formed from the chunks that are valid WAVs (the sample rate is
    read from each chunk's own header); corrupt or vanished objects are skipped
    with a call to `warn` naming them and listed in the summary.  A chunk named
    in `starts` always begins a new session; file stems in `taken` are not used.

    Returns:
        What was written; `Session.files` are file names inside `out_dir`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if part_limit is None:
        part_limit = output.part_limit
    summary = Summary([], len(selection.chunks), selection.duplicates, list(selection.skipped))
    taken = set() if taken is None else taken
    writer: _PartWriter | _FlacWriter | None = None
    session: Session | None = None
    splitter = archive.SessionSplitter(gap)
    base = ""

    def close_session() -> None:
        nonlocal writer
        if writer is None or session is None:
            return
        parts_known = len(session.files) > 0
        name = part_name(base, len(session.files) + 1, parts_known, output.suffix)
        writer.finish(out_dir / name)
        session.loudness.append(writer.loudness.text())
        writer = None
        session.files.append(name)
        summary.sessions.append(session)

    try:
        for chunk, data in compacted.download_chunks(store, selection.chunks, jobs, out_dir):
            if progress:
                progress(1)
            if data is None:
                summary.skipped.append(chunk.name)
                if warn:
                    warn(f"skipped {chunk.name}: it disappeared before it could be read")
                continue
            try:
                rate, pcm = check_chunk(data, output.max_sample_rate)
            except ValueError as exc:
                summary.skipped.append(chunk.name)
                if warn:
                    warn(f"skipped {chunk.name}: not a usable WAV chunk ({exc})")
                continue
            if splitter.starts_new(chunk.received_at, rate, force=chunk.name in starts):
                close_session()
                session = Session(chunk.received_at, chunk.received_at, rate)
                base = session_base_name(uid, chunk.received_at, taken)
                writer = output.writer(out_dir, rate)
            elif writer is not None and writer.size and writer.size + len(pcm) > part_limit:
                name = part_name(base, len(session.files) + 1, True, output.suffix)
                writer.finish(out_dir / name)
                session.files.append(name)
                session.loudness.append(writer.loudness.text())
                writer = output.writer(out_dir, rate)
            assert writer is not None
            writer.write(pcm)
            session.end = chunk.received_at
            session.frames += len(pcm) // FRAME_BYTES
            session.chunks += 1
            del data, pcm
        close_session()
    finally:
        if writer is not None:
            writer.discard()
    return summary


# ------------------------------------------------------------------------- CLI


def format_table(sessions: Iterable[Session], out: TextIO) -> None:
    """Print start, end, audio duration, chunk count and file of each session."""
    rows = [("START (UTC)", "END (UTC)", "DURATION", "CHUNKS", "FILE")]
    for s in sessions:
        files = s.files[0] if len(s.files) == 1 else f"{s.files[0]} .. {s.files[-1]} ({len(s.files)} parts)"
        rows.append(
            (
                console.when(s.start),
                console.when(s.end),
                console.duration(s.seconds),
                str(s.chunks),
                console.terminal_text(files),
            )
        )
    console.print_table(rows, "<<>>", out)


def format_conversation_table(items: Iterable[conversations.Planned], out: TextIO) -> None:
    """DATE, TIME (UTC), DURATION, AUDIO (coverage of the span, or "no audio"), TITLE."""
    rows = [("DATE", "TIME (UTC)", "DURATION", "AUDIO", "TITLE")]
    for item in items:
        start = item.conversation.started_at.astimezone(UTC)
        audio = f"{item.cut.coverage:.0%}" if item.cut else "no audio"
        title = console.terminal_text(" ".join(item.conversation.title.split()) or "(untitled)")
        rows.append(
            (f"{start:%Y-%m-%d}", f"{start:%H:%M:%S}", console.duration(item.conversation.seconds), audio, title)
        )
    console.print_table(rows, "<<>>", out)


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_JOBS}")
    return int(text)


class NothingFound(Exception):
    """Nothing to export for the uid asked for (its message says what was looked for, and where)."""


SUMMARY = "Join stored chunks into recordings, or cut them per conversation"
DESCRIPTION = "Join a user's stored Omi chunks into one audio file per recording session."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `omi-audio export`."""
    parser.add_argument(
        "--uid",
        type=console.uid_arg,
        required=True,
        help="whose chunks to export, as the sender sends it (an Omi uid, or a device name such as 'Omi DevKit 2')",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="directory for the session files (created if missing)")
    console.add_source_arguments(parser)
    parser.add_argument(
        "--since",
        type=console.time_arg(False),
        metavar="T",
        help="first receipt time, inclusive (ISO 8601, UTC default)",
    )
    parser.add_argument(
        "--until",
        type=console.time_arg(True),
        metavar="T",
        help="last receipt time, exclusive; a bare date includes that whole day",
    )
    parser.add_argument(
        "--gap",
        type=console.positive_float,
        metavar="SECONDS",
        default=DEFAULT_GAP_SECONDS,
        help=f"start a new session after this many seconds without a chunk (default {DEFAULT_GAP_SECONDS:g})",
    )
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="wav",
        help="wav (default) or flac: lossless, about half the size, needs soundfile (requirements-tools.txt)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep sessions whose files in DIR already hold exactly their audio (resume an interrupted export)",
    )
    parser.add_argument(
        "--by",
        choices=["session", "conversation"],
        default="session",
        help="session (default): one file per recording session; conversation: one audio file, .vtt and .json"
        " per stored conversation overlapping the range",
    )
    parser.add_argument("--list", action="store_true", help="print the table only, downloading no audio")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--jobs", type=_jobs, default=DEFAULT_JOBS, metavar="N", help=f"concurrent downloads (default {DEFAULT_JOBS})"
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `omi-audio export`; returns the exit status."""
    if args.since and args.until and args.since >= args.until:
        parser.error("--since must be before --until")
    if args.out is None and not args.list:
        parser.error("--out DIR is required (or use --list)")
    output = FORMATS[args.format]
    if args.format == "flac" and not args.list:
        try:
            import soundfile  # noqa: F401
        except (ImportError, OSError) as exc:
            parser.error(f"--format flac needs soundfile (pip install -r requirements-tools.txt): {exc}")
    store = console.open_store(args, parser)
    try:
        return export_uid(args, store, output)
    except NothingFound as nothing:
        try:
            uid = console.resolve_uid(store, args.uid)
        except console.UnknownUid as exc:
            console.say(f"error: {exc}")
            return 1
        except Exception as exc:
            console.say(f"error: could not list {store.location('')}: {exc}")
            return 1
        if uid == args.uid:
            console.say(str(nothing))
            return 1
    args.uid = uid
    try:
        return export_uid(args, store, output)
    except NothingFound as nothing:
        console.say(str(nothing))
        return 1


def export_uid(args: argparse.Namespace, store: storage.Store, output: OutputFormat) -> int:
    """Export `args.uid`; returns the exit status.

    Raises:
        NothingFound: the uid has no chunk (or conversation) in the range asked for.
    """
    where = store.location(storage.uid_prefix(args.uid) + "/")
    if args.by == "conversation":
        return export_by_conversation(args, store, output, where)

    try:
        selection = console.list_with_progress(store, args.uid, args.since, args.until, args.quiet)
    except Exception as exc:
        console.say(f"error: could not list {where}: {exc}")
        return 1
    if not selection.chunks:
        window = ""
        if args.since or args.until:
            window = f" received from {console.when(args.since) if args.since else 'the start'}"
            window += f" until {console.when(args.until) if args.until else 'now'} (UTC)"
        raise NothingFound(f"no chunks for uid {args.uid} in {where}{window}")

    if args.list:
        sessions = list(plan_sessions(args.uid, selection.chunks, args.gap, output.part_limit, output.suffix))
        format_table(sessions, sys.stdout)
        _print_summary(sessions, selection.duplicates, selection.skipped, listed=True)
        return 0

    everything = selection.chunks
    starts: set[str] = set()
    kept: list[Session] | None = None  # sessions already complete in DIR, with --skip-existing
    if args.skip_existing:
        selection, starts, kept = resume_plan(args.uid, selection, args.out, args.gap, output)
    taken = {s.files[0].removesuffix(output.suffix).removesuffix("_part01") for s in kept or []}
    progress = console.Progress(len(selection.chunks), args.quiet)
    summary, failed = run_export(
        lambda: export_sessions(
            store,
            args.uid,
            selection,
            args.out,
            args.gap,
            args.jobs,
            progress=progress.update,
            warn=progress.warn,
            output=output,
            starts=starts,
            taken=taken,
        ),
        "sessions",
        where,
        progress,
    )
    if failed is not None:
        return failed

    format_table(summary.sessions, sys.stdout)
    _print_summary(summary.sessions, summary.duplicates, summary.skipped, listed=False, kept=kept)
    if not summary.sessions and not kept:
        console.say(f"nothing exported: none of the {summary.chunks} chunks is a usable WAV")
        return 1
    written = sorted([*(kept or []), *summary.sessions], key=lambda s: s.start)
    spans = archive.audio_spans(archive.captured(everything))
    return write_page(args.out, args.uid, [], page_sessions(written, output.part_limit), spans)


def export_by_conversation(args: argparse.Namespace, store: storage.Store, output: OutputFormat, where: str) -> int:
    """``--by conversation``: see `omi_audio.conversations`; returns the exit status."""
    progress = console.Progress()  # warnings only, until the download's bar
    try:
        stored, skipped = conversations.read_conversations(
            store, args.uid, args.since, args.until, args.jobs, progress.warn
        )
        if not stored and not skipped:
            raise NothingFound(f"no conversations for uid {args.uid} in {where}{_window(args)}")
        if not stored:
            console.say(f"nothing exported: the {len(skipped)} conversation(s) in {where}{_window(args)} were skipped")
            return EXIT_SKIPPED
        low, high = archive.chunk_range(stored, args.since, args.until)
        selection = console.list_with_progress(store, args.uid, low, high, args.quiet)
    except NothingFound:
        raise
    except Exception as exc:
        console.say(f"error: could not list {where}: {exc}")
        return 1
    chunks = archive.captured(selection.chunks)
    items = []
    for item in conversations.plan(stored, chunks, None if args.list else args.out):
        if item.cut is not None and output.part_limit < item.cut.frames * FRAME_BYTES:
            progress.warn(
                f"skipped {item.conversation.info.name}: its {console.duration(item.cut.seconds)} of audio"
                f" is more than one {output.suffix[1:].upper()} file holds: use --format flac"
            )
            skipped.append(item.conversation.info.name)
            continue
        if item.cut is not None and item.cut.other_rate:
            progress.warn(
                f"{item.stem}: {item.cut.other_rate} chunk(s) at another sample rate left out, silence instead"
            )
        items.append(item)
    if args.list:
        format_conversation_table(items, sys.stdout)
        _print_conversation_summary(items, listed=True, skipped=len(skipped))
        return EXIT_SKIPPED if skipped else 0

    todo = items
    if args.skip_existing and args.out.is_dir():
        for item in items:
            item.kept = conversations.already_complete(args.out, item, output)
        todo = [item for item in items if not item.kept]
    progress = console.Progress(sum(len(item.cut.pieces) for item in todo if item.cut), args.quiet)
    _, failed = run_export(
        lambda: conversations.export(
            todo,
            args.out,
            output,
            lambda wanted: compacted.download_chunks(store, wanted, args.jobs, args.out),
            lambda data: check_chunk(data, output.max_sample_rate),
            progress.update,
            progress.warn,
        ),
        "conversations",
        where,
        progress,
    )
    if failed is not None:
        return failed
    format_conversation_table(items, sys.stdout)
    _print_conversation_summary(items, listed=False, skipped=len(skipped))
    entries = [conversations.page_conversation(item, output.suffix) for item in items]
    written = write_page(args.out, args.uid, entries, [], archive.audio_spans(chunks))
    return EXIT_SKIPPED if written == 0 and skipped else written


def run_export(
    work: Callable[[], _T], what: str, where: str, progress: console.Progress
) -> tuple[_T | None, int | None]:
    """Run `work` with SIGTERM taken as Ctrl-C, then close `progress`.

    Returns:
        (what `work` returned, None), or (None, the exit status) once it failed
        or was interrupted, with the reason printed: finished `what` are kept.
    """
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
    try:
        return work(), None
    except KeyboardInterrupt:
        console.say(f"interrupted: finished {what} are kept, the unfinished one was removed")
        return None, 130
    except OSError as exc:
        console.say(f"error: {exc}")
        return None, 1
    except Exception as exc:
        console.say(f"error: could not read from {where}: {exc}")
        return None, 1
    finally:
        progress.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def page_sessions(sessions: Iterable[Session], part_limit: int = MAX_PART_BYTES) -> list[dict]:
    """Each session's files as the page takes them: one entry per file (every part but the last is full)."""
    entries = []
    for session in sessions:
        full = part_limit // FRAME_BYTES
        for n, name in enumerate(session.files):
            frames = full if n < len(session.files) - 1 else session.frames - full * n
            rate = session.sample_rate or archive.ASSUMED_SAMPLE_RATE
            start = session.start + timedelta(seconds=full * n / rate)
            stem = name.rsplit(".", 1)[0]
            entry = {"stem": stem, "started_at": names.iso(start), "seconds": frames / rate, "audio": name}
            if n < len(session.loudness):  # measured when written (not for a file kept from before)
                entry["loudness"] = session.loudness[n]
            entries.append(entry)
    return entries


def write_page(
    out_dir: Path,
    uid: str,
    conversation_entries: list[dict],
    sessions: list[dict],
    spans: list[tuple[datetime, datetime]],
) -> int:
    """index.html in `out_dir` from everything exported into it (see `page.update_index`); returns the exit status."""
    try:
        page.update_index(out_dir, uid, conversation_entries, sessions, spans)
    except OSError as exc:
        console.say(f"error: could not write {out_dir / 'index.html'}: {exc}")
        return 1
    return 0


def _window(args: argparse.Namespace) -> str:
    if not (args.since or args.until):
        return ""
    return (
        f" from {console.when(args.since) if args.since else 'the start'}"
        f" until {console.when(args.until) if args.until else 'now'} (UTC)"
    )


def _print_conversation_summary(items: list[conversations.Planned], listed: bool, skipped: int = 0) -> None:
    with_audio = [item for item in items if item.cut is not None]
    holes = [gap for item in with_audio for gap in item.gaps()]  # inside each span: the pads are not holes
    silence = sum(gap["seconds"] for gap in holes)
    kept = sum(1 for item in items if item.kept)
    verb = "would be written (listed from metadata; no audio downloaded)" if listed else "written"
    line = (
        f"{len(items)} conversation(s) {verb}: {len(with_audio)} with audio"
        f" ({console.duration(sum(item.cut.seconds for item in with_audio))}),"
        f" {len(items) - len(with_audio)} with no audio;"
        f" {len(holes)} hole(s) of {console.duration(silence)} filled with silence"
    )
    left_out = sum(gap.get("left_out", 0.0) for gap in holes)
    if left_out:
        line += f" ({console.duration(left_out)} more with no audio left out)"
    if kept:
        line += f"; {kept} already complete, kept"
    if skipped:
        line += f"; {skipped} skipped (named above)"
    print(line)


def _print_summary(
    sessions: list[Session], duplicates: int, skipped: list[str], listed: bool, kept: list[Session] | None = None
) -> None:
    seconds = sum(s.seconds or 0 for s in sessions)
    files = sum(len(s.files) for s in sessions)
    chunks = sum(s.chunks for s in sessions)
    verb = "would be written (listed from metadata; no audio downloaded)" if listed else "written"
    line = (
        f"{len(sessions)} session(s), {files} file(s) {verb}; {chunks} chunk(s), {console.duration(seconds)} of audio; "
        f"{duplicates} duplicate(s) dropped; {len(skipped)} corrupt or missing object(s) skipped"
    )
    if kept is not None:
        line += f"; {len(kept)} session(s) already complete, kept"
    print(line)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
