"""omi-audio compact: a finished day of chunks becomes a few objects, and nothing is lost or duplicated.

Every test runs against the local store and the bucket (fake-gcs-server behind
tests/storage_proxy.py, which answers as Cloud Storage where the stand-in does
not: it refuses a delete naming another generation of the object, and a
resumable upload to a taken name).  "What readers see" is every chunk of the
archive as `archive.select_chunks` lists it and `compacted.download_chunks`
reads it: its name, receipt time and bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import pcm_tone, run
from storage_proxy import StorageProxy

import names
import storage
import wav
from omi_audio import archive, compact, compacted

UID = "alice"
DAY = date(2026, 11, 20)
NEXT_DAY = DAY + timedelta(days=1)
BEFORE = DAY + timedelta(days=3)


def at(day: date, seconds: float) -> datetime:
    return compacted.day_start(day) + timedelta(seconds=seconds)


def put(store: storage.Store, when: datetime, pcm: bytes, rate: int = 16000, key: str | None = None) -> str:
    """Store one chunk as the function does (same metadata); returns its name."""
    metadata = {
        "sample_rate": str(rate),
        "received_at": names.iso(when),
        "duration_seconds": str(wav.duration_seconds(len(pcm), rate)),
        "pcm_bytes": str(len(pcm)),
    }
    if key:
        metadata["idempotency_key"] = key
    return store.put(UID, when, wav.frame(pcm, rate), metadata, uuid.uuid4().hex, 20).name


def fill_day(store: storage.Store, day: date, rate: int = 16000, seconds: int = 6) -> None:
    """Two sessions (an hour apart), a retried chunk (same key twice) and an odd-sized chunk.

    Every other chunk has no Idempotency-Key (older senders send none), so a chunk
    read twice shows as two."""
    for second in range(seconds):
        start = second if second < seconds // 2 else 3600 + second
        key = f"{day}-{second}" if second % 2 else None
        put(store, at(day, start), pcm_tone(1, rate, seed=second + rate), rate, key=key)
    put(store, at(day, 1.5), pcm_tone(1, rate, seed=1 + rate), rate, key=f"{day}-1")  # a retry: a duplicate
    put(store, at(day, 2.5), pcm_tone(0.25, rate, seed=99) + b"\x07", rate)  # half a sample at the end


def seen_by_readers(store: storage.Store) -> list[tuple[str, datetime, str]]:
    """Every chunk readers get, in order: (name, receipt time, SHA-256 of its bytes)."""
    selection = archive.select_chunks(store, UID)
    work = Path(store.root if isinstance(store, storage.LocalStore) else "/tmp") / f".read-{uuid.uuid4().hex}"
    try:
        read = list(compacted.download_chunks(store, selection.chunks, 4, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert all(data is not None for _, data in read)
    return [(chunk.name, chunk.received_at, hashlib.sha256(data).hexdigest()) for chunk, data in read]


def everything(store: storage.Store) -> list[str]:
    """Every object name in the store (the local store's metadata files left out)."""
    return sorted(info.name for info in store.list_objects(f"{UID}/") if not info.name.endswith(".json"))


def loose(store: storage.Store) -> list[str]:
    return [info.name for info in store.list_chunks(UID)]


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path, monkeypatch) -> Iterator[storage.Store]:
    if request.param == "local":
        yield storage.LocalStore(tmp_path / "recordings")
        return
    bucket = request.getfixturevalue("bucket")
    fake_gcs = request.getfixturevalue("fake_gcs")
    with StorageProxy(fake_gcs, resumable_preconditions=True, delete_preconditions=True, batches=True) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield storage.GcsStore(bucket.name)


def compact_all(store: storage.Store, jobs: int = 4) -> list[compact.DayResult]:
    results = compact.compact_store(store, BEFORE, [UID], jobs=jobs)
    assert [result.error for result in results if result.error] == []
    return results


# -- what a compacted day holds ------------------------------------------------------


def test_a_compacted_day_reads_back_chunk_for_chunk_as_it_was_stored(store):
    fill_day(store, DAY, 16000)
    fill_day(store, NEXT_DAY, 8000)
    before = seen_by_readers(store)
    results = compact_all(store)
    assert [(result.day, result.action) for result in results] == [(DAY, "compacted"), (NEXT_DAY, "compacted")]
    assert seen_by_readers(store) == before
    assert loose(store) == []


