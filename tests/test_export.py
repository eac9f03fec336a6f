"""omi-audio export: a user's chunks become one bit-exact WAV per recording session.

Chunks are written with the real storage module into fake-gcs-server and into a
local directory, exactly as receive_audio writes them, and the output is read
back with the stdlib `wave` module, libsndfile and sox (see `assert_decodes`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import soundfile
from conftest import OMI_AUDIO, ROOT, assert_decodes, exported, pcm_tone, run, stderr_on_a_terminal
from storage_proxy import StorageProxy

import storage
import wav
from omi_audio import archive, export

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"  # shaped like a Firebase uid
T0 = datetime(2025, 3, 1, 14, 0, tzinfo=UTC)
RATE = 16000


def metadata(at: datetime, pcm: bytes, rate: int, key: str | None = None) -> dict[str, str]:
    """The metadata receive_audio stores with a chunk."""
    meta = {
        "sample_rate": str(rate),
        "received_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "duration_seconds": str(wav.duration_seconds(len(pcm), rate)),
        "pcm_bytes": str(len(pcm)),
    }
    if key:
        meta["idempotency_key"] = key
    return meta


def put(store, at: datetime, pcm: bytes, rate: int = RATE, key: str | None = None, uid: str = UID) -> str:
    """Store one chunk through the storage module, as the function does; returns its name."""
    return store.put(uid, at, wav.frame(pcm, rate), metadata(at, pcm, rate, key), uuid.uuid4().hex, 10).name


def omi_bursts(start: datetime, n: int, bursts: int) -> list[datetime]:
    """Receipt times of Omi's sending: n one-second chunks back to back every n seconds."""
    return [start + timedelta(seconds=b * n, milliseconds=15 * i) for b in range(bursts) for i in range(n)]


@pytest.fixture(params=["gcs", "local"])
def source(request, tmp_path):
    """(store, CLI source arguments) for each backend."""
    if request.param == "gcs":
        bucket = request.getfixturevalue("bucket")
        return storage.GcsStore(bucket.name), ["--bucket", bucket.name]
    root = tmp_path / "recordings"
    return storage.LocalStore(root), ["--local-dir", str(root)]


def wavs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wav"))


def outputs(directory: Path) -> list[Path]:
    """The files an export wrote into `directory`, but the page beside them (tests/test_page.py checks it)."""
    return exported(directory)


def assert_session(path: Path, rate: int, pcms: list[bytes]) -> None:
    """The file is exactly a WAV of the concatenated PCM, and every decoder agrees."""
    data = path.read_bytes()
    joined = b"".join(pcms)
    assert data == wav.frame(joined, rate)
    assert_decodes(data, rate, joined)


# -- sessions --------------------------------------------------------------------


def test_sessions_split_where_chunks_stop_for_longer_than_the_gap(source, tmp_path, capsys):
    store, args = source
    first = omi_bursts(T0, 5, 3)
    second = omi_bursts(T0 + timedelta(minutes=20), 5, 2)
    pcms = [pcm_tone(1, RATE, seed) for seed in range(len(first) + len(second))]
    for at, pcm in zip(first + second, pcms, strict=True):
        put(store, at, pcm, key=str(uuid.uuid4()))

    code, out, err = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert (code, err) == (0, "")
    files = wavs(tmp_path / "out")
    assert [f.name for f in files] == [f"{UID}_20250301T140000.000000Z.wav", f"{UID}_20250301T142000.000000Z.wav"]
    assert_session(files[0], RATE, pcms[:15])
    assert_session(files[1], RATE, pcms[15:])
    assert "0:00:15.0      15" in out and "0:00:10.0      10" in out
    assert "2 session(s)" in out


def test_default_gap_keeps_omi_bursts_of_up_to_120_seconds_together(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    times = omi_bursts(T0, 120, 3)  # 120 chunks, then 120 s until the next burst
    pcms = [pcm_tone(0.01, 8000, seed) for seed in range(len(times))]
    for at, pcm in zip(times, pcms, strict=True):
        put(store, at, pcm, rate=8000)

    code, _, _ = run(
        capsys, "export", "--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out")
    )
    assert code == 0
    [only] = wavs(tmp_path / "out")
    assert_session(only, 8000, pcms)

    code, out, _ = run(capsys, "export", "--uid", UID, "--local-dir", str(tmp_path / "rec"), "--list", "--gap", "60")
    assert code == 0
    assert "3 session(s)" in out


def test_chunks_exactly_the_gap_apart_are_one_session_and_a_microsecond_more_makes_two(source, tmp_path, capsys):
    store, args = source
    times = [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20, microseconds=1)]
    pcms = [pcm_tone(0.1, RATE, seed) for seed in range(3)]
    for at, pcm in zip(times, pcms, strict=True):
        put(store, at, pcm)

    code, out, _ = run(capsys, "export", "--uid", UID, *args, "--gap", "10", "--out", str(tmp_path / "out"))
    _, listed, _ = run(capsys, "export", "--uid", UID, *args, "--gap", "10", "--list")

    assert code == 0
    first, second = wavs(tmp_path / "out")
    assert_session(first, RATE, pcms[:2])
    assert_session(second, RATE, pcms[2:])
    assert "2 session(s)" in out and "2 session(s)" in listed


def test_a_sample_rate_change_starts_a_new_session(source, tmp_path, capsys):
    store, args = source
    low = [pcm_tone(0.5, 8000, seed) for seed in range(3)]
    high = [pcm_tone(0.5, RATE, seed) for seed in range(3, 6)]
    for i, pcm in enumerate(low):
        put(store, T0 + timedelta(seconds=i), pcm, rate=8000)
    for i, pcm in enumerate(high):
        put(store, T0 + timedelta(seconds=3 + i), pcm, rate=RATE)

    code, out, _ = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    first, second = wavs(tmp_path / "out")
    assert_session(first, 8000, low)
    assert_session(second, RATE, high)
    assert "2 session(s)" in out


