"""omi-audio status: whether audio still arrives, per UTC day, listing only the days it reports.

Chunks are written with the real storage module into fake-gcs-server and into a
local directory; listing costs are counted at a proxy in front of the server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OMI_AUDIO, ROOT, pcm_tone, run
from storage_proxy import StorageProxy

import storage
import wav
from omi_audio import status

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
RATE = 16000
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def put(store, at: datetime, seconds: float = 1.0, uid: str = UID, rate: int = RATE) -> str:
    pcm = pcm_tone(seconds, rate, int(at.timestamp()) % 1000)
    meta = {"sample_rate": str(rate), "pcm_bytes": str(len(pcm))}
    return store.put(uid, at, wav.frame(pcm, rate), meta, uuid.uuid4().hex, 10).name


@pytest.fixture(params=["gcs", "local"])
def source(request, tmp_path):
    if request.param == "gcs":
        bucket = request.getfixturevalue("bucket")
        return storage.GcsStore(bucket.name), ["--bucket", bucket.name]
    root = tmp_path / "recordings"
    root.mkdir()
    return storage.LocalStore(root), ["--local-dir", str(root)]


def put_many(store, times: list[datetime]) -> None:
    """Store a tiny chunk at each time, eight at once."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda at: put(store, at, seconds=0.01), times))


def report(capsys, *args: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, "status", *args, "--json", "--at", NOW.isoformat())
    return code, json.loads(out)


def test_each_day_shows_audio_sessions_first_last_and_longest_gap(source, capsys):
    store, args = source
    day1 = datetime(2025, 3, 8, 9, 0, tzinfo=UTC)
    for i in range(10):  # 10 s, then 10 minutes of silence, then 5 s: two sessions
        put(store, day1 + timedelta(seconds=i))
    for i in range(5):
        put(store, day1 + timedelta(seconds=609 + i), seconds=0.5)
    put(store, datetime(2025, 3, 10, 11, 30, tzinfo=UTC), seconds=2)  # today, half an hour ago
    put(store, datetime(2025, 3, 1, 8, 0, tzinfo=UTC))  # before the reported days

    code, doc = report(capsys, "--uid", UID, *args, "--days", "3")

    assert code == 0 and doc["stale"] is False
    [uid] = doc["uids"]
    assert (uid["uid"], uid["last_chunk"], uid["seconds_since_last"], uid["stale"]) == (
        UID,
        "2025-03-10T11:30:00Z",
        1800.0,
        False,
    )
    day8, day9, day10 = uid["days"]
    assert day8 == {
        "date": "2025-03-08",
        "chunks": 15,
        "conversations": 0,
        "audio_seconds": 12.5,
        "sessions": 2,
        "first_chunk": "2025-03-08T09:00:00Z",
        "last_chunk": "2025-03-08T09:10:13Z",
        "longest_gap_seconds": 600.0,
        "longest_gap_from": "2025-03-08T09:00:09Z",
        "no_audio": False,
    }
    assert day9["date"] == "2025-03-09" and day9["no_audio"] and day9["chunks"] == 0 and day9["sessions"] == 0
    assert (day10["chunks"], day10["audio_seconds"], day10["sessions"], day10["longest_gap_seconds"]) == (
        1,
        2.0,
        1,
        None,
    )
    assert uid["names_listed"] == 16  # the three days only


def test_chunks_exactly_the_gap_apart_are_one_session_and_a_microsecond_more_makes_two(source, capsys):
    store, args = source
    day = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
    for at in [day, day + timedelta(seconds=10), day + timedelta(seconds=20, microseconds=1)]:
        put(store, at, seconds=0.1)

    code, doc = report(capsys, "--uid", UID, *args, "--days", "1", "--gap", "10")

    assert code == 0
    [today] = doc["uids"][0]["days"]
    assert (today["chunks"], today["sessions"], today["longest_gap_seconds"]) == (3, 2, 10.000001)