def test_a_compacted_day_is_one_object_per_session_and_one_index(store):
    fill_day(store, DAY)
    [result] = compact_all(store)
    folder = compacted.day_folder(UID, DAY)
    held = everything(store)
    assert all(name.startswith(folder) for name in held)
    assert len(result.objects) == 2  # two sessions, an hour apart
    assert sorted(held) == sorted([*result.objects, compacted.index_name(UID, DAY, 1)])
    if isinstance(store, storage.GcsStore):  # retention counts a compacted day from its end, as its last chunk
        assert {store.bucket.get_blob(name).custom_time for name in held} == {compacted.day_end(DAY)}


def test_duplicates_are_folded_once_and_the_index_names_them(store):
    fill_day(store, DAY)
    dropped = archive.select_chunks(store, UID).duplicates
    [result] = compact_all(store)
    index = compacted.CompactedDays(store, UID).index(DAY)
    assert (result.duplicates, len(index.duplicates), dropped) == (1, 1, 1)
    assert archive.select_chunks(store, UID).duplicates == 1  # readers count it as before


def test_the_index_keeps_what_each_chunk_object_told_readers(store):
    fill_day(store, DAY)
    listed = {info.name: info for info in store.list_chunks(UID)}
    compact_all(store)
    index = compacted.CompactedDays(store, UID).index(DAY)
    for row in index.chunks:
        info = listed[row["name"]]
        assert (row["metadata"], row["size"], row["generation"]) == (info.metadata, info.size, info.generation)
    assert {row["object"] for row in index.chunks} == {item["name"] for item in index.objects}


def test_flac_objects_hold_the_chunks_samples_bit_for_bit(store, tmp_path):
    fill_day(store, DAY)
    compact_all(store)
    index = compacted.CompactedDays(store, UID).index(DAY)
    for item in index.objects:
        store.download(item["name"], tmp_path / "object")
        digest = hashlib.sha256(b"".join(compacted.decoded_blocks(tmp_path / "object", item["form"])))
        assert (item["form"], digest.hexdigest()) == ("flac", item["pcm_sha256"])


def test_wav_objects_where_asked(store):
    fill_day(store, DAY)
    before = seen_by_readers(store)
    [result] = compact.compact_store(store, BEFORE, [UID], form="wav")
    assert all(name.endswith(".wav") for name in result.objects)
    assert seen_by_readers(store) == before


# -- which days ----------------------------------------------------------------------


def test_days_from_before_on_and_today_are_never_compacted(store):
    now = datetime.now(UTC)
    fill_day(store, DAY)
    put(store, now, pcm_tone(1))
    results = compact.compact_store(store, now.date() + timedelta(days=30), [UID], now=now)
    assert [result.day for result in results] == [DAY]
    assert len(loose(store)) == 1  # today's chunk
    assert compact.compact_store(store, DAY, [UID]) == []  # DAY is not before DAY


# -- nothing lost, at any point ------------------------------------------------------


def test_a_rerun_on_a_compacted_day_changes_nothing(store):
    fill_day(store, DAY)
    compact_all(store)
    held = everything(store)
    assert [result.action for result in compact_all(store)] == []  # no day holds work: none is visited
    assert [compact.compact_day(store, UID, DAY).action] == ["nothing to do"]
    assert everything(store) == held


def test_dry_run_says_what_it_would_do_and_changes_nothing(store, capsys):
    fill_day(store, DAY)
    held = everything(store)
    [result] = compact.compact_store(store, BEFORE, [UID], dry_run=True)
    assert (result.action, result.chunks, result.duplicates, result.deleted) == ("would compact", 7, 1, 8)
    assert everything(store) == held


class Killed(BaseException):
    """The process stopped (a kill, a crash): nothing after it runs."""


class StopsAt:
    """`store`, stopped at its `at`-th change (upload or delete): before it or, with `after`, once it is done."""

    def __init__(self, store: storage.Store, at: int, after: bool) -> None:
        self.store, self.left, self.after = store, at, after

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def _change(self, do, *args):
        if self.left == 0 and not self.after:
            raise Killed
        self.left -= 1
        done = do(*args)
        if self.left < 0:
            raise Killed
        return done

    def put_file(self, *args):
        return self._change(self.store.put_file, *args)

    def delete(self, *args):
        return self._change(self.store.delete, *args)

    def delete_many(self, objects):
        for item in objects:
            self.delete(*item)