def test_only_the_first_chunk_with_an_idempotency_key_is_kept(source, tmp_path, capsys):
    store, args = source
    pcms = [pcm_tone(0.5, RATE, seed) for seed in range(4)]
    keys = [str(uuid.uuid4()) for _ in pcms]
    for i, (pcm, key) in enumerate(zip(pcms, keys, strict=True)):
        put(store, T0 + timedelta(seconds=i), pcm, key=key)
    # A retry that reached another instance: stored again, later, under the same key;
    # and one that landed in the same microsecond, stored under the "-1" name.
    put(store, T0 + timedelta(seconds=1, milliseconds=500), pcm_tone(0.5, RATE, 99), key=keys[1])
    assert put(store, T0 + timedelta(seconds=2), pcm_tone(0.5, RATE, 98), key=keys[2]).endswith("Z-1.wav")
    # Chunks without a key are never taken for duplicates, even when identical.
    put(store, T0 + timedelta(seconds=4), pcms[3])

    code, out, _ = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    [only] = wavs(tmp_path / "out")
    assert_session(only, RATE, [*pcms, pcms[3]])
    assert "2 duplicate(s) dropped" in out


def test_corrupt_and_foreign_objects_are_skipped_named_and_counted(source, tmp_path, capsys):
    store, args = source
    pcms = [pcm_tone(0.5, RATE, seed) for seed in range(3)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=2 * i), pcm)
    not_wav = storage.object_name(UID, T0 + timedelta(seconds=1))
    truncated = storage.object_name(UID, T0 + timedelta(seconds=3))
    bad = {not_wav: b"<html>not audio</html>", truncated: wav.frame(pcm_tone(0.5, RATE, 7), RATE)[:-100]}
    for name, data in bad.items():
        if isinstance(store, storage.GcsStore):
            store.bucket.blob(name).upload_from_string(data)
        else:
            Path(store.location(name)).write_bytes(data)

    code, out, err = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    [only] = wavs(tmp_path / "out")
    assert_session(only, RATE, pcms)
    assert f"skipped {not_wav}" in err and f"skipped {truncated}" in err
    assert "2 corrupt or missing object(s) skipped" in out
    assert "      3  " in out  # three chunks in the session


def write_object(store, name: str, data: bytes) -> None:
    """Put bytes under any name, as something other than the function might."""
    if isinstance(store, storage.GcsStore):
        store.bucket.blob(name).upload_from_string(data)
    else:
        path = Path(store.location(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def with_rate_field(chunk: bytes, rate: int) -> bytes:
    """The chunk with another sample rate written into its header (and byte rate to match)."""
    return chunk[:24] + struct.pack("<II", rate, rate * 2 % 2**32) + chunk[32:]


def test_unreadable_names_metadata_and_rates_are_each_one_warning_not_a_failed_run(source, tmp_path, capsys):
    store, args = source
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(3)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    # Good audio whose metadata cannot be read ("²".isdigit() is True, int("²") fails, and
    # int() refuses more than 4,300 digits): the header still tells its rate and size, so it is kept.
    odd_meta = {"sample_rate": "²", "pcm_bytes": "9" * 5000, "idempotency_key": "k"}
    store.put(UID, T0 + timedelta(seconds=3), wav.frame(pcms[0], RATE), odd_meta, uuid.uuid4().hex, 10)
    month_13 = f"{UID}/20251301T000000.000000Z.wav"  # NAME_RE's shape, but no such day
    write_object(store, month_13, wav.frame(pcms[1], RATE))
    too_fast = storage.object_name(UID, T0 + timedelta(seconds=4))  # a rate no WAV header can hold
    write_object(store, too_fast, with_rate_field(wav.frame(pcms[2], RATE), 0xFFFFFFFF))

    code, out, err = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))
    list_code, listed, list_err = run(capsys, "export", "--uid", UID, *args, "--list")

    assert code == 0
    assert err.splitlines() == [
        f"warning: skipped {month_13}: its name holds no real time",
        f"warning: skipped {too_fast}: not a usable WAV chunk "
        f"(sample rate {0xFFFFFFFF} Hz is more than the output format holds ({wav.MAX_SAMPLE_RATE} Hz))",
    ]
    [only] = wavs(tmp_path / "out")
    assert_session(only, RATE, [*pcms, pcms[0]])
    assert "2 corrupt or missing object(s) skipped" in out
    assert list_code == 0 and list_err.splitlines() == err.splitlines()[:1]
    assert "1 corrupt or missing object(s) skipped" in listed


def test_a_chunk_at_a_rate_flac_cannot_hold_is_skipped_and_the_rest_written(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(3)]
    put(store, T0, pcms[0])
    fast = put(store, T0 + timedelta(seconds=1), pcms[1])
    Path(store.location(fast)).write_bytes(with_rate_field(wav.frame(pcms[1], RATE), 700_000))
    put(store, T0 + timedelta(seconds=2), pcms[2])
    command = ["--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--format", "flac"]

    code, _, err = run(capsys, "export", *command)

    assert code == 0 and err.splitlines() == [
        f"warning: skipped {fast}: not a usable WAV chunk (sample rate 700000 Hz is more than the output format "
        "holds (655350 Hz))"
    ]
    [flac] = outputs(tmp_path / "out")
    decoded, _ = soundfile.read(str(flac), dtype="int16")
    assert decoded.tobytes() == pcms[0] + pcms[2]