def test_an_unreadable_name_or_metadata_is_one_warning_and_the_report_goes_on(source, capsys):
    store, args = source
    put(store, datetime(2025, 3, 10, 9, 0, tzinfo=UTC))
    pcm = pcm_tone(0.5, RATE, 1)
    odd_meta = {"sample_rate": "²", "pcm_bytes": "²"}  # "²".isdigit() is True, int("²") fails
    store.put(UID, datetime(2025, 3, 10, 9, 0, 1, tzinfo=UTC), wav.frame(pcm, RATE), odd_meta, uuid.uuid4().hex, 10)
    minute_60 = f"{UID}/20250310T096000.000000Z.wav"  # NAME_RE's shape, in the reported day, but no such time
    if isinstance(store, storage.GcsStore):
        store.bucket.blob(minute_60).upload_from_string(wav.frame(pcm, RATE))
    else:
        (store.root / minute_60).write_bytes(wav.frame(pcm, RATE))

    code, out, err = run(capsys, "status", "--uid", UID, *args, "--days", "1", "--json", "--at", NOW.isoformat())

    assert code == 0
    assert err.splitlines() == [f"warning: skipped {minute_60}: its name holds no real time"]
    [today] = json.loads(out)["uids"][0]["days"]
    assert (today["chunks"], today["sessions"], today["audio_seconds"]) == (2, 1, 1.0)  # no rate: not counted


def test_the_table_reads_at_a_glance(source, capsys):
    store, args = source
    put(store, datetime(2025, 3, 9, 23, 59, 59, tzinfo=UTC))
    put(store, datetime(2025, 3, 10, 0, 1, tzinfo=UTC))

    code, out, err = run(capsys, "status", "--uid", UID, *args, "--days", "3", "--at", NOW.isoformat())

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{UID}: last chunk 2025-03-10 00:01:00 UTC, 11 h 59 min ago  [OK]"
    header = ["DAY", "(UTC)", "AUDIO", "SESSIONS", "CHUNKS", "CONVERSATIONS", "FIRST", "LAST", "LONGEST", "GAP"]
    assert lines[1].split() == header
    assert lines[2].split() == ["2025-03-08", "-", "-", "-", "-", "-", "-", "no", "audio"]
    # A session that runs over midnight counts on both days.
    assert lines[3].split()[:7] == ["2025-03-09", "0:00:01.0", "1", "1", "-", "23:59:59", "23:59:59"]
    assert lines[4].split()[:7] == ["2025-03-10", "0:00:01.0", "1", "1", "-", "00:01:00", "00:01:00"]


def test_days_in_a_row_with_nothing_are_one_row_and_the_json_keeps_every_day(source, capsys):
    store, args = source
    put(store, datetime(2025, 2, 28, 9, 0, tzinfo=UTC))
    put(store, datetime(2025, 3, 10, 11, 0, tzinfo=UTC))
    common = ["--uid", UID, *args, "--days", "14"]

    code, out, err = run(capsys, "status", *common, "--at", NOW.isoformat())
    _, document = report(capsys, *common)

    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()[2:]] == [
        "2025-02-25..02-27",
        "2025-02-28",
        "2025-03-01..03-09",
        "2025-03-10",
    ]
    assert out.splitlines()[4].split()[-4:] == ["no", "audio,", "9", "days"]
    assert len(document["uids"][0]["days"]) == 14


def test_nothing_for_longer_than_alert_after_is_exit_3(source, capsys):
    store, args = source
    put(store, NOW - timedelta(hours=5))

    assert run(capsys, "status", "--uid", UID, *args, "--at", NOW.isoformat())[0] == 0
    code, out, err = run(capsys, "status", "--uid", UID, *args, "--at", NOW.isoformat(), "--alert-after", "4h")
    assert code == status.EXIT_STALE == 3
    assert "[STALE: nothing for more than 4 h]" in out and "no audio arrived in the last 4 h" in err
    assert run(capsys, "status", "--uid", UID, *args, "--at", NOW.isoformat(), "--alert-after", "301m")[0] == 0
    assert run(capsys, "status", "--uid", "never-sent", *args, "--at", NOW.isoformat())[0] == 1  # unknown, not stale