def changes_of_a_whole_run(store_factory) -> int:
    counting = StopsAt(store_factory(), 10**9, after=False)
    compact.compact_store(counting, BEFORE, [UID], jobs=1)
    return 10**9 - counting.left


@pytest.mark.parametrize("after", [False, True], ids=["before-the-change", "after-the-change"])
def test_a_run_stopped_at_any_change_then_run_again_loses_and_duplicates_nothing(tmp_path, after):
    pristine = tmp_path / "pristine"
    fill_day(storage.LocalStore(pristine), DAY)
    fill_day(storage.LocalStore(pristine), NEXT_DAY, 8000)
    before = seen_by_readers(storage.LocalStore(pristine))
    steps = changes_of_a_whole_run(lambda: storage.LocalStore(shutil.copytree(pristine, tmp_path / "count")))
    assert steps > 10
    for step in range(steps):
        copy = storage.LocalStore(shutil.copytree(pristine, tmp_path / f"run-{step}"))
        with pytest.raises(Killed):
            compact.compact_store(StopsAt(copy, step, after), BEFORE, [UID], jobs=1)
        assert seen_by_readers(copy) == before, f"stopped at change {step}"
        compact.compact_store(copy, BEFORE, [UID], jobs=1, now=datetime.now(UTC) + compact.UNCOMMITTED_AGE)
        assert seen_by_readers(copy) == before, f"re-run after change {step}"
        assert loose(copy) == [], f"re-run after change {step}"
        indexes = [name for name in everything(copy) if compacted.index_number(name)]
        assert len(indexes) == 2, f"re-run after change {step}"


def test_a_run_stopped_in_a_bucket_then_run_again_loses_nothing(store):
    fill_day(store, DAY)
    before = seen_by_readers(store)
    for step in (0, 1, 2, 3, 5):  # before each upload, before the index, among the deletes
        with pytest.raises(Killed):
            compact.compact_store(StopsAt(store, step, after=step % 2 == 1), BEFORE, [UID], jobs=1)
        assert seen_by_readers(store) == before
    compact_all(store)
    assert (seen_by_readers(store), loose(store)) == (before, [])


def test_storage_faults_and_slow_calls_during_a_run_are_retried_through_and_lose_nothing(bucket, fake_gcs, monkeypatch):
    with StorageProxy(fake_gcs, resumable_preconditions=True, delete_preconditions=True, batches=True) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = storage.GcsStore(bucket.name)
        fill_day(store, DAY)
        before = seen_by_readers(store)
        proxy.arm("503", times=3, match=lambda method, path: method in ("POST", "DELETE"))
        proxy.arm("reset", times=2, match=lambda method, path: method == "GET")
        proxy.delay = 0.05  # and every call slow
        results = compact.compact_store(store, BEFORE, [UID])
        assert sum(1 for seen in proxy.seen if seen.action in ("503", "reset")) == 5
        assert [(result.action, result.error) for result in results] == [("compacted", None)]  # retried through
        assert seen_by_readers(store) == before
        proxy.clear()
        proxy.delay = 0
        compact_all(store)
        assert (seen_by_readers(store), loose(store)) == (before, [])


def test_a_chunk_changed_after_it_was_listed_is_not_deleted_and_is_folded_in_next(store, monkeypatch):
    fill_day(store, DAY)
    victim = loose(store)[0]
    real_delete_many = type(store).delete_many

    def rewrite_then_delete(self, objects):
        if any(name == victim for name, _ in objects):  # someone rewrote the chunk after the run listed it
            data = self.read(victim)
            self.delete(victim, next(info.generation for info in self.list_chunks(UID) if info.name == victim))
            put_back(self, victim, data)
        return real_delete_many(self, objects)

    monkeypatch.setattr(type(store), "delete_many", rewrite_then_delete)
    compact_all(store)
    monkeypatch.undo()
    assert loose(store) == [victim]
    assert [name for name, _, _ in seen_by_readers(store)].count(victim) == 1
    compact_all(store)
    assert loose(store) == []
    assert [name for name, _, _ in seen_by_readers(store)].count(victim) == 1