def test_a_chunk_deleted_after_listing_is_skipped_and_reported(source, tmp_path):
    store, _ = source
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(3)]
    names = [put(store, T0 + timedelta(seconds=i), pcm) for i, pcm in enumerate(pcms)]
    selection = archive.select_chunks(store, UID)
    if isinstance(store, storage.GcsStore):
        store.bucket.blob(names[1]).delete()
    else:
        Path(store.location(names[1])).unlink()
    warnings: list[str] = []

    summary = export.export_sessions(store, UID, selection, tmp_path / "out", warn=warnings.append)

    assert summary.skipped == [names[1]]
    assert warnings == [f"skipped {names[1]}: it disappeared before it could be read"]
    assert_session(wavs(tmp_path / "out")[0], RATE, [pcms[0], pcms[2]])


def test_a_missing_bucket_is_a_clear_message_and_exit_1(fake_gcs, tmp_path, capsys):
    code, out, err = run(capsys, "export", "--uid", UID, "--bucket", "no-such-bucket", "--out", str(tmp_path / "out"))
    assert (code, out) == (1, "")
    assert "could not list gs://no-such-bucket/" in err and "Not Found" in err


def without_credentials(home: Path, key_file: str | None) -> dict[str, str]:
    """An environment with no Google credentials and no way to reach a metadata server or real GCS."""
    drop = ("STORAGE_EMULATOR_HOST", "GCS_BUCKET_NAME", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {"HOME": str(home), "CLOUDSDK_CONFIG": str(home / "gcloud")}  # no gcloud login to find
    # google-auth would otherwise probe the metadata server at 169.254.169.254.
    env |= {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
    if key_file:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = key_file
    return env


@pytest.mark.parametrize("key_file", [None, "/nonexistent/key.json"])
def test_missing_credentials_are_one_line_naming_the_fix_and_exit_1(tmp_path, key_file):
    command = [
        *OMI_AUDIO,
        "export",
        "--uid",
        UID,
        "--bucket",
        "my-bucket",
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=without_credentials(tmp_path, key_file), timeout=60
    )

    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("error: no Google Cloud credentials to read gs://my-bucket")
    assert "`gcloud auth application-default login`" in line
    assert (key_file is not None) == (f"File {key_file} was not found" in line)
    assert not (tmp_path / "out").exists()


def test_nothing_usable_is_exit_1_and_writes_no_file(tmp_path, capsys):
    root = tmp_path / "rec"
    (root / UID).mkdir(parents=True)
    Path(storage.LocalStore(root).location(storage.object_name(UID, T0))).write_bytes(b"garbage")

    code, _, err = run(capsys, "export", "--uid", UID, "--local-dir", str(root), "--out", str(tmp_path / "out"))

    assert code == 1
    assert "nothing exported" in err
    assert list((tmp_path / "out").iterdir()) == []


# -- selection -------------------------------------------------------------------


def test_since_is_inclusive_and_until_is_exclusive(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(5)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    base = ["--uid", UID, "--local-dir", str(tmp_path / "rec")]

    code, _, _ = run(
        capsys,
        "export",
        *base,
        "--out",
        str(tmp_path / "a"),
        "--since",
        "2025-03-01T14:00:01Z",
        "--until",
        "2025-03-01T14:00:03",
    )
    assert code == 0
    assert_session(wavs(tmp_path / "a")[0], RATE, pcms[1:3])

    # The same window written with an offset: 15:00:01+01:00 is 14:00:01 UTC.
    code, out, _ = run(
        capsys, "export", *base, "--list", "--since", "2025-03-01T15:00:01+01:00", "--until", "2025-03-01T14:00:03"
    )
    assert code == 0 and "      2  " in out


def test_a_bare_date_means_the_whole_day(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    edges = [datetime(2025, 2, 28, 23, 59, 59, 999999, UTC), datetime(2025, 3, 1, tzinfo=UTC)]
    edges += [datetime(2025, 3, 1, 23, 59, 59, 999999, UTC), datetime(2025, 3, 2, tzinfo=UTC)]
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(4)]
    for at, pcm in zip(edges, pcms, strict=True):
        put(store, at, pcm)

    day = ["--since", "2025-03-01", "--until", "2025-03-01"]
    code, _, _ = run(
        capsys, "export", "--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out"), *day
    )

    assert code == 0
    first, last = wavs(tmp_path / "out")
    assert_session(first, RATE, [pcms[1]])
    assert_session(last, RATE, [pcms[2]])


def test_nothing_matching_is_a_clear_message_and_exit_1(source, tmp_path, capsys):
    store, args = source
    put(store, T0, pcm_tone(0.25))

    code, out, err = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"), "--since", "2025-03-02")
    assert (code, out) == (1, "")
    assert f"no chunks for uid {UID}" in err and "2025-03-02" in err

    code, _, err = run(capsys, "export", "--uid", "someone-else", *args, "--out", str(tmp_path / "out"))
    assert code == 1 and "unknown uid 'someone-else'" in err
    assert not (tmp_path / "out").exists() or wavs(tmp_path / "out") == []


@pytest.mark.parametrize(
    "bad",
    [
        ["--since", "yesterday"],
        ["--until", "2025-13-01"],
        ["--since", "2025-03-02", "--until", "2025-03-01"],
        ["--gap", "0"],
        ["--gap", "nan"],
        ["--jobs", "0"],
        ["--jobs", "many"],
        ["--bucket", "b", "--local-dir", "."],
        ["--uid", "a\nb"],
        ["--local-dir", "/nonexistent/dir"],
        ["--no-such-option"],
    ],
)
def test_bad_arguments_exit_2(tmp_path, capsys, bad):
    (tmp_path / "rec").mkdir()
    code, out, err = run(
        capsys, "export", "--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path), *bad
    )
    assert code == 2
    assert "error" in err and out == ""


def test_out_is_required_unless_listing(tmp_path, capsys):
    (tmp_path / "rec").mkdir()
    code, _, err = run(capsys, "export", "--uid", UID, "--local-dir", str(tmp_path / "rec"))
    assert code == 2 and "--out" in err


def test_chunks_in_the_same_microsecond_export_in_suffix_order_past_nine(source, tmp_path, capsys):
    """-10 sorts before -2 as text; the export orders by the suffix's number."""
    store, args = source
    pcms = [pcm_tone(0.05, RATE, seed) for seed in range(13)]
    names = [put(store, T0, pcm) for pcm in pcms]  # "…Z.wav", then "…Z-1.wav" up to "…Z-12.wav"
    assert names[10].endswith("Z-10.wav") and names[12].endswith("Z-12.wav")
    assert sorted(names) != names  # text order would misplace them

    code, _, _ = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    [only] = wavs(tmp_path / "out")
    assert_session(only, RATE, pcms)


def test_the_listed_range_keeps_since_and_drops_until_whatever_the_suffix(source):
    store, _ = source
    since, until = T0, T0 + timedelta(seconds=10)
    before = put(store, since - timedelta(microseconds=1), pcm_tone(0.01))
    at_since = [put(store, since, pcm_tone(0.01, RATE, i)) for i in range(11)]  # suffixes up to -10
    inside = put(store, until - timedelta(microseconds=1), pcm_tone(0.01))
    at_until = [put(store, until, pcm_tone(0.01, RATE, i)) for i in range(3)]

    listed = {info.name for info in store.list_chunks(UID, since, until)}
    assert listed == {*at_since, inside}
    assert {info.name for info in store.list_chunks(UID, until=since)} == {before}
    assert {info.name for info in store.list_chunks(UID, since=until)} == set(at_until)
    assert len(list(store.list_chunks(UID))) == 16
    assert [info.name for info in store.list_chunks(UID, since, until, limit=1)] == [min(listed)]


def test_exporting_one_day_of_thirty_lists_only_that_day(bucket, fake_gcs, tmp_path, monkeypatch, capsys):
    store = storage.GcsStore(bucket.name)
    per_day, days = 12, 30
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for day in range(days):  # bursts at 00:00, 12:00 and the day's last second
        for at in omi_bursts(start + timedelta(days=day), 4, 1) + omi_bursts(
            start + timedelta(days=day, hours=12), 4, 1
        ):
            put(store, at, pcm_tone(0.01, RATE, day))
        for i in range(4):
            put(store, start + timedelta(days=day + 1, microseconds=-1), pcm_tone(0.01, RATE, i))  # -1 .. -3
    day = "2025-03-15"

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, out, _ = run(
            capsys,
            "export",
            "--uid",
            UID,
            "--bucket",
            bucket.name,
            "--out",
            str(tmp_path / "out"),
            "--since",
            day,
            "--until",
            day,
        )
        exported = proxy.names_listed, len(proxy.list_calls), proxy.downloads
        proxy.reset()
        run(capsys, "export", "--uid", UID, "--bucket", bucket.name, "--list")
        whole = proxy.names_listed

    assert code == 0 and f"{per_day} chunk(s)" in out
    print(
        f"one day of {days}: {exported[0]} names listed in {exported[1]} call(s), {exported[2]} downloads; "
        f"no range: {whole} names"
    )
    assert exported == (per_day, 2, per_day)  # the day's chunks, and the day's compacted folder (empty)
    assert whole == per_day * days


# -- uids ------------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["Omi DevKit 2", "Zoë's Omi", "../etc", "webhook-device"])
def test_uid_is_taken_as_the_sender_sends_it_and_files_are_named_by_its_folder(source, tmp_path, capsys, uid):
    store, args = source
    pcms = [pcm_tone(0.1, RATE, seed) for seed in range(3)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm, uid=uid)
    put(store, T0, pcm_tone(0.1, RATE, 9))  # another uid's chunk at the same time

    code, _, err = run(capsys, "export", "--uid", uid, *args, "--out", str(tmp_path / "out"))

    assert (code, err) == (0, "")
    [only] = outputs(tmp_path / "out")
    assert only.name == f"{storage.uid_prefix(uid)}_20250301T140000.000000Z.wav"
    assert_session(only, RATE, pcms)
    assert "/" not in storage.uid_prefix(uid) and (uid == "webhook-device") == (storage.uid_prefix(uid) == uid)


LONGEST_UID = "中" * 42 + "ab"  # 128 bytes of UTF-8, the most storage takes: a 380-character folder


def test_the_longest_uids_give_file_names_within_255_bytes_one_uid_each(bucket, tmp_path, capsys):
    assert len(LONGEST_UID.encode()) == storage.MAX_UID_BYTES
    store = storage.GcsStore(bucket.name)
    twin = LONGEST_UID[:-1] + "c"  # the same folder name up to its very end
    uids = [LONGEST_UID, twin]
    pcms = {uid: [pcm_tone(0.1, RATE, 10 * n + i) for i in range(2)] for n, uid in enumerate(uids)}
    out = tmp_path / "out"
    for uid in uids:
        put(store, T0, pcms[uid][0], uid=uid)
        put(store, T0 + timedelta(hours=1), pcms[uid][1], uid=uid, rate=8000)
        put(store, T0 + timedelta(hours=1), pcms[uid][1], uid=uid)  # a rate change in the same microsecond

        code, _, err = run(capsys, "export", "--uid", uid, "--bucket", bucket.name, "--out", str(out / uid[-1]))
        _, listed, _ = run(capsys, "export", "--uid", uid, "--bucket", bucket.name, "--list")

        assert (code, err) == (0, "")
        stem = export.uid_in_file_name(uid)
        names = [f"{stem}_20250301T140000.000000Z.wav", f"{stem}_20250301T150000.000000Z.wav"]
        names.append(names[1].replace("Z.wav", "Z-1.wav"))
        assert sorted(f.name for f in wavs(out / uid[-1])) == sorted(names)
        assert [line.split()[-1] for line in listed.splitlines()[1:-1]] == names
        # Room is left for the longest suffixes: "_part99" and ".flac" instead of ".wav".
        assert max(len(name.encode()) for name in names) <= 255 - len("_part99") - len(".flac") + len(".wav")
        assert_session(out / uid[-1] / names[0], RATE, pcms[uid][:1])
        assert_session(out / uid[-1] / names[1], 8000, pcms[uid][1:])
        assert_session(out / uid[-1] / names[2], RATE, pcms[uid][1:])
        assert "~~" in stem and "~~" not in storage.uid_prefix(uid)
    assert export.uid_in_file_name(LONGEST_UID) != export.uid_in_file_name(twin)


# Folders of 234, 227, 128, 159 and 162 characters (a local folder name itself is at most 255 bytes).
@pytest.mark.parametrize(
    "uid", ["中" * 26, "ab" + "中" * 25, "x" * 128, "~" * 53, "~" * 54], ids=["cjk26", "ab-cjk25", "x128", "t53", "t54"]
)
def test_a_uid_folder_that_fits_is_the_file_name_and_a_longer_one_is_cut(source, tmp_path, capsys, uid):
    store, args = source
    put(store, T0, pcm_tone(0.1, RATE, 1), uid=uid)

    code, _, err = run(capsys, "export", "--uid", uid, *args, "--out", str(tmp_path / "out"))

    assert (code, err) == (0, "")
    [only] = wavs(tmp_path / "out")
    folder = storage.uid_prefix(uid)
    stem = export.uid_in_file_name(uid)
    assert only.name == f"{stem}_20250301T140000.000000Z.wav" and len(only.name.encode()) <= 255
    if len(folder) <= export.MAX_UID_IN_FILE_NAME:
        assert stem == folder
    else:
        head, digest = stem.split("~~")
        assert folder.startswith(head) and re.fullmatch(r"(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+", head)  # whole escapes
        assert digest == hashlib.sha256(uid.encode()).hexdigest()[: export.UID_HASH_DIGITS]
        assert len(stem) <= export.MAX_UID_IN_FILE_NAME


# -- --format flac ---------------------------------------------------------------


def speech_like(seconds: float, rate: int, seed: int) -> bytes:
    """A tone with a little noise: audio that compresses as recordings do, unlike pcm_tone's noise."""
    import math
    import random

    rng = random.Random(seed)
    samples = (
        int(8000 * math.sin(2 * math.pi * (220 + 40 * seed) * n / rate) + rng.randint(-50, 50))
        for n in range(int(seconds * rate))
    )
    return b"".join(struct.pack("<h", value) for value in samples)


def test_flac_is_lossless_and_about_half_the_size(source, tmp_path, capsys):
    store, args = source
    pcms = [speech_like(1, RATE, seed) for seed in range(6)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    put(store, T0 + timedelta(hours=1), pcms[0], rate=8000)

    assert run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "wav"))[0] == 0
    code, _, err = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "flac"), "--format", "flac")
    _, listed, _ = run(capsys, "export", "--uid", UID, *args, "--list", "--format", "flac")

    assert (code, err) == (0, "")
    flacs = outputs(tmp_path / "flac")
    assert [f.name for f in flacs] == [w.name.replace(".wav", ".flac") for w in wavs(tmp_path / "wav")]
    assert [line.split()[-1] for line in listed.splitlines()[1:-1]] == [f.name for f in flacs]
    for flac, expected_rate, expected in [(flacs[0], RATE, b"".join(pcms)), (flacs[1], 8000, pcms[0])]:
        info = soundfile.info(str(flac))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", expected_rate, 1)
        decoded, _ = soundfile.read(str(flac), dtype="int16")
        assert decoded.tobytes() == expected
        assert flac.stat().st_mode & 0o777 == 0o644
        if shutil.which("soxi"):
            soxi = subprocess.run(["soxi", "-s", str(flac)], capture_output=True, text=True, check=True)
            assert int(soxi.stdout) == len(expected) // 2
        if shutil.which("ffprobe"):
            entries = ["-show_entries", "stream=sample_rate,channels,codec_name"]
            probe = ["ffprobe", "-v", "error", "-of", "default=nw=1", *entries, str(flac)]
            found = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
            assert "codec_name=flac" in found and f"sample_rate={expected_rate}" in found and "channels=1" in found
    ratio = flacs[0].stat().st_size / wavs(tmp_path / "wav")[0].stat().st_size
    print(f"FLAC/WAV size: {ratio:.2f}")
    assert ratio < 0.6
    assert not list((tmp_path / "flac").glob(".export-*"))