def test_the_last_chunk_before_the_reported_days_is_found_without_listing_the_archive(
    bucket, fake_gcs, monkeypatch, capsys
):
    store = storage.GcsStore(bucket.name)
    last = datetime(2025, 2, 18, 17, 42, 7, 123456, tzinfo=UTC)  # audio stopped 20 days before NOW
    put_many(store, [last - timedelta(days=day, seconds=10 * i) for day in range(40) for i in range(15)])

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, doc = report(capsys, "--uid", UID, "--bucket", bucket.name, "--days", "7")

    [uid] = doc["uids"]
    assert code == 3
    assert uid["last_chunk"] == "2025-02-18T17:42:07Z"
    assert uid["seconds_since_last"] == (NOW - last).total_seconds()
    print(
        f"last chunk 20 days back: {len(proxy.list_calls)} list calls, {proxy.names_listed} names, "
        f"{proxy.downloads} downloads"
    )
    assert proxy.downloads == 0
    # Probes that ask for one name each, then one minute of chunks (at most 6 here): never the 600;
    # compacted days are listed twice (the reported days, the look back), each a range of day folders.
    compacted_calls = [call for call in proxy.list_calls if call.query["prefix"] == [f"{UID}/compacted/"]]
    assert len(compacted_calls) == 2 and all(call.names == 0 and call.query["startOffset"] for call in compacted_calls)
    _window, *probes, final, conversations = [call for call in proxy.list_calls if call not in compacted_calls]
    assert conversations.query["prefix"] == [f"{UID}/conversations/"] and conversations.names == 0
    assert all(call.query.get("maxResults") == ["1"] and call.names <= 1 for call in probes)
    assert final.names <= 6 and proxy.names_listed <= len(proxy.list_calls) + 6
    assert len(proxy.list_calls) <= 43


def test_status_lists_only_the_days_it_reports(bucket, fake_gcs, monkeypatch, capsys):
    store = storage.GcsStore(bucket.name)
    put_many(store, [NOW - timedelta(days=day, minutes=i) for day in range(30) for i in range(10)])

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, doc = report(capsys, "--uid", UID, "--bucket", bucket.name, "--days", "3")

    assert code == 0
    assert [day["chunks"] for day in doc["uids"][0]["days"]] == [10, 10, 10]
    print(f"3 days of 30: {len(proxy.list_calls)} list call(s), {proxy.names_listed} names")
    # the audio, its compacted days' folders (none here), the conversations
    assert (len(proxy.list_calls), proxy.names_listed, proxy.downloads) == (3, 30, 0)


def test_with_no_uid_every_uid_is_reported_from_one_folder_listing(bucket, fake_gcs, monkeypatch, capsys):
    store = storage.GcsStore(bucket.name)
    put(store, NOW - timedelta(hours=1), uid="Omi DevKit 2")
    put(store, NOW - timedelta(days=3), uid=UID)
    bucket.blob("notes.txt").upload_from_string(b"not a chunk")  # no uid folder
    bucket.blob("bad~zz/20250101T000000.000000Z.wav").upload_from_string(b"x")  # no uid makes this folder

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, doc = report(capsys, "--bucket", bucket.name, "--days", "2")
        folder_listings = [call for call in proxy.list_calls if call.query.get("delimiter") == ["/"]]
        stale_code, stale_doc = report(capsys, "--bucket", bucket.name, "--alert-after", "30m")

    assert code == 0 and doc["stale"] is False  # one uid is still sending
    assert [(u["uid"], u["stale"]) for u in doc["uids"]] == [("Omi DevKit 2", False), (UID, True)]
    assert len(folder_listings) == 1 and folder_listings[0].names <= 1
    assert stale_code == 3 and stale_doc["stale"] is True