def put_back(store: storage.Store, name: str, data: bytes) -> None:
    """Write `name` again, as a new generation of the object."""
    if isinstance(store, storage.LocalStore):
        store.path(name).write_bytes(data)
        return
    store.bucket.blob(name).upload_from_string(data, content_type="audio/wav")


def test_a_late_chunk_for_a_compacted_day_is_read_and_folded_in_by_the_next_run(store):
    fill_day(store, DAY)
    compact_all(store)
    late = put(store, at(DAY, 7200), pcm_tone(1, seed=42))
    with_late = seen_by_readers(store)
    assert late in [name for name, _, _ in with_late]
    [result] = compact_all(store)
    assert (result.action, loose(store)) == ("compacted", [])
    assert seen_by_readers(store) == with_late
    assert [name for name in everything(store) if compacted.index_number(name)] == [compacted.index_name(UID, DAY, 2)]
    assert len(everything(store)) == len(result.objects) + 1


def test_a_chunk_that_cannot_be_rebuilt_exactly_stays_loose_and_is_read_as_before(store):
    fill_day(store, DAY)
    data = wav.frame(pcm_tone(0.5), 16000) + b"trailing"  # bytes its header does not count
    name = names.object_name(UID, at(DAY, 4.5))
    if isinstance(store, storage.LocalStore):
        store.path(name).parent.mkdir(parents=True, exist_ok=True)
        store.path(name).write_bytes(data)
    else:
        store.bucket.blob(name).upload_from_string(data)
    before = seen_by_readers(store)
    [result] = compact_all(store)
    assert (result.left, loose(store)) == (1, [name])
    assert seen_by_readers(store) == before
    assert [result.action for result in compact_all(store)] == ["nothing to do"]


# -- readers do not notice -----------------------------------------------------------


def test_export_and_status_give_the_same_results_for_a_compacted_day(tmp_path, capsys):
    root = tmp_path / "recordings"
    store = storage.LocalStore(root)
    fill_day(store, DAY)
    fill_day(store, NEXT_DAY, 8000)
    args = ["--local-dir", str(root), "--uid", UID, "--since", "2026-11-19", "--until", "2026-11-22", "--quiet"]
    status_args = [
        "status",
        "--local-dir",
        str(root),
        "--uid",
        UID,
        "--at",
        "2026-11-25T00:00:00Z",
        "--days",
        "9",
        "--json",
    ]

    def exported(out: Path) -> dict[str, bytes]:
        code, table, _ = run(capsys, "export", *args, "--out", str(out))
        assert code == 0
        return {path.name: path.read_bytes() for path in sorted(out.glob("*.wav"))} | {"table": table.encode()}

    before, status_before = exported(tmp_path / "before"), run(capsys, *status_args)
    compact_all(store)
    assert exported(tmp_path / "after") == before
    assert run(capsys, *status_args) == status_before


def test_an_export_of_compacted_days_downloads_each_audio_object_once(bucket, fake_gcs, monkeypatch, tmp_path):
    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = storage.GcsStore(bucket.name)
        fill_day(store, DAY)
        compact_all(store)
        proxy.reset()
        seen_by_readers(store)
        assert proxy.downloads == 2 + 1  # two audio objects and the index


def test_the_command_compacts_a_local_folder_and_reports_each_day(tmp_path, capsys):
    root = tmp_path / "recordings"
    fill_day(storage.LocalStore(root), DAY)
    code, out, err = run(capsys, "compact", "--local-dir", str(root), "--before", BEFORE.isoformat(), "--quiet")
    assert (code, err) == (0, "")
    assert out.startswith(f"{UID} {DAY}: compacted: 7 chunks, 2 audio object(s)")
    assert "1 duplicate(s) dropped, 8 object(s) deleted" in out
    code, out, err = run(capsys, "compact", "--local-dir", str(root), "--before", BEFORE.isoformat(), "--quiet")
    assert (code, out) == (0, "")
    assert "nothing to compact" in err


def test_the_daily_function_compacts_the_bucket_and_logs_each_day(bucket, monkeypatch, capsys):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("compactor_main", ROOT / "compactor" / "main.py")
    daily = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(daily)
    store = storage.GcsStore(bucket.name)
    fill_day(store, DAY)
    before = seen_by_readers(store)
    monkeypatch.setenv("COMPACT_AFTER_DAYS", "2")
    summary, status = daily.compact_daily(None)
    assert (status, summary["compacted"], summary["failed"]) == (200, 1, 0)
    assert (seen_by_readers(store), loose(store)) == (before, [])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["severity"], line.get("day")) for line in lines] == [("INFO", DAY.isoformat()), ("INFO", None)]
    monkeypatch.setenv("COMPACT_AFTER_DAYS", "0")
    assert daily.compact_daily(None)[1] == 200