# -- --skip-existing ---------------------------------------------------------------


def test_skip_existing_keeps_complete_sessions_and_redoes_the_rest(source, tmp_path, capsys):
    store, args = source
    starts = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    audio = {at: [pcm_tone(0.2, RATE, 10 * n + i) for i in range(3)] for n, at in enumerate(starts)}
    names = {at: [put(store, at + timedelta(seconds=i), pcm) for i, pcm in enumerate(audio[at])] for at in starts}
    out = tmp_path / "out"
    command = ["--uid", UID, *args, "--out", str(out)]
    assert run(capsys, "export", *command)[0] == 0
    first, second, third = wavs(out)
    second.unlink()  # as if the export had been interrupted before this session
    # Change the stored audio of the first and third sessions: only a session that is
    # downloaded again can show it.  The third also grows: it was still being recorded.
    changed = {at: [pcm_tone(0.2, RATE, 100 + 10 * n + i) for i in range(3)] for n, at in enumerate(starts)}
    for at in (starts[0], starts[2]):
        for name, pcm in zip(names[at], changed[at], strict=True):
            if isinstance(store, storage.GcsStore):
                store.bucket.blob(name).upload_from_string(wav.frame(pcm, RATE))
            else:
                Path(store.location(name)).write_bytes(wav.frame(pcm, RATE))
    late = pcm_tone(0.2, RATE, 999)
    put(store, starts[2] + timedelta(seconds=3), late)

    code, out_text, _ = run(capsys, "export", *command, "--skip-existing")

    assert code == 0
    assert [f.name for f in wavs(out)] == [first.name, second.name, third.name]
    assert_session(first, RATE, audio[starts[0]])  # kept: not downloaded again
    assert_session(second, RATE, audio[starts[1]])  # missing: written
    assert_session(third, RATE, [*changed[starts[2]], late])  # grown: redone
    assert "2 session(s), 2 file(s) written" in out_text and "1 session(s) already complete, kept" in out_text

    code, out_text, _ = run(capsys, "export", *command, "--skip-existing")  # nothing left to do is still success
    assert code == 0 and "0 session(s)" in out_text and "3 session(s) already complete, kept" in out_text


