"""Where audio chunks go and how they are named.

Every chunk is one WAV object named ``{uid}/{YYYYMMDD}T{HHMMSS}.{ffffff}Z.wav``
(UTC at receipt).  If that name is already held by another write, the next free
``…Z-1.wav``, ``…Z-2.wav`` is taken: nothing is ever overwritten.

Two backends share that naming and one small interface (`put`, `list_chunks`,
`read`):

* `GcsStore`: a Google Cloud Storage bucket (``GCS_BUCKET_NAME``).  Writes use a
  does-not-exist precondition, so a write can never replace an object, and a
  retried write whose first response was lost recognises its own object by a
  per-write ``write_id`` in the metadata instead of creating a second one.
* `LocalStore`: a directory (``LOCAL_AUDIO_DIR``) with the same layout, each file
  written to a temporary name and then claimed atomically; metadata sits beside
  each WAV in a ``.json`` file.  A uid folder or conversation name too long for a
  file name is written in a shorter form that reads back to the same name
  (`local_path`).

The compactor (`omi-audio compact`) lists, reads, creates and deletes whole
objects through `list_objects`, `download`, `put_file` and `delete`; the
function never calls them (its account may not delete).

Conversation events sit beside the audio, one JSON object per version, named
``{uid}/conversations/{YYYYMMDD}T{HHMMSS}.{ffffff}Z_{id}_{digest}.json``
(`put_conversation`, `list_conversations`, `newest_versions`).

Object names are built and parsed here and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage as gcs

from names import (  # noqa: F401  (CONVERSATION_ID_RULE, MAX_UID_BYTES, UID_RULE: callers read them here)
    CONVERSATION_DIGEST_HEX,
    CONVERSATION_ID_RULE,
    CONVERSATIONS_FOLDER,
    MAX_UID_BYTES,
    NAME_RE,
    UID_RULE,
    ChunkName,
    ConversationName,
    _escape_id,
    conversation_name,
    conversation_prefix,
    is_valid_conversation_id,
    is_valid_uid,
    name_stamp,
    object_name,
    parse_conversation_name,
    parse_object_name,
    uid_from_prefix,
    uid_prefix,
)

# Every chunk name in a uid's folder sorts before this (stamps start with a digit, and
# ":" follows "9"), and the conversations folder after it: the end of an open range.
_AFTER_EVERY_STAMP = ":"

# Conversations are listed by when they started.  A reader wanting those that overlap
# [since, until) lists from `since` minus this: a conversation longer than a day that
# began before that is not found (Omi splits a conversation after long silences, so
# such a conversation is rare).
CONVERSATION_LOOKBACK = timedelta(days=1)

# How long one connection attempt to storage may take before it counts as failed.
CONNECT_TIMEOUT_SECONDS = 3.0
# The compactor's whole-object calls (a session object can be hundreds of MB).
TRANSFER_TIMEOUT_SECONDS = 600.0
# A file over 8 MiB is uploaded in pieces of this size, each held in memory (the
# library's default, 100 MiB, took a day's compaction to 298 MiB of RSS; 8 MiB: 124).
UPLOAD_PIECE_BYTES = 8 << 20
BATCH_DELETES = 100  # the most requests Cloud Storage takes in one batch
# Backoff between retried writes: short first (most blips are brief), capped at a
# second so that the end of an outage is noticed within a second.
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 1.0
# A bucket where thousands of writers hold the same microsecond is not a real case;
# stop rather than loop.
MAX_NAME_SUFFIX = 1000


class ConfigError(Exception):
    """The storage backend is not configured, or configured unsafely."""


class MissingCredentials(ConfigError):
    """No Google Cloud credentials were found for the bucket."""


class StorageUnavailable(Exception):
    """A chunk could not be stored in time; nothing was left half-written.  A retry may succeed."""


class StorageRefused(Exception):
    """Storage refused the write for good (a missing bucket or permission); nothing was written."""


@dataclass(frozen=True)
class ConversationInfo:
    """One stored version of a conversation as listed, without its body; `parts` is its name, parsed."""

    name: str
    size: int
    metadata: dict[str, str]
    parts: ConversationName


@dataclass(frozen=True)
class Stored:
    """Where a chunk was stored.

    `existed` is True when the write found its own earlier attempt already stored
    (a retry whose first response was lost).
    """

    name: str
    location: str
    existed: bool = False


@dataclass(frozen=True)
class ChunkInfo:
    """One stored chunk as listed, without its audio; `parts` is its name, parsed."""

    name: str
    size: int
    metadata: dict[str, str]
    parts: ChunkName
    generation: str = ""  # which version of the object (a delete can require it)


@dataclass(frozen=True)
class ObjectInfo:
    """Any object as listed: its name, size, version and when it was created."""

    name: str
    size: int
    generation: str
    created: datetime


class NameTaken(Exception):
    """`put_file` found the name already held: nothing was written."""


def conversation_range(uid: str, since: datetime | None, until: datetime | None) -> tuple[str, str | None, str | None]:
    """(folder prefix, first name, end name) of `uid`'s conversations started in ``[since, until)``.

    As `name_range`: a fixed-width stamp leads each name, followed by "_".
    """
    prefix = conversation_prefix(uid)
    return prefix, prefix + name_stamp(since) if since else None, prefix + name_stamp(until) if until else None


def newest_versions(infos: Iterable[ConversationInfo]) -> list[ConversationInfo]:
    """One version per conversation id, the one received last (ties: the later name); sorted by start."""
    newest: dict[str, ConversationInfo] = {}
    for info in infos:
        held = newest.get(info.parts.conversation_id)
        if held is None or _version_order(info) > _version_order(held):
            newest[info.parts.conversation_id] = info
    return sorted(newest.values(), key=lambda info: (info.parts.starts_at, info.name))


def _version_order(info: ConversationInfo) -> tuple[str, str]:
    # received_at is fixed-width ISO with microseconds and "Z": text order is time order.
    return info.metadata.get("received_at", ""), info.name


class Store(Protocol):
    """What the function and the tools need of a store: `GcsStore` (a bucket) or `LocalStore` (a folder)."""

    def location(self, name: str) -> str: ...

    def put(
        self,
        uid: str,
        received_at: datetime,
        wav_bytes: bytes,
        metadata: dict[str, str],
        write_id: str,
        deadline_seconds: float,
    ) -> Stored: ...

    def list_chunks(
        self,
        uid: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        unreadable: Callable[[str], None] | None = None,
    ) -> Iterator[ChunkInfo]: ...

    def list_uids(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...

    def put_conversation(
        self,
        uid: str,
        starts_at: datetime,
        conversation_id: str,
        body: bytes,
        metadata: dict[str, str],
        deadline_seconds: float,
    ) -> Stored: ...

    def list_conversations(
        self, uid: str, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[ConversationInfo]: ...

    def list_objects(self, prefix: str, start: str | None = None, end: str | None = None) -> Iterator[ObjectInfo]: ...

    def download(self, name: str, path: Path) -> None: ...

    def put_file(self, name: str, path: Path, content_type: str, custom_time: datetime) -> None: ...

    def delete(self, name: str, generation: str) -> bool: ...

    def delete_many(self, objects: list[tuple[str, str]]) -> None: ...


def store_from_env(environ: os._Environ | dict[str, str] = os.environ) -> Store:
    """Build the backend the environment asks for.

    Raises:
        ConfigError: neither GCS_BUCKET_NAME nor LOCAL_AUDIO_DIR is set, or the
            local backend is asked for on Cloud Functions / Cloud Run, where the
            instance's disk is memory that vanishes with the instance.
        MissingCredentials: the bucket is asked for and no Google Cloud
            credentials are found (a ConfigError too).
    """
    bucket = environ.get("GCS_BUCKET_NAME", "").strip()
    local_dir = environ.get("LOCAL_AUDIO_DIR", "").strip()
    if bucket:
        return GcsStore(bucket)
    if local_dir:
        if environ.get("K_SERVICE"):
            raise ConfigError(
                "LOCAL_AUDIO_DIR is refused on Cloud Functions/Cloud Run (K_SERVICE is set): "
                "the instance disk is lost with the instance; set GCS_BUCKET_NAME"
            )
        return LocalStore(local_dir)
    raise ConfigError("no storage configured: set GCS_BUCKET_NAME (or LOCAL_AUDIO_DIR for local runs)")


# --------------------------------------------------------------------------- GCS


def _is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure: timeouts, dropped connections, 408/429/5xx."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in (408, 429, 500, 502, 503, 504)
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    return isinstance(
        exc,
        (
            ConnectionError,
            TimeoutError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            http.client.HTTPException,
            urllib3.exceptions.HTTPError,
        ),
    )


_T = TypeVar("_T")


def _within(seconds: float, call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """Return ``call(*args, **kwargs)``, or raise TimeoutError once `seconds` have passed.

    Socket timeouts bound each read, not a whole answer: storage that answers a
    byte at a time would hold a chunk past the sender's 30 s.  On timeout the
    call is left to end by itself; a write it still completes carries our
    write_id, so a retry of the chunk recognises it instead of writing twice.
    """
    outcome: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def run() -> None:
        try:
            outcome.put((True, call(*args, **kwargs)))
        except BaseException as exc:
            outcome.put((False, exc))

    _call_threads.run(run)
    try:
        ok, value = outcome.get(timeout=seconds)
    except queue.Empty:
        raise TimeoutError(f"no answer from storage within {seconds:.3g} s") from None
    if not ok:
        raise value
    return value


class _CallThreads:
    """Daemon threads for `_within`, started as needed and then reused.

    Starting a thread per storage call cost ~0.15 ms and 9% of the worker's CPU
    (bench/profile_request.py).  As many threads as calls in flight, like one
    thread per call: an abandoned call keeps its thread until it ends, and
    daemon threads never hold up the process's exit.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = not self._idle
            if not start:
                self._idle -= 1
        if start:
            threading.Thread(target=self._serve, name="storage-call", daemon=True).start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_call_threads = _CallThreads()