def test_verify_checks_every_compacted_day_and_finds_a_damaged_object(tmp_path, capsys):
    root = tmp_path / "recordings"
    store = storage.LocalStore(root)
    fill_day(store, DAY)
    fill_day(store, NEXT_DAY, 8000)
    compact_all(store)
    code, out, _ = run(capsys, "compact", "--local-dir", str(root), "--verify")
    assert code == 0
    assert out.splitlines() == [
        f"{UID} {DAY}: ok, 7 chunks in 2 object(s)",
        f"{UID} {NEXT_DAY}: ok, 7 chunks in 2 object(s)",
    ]
    damaged = compacted.CompactedDays(store, UID).index(NEXT_DAY).objects[0]["name"]
    other = compacted.CompactedDays(store, UID).index(NEXT_DAY).objects[1]["name"]
    store.path(damaged).write_bytes(store.path(other).read_bytes())  # another session's samples
    code, out, err = run(capsys, "compact", "--local-dir", str(root), "--verify")
    assert code == 1
    assert f"{damaged} does not hold the samples its index records" in out
    assert "1 compacted day(s) failed the check" in err


def test_a_conversation_exported_before_and_after_compaction_gives_the_same_files(tmp_path, capsys):
    from test_export_conversations import T0, conversation, put_conversation, store_audio
    from test_export_conversations import UID as OWNER

    root = tmp_path / "recordings"
    store = storage.LocalStore(root)
    store_audio(store, T0, 90, skip=range(30, 35))  # a hole of 5 s inside the conversation
    put_conversation(store, conversation("c1", T0 + timedelta(seconds=10), T0 + timedelta(seconds=70)))
    args = ["--local-dir", str(root), "--uid", OWNER, "--by", "conversation", "--since", "2026-11-30", "--quiet"]

    def exported(out: Path) -> dict[str, bytes]:
        code, _, err = run(capsys, "export", *args, "--out", str(out))
        assert (code, err) == (0, "")
        return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}

    before = exported(tmp_path / "before")
    assert {name.rsplit(".", 1)[-1] for name in before} >= {"wav", "vtt", "json", "html"}
    results = compact.compact_store(store, T0.date() + timedelta(days=1), [OWNER])
    assert [result.action for result in results] == ["compacted"]
    assert exported(tmp_path / "after") == before


def test_a_session_over_8_mib_is_uploaded_in_pieces_and_reads_back(store):
    for second in range(300):  # 9.6 MB of noise: its FLAC is over 8 MiB, a resumable upload
        put(store, at(DAY, second), pcm_tone(1, seed=second))
    before = seen_by_readers(store)
    [result] = compact_all(store)
    assert result.stored_bytes > 8 << 20
    assert seen_by_readers(store) == before


def test_a_bucket_s_chunks_are_deleted_100_to_a_request(bucket, fake_gcs, monkeypatch):
    with StorageProxy(fake_gcs, delete_preconditions=True, batches=True) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = storage.GcsStore(bucket.name)
        for second in range(250):
            put(store, at(DAY, second), pcm_tone(0.1, seed=second))
        proxy.reset()
        compact_all(store)
        batches = [seen for seen in proxy.seen if seen.method == "POST" and seen.path.startswith("/batch/")]
        deletes = [seen for seen in proxy.seen if seen.method == "DELETE"]
        assert (len(batches), len(deletes), loose(store)) == (3, 250, [])


def test_verify_and_dry_run_say_so_when_there_is_nothing(tmp_path, capsys):
    root = tmp_path / "recordings"
    put(storage.LocalStore(root), datetime.now(UTC), pcm_tone(1))  # today's: never compacted
    assert run(capsys, "compact", "--local-dir", str(root), "--verify") == (0, "", "no compacted day to check\n")
    code, out, err = run(capsys, "compact", "--local-dir", str(root), "--dry-run")
    assert (code, out) == (0, "") and err.startswith("nothing to compact before ")