def test_no_uid_at_all_is_stale(source, capsys):
    _, args = source
    code, out, err = run(capsys, "status", *args, "--at", NOW.isoformat())
    assert (code, out) == (3, "") and "no uid has any chunk" in err


def test_a_missing_bucket_is_exit_1(fake_gcs, capsys):
    code, _, err = run(capsys, "status", "--bucket", "no-such-bucket")
    assert code == 1 and "could not list gs://no-such-bucket/" in err


def test_control_characters_in_what_status_prints_are_replaced(tmp_path, capsys):
    root = tmp_path / "store\x1b]0;owned\x07\x9b2J"  # a name that would retitle and clear the terminal
    root.mkdir()

    code, out, err = run(capsys, "status", "--local-dir", str(root))

    assert (code, out) == (3, "")
    assert "store\ufffd]0;owned\ufffd\ufffd2J" in err
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", err)  # no C0 but the line ends, no DEL, no C1


@pytest.mark.parametrize("key_file", [None, "/nonexistent/key.json"])
def test_missing_credentials_are_one_line_naming_the_fix_and_exit_1(tmp_path, key_file):
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env |= {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}  # no gcloud login to find
    # google-auth would otherwise probe the metadata server at 169.254.169.254.
    env |= {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
    if key_file:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = key_file

    done = subprocess.run(
        [*OMI_AUDIO, "status", "--bucket", "my-bucket"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )

    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("error: no Google Cloud credentials to read gs://my-bucket")
    assert "`gcloud auth application-default login`" in line
    assert (key_file is not None) == (f"File {key_file} was not found" in line)


@pytest.mark.parametrize(
    "bad",
    [["--days", "0"], ["--days", "x"], ["--alert-after", "soon"], ["--alert-after", "0h"], ["--uid", "a\nb"]],
)
def test_bad_arguments_exit_2(tmp_path, capsys, bad):
    code, out, err = run(capsys, "status", "--local-dir", str(tmp_path), *bad)
    assert code == 2 and out == "" and "error" in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("2d", 172800), ("6", 21600), ("1.5h", 5400)]
)
def test_alert_after_takes_a_duration(text, seconds):
    assert status.duration_arg(text).total_seconds() == seconds


def test_runs_as_a_script_from_cron(tmp_path):
    store = storage.LocalStore(tmp_path / "rec")
    put(store, datetime.now(UTC) - timedelta(minutes=5), uid="Omi DevKit 2")
    command = [
        *OMI_AUDIO,
        "status",
        "--local-dir",
        str(tmp_path / "rec"),
        "--uid",
        "Omi DevKit 2",
    ]

    fresh = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    stale = subprocess.run([*command, "--alert-after", "2m"], cwd=ROOT, capture_output=True, text=True)

    assert fresh.returncode == 0 and " ago  [OK]" in fresh.stdout  # "5 min 01 s ago" on a slow run
    assert stale.returncode == 3 and "STALE" in stale.stdout


def put_conversation(store, started: datetime, conversation_id: str, title: str, received: datetime) -> str:
    metadata = {
        "conversation_id": conversation_id,
        "received_at": received.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "started_at": started.isoformat(),
        "finished_at": (started + timedelta(minutes=20)).isoformat(),
        "title": title,
    }
    body = json.dumps({"id": conversation_id, "structured": {"title": title}}).encode()
    return store.put_conversation(UID, started, conversation_id, body, metadata, 10).name


