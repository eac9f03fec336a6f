"""Compacted days: one UTC day of a uid's chunks kept as a few large objects and an index.

`omi-audio compact` (see `compact`) folds a finished day of one-second chunks
into one audio object per recording session, in the day's folder::

    {uid folder}/compacted/{YYYY-MM-DD}/{stamp}-{digest}.flac   (or .wav)
    {uid folder}/compacted/{YYYY-MM-DD}/index-{NNNNNN}.json.gz

The index, written last, is the day's commit: for every chunk folded in it
keeps what the chunk object told readers (its name, version, size and
metadata), the chunk's WAV header fields, and where its samples sit in which
audio object, so that each chunk reads back byte for byte as the object it
replaced.  It also names the chunks dropped as duplicates (a second copy of
an Idempotency-Key) and the chunks left in place because they could not be
kept exactly.  Of several indexes in a folder the highest number is the
day's; older ones are what a re-run is about to delete.

Readers see chunks, whichever form they are in: `CompactedDays` lists a uid's
compacted chunks for `archive.select_chunks`, which reads a chunk that is
still loose from its own object (one the compactor has yet to delete); `Reader`
returns any chunk's bytes, downloading each audio object once into a work
folder instead of one object a second; `download_chunks` reads many chunks in
order, several at a time, for export and the compactor alike.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import soundfile
from google.api_core import exceptions as api_exceptions

import names
import storage
import wav

FOLDER = "compacted"
INDEX_FORMAT = 1
INDEX_CONTENT_TYPE = "application/gzip"
_INDEX_RE = re.compile(r"index-(\d{6})\.json\.gz")
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
FRAME_BYTES = wav.CHANNELS * wav.SAMPLE_WIDTH
DECODE_FRAMES = 1 << 16  # frames per block when an audio object is decoded
# Downloads run ahead of the reader by at most this many objects per job, and never
# by more than this many bytes: that window is all the audio ever held in memory.
WINDOW_PER_JOB = 4
WINDOW_BYTES = 64 * 1024 * 1024


def uid_folder(uid: str) -> str:
    """The folder (ending in "/") holding all of `uid`'s compacted days."""
    return f"{names.uid_prefix(uid)}/{FOLDER}/"


def day_folder(uid: str, day: date) -> str:
    """The folder (ending in "/") holding `uid`'s compacted `day`."""
    return f"{uid_folder(uid)}{day.isoformat()}/"


def index_name(uid: str, day: date, number: int) -> str:
    return f"{day_folder(uid, day)}index-{number:06d}.json.gz"


def index_number(name: str) -> int | None:
    """The number of an index object's name, or None if `name` is not one."""
    match = _INDEX_RE.fullmatch(name.rpartition("/")[2])
    return int(match[1]) if match else None


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def day_end(day: date) -> datetime:
    """The end of `day` (UTC): the custom time of its compacted objects, so retention counts from it."""
    return day_start(day) + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Packed:
    """Where a compacted chunk's samples are: from frame `first_frame` of audio object `object`.

    `data_size` and `rate` are the chunk's WAV header fields (its whole frames are
    ``data_size // 2``); `tail` is the half frame an odd-sized chunk ends with (b""
    otherwise).
    """

    object: str
    form: str  # "flac" or "wav"
    first_frame: int
    rate: int
    data_size: int
    tail: bytes


def chunk_bytes(packed: Packed, pcm: bytes) -> bytes:
    """A chunk's object bytes rebuilt from its whole-frame PCM, as the function wrote them."""
    return wav.frame([pcm, packed.tail], packed.rate)


