"""The local store takes every uid and conversation id the bucket takes, and reads them back.

An escaped uid folder holds up to 384 bytes and a conversation's name up to 446;
most filesystems take 255 in one file name, Cloud Storage 1,024 in a whole object
name.  The longest of each is stored through both backends and read back through
the listing functions the tools use, and the bucket's names stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import OMI_AUDIO, ROOT, objects, pcm_tone

import storage
import wav

AT = datetime(2026, 11, 28, 20, 12, 11, 123456, tzinfo=UTC)
LONG_UID = "\u00e9" * 64  # 128 bytes of UTF-8, the most a uid holds: a 384-byte folder escaped
LONG_ID = "\u00fc" * 64  # 128 bytes, the most an id holds: a 446-byte file name escaped
UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"  # an Omi uid, shaped like a Firebase uid
ID = "0b7e5d1c-2f4a-4e8b-9c3d-6a1f2e3d4c5b"  # an Omi conversation id, a uuid4


@pytest.fixture(params=["gcs", "local"])
def store(request, tmp_path):
    if request.param == "gcs":
        bucket = request.getfixturevalue("bucket")
        return storage.GcsStore(bucket.name)
    return storage.LocalStore(tmp_path / "recordings")


def conversation_body(conversation_id: str, started_at: datetime = AT) -> bytes:
    return json.dumps({"id": conversation_id, "started_at": started_at.isoformat(), "transcript_segments": []}).encode()


def test_the_longest_names_are_too_long_for_one_file_name_escaped():
    """What the rest of this file is about: these names did not fit on disk."""
    folder = storage.uid_prefix(LONG_UID)
    file = storage.conversation_name(UID, AT, LONG_ID, "0" * 64).rpartition("/")[2]
    assert (len(folder), len(file)) == (384, 446)
    assert len(storage.conversation_name(LONG_UID, AT, LONG_ID, "0" * 64)) <= 1024  # the bucket takes them


def test_the_longest_uid_and_id_are_stored_and_read_back_under_the_same_names_by_both_stores(store):
    audio = wav.frame([pcm_tone(0.1)], 16000)
    body = conversation_body(LONG_ID)
    chunk = store.put(LONG_UID, AT, audio, {"sample_rate": "16000"}, "write-1", 10)
    conversation = store.put_conversation(LONG_UID, AT, LONG_ID, body, {"conversation_id": LONG_ID}, 10)
    # The bucket's names, for either store: the name is the object's, wherever it sits.
    assert chunk.name == storage.object_name(LONG_UID, AT)
    assert conversation.name == storage.conversation_name(LONG_UID, AT, LONG_ID, hashlib.sha256(body).hexdigest())

    assert store.list_uids() == [LONG_UID]
    (listed,) = store.list_chunks(LONG_UID, since=AT - timedelta(seconds=1), until=AT + timedelta(seconds=1))
    assert (listed.name, listed.parts.uid, listed.metadata["sample_rate"]) == (chunk.name, LONG_UID, "16000")
    assert store.read(listed.name) == audio
    (info,) = store.list_conversations(LONG_UID, since=AT - timedelta(days=1), until=AT + timedelta(seconds=1))
    assert (info.name, info.parts.conversation_id, info.size) == (conversation.name, LONG_ID, len(body))
    assert info.metadata["conversation_id"] == LONG_ID
    assert store.read(info.name) == body
    assert list(store.list_conversations(LONG_UID, since=AT + timedelta(seconds=1))) == []
    # Stored again, each is found as itself, not written twice.
    assert store.put(LONG_UID, AT, audio, {}, "write-1", 10).existed
    assert store.put_conversation(LONG_UID, AT, LONG_ID, body, {}, 10).existed
    assert len(list(store.list_chunks(LONG_UID))) == len(list(store.list_conversations(LONG_UID))) == 1


def test_long_and_ordinary_names_side_by_side_each_read_back_as_their_own(tmp_path):
    store = storage.LocalStore(tmp_path)
    for uid in (LONG_UID, UID, "Omi DevKit 2"):
        store.put(uid, AT, wav.frame([pcm_tone(0.1)], 16000), {}, f"w-{uid}", 10)
        for conversation_id in (LONG_ID, ID, "x" * 128):
            store.put_conversation(uid, AT, conversation_id, conversation_body(conversation_id), {}, 10)
    assert store.list_uids() == sorted([LONG_UID, UID, "Omi DevKit 2"])
    for uid in (LONG_UID, UID, "Omi DevKit 2"):
        assert [info.parts.uid for info in store.list_chunks(uid)] == [uid]
        infos = list(store.list_conversations(uid))
        assert [info.name for info in infos] == sorted(info.name for info in infos)  # the bucket's order
        assert sorted(info.parts.conversation_id for info in infos) == sorted([LONG_ID, ID, "x" * 128])
        for info in infos:
            assert json.loads(store.read(info.name))["id"] == info.parts.conversation_id


def test_ordinary_names_are_the_same_in_the_bucket_and_on_disk_as_they_always_were(bucket, tmp_path):
    audio = wav.frame([pcm_tone(0.1)], 16000)
    body = conversation_body(ID)
    digest = hashlib.sha256(body).hexdigest()
    expected = {
        f"{UID}/20261128T201211.123456Z.wav": audio,
        f"{UID}/conversations/20261128T201211.123456Z_{ID}_{digest[:32]}.json": body,
        f"{storage.uid_prefix(LONG_UID)}/20261128T201211.123456Z.wav": audio,
    }
    local = storage.LocalStore(tmp_path)
    for store in (storage.GcsStore(bucket.name), local):
        store.put(UID, AT, audio, {}, "w1", 10)
        store.put_conversation(UID, AT, ID, body, {}, 10)
        store.put(LONG_UID, AT, audio, {}, "w2", 10)
    assert objects(bucket) == expected  # the long uid too: the bucket's names do not change
    for name, data in list(expected.items())[:2]:
        assert (tmp_path / name).read_bytes() == data  # an ordinary uid's files are where they always were
        assert local.location(name) == str(tmp_path / name)


def test_the_function_stores_the_longest_uid_and_id_locally_and_status_reads_them_back(client, local_dir):
    """It answered 503 (File name too long) to every one of them."""
    pcm = pcm_tone(0.5)
    response = client.post(
        f"/?sample_rate=16000&uid={quote(LONG_UID)}", data=pcm, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.get_json()
    stored = Path(response.get_json()["object"])
    assert stored.read_bytes()[wav.HEADER_SIZE :] == pcm
    received_at = datetime.strptime(stored.stem, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    body = conversation_body(LONG_ID, received_at)  # the wall clock's day, as the chunk's, for status to show both
    response = client.post(f"/?uid={quote(LONG_UID)}", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == LONG_ID
    assert Path(response.get_json()["conversation"]).read_bytes() == body

    report = subprocess.run(
        [*OMI_AUDIO, "status", "--local-dir", str(local_dir), "--json", "--quiet",
         "--at", (received_at + timedelta(minutes=1)).isoformat()],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    (listed,) = json.loads(report.stdout)["uids"]
    assert listed["uid"] == LONG_UID
    assert [conversation["id"] for conversation in listed["conversations"]] == [LONG_ID]