def test_conversations_are_counted_per_day_by_their_newest_version(source, capsys):
    store, args = source
    put(store, NOW - timedelta(minutes=30))
    morning, evening = datetime(2025, 3, 10, 9, 0, 0, 250000, tzinfo=UTC), datetime(2025, 3, 8, 18, 30, tzinfo=UTC)
    put_conversation(store, evening, "c-evening", "Dîner", evening + timedelta(minutes=25))
    put_conversation(store, morning, "c-morning", "Voyage", morning + timedelta(minutes=25))
    put_conversation(store, morning, "c-morning", "Voyage à Tokyo", morning + timedelta(hours=3))  # reprocessed
    put_conversation(store, datetime(2025, 3, 1, 8, 0, tzinfo=UTC), "c-old", "Avant", NOW)  # before the days shown

    code, doc = report(capsys, "--uid", UID, *args, "--days", "3")
    assert code == 0
    [uid] = doc["uids"]
    assert [day["conversations"] for day in uid["days"]] == [1, 0, 1]
    assert uid["last_conversation"] == "2025-03-10T09:00:00Z"
    assert uid["conversations"] == [
        {
            "id": "c-evening",
            "title": "Dîner",
            "started_at": "2025-03-08T18:30:00+00:00",
            "finished_at": "2025-03-08T18:50:00+00:00",
        },
        {
            "id": "c-morning",
            "title": "Voyage à Tokyo",
            "started_at": "2025-03-10T09:00:00.250000+00:00",
            "finished_at": "2025-03-10T09:20:00.250000+00:00",
        },
    ]

    code, out, _ = run(capsys, "status", "--uid", UID, *args, "--days", "3", "--at", NOW.isoformat())
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"{UID}: last chunk 2025-03-10 11:30:00 UTC, 30 min ago; last conversation 2025-03-10 09:00:00 UTC  [OK]"
    )
    assert [line.split()[4] for line in lines[2:]] == ["1", "-", "1"]
    assert lines[2].split() == ["2025-03-08", "-", "-", "-", "1", "-", "-", "no", "audio"]


def test_conversations_are_counted_from_their_names_and_metadata_without_downloads(
    bucket, fake_gcs, monkeypatch, capsys
):
    store = storage.GcsStore(bucket.name)
    put(store, NOW - timedelta(minutes=1))
    for n in range(12):
        at = NOW - timedelta(hours=4 * n + 1)
        put_conversation(store, at, f"c{n}", f"n° {n}", at + timedelta(minutes=30))
    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, doc = report(capsys, "--uid", UID, "--bucket", bucket.name, "--days", "2")
    assert code == 0
    assert [day["conversations"] for day in doc["uids"][0]["days"]] == [6, 3]  # the three before are not shown
    assert [c["title"] for c in doc["uids"][0]["conversations"]] == [f"n° {n}" for n in range(8, -1, -1)]
    assert (proxy.downloads, len(proxy.list_calls), proxy.names_listed) == (0, 3, 10)  # + compacted days (none)


def test_a_mistyped_uid_is_unknown_naming_the_known_ones_not_stale(source, capsys):
    store, args = source
    put(store, NOW - timedelta(minutes=5))
    code, out, err = run(capsys, "status", *args, "--uid", UID[:-1] + "X", "--at", NOW.isoformat())
    assert (code, out) == (1, "")
    assert f"unknown uid {UID[:-1] + 'X'!r}" in err and f"known: {UID!r}" in err and "STALE" not in err


def test_the_escaped_folder_name_reads_the_uid_it_stands_for(source, capsys):
    store, args = source
    put(store, NOW - timedelta(minutes=5), uid="Omi DevKit 2")
    code, document = report(capsys, *args, "--uid", "Omi~20DevKit~202")
    assert code == 0 and [entry["uid"] for entry in document["uids"]] == ["Omi DevKit 2"]


def test_a_stale_headline_never_shows_the_same_duration_as_its_limit(source, capsys):
    store, args = source
    put(store, NOW - timedelta(seconds=90))
    code, out, _ = run(capsys, "status", "--uid", UID, *args, "--at", NOW.isoformat(), "--alert-after", "1m")
    assert code == 3 and "1 min 30 s ago" in out and "[STALE: nothing for more than 1 min]" in out


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (45, "45 s"),
        (60, "1 min"),
        (90, "1 min 30 s"),
        (599, "9 min 59 s"),
        (630, "10 min"),
        (3 * 3600 + 300, "3 h 05 min"),
    ],
)
def test_durations_read_at_a_glance(seconds, shown):
    assert status.human_duration(seconds) == shown