class GcsStore:
    """Chunks in a Google Cloud Storage bucket. Thread-safe: one per instance."""

    def __init__(self, bucket_name: str) -> None:
        self.bucket_name = bucket_name
        try:
            self.client = gcs.Client()  # honours STORAGE_EMULATOR_HOST
        except auth_exceptions.DefaultCredentialsError as exc:
            raise MissingCredentials(
                "no Google Cloud credentials: on your machine, run `gcloud auth application-default login` "
                "and restart; deployed, the function runs as its own service account (re-run deploy.sh)"
            ) from exc
        self.bucket = self.client.bucket(bucket_name)

    def location(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{name}"

    def put(
        self,
        uid: str,
        received_at: datetime,
        wav_bytes: bytes,
        metadata: dict[str, str],
        write_id: str,
        deadline_seconds: float,
    ) -> Stored:
        """Store one chunk under the first free name, within `deadline_seconds`.

        Transient failures are retried with backoff until the deadline; each HTTP
        attempt is itself bounded by what is left of it.  A 412 means the name is
        taken: if the holder carries our `write_id`, it is our own earlier attempt
        whose response was lost, and that is success; otherwise try the next name.

        Raises:
            StorageUnavailable: not stored by the deadline (a retry may succeed).
            StorageRefused: storage refused for good (bucket or permission missing).
        """
        return self._create(
            lambda seq: object_name(uid, received_at, seq),
            wav_bytes,
            "audio/wav",
            {**metadata, "write_id": write_id},
            deadline_seconds,
            is_ours=lambda holder: (holder.metadata or {}).get("write_id") == write_id,
        )

    def list_chunks(
        self,
        uid: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        unreadable: Callable[[str], None] | None = None,
    ) -> Iterator[ChunkInfo]:
        """Yield the uid's chunks received in ``[since, until)``, without downloading audio.

        Only that range is listed (see `name_range`): the cost is the chunks it
        holds, one list call per 1,000, whatever the rest of the archive holds.
        Names come in text order; at most `limit` of them.  An object named like
        a chunk whose name cannot be read (no such time) is left out, and passed
        to `unreadable`.
        """
        prefix, start, end = name_range(uid, since, until)
        blobs = self.client.list_blobs(
            self.bucket, prefix=prefix, start_offset=start, end_offset=end, max_results=limit
        )
        for blob in blobs:
            if parts := parse_object_name(blob.name):
                yield ChunkInfo(blob.name, blob.size or 0, dict(blob.metadata or {}), parts, str(blob.generation))
            elif unreadable and NAME_RE.fullmatch(blob.name):
                unreadable(blob.name)

    def list_uids(self) -> list[str]:
        """The uids that have a folder in the bucket, from one listing of top-level folders."""
        folders: set[str] = set()
        for page in self.client.list_blobs(self.bucket, delimiter="/").pages:
            folders.update(page.prefixes)
        return _uids_of(folder.removesuffix("/") for folder in folders)

    def put_conversation(
        self,
        uid: str,
        starts_at: datetime,
        conversation_id: str,
        body: bytes,
        metadata: dict[str, str],
        deadline_seconds: float,
    ) -> Stored:
        """Store one version of a conversation, exactly `body`, within `deadline_seconds`.

        The name is made from the id and the bytes (`conversation_name`), so a
        name already taken holds these very bytes: that is success, with
        `existed` True (a retried or repeated delivery).  Transient failures are
        retried as in `put`.

        Raises:
            StorageUnavailable: not stored by the deadline (a retry may succeed).
            StorageRefused: storage refused for good (bucket or permission missing).
        """
        digest = hashlib.sha256(body).hexdigest()
        name = conversation_name(uid, starts_at, conversation_id, digest)
        # Whoever holds the name holds these very bytes: the name is made from them.
        metadata = {**metadata, "sha256": digest}
        return self._create(lambda seq: name, body, "application/json", metadata, deadline_seconds, lambda _: True)

    def _create(
        self,
        name_for: Callable[[int], str],
        data: bytes,
        content_type: str,
        metadata: dict[str, str],
        deadline_seconds: float,
        is_ours: Callable[[gcs.Blob], bool],
    ) -> Stored:
        """Create a new object, never replacing one, under the first free ``name_for(seq)``.

        Transient failures are retried with backoff until the deadline; each HTTP
        attempt is itself bounded by what is left of it.  A 412 means the name is
        taken: if `is_ours` says the holder is this write's own earlier attempt
        (whose response was lost), that is success; otherwise the next seq is tried.
        """
        give_up_at = time.monotonic() + deadline_seconds
        backoff = FIRST_BACKOFF_SECONDS
        seq = 0
        last_error: BaseException | None = None
        while seq <= MAX_NAME_SUFFIX:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                break
            name = name_for(seq)
            timeout = (min(CONNECT_TIMEOUT_SECONDS, remaining), remaining)
            try:
                blob = self.bucket.blob(name)
                blob.metadata = metadata
                _within(
                    remaining,
                    blob.upload_from_string,
                    data,
                    content_type=content_type,
                    if_generation_match=0,
                    timeout=timeout,
                    retry=None,  # the library's own retry runs 120 s: we retry here instead
                )
                return Stored(name, self.location(name))
            except (api_exceptions.PreconditionFailed, api_exceptions.Forbidden) as refusal:
                # The name is taken.  Cloud Storage answers 412, or 403 to a caller that
                # may not delete (replacing an object needs storage.objects.delete):
                # look at the holder to tell which, and whether it is our own write.
                try:
                    holder = _within(remaining, self.bucket.get_blob, name, timeout=timeout, retry=None)
                except Exception as exc:
                    if not _is_transient(exc):
                        raise StorageRefused(f"reading back {name} after {refusal.code}: {exc}") from exc
                    last_error = exc
                    continue  # same name again: the check will run again
                if holder is None:
                    if isinstance(refusal, api_exceptions.Forbidden):
                        raise StorageRefused(f"upload of {name}: {refusal}") from refusal
                    continue  # deleted in between: the name is free again
                if is_ours(holder):
                    return Stored(name, self.location(name), existed=True)
                seq += 1
                continue
            except Exception as exc:
                if not _is_transient(exc):
                    raise StorageRefused(f"upload of {name}: {exc}") from exc
                last_error = exc
            pause = min(backoff, give_up_at - time.monotonic())
            if pause > 0:
                time.sleep(pause)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        raise StorageUnavailable(f"not stored within {deadline_seconds:.3g} s: {last_error or 'no free name'}")

    def list_conversations(
        self, uid: str, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[ConversationInfo]:
        """Yield every stored version of `uid`'s conversations started in ``[since, until)``.

        Names and metadata only, from the range only (see `conversation_range`),
        in text order (start time, then id).
        """
        prefix, start, end = conversation_range(uid, since, until)
        for blob in self.client.list_blobs(self.bucket, prefix=prefix, start_offset=start, end_offset=end):
            if parts := parse_conversation_name(blob.name):
                yield ConversationInfo(blob.name, blob.size or 0, dict(blob.metadata or {}), parts)

    def read(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()

    def list_objects(self, prefix: str, start: str | None = None, end: str | None = None) -> Iterator[ObjectInfo]:
        """Every object whose name starts with `prefix` (and is in ``[start, end)``), in name order."""
        for blob in self.client.list_blobs(self.bucket, prefix=prefix, start_offset=start, end_offset=end):
            yield ObjectInfo(blob.name, blob.size or 0, str(blob.generation), blob.time_created)

    def download(self, name: str, path: Path) -> None:
        """Object `name` into the file `path`, streamed (its checksum checked by the library).

        Raises:
            FileNotFoundError: there is no such object.
        """
        try:
            self.bucket.blob(name).download_to_filename(str(path), timeout=TRANSFER_TIMEOUT_SECONDS)
        except api_exceptions.NotFound as exc:
            raise FileNotFoundError(name) from exc

    def put_file(self, name: str, path: Path, content_type: str, custom_time: datetime) -> None:
        """Create object `name` from the file `path`, never replacing one.

        The upload's CRC32C is checked against the file's; `custom_time` is what a
        lifecycle rule's ``daysSinceCustomTime`` counts from.

        Raises:
            NameTaken: an object already holds the name.
        """
        blob = self.bucket.blob(name, chunk_size=UPLOAD_PIECE_BYTES)
        blob.custom_time = custom_time
        try:
            blob.upload_from_filename(
                str(path),
                content_type=content_type,
                if_generation_match=0,
                checksum="crc32c",
                timeout=TRANSFER_TIMEOUT_SECONDS,
            )
        except api_exceptions.PreconditionFailed as exc:
            raise NameTaken(name) from exc

    def delete(self, name: str, generation: str) -> bool:
        """Delete object `name` if it is still that `generation`; False if it is gone or was replaced."""
        try:
            self.bucket.delete_blob(name, if_generation_match=int(generation), timeout=TRANSFER_TIMEOUT_SECONDS)
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            return False
        return True

    def delete_many(self, objects: list[tuple[str, str]]) -> None:
        """Try to delete each (name, generation), as `delete` does, up to 100 in one request.

        A JSON API batch: one request instead of 100 (each delete costs this process
        about 2.4 ms of CPU on its own).  Which parts failed is not reported: the
        caller lists what is left and deletes that one by one.
        """
        for start in range(0, len(objects), BATCH_DELETES):
            try:
                with self.client.batch(raise_exception=False):
                    for name, generation in objects[start : start + BATCH_DELETES]:
                        self.bucket.delete_blob(name, if_generation_match=int(generation))
            except Exception:  # the whole batch failed (503, a reset): what is left is deleted one by one
                continue


def name_range(uid: str, since: datetime | None, until: datetime | None) -> tuple[str, str | None, str]:
    """(folder prefix, first name, end name) of `uid`'s chunks received in ``[since, until)``.

    A name is ``{prefix}/{stamp}[-N].wav`` with a fixed-width stamp, so in text
    order every name whose stamp is at or after `since` sorts at or after
    ``{prefix}/{stamp(since)}`` (its own ``-N`` copies included: they extend
    that string), and every name received before `until` sorts before
    ``{prefix}/{stamp(until)}`` (exclusive: a name with that very stamp, any
    suffix, sorts at or after it).  With no `until` the range still ends before the
    conversations folder, so that conversations add nothing to an audio listing.
    None means no bound.
    """
    prefix = f"{uid_prefix(uid)}/"
    return (
        prefix,
        prefix + name_stamp(since) if since else None,
        prefix + (name_stamp(until) if until else _AFTER_EVERY_STAMP),
    )


def _uids_of(prefixes: Iterator[str]) -> list[str]:
    """The uids whose folders are `prefixes`, sorted; folders no uid maps to are left out."""
    return sorted(uid for uid in map(uid_from_prefix, prefixes) if uid is not None)


# ------------------------------------------------------------------------- local


# A file or folder name holds at most 255 bytes on the filesystems a local store sits
# on (ext4, APFS, NTFS), but an escaped uid folder holds up to 384 and a conversation's
# name up to 446 (Cloud Storage takes 1,024).  Locally such a folder is named by its
# uid's UTF-8 in base64 after an "=", a file by its id's: at most 239 bytes, and "=" is
# in no escaped name, so every local name reads back to one object name.  Shorter
# names are their own local names, so ordinary uids' files are where they always were.
NAME_MAX_BYTES = 255
_SHORT_MARK = "="
_METADATA_SUFFIX = ".meta"  # the longest a conversation's file name grows locally (``….meta.json``)
_SHORT_CONVERSATION_RE = re.compile(
    rf"(?P<stamp>\d{{8}}T\d{{6}}\.\d{{6}}Z)_{_SHORT_MARK}(?P<id>[A-Za-z0-9_-]+)"
    rf"_(?P<digest>[0-9a-f]{{{CONVERSATION_DIGEST_HEX}}})\.json"
)


def _base64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _from_base64(text: str) -> str | None:
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except ValueError:  # not base64, or not UTF-8
        return None
    return decoded if _base64(decoded) == text else None  # one spelling per name


def local_path(name: str) -> str:
    """Where object `name` (or a folder, ending in "/") sits under a local store's directory.

    The name itself, but a uid folder longer than NAME_MAX_BYTES becomes "=" and
    the uid in base64, and a conversation's file name that would be too long (with
    its ``.meta.json`` beside it) holds its id in base64 the same way:
    ``{stamp}_={id}_{digest}.json``.
    """
    folder, slash, rest = name.partition("/")
    if len(folder) > NAME_MAX_BYTES and (uid := uid_from_prefix(folder)):
        folder = _SHORT_MARK + _base64(uid)
    head, _, file = rest.rpartition("/")
    if head == CONVERSATIONS_FOLDER and len(file + _METADATA_SUFFIX) > NAME_MAX_BYTES:
        if parts := parse_conversation_name(name):
            file = f"{name_stamp(parts.starts_at)}_{_SHORT_MARK}{_base64(parts.conversation_id)}_{parts.digest}.json"
        rest = f"{head}/{file}"
    return folder + slash + rest


def _prefix_of_local_folder(folder: str) -> str | None:
    """The uid folder whose local folder is `folder` (see `local_path`), or None if none has it."""
    if not folder.startswith(_SHORT_MARK):
        return folder
    uid = _from_base64(folder.removeprefix(_SHORT_MARK))
    if uid is None or not is_valid_uid(uid):
        return None
    prefix = uid_prefix(uid)
    return prefix if local_path(prefix) == folder else None


def _conversation_file_of_local(file: str) -> str | None:
    """The conversation file name whose local name is `file` (see `local_path`), or None if none has it."""
    match = _SHORT_CONVERSATION_RE.fullmatch(file)
    if match is None:
        return file
    conversation_id = _from_base64(match["id"])
    if conversation_id is None or not is_valid_conversation_id(conversation_id):
        return None
    long = f"{match['stamp']}_{_escape_id(conversation_id)}_{match['digest']}.json"
    return long if len(long + _METADATA_SUFFIX) > NAME_MAX_BYTES else None


def _metadata_path(wav_path: Path) -> Path:
    return wav_path.with_suffix(".json")


def _conversation_metadata_path(path: Path) -> Path:
    return path.with_suffix(".meta.json")


class LocalStore:
    """Chunks in a local directory, same names as in GCS (for development)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def location(self, name: str) -> str:
        return str(self.path(name))

    def path(self, name: str) -> Path:
        """The file (or folder) that holds object `name` (see `local_path`)."""
        return self.root / local_path(name)

    def put(
        self,
        uid: str,
        received_at: datetime,
        wav_bytes: bytes,
        metadata: dict[str, str],
        write_id: str,
        deadline_seconds: float,
    ) -> Stored:
        """Store one chunk; same contract as `GcsStore.put`.

        The WAV is written and flushed under a temporary name, then claimed with a
        hard link, which fails instead of replacing an existing file.
        """
        return self._create(
            lambda seq: object_name(uid, received_at, seq),
            wav_bytes,
            {**metadata, "write_id": write_id},
            _metadata_path,
            is_ours=lambda held: held.get("write_id") == write_id,
        )

    def _create(
        self,
        name_for: Callable[[int], str],
        data: bytes,
        metadata: dict[str, str],
        metadata_path: Callable[[Path], Path],
        is_ours: Callable[[dict[str, str]], bool],
    ) -> Stored:
        """Write `data` under the first free ``name_for(seq)``, never replacing a file.

        The data is written and flushed under a temporary name, then claimed with a
        hard link, which fails instead of replacing; a name already held by this
        write's own earlier attempt (`is_ours` of its metadata) is success.  The
        metadata goes beside it, at ``metadata_path(path)``.
        """
        directory = self.path(name_for(0)).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would hide recordings from players
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                for seq in range(MAX_NAME_SUFFIX + 1):
                    name = name_for(seq)
                    path = self.path(name)
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        if is_ours(_read_metadata(metadata_path(path))):
                            return Stored(name, str(path), existed=True)
                        continue
                    _write_atomically(metadata_path(path), json.dumps(metadata, sort_keys=True).encode())
                    return Stored(name, str(path))
                raise StorageUnavailable("no free name")
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"could not write to {self.root}: {exc.strerror or exc}") from exc

    def list_chunks(
        self,
        uid: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        unreadable: Callable[[str], None] | None = None,
    ) -> Iterator[ChunkInfo]:
        """Same contract as `GcsStore.list_chunks`: the range only, in text order.

        The directory's names are read once; only those in range are stat'ed and
        have their metadata read.
        """
        prefix, start, end = name_range(uid, since, until)
        try:
            entries = sorted(os.listdir(self.path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return
        listed = 0
        for entry in entries:
            name = prefix + entry
            if start and name < start:
                continue
            if (end and name >= end) or (limit is not None and listed >= limit):
                return
            path = self.path(name)
            if (parts := parse_object_name(name)) and path.is_file():
                listed += 1
                stat = path.stat()
                metadata = _read_metadata(_metadata_path(path))
                yield ChunkInfo(name, stat.st_size, metadata, parts, _generation(stat))
            elif unreadable and not parts and NAME_RE.fullmatch(name) and path.is_file():
                unreadable(name)

    def list_uids(self) -> list[str]:
        """The uids that have a folder under the directory."""
        try:
            folders = [_prefix_of_local_folder(entry.name) for entry in os.scandir(self.root) if entry.is_dir()]
        except FileNotFoundError:
            return []
        return _uids_of(folder for folder in folders if folder is not None)

    def put_conversation(
        self,
        uid: str,
        starts_at: datetime,
        conversation_id: str,
        body: bytes,
        metadata: dict[str, str],
        deadline_seconds: float,
    ) -> Stored:
        """Store one version of a conversation; same contract as `GcsStore.put_conversation`.

        The body is written and flushed under a temporary name and claimed with a
        hard link; its metadata goes beside it in ``….meta.json``.
        """
        digest = hashlib.sha256(body).hexdigest()
        name = conversation_name(uid, starts_at, conversation_id, digest)
        metadata = {**metadata, "sha256": digest}
        # Whoever holds the name holds these very bytes: the name is made from them.
        return self._create(lambda seq: name, body, metadata, _conversation_metadata_path, lambda _: True)

    def list_conversations(
        self, uid: str, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[ConversationInfo]:
        """Same contract as `GcsStore.list_conversations`."""
        prefix, start, end = conversation_range(uid, since, until)
        try:
            files = map(_conversation_file_of_local, os.listdir(self.path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in sorted(prefix + file for file in files if file is not None):
            if (start and name < start) or (end and name >= end):
                continue
            path = self.path(name)
            if (parts := parse_conversation_name(name)) and path.is_file():
                metadata = _read_metadata(_conversation_metadata_path(path))
                yield ConversationInfo(name, path.stat().st_size, metadata, parts)

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def list_objects(self, prefix: str, start: str | None = None, end: str | None = None) -> Iterator[ObjectInfo]:
        """Every file under the folder `prefix` names (and in ``[start, end)``; temporary files left out)."""
        top = self.path(prefix)
        found: list[ObjectInfo] = []
        for folder, _, files in os.walk(top):
            for file in files:
                path = Path(folder) / file
                if file.startswith(".incoming-"):
                    continue
                stat = path.stat()
                name = prefix + path.relative_to(top).as_posix()
                if (start and name < start) or (end and name >= end):
                    continue
                created = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(ObjectInfo(name, stat.st_size, _generation(stat), created))
        return iter(sorted(found, key=lambda info: info.name))

    def download(self, name: str, path: Path) -> None:
        shutil.copyfile(self.path(name), path)

    def put_file(self, name: str, path: Path, content_type: str, custom_time: datetime) -> None:
        """Create `name` from the file `path`, never replacing one (same contract as `GcsStore.put_file`)."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
                os.fchmod(out.fileno(), 0o644)
                shutil.copyfileobj(source, out)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError as exc:
                raise NameTaken(name) from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def delete(self, name: str, generation: str) -> bool:
        """Delete `name` (and a chunk's metadata beside it) if it is still that `generation`."""
        path = self.path(name)
        try:
            if _generation(path.stat()) != generation:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        if parse_object_name(name):
            _metadata_path(path).unlink(missing_ok=True)
        return True

    def delete_many(self, objects: list[tuple[str, str]]) -> None:
        for name, generation in objects:
            self.delete(name, generation)


def _generation(stat: os.stat_result) -> str:
    """A local file's version: a rewritten or replaced file gets another."""
    return f"{stat.st_ino}.{stat.st_mtime_ns}"


def _read_metadata(path: Path) -> dict[str, str]:
    """The metadata kept at `path` beside a file; {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