@pytest.mark.parametrize("output", ["wav", "flac"])
def test_skip_existing_redoes_a_file_cut_short_after_its_header(tmp_path, capsys, output):
    store = storage.LocalStore(tmp_path / "rec")
    pcms = [pcm_tone(1, RATE, seed) for seed in range(4)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    command = ["--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--format", output]
    assert run(capsys, "export", *command)[0] == 0
    [written] = outputs(tmp_path / "out")
    whole = written.read_bytes()
    os.truncate(written, len(whole) // 2)  # as a copy cut short would leave it: the header still says all

    code, out, _ = run(capsys, "export", *command, "--skip-existing")

    assert code == 0
    assert "1 session(s), 1 file(s) written" in out and "0 session(s) already complete, kept" in out
    assert written.read_bytes() == whole


def test_skip_existing_resumes_flac_and_never_merges_the_sessions_around_a_kept_one(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    low = [pcm_tone(0.2, 8000, i) for i in range(2)]
    high = [pcm_tone(0.2, RATE, 10 + i) for i in range(2)]
    low_again = [pcm_tone(0.2, 8000, 20 + i) for i in range(2)]
    for i, (pcm, rate) in enumerate(
        [(p, 8000) for p in low] + [(p, RATE) for p in high] + [(p, 8000) for p in low_again]
    ):
        put(store, T0 + timedelta(seconds=i), pcm, rate=rate)
    command = ["--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--format", "flac"]
    assert run(capsys, "export", *command)[0] == 0
    files = outputs(tmp_path / "out")
    assert len(files) == 3
    files[0].unlink()
    files[2].unlink()

    code, out, _ = run(capsys, "export", *command, "--skip-existing")

    assert code == 0 and "1 session(s) already complete, kept" in out
    assert [f.name for f in outputs(tmp_path / "out")] == [f.name for f in files]
    for flac, expected in zip(files, [low, high, low_again], strict=True):
        decoded, _ = soundfile.read(str(flac), dtype="int16")
        assert decoded.tobytes() == b"".join(expected)


# -- --list ----------------------------------------------------------------------


def test_list_prints_the_table_from_metadata_without_reading_audio(tmp_path, capsys):
    root = tmp_path / "rec"
    store = storage.LocalStore(root)
    names = [put(store, at, pcm_tone(1, RATE, i)) for i, at in enumerate(omi_bursts(T0, 5, 2))]
    names += [put(store, T0 + timedelta(hours=1, seconds=i), pcm_tone(0.5, 8000, i), rate=8000) for i in range(3)]
    for name in names:  # the audio is gone; only names and metadata remain readable
        Path(store.location(name)).write_bytes(b"\xff" * 100)

    code, out, err = run(capsys, "export", "--uid", UID, "--local-dir", str(root), "--list")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["START", "(UTC)", "END", "(UTC)", "DURATION", "CHUNKS", "FILE"]
    assert lines[1].split() == [
        "2025-03-01",
        "14:00:00",
        "2025-03-01",
        "14:00:05",
        "0:00:10.0",
        "10",
        f"{UID}_20250301T140000.000000Z.wav",
    ]
    assert lines[2].split()[4:] == ["0:00:01.5", "3", f"{UID}_20250301T150000.000000Z.wav"]
    assert "2 session(s)" in lines[3] and "no audio downloaded" in lines[3]
    assert not (tmp_path / "out").exists()


def test_list_names_the_files_export_writes(source, tmp_path, capsys):
    store, args = source
    for i, at in enumerate(omi_bursts(T0, 5, 2) + omi_bursts(T0 + timedelta(hours=2), 5, 1)):
        put(store, at, pcm_tone(0.1, RATE, i))

    _, listed, _ = run(capsys, "export", "--uid", UID, *args, "--list")
    _, exported, _ = run(capsys, "export", "--uid", UID, *args, "--out", str(tmp_path / "out"))

    assert listed.splitlines()[:-1] == exported.splitlines()[:-1]
    assert [line.split()[-1] for line in listed.splitlines()[1:-1]] == [f.name for f in wavs(tmp_path / "out")]


# -- output files ----------------------------------------------------------------


def test_a_session_past_the_size_limit_is_split_into_numbered_parts(tmp_path):
    store = storage.LocalStore(tmp_path / "rec")
    pcms = [pcm_tone(0.5, RATE, seed) for seed in range(7)]  # 16,000 bytes each
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    selection = archive.select_chunks(store, UID)

    summary = export.export_sessions(store, UID, selection, tmp_path / "out", part_limit=48_000)

    files = wavs(tmp_path / "out")
    stem = f"{UID}_20250301T140000.000000Z"
    assert [f.name for f in files] == [f"{stem}_part01.wav", f"{stem}_part02.wav", f"{stem}_part03.wav"]
    assert_session(files[0], RATE, pcms[0:3])
    assert_session(files[1], RATE, pcms[3:6])
    assert_session(files[2], RATE, pcms[6:7])
    [session] = summary.sessions
    assert session.files == [f.name for f in files] and session.chunks == 7
    [planned] = export.plan_sessions(UID, selection.chunks, export.DEFAULT_GAP_SECONDS, part_limit=48_000)
    assert planned.files == session.files


def test_the_part_limit_is_the_wav_format_limit():
    assert export.MAX_PART_BYTES <= wav.MAX_DATA_SIZE
    assert wav.MAX_DATA_SIZE - export.MAX_PART_BYTES < 2 and export.MAX_PART_BYTES % 2 == 0
    assert export.MAX_PART_BYTES > 4 * 1024**3 - 64


def test_a_second_export_replaces_its_files_and_leaves_no_temporary_files(tmp_path, capsys):
    store = storage.LocalStore(tmp_path / "rec")
    pcms = [pcm_tone(0.25, RATE, seed) for seed in range(3)]
    for i, pcm in enumerate(pcms):
        put(store, T0 + timedelta(seconds=i), pcm)
    args = ["--uid", UID, "--local-dir", str(tmp_path / "rec"), "--out", str(tmp_path / "out")]

    assert run(capsys, "export", *args)[0] == 0
    assert run(capsys, "export", *args)[0] == 0

    [only] = outputs(tmp_path / "out")
    assert_session(only, RATE, pcms)
    assert only.stat().st_mode & 0o777 == 0o644


def test_an_interrupted_export_leaves_no_truncated_wav_and_resumes(bucket, fake_gcs, tmp_path, capsys):
    store = storage.GcsStore(bucket.name)
    first = pcm_tone(0.25, RATE, 0)
    put(store, T0, first)
    second = [pcm_tone(0.01, RATE, i) for i in range(150)]
    for i, pcm in enumerate(second):  # a long second session, slowed by 20 ms per request
        put(store, T0 + timedelta(hours=1, seconds=i), pcm)
    out = tmp_path / "out"

    with StorageProxy(fake_gcs, delay=0.02) as proxy:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
        command = [
            *OMI_AUDIO,
            "export",
            "--uid",
            UID,
            "--bucket",
            bucket.name,
            "--out",
            str(out),
            "--jobs",
            "1",
        ]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        give_up = time.monotonic() + 30
        while not (out.is_dir() and wavs(out) and list(out.glob(".export-*"))) and time.monotonic() < give_up:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert b"interrupted" in err
    [finished] = exported(out)  # the finished session only: no part-written file at all
    assert_session(finished, RATE, [first])

    # Run again with --skip-existing: the finished session is kept, the other written.
    store.bucket.blob(storage.object_name(UID, T0)).upload_from_string(wav.frame(pcm_tone(0.25, RATE, 5), RATE))
    code, text, _ = run(capsys, "export", "--uid", UID, "--bucket", bucket.name, "--out", str(out), "--skip-existing")
    assert code == 0 and "1 session(s) already complete, kept" in text
    kept, written = wavs(out)
    assert kept == finished
    assert_session(kept, RATE, [first])  # not downloaded again: the stored audio changed meanwhile
    assert_session(written, RATE, second)


@pytest.mark.parametrize(("form", "opened_by"), [("wav", "wave.open"), ("flac", "soundfile.SoundFile")])
def test_an_interruption_while_an_output_file_is_opened_leaves_no_temporary_file(
    tmp_path, monkeypatch, form, opened_by
):
    # A SIGTERM is a KeyboardInterrupt raised wherever the export is: here, just after the file was created.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, name = opened_by.split(".")
    monkeypatch.setattr(f"{module}.{name}", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.FORMATS[form].writer(tmp_path, RATE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("form", ["wav", "flac"])
def test_discarding_a_finished_output_file_keeps_it(tmp_path, form):
    writer = export.FORMATS[form].writer(tmp_path, RATE)
    writer.write(memoryview(pcm_tone(0.1, RATE, 0)))
    writer.finish(tmp_path / f"whole.{form}")
    writer.discard()  # what the export's cleanup does when it is interrupted right after a finish
    assert [path.name for path in tmp_path.iterdir()] == [f"whole.{form}"]
    assert soundfile.info(str(tmp_path / f"whole.{form}")).frames == RATE // 10


# -- progress --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "bar"),
    [("export", ["/20 [", "chunk/s"]), ("status", ["listing: ", "name/s]"])],
)
def test_progress_bar_shows_on_a_terminal_and_quiet_silences_it(tmp_path, command, bar):
    store = storage.LocalStore(tmp_path / "rec")
    recent = datetime.now(UTC) - timedelta(minutes=1)  # status lists the last days only
    for i in range(20):
        put(store, recent + timedelta(seconds=i), pcm_tone(0.1, RATE, i))

    def shown(*extra: str) -> str:
        args = ["--uid", UID, "--local-dir", str(tmp_path / "rec"), *extra]
        out = ["--out", str(tmp_path / "out")] if command == "export" else []
        return stderr_on_a_terminal([*OMI_AUDIO, command, *args, *out])

    output = shown()
    assert all(part in output for part in bar), output
    assert shown("--quiet") == ""


# -- scale -----------------------------------------------------------------------


MEMORY_PROBE = """
import json, sys, tracemalloc
sys.path.insert(0, {root!r})
from omi_audio import cli

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) * 1024

trace = sys.argv.pop(1) == "trace"
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # this process's peak RSS (VmHWM) starts again from its RSS now
before = kib("VmRSS")
if trace:
    tracemalloc.start()
code = cli.main(["export", *sys.argv[1:]])
traced = tracemalloc.get_traced_memory()[1] if trace else None
print(json.dumps({{"code": code, "traced": traced, "rss_growth": kib("VmHWM") - before}}))
"""


def test_thousands_of_chunks_export_in_bounded_memory(tmp_path):
    """The export's own peak memory, whatever ran before it in this process.

    The figure is the child's VmHWM, reset once it has imported everything: its
    ru_maxrss would start at this process's RSS (Linux carries it over fork and
    exec), so it would grow with every test that ran before.  The ballast below
    makes this process large on purpose: a figure that counted it would fail.
    """
    ballast = bytearray(256 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched, so resident
    chunks, pcm = 3000, pcm_tone(1, RATE, 1)  # 50 minutes, 96 MB of audio in one session
    root = tmp_path / "rec"
    (root / UID).mkdir(parents=True)
    for i in range(chunks):  # the LocalStore layout, written directly: put() fsyncs every file
        at = T0 + timedelta(seconds=i)
        path = Path(storage.LocalStore(root).location(storage.object_name(UID, at)))
        path.write_bytes(wav.frame(pcm, RATE))
        path.with_suffix(".json").write_text(json.dumps(metadata(at, pcm, RATE, str(uuid.uuid4()))))
    out = tmp_path / "out"

    def probe(mode: str) -> dict:
        """Python's own peak allocation (tracemalloc) or, in a plain run, the peak RSS growth."""
        args = ["--uid", UID, "--local-dir", str(root), "--out", str(out), "--quiet"]
        command = [sys.executable, "-c", MEMORY_PROBE.format(root=str(ROOT)), mode, *args]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        assert result["code"] == 0
        return result

    rss_growth = probe("rss")["rss_growth"]
    traced = probe("trace")["traced"]
    del ballast

    audio = chunks * len(pcm)
    [only] = wavs(out)
    assert only.stat().st_size == wav.HEADER_SIZE + audio
    with open(only, "rb") as f:
        assert wav.parse_header(f.read(wav.HEADER_SIZE)) == (RATE, audio)
        assert all(f.read(len(pcm)) == pcm for _ in range(chunks))
    print(
        f"{audio / 1e6:.0f} MB exported: peak traced {traced / 1e6:.1f} MB, peak RSS growth {rss_growth / 1e6:.1f} MB"
    )
    # What is held is the download window and the index of chunks, never the session.
    assert traced < 16 * 1024 * 1024
    assert rss_growth < 24 * 1024 * 1024  # the audio alone is 96 MB


# -- the whole path --------------------------------------------------------------


def test_audio_streamed_through_the_function_comes_back_as_sent(client, bucket, tmp_path, capsys):
    sent: list[list[bytes]] = [[], []]
    for burst in range(2):
        if burst:
            time.sleep(1.2)  # longer than the --gap below
        for i in range(3):
            pcm = pcm_tone(1, RATE, 10 * burst + i)
            key = str(uuid.uuid4())
            for _ in range(1 if i else 2):  # the first chunk of each burst is retried
                response = client.post(
                    f"/?sample_rate={RATE}&uid={UID}",
                    data=pcm,
                    headers={"Content-Type": "application/octet-stream", "Idempotency-Key": key},
                )
                assert response.status_code == 200
            sent[burst].append(pcm)
    tail = pcm_tone(0.37, RATE, 99)  # the shorter remainder Omi sends after a batch
    assert client.post(f"/?sample_rate={RATE}&uid={UID}", data=tail).status_code == 200
    sent[1].append(tail)

    code, out, err = run(capsys, "export", "--uid", UID, "--out", str(tmp_path / "out"), "--gap", "1")

    assert (code, err) == (0, "")
    first, second = wavs(tmp_path / "out")
    assert_session(first, RATE, sent[0])
    assert_session(second, RATE, sent[1])
    assert "2 session(s)" in out and "7 chunk(s)" in out


@pytest.mark.slow
def test_the_export_bench_runs_end_to_end_and_prints_every_figure(tmp_path):
    """A smoke run at a tiny size; its figures mean something only from `make bench-export`."""
    command = [sys.executable, "bench/export_bench.py", "--chunks", "40", "--per-day", "10", "--repeats", "1"]
    command += ["--conversation-chunks", "300"]
    with open(tmp_path / "bench.txt", "w") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False)
    text = (tmp_path / "bench.txt").read_text()
    assert result.returncode in (0, 1), text  # 1: a goal missed, which a tiny run under load may do
    figures = ["speed-up", "ratio                :", "the stand-in's own list call", "export's own CPU time"]
    for line in [*figures, "export --by conversation of one day (300 chunks, 4 conversations"]:
        assert line in text, text
    for bucket in ("archive", "day alone"):
        assert f"exporting the day from the {bucket}: 2 list call(s) returning 10 names, 10 downloads" in text, text


def test_a_mistyped_uid_is_unknown_naming_the_known_ones(source, tmp_path, capsys):
    store, args = source
    store.put(UID, T0, wav.frame(pcm_tone(1.0), RATE), metadata(T0, pcm_tone(1.0), RATE), uuid.uuid4().hex, 10)
    code, _, err = run(capsys, "export", *args, "--uid", "nobody", "--out", str(tmp_path / "out"))
    assert code == 1 and "unknown uid 'nobody'" in err and f"known: {UID!r}" in err


def test_the_escaped_folder_name_exports_the_uid_it_stands_for(source, tmp_path, capsys):
    store, args = source
    pcm = pcm_tone(1.0)
    store.put("Omi DevKit 2", T0, wav.frame(pcm, RATE), metadata(T0, pcm, RATE), uuid.uuid4().hex, 10)
    code, _, err = run(capsys, "export", *args, "--uid", "Omi~20DevKit~202", "--out", str(tmp_path / "out"))
    assert code == 0 and "is the folder of the uid 'Omi DevKit 2'" in err
    assert [path.name for path in wavs(tmp_path / "out")] == [f"Omi~20DevKit~202_{storage.name_stamp(T0)}.wav"]