@dataclass
class Index:
    """One committed compacted day, as read from (or about to be written to) its index object."""

    uid: str
    day: date
    number: int
    objects: list[dict[str, Any]]  # {"name", "form", "sample_rate", "frames", "pcm_sha256", "bytes"}
    chunks: list[dict[str, Any]]  # {"name", "generation", "size", "metadata", "object", "first_frame", ...}
    duplicates: list[dict[str, Any]]  # {"name", "generation", "size", "metadata", "kept"}
    left: list[dict[str, Any]]  # {"name", "generation", "reason"}: loose chunks that stay loose

    def folded(self) -> set[tuple[str, str]]:
        """(name, generation) of every chunk this index accounts for."""
        return {(row["name"], row["generation"]) for row in (*self.chunks, *self.duplicates, *self.left)}

    def packed_chunks(self) -> list[Any]:
        """The folded chunks as `archive.Chunk`s, each with its `Packed` place."""
        from omi_audio.archive import Chunk, chunk_from_metadata  # the archive model imports this module

        forms = {item["name"]: item["form"] for item in self.objects}
        found = []
        for row in self.chunks:
            parts = names.parse_object_name(row["name"])
            if parts is None:
                continue
            chunk: Chunk = chunk_from_metadata(row["name"], parts, row["size"], row["metadata"])
            chunk.generation = row["generation"]
            chunk.packed = Packed(
                row["object"],
                forms[row["object"]],
                row["first_frame"],
                row["rate"],
                row["data_size"],
                bytes.fromhex(row["tail"]),
            )
            found.append(chunk)
        return found

    def write(self, path: Path) -> None:
        """The index as gzipped JSON into the file `path`, streamed (a day's index is megabytes of text)."""
        document = {
            "format": INDEX_FORMAT,
            "uid": self.uid,
            "day": self.day.isoformat(),
            "objects": self.objects,
            "chunks": self.chunks,
            "duplicates": self.duplicates,
            "left": self.left,
        }
        encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for piece in encoder.iterencode(document):
                out.write(piece.encode())

    @classmethod
    def from_bytes(cls, data: bytes, number: int) -> Index:
        """Raises ValueError when `data` is not an index this version reads."""
        try:
            document = json.loads(gzip.decompress(data))
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(f"not a compacted day's index: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
            raise ValueError(f"index format {document.get('format') if isinstance(document, dict) else '?'} unknown")
        return cls(
            document["uid"],
            date.fromisoformat(document["day"]),
            number,
            document["objects"],
            document["chunks"],
            document["duplicates"],
            document["left"],
        )


@dataclass
class DayFolder:
    """What one compacted day's folder holds, as listed."""

    day: date
    indexes: list[storage.ObjectInfo]  # by number, lowest first
    audio: list[storage.ObjectInfo]

    @property
    def newest(self) -> storage.ObjectInfo | None:
        return self.indexes[-1] if self.indexes else None


def list_days(
    store: storage.Store, uid: str, since: datetime | None = None, until: datetime | None = None
) -> dict[date, DayFolder]:
    """`uid`'s compacted day folders, from one listing.

    Only the days that can hold chunks received in ``[since, until)`` are listed.
    """
    folders: dict[date, DayFolder] = {}
    top = uid_folder(uid)
    start = day_folder(uid, since.date()) if since else None
    end = day_folder(uid, (until - timedelta(microseconds=1)).date() + timedelta(days=1)) if until else None
    for info in store.list_objects(top, start, end):
        day_text, _, file = info.name.removeprefix(top).partition("/")
        if not _DAY_RE.fullmatch(day_text) or "/" in file:
            continue
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            continue
        folder = folders.setdefault(day, DayFolder(day, [], []))
        if index_number(info.name) is not None:
            folder.indexes.append(info)
        else:
            folder.audio.append(info)
    for folder in folders.values():
        folder.indexes.sort(key=lambda info: index_number(info.name) or 0)
    return folders


def read_index(store: storage.Store, info: storage.ObjectInfo) -> Index:
    """Raises ValueError for an index this version cannot read."""
    return Index.from_bytes(store.read(info.name), index_number(info.name) or 0)


class CompactedDays:
    """A uid's compacted days as readers need them: the days that can hold chunks received in
    ``[since, until)`` (None: no bound), listed once, each index read once."""

    def __init__(
        self, store: storage.Store, uid: str, since: datetime | None = None, until: datetime | None = None
    ) -> None:
        self.store = store
        self.uid = uid
        self.since, self.until = since, until
        self._folders: dict[date, DayFolder] | None = None
        self._indexes: dict[date, Index | None] = {}

    def folders(self) -> dict[date, DayFolder]:
        if self._folders is None:
            self._folders = list_days(self.store, self.uid, self.since, self.until)
        return self._folders

    def index(self, day: date) -> Index | None:
        """The day's committed index, or None when the day has none."""
        if day not in self._indexes:
            folder = self.folders().get(day)
            self._indexes[day] = read_index(self.store, folder.newest) if folder and folder.newest else None
        return self._indexes[day]

    def days_in(self, since: datetime | None, until: datetime | None) -> list[date]:
        """The compacted days with an index that can hold chunks received in ``[since, until)``."""
        return sorted(
            day
            for day, folder in self.folders().items()
            if folder.newest and (since is None or day_end(day) > since) and (until is None or day_start(day) < until)
        )

    def chunks(self, since: datetime | None, until: datetime | None) -> tuple[list[Any], int]:
        """(compacted chunks received in ``[since, until)``, how many duplicates of them compaction dropped)."""
        found: list[Any] = []
        duplicates = 0

        def wanted(name: str) -> bool:
            parts = names.parse_object_name(name)
            return parts is not None and within(parts.received_at, since, until)

        for day in self.days_in(since, until):
            index = self.index(day)
            if index is None:
                continue
            found.extend(chunk for chunk in index.packed_chunks() if within(chunk.received_at, since, until))
            duplicates += sum(1 for row in index.duplicates if wanted(row["name"]))
        return found, duplicates


def within(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or moment >= since) and (until is None or moment < until)


class Reader:
    """A chunk's object bytes, from its own object or rebuilt from its day's audio object.

    Each audio object is downloaded once into `workdir`, when the first of its
    chunks is asked for, and deleted when the last of `chunks` that it holds has
    been read; a chunk's samples are decoded from it where they sit (a FLAC
    object is seeked, never decoded whole).  Thread-safe: each thread reads
    through a decoder of its own.
    """

    def __init__(
        self,
        store: storage.Store,
        read_loose: Callable[[str], bytes],
        workdir: Path,
        chunks: Iterable[Any],
    ) -> None:
        self.store = store
        self.read_loose = read_loose
        self.workdir = workdir
        self.uses = Counter(chunk.packed.object for chunk in chunks if chunk.packed is not None)
        self.lock = threading.Lock()
        self.object_locks: dict[str, threading.Lock] = {}
        self.downloaded: dict[str, Path] = {}
        self.decoders: dict[tuple[int, str], soundfile.SoundFile] = {}

    def __call__(self, chunk: Any) -> bytes:
        packed: Packed | None = chunk.packed
        if packed is None:
            return self.read_loose(chunk.name)
        try:
            pcm = self._samples(packed)
        finally:
            self._used(packed.object)
        if len(pcm) != packed.data_size // FRAME_BYTES * FRAME_BYTES:
            raise ValueError(f"{packed.object} ends before {chunk.name}'s samples")
        return chunk_bytes(packed, pcm)

    def _samples(self, packed: Packed) -> bytes:
        path = self._download(packed.object)
        frames = packed.data_size // FRAME_BYTES
        if packed.form == "wav":
            with open(path, "rb") as source:
                return os.pread(
                    source.fileno(), frames * FRAME_BYTES, wav.HEADER_SIZE + packed.first_frame * FRAME_BYTES
                )
        key = (threading.get_ident(), packed.object)
        with self.lock:
            decoder = self.decoders.get(key)
        if decoder is None:
            decoder = soundfile.SoundFile(str(path))
            with self.lock:
                self.decoders[key] = decoder
        decoder.seek(packed.first_frame)
        return decoder.read(frames, dtype="int16").astype("<i2", copy=False).tobytes()

    def _download(self, name: str) -> Path:
        with self.lock:
            lock = self.object_locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self.downloaded:
                fd, path = tempfile.mkstemp(prefix="object-", dir=self.workdir)
                os.close(fd)
                try:
                    self.store.download(name, Path(path))
                except BaseException:
                    Path(path).unlink(missing_ok=True)
                    raise
                self.downloaded[name] = Path(path)
            return self.downloaded[name]

    def _used(self, name: str) -> None:
        """Count one read of `name`'s chunks; after the last, close its decoders and delete its copy."""
        with self.lock:
            self.uses[name] -= 1
            if self.uses[name] > 0:
                return
            decoders = [self.decoders.pop(key) for key in list(self.decoders) if key[1] == name]
            path = self.downloaded.pop(name, None)
        for decoder in decoders:
            decoder.close()
        if path is not None:
            path.unlink(missing_ok=True)


def decoded_blocks(path: Path, form: str) -> Iterator[bytes]:
    """The PCM16 frames of an audio object the compactor wrote, in blocks."""
    if form == "wav":
        with open(path, "rb") as source:
            wav.parse_header(source.read(wav.HEADER_SIZE))
            while block := source.read(DECODE_FRAMES * FRAME_BYTES):
                yield block
        return
    with soundfile.SoundFile(str(path)) as audio:
        for block in audio.blocks(DECODE_FRAMES, dtype="int16"):
            yield block.astype("<i2", copy=False).tobytes()


# ------------------------------------------------------------------- reading many


def download_chunks(
    store: storage.Store, chunks: list[Any], jobs: int, workdir: Path
) -> Iterator[tuple[Any, bytes | None]]:
    """`download_in_order` of `chunks` from `store`, whichever form each is in.

    Compacted days' audio objects are downloaded once each into a temporary
    folder inside `workdir` (see `Reader`), removed when done.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".omi-audio-", dir=workdir) as work:
        own = per_thread(store)
        reader = Reader(store, lambda name: own().read(name), Path(work), chunks)
        yield from download_in_order(reader, chunks, jobs)


def download_in_order(read: Callable[[Any], bytes], chunks: list[Any], jobs: int) -> Iterator[tuple[Any, bytes | None]]:
    """Yield each chunk with its bytes, ``read(chunk)`` (None if it vanished), in order.

    Up to `jobs` reads run at once; results wait in a window of at most
    ``WINDOW_PER_JOB * jobs`` chunks and about ``WINDOW_BYTES`` bytes.
    """

    def fetch(chunk: Any) -> bytes | None:
        try:
            return read(chunk)
        except (FileNotFoundError, api_exceptions.NotFound):  # deleted since it was listed
            return None

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="download")
    window: deque[tuple[Any, Future[bytes | None]]] = deque()
    window_bytes = 0
    upcoming = iter(chunks)
    try:
        pending = next(upcoming, None)
        while pending is not None or window:
            while pending is not None and (
                not window or (len(window) < WINDOW_PER_JOB * jobs and window_bytes + pending.size <= WINDOW_BYTES)
            ):
                window.append((pending, pool.submit(fetch, pending)))
                window_bytes += pending.size
                pending = next(upcoming, None)
            chunk, future = window.popleft()
            window_bytes -= chunk.size
            yield chunk, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def per_thread(store: storage.Store) -> Callable[[], storage.Store]:
    """The store, through a storage client of each calling thread's own.

    One bucket client keeps at most 10 connections; with more threads the
    others would open (and on Cloud Storage, handshake) a new connection for
    every request.
    """
    if not isinstance(store, storage.GcsStore):
        return lambda: store
    local = threading.local()

    def own() -> storage.Store:
        if getattr(local, "store", None) is None:
            local.store = storage.GcsStore(store.bucket_name)
        return local.store

    return own
