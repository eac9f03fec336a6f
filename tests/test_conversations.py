"""Conversation events beside the audio: how they are named, stored, listed and answered.

The storage half runs against both backends (fake-gcs-server and a local
directory); the webhook half sends the way the Omi backend sends (httpx 0.27,
``json=``, an ``Idempotency-Key``) through functions-framework's app and its
real server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import objects
from counting_proxy import CountingProxy

import storage

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"  # shaped like a Firebase uid
STARTED = datetime(2026, 11, 30, 14, 3, 12, 482913, tzinfo=UTC)
CONVERSATION_ID = "6f1c2a9e-3b7d-4c1e-9a8f-2d5e7b9c0a14"
STRANGE_IDS = ["a_b", "réunion 東京", "../x", "~41", "a/b", "x.json", "-", "_", "~"]


@pytest.fixture(params=["gcs", "local"])
def store(request, tmp_path):
    """Each storage backend, empty."""
    if request.param == "gcs":
        return storage.GcsStore(request.getfixturevalue("bucket").name)
    return storage.LocalStore(tmp_path / "recordings")


def received(at: datetime) -> dict[str, str]:
    return {"received_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z")}


def listed(store, **bounds) -> list[tuple[str, str]]:
    return [(info.parts.conversation_id, info.name) for info in store.list_conversations(UID, **bounds)]


# -- names ------------------------------------------------------------------------


@pytest.mark.parametrize("conversation_id", [CONVERSATION_ID, *STRANGE_IDS, "é" * 64])
def test_a_conversation_name_reads_back_as_its_uid_start_id_and_digest(conversation_id):
    name = storage.conversation_name("Zoë's Omi", STARTED, conversation_id, b"{}")
    parts = storage.parse_conversation_name(name)
    assert parts == storage.ConversationName("Zoë's Omi", STARTED, conversation_id, parts.digest)
    assert len(parts.digest) == 32 and name.endswith(f"_{parts.digest}.json")
    folder, stamp_id_digest = name.rsplit("/", 1)
    assert folder == "Zo~C3~AB~27s~20Omi/conversations"
    assert len(stamp_id_digest.split("_")) == 3  # "_" only separates the stamp, the id and the digest


def test_the_digest_follows_the_exact_bytes():
    first = storage.conversation_name(UID, STARTED, CONVERSATION_ID, b'{"id": "x"}')
    assert storage.conversation_name(UID, STARTED, CONVERSATION_ID, b'{"id": "x"}') == first
    assert storage.conversation_name(UID, STARTED, CONVERSATION_ID, b'{"id":"x"}') != first


@pytest.mark.parametrize("conversation_id", ["", "x" * 129, "é" * 65, "\ud800", 7, None])
def test_an_id_a_name_cannot_hold_is_refused(conversation_id):
    assert not storage.is_valid_conversation_id(conversation_id)
    with pytest.raises(ValueError, match="id must be a string of 1 to 128 bytes"):
        storage.conversation_name(UID, STARTED, conversation_id, b"{}")


@pytest.mark.parametrize(
    "name",
    [
        f"{UID}/conversations/20261130T140312.482913Z_~41_{'0' * 32}.json",  # "A" is never escaped
        f"{UID}/conversations/20261130T140312.482913Z_~e9_{'0' * 32}.json",  # lower-case hex
        f"{UID}/conversations/20261130T140312.482913Z_~FF_{'0' * 32}.json",  # not UTF-8
        f"{UID}/conversations/20261130T140312.482913Z_a_b_{'0' * 32}.json",  # a bare "_" in the id
        f"{UID}/conversations/20261130T140312.482913Z_a_{'0' * 31}.json",
        f"{UID}/conversations/20261130T140312.482913Z_a_{'0' * 32}.meta.json",
        f"{UID}/20261130T140312.482913Z.wav",
    ],
)
def test_names_conversation_name_never_makes_do_not_parse(name):
    assert storage.parse_conversation_name(name) is None


def test_conversation_names_and_chunk_names_never_parse_as_each_other():
    conversation = storage.conversation_name(UID, STARTED, CONVERSATION_ID, b"{}")
    chunk = storage.object_name(UID, STARTED)
    assert storage.parse_object_name(conversation) is None
    assert storage.parse_conversation_name(chunk) is None


# -- storing and listing ------------------------------------------------------------


def test_a_conversation_is_stored_as_its_exact_bytes_with_its_metadata(store):
    body = json.dumps({"id": CONVERSATION_ID, "structured": {"title": "Café ☕"}}, ensure_ascii=False)
    metadata = {**received(STARTED), "conversation_id": CONVERSATION_ID, "title": "Café ☕"}
    stored = store.put_conversation(UID, STARTED, CONVERSATION_ID, body.encode(), metadata, 10)
    assert not stored.existed
    assert store.read(stored.name) == body.encode()
    (info,) = store.list_conversations(UID)
    assert (info.name, info.size, info.metadata) == (stored.name, len(body.encode()), metadata)
    assert info.parts == storage.parse_conversation_name(stored.name)


def test_a_gcs_conversation_is_json_under_the_uid_folder(bucket):
    stored = storage.GcsStore(bucket.name).put_conversation(UID, STARTED, CONVERSATION_ID, b"{}", {}, 10)
    blob = bucket.get_blob(stored.name)
    assert blob.content_type == "application/json"
    assert stored.location == f"gs://{bucket.name}/{stored.name}"
    assert stored.name.startswith(f"{UID}/conversations/20261130T140312.482913Z_{CONVERSATION_ID}_")


def test_the_same_bytes_again_are_already_stored_and_keep_the_first_metadata(store):
    first = store.put_conversation(UID, STARTED, CONVERSATION_ID, b"{}", received(STARTED), 10)
    again = store.put_conversation(UID, STARTED, CONVERSATION_ID, b"{}", received(STARTED + timedelta(1)), 10)
    assert (again.name, again.existed) == (first.name, True)
    (info,) = store.list_conversations(UID)
    assert info.metadata == received(STARTED)


def test_a_changed_version_is_stored_beside_the_old_and_readers_take_the_newest(store):
    old = store.put_conversation(UID, STARTED, CONVERSATION_ID, b'{"v": 1}', received(STARTED), 10)
    later = STARTED + timedelta(hours=2)
    new = store.put_conversation(UID, STARTED, CONVERSATION_ID, b'{"v": 2}', received(later), 10)
    assert new.name != old.name and not new.existed
    versions = list(store.list_conversations(UID))
    assert sorted(info.name for info in versions) == sorted([old.name, new.name])
    assert [info.name for info in storage.newest_versions(versions)] == [new.name]
    assert store.read(old.name) == b'{"v": 1}'


def test_newest_versions_keeps_one_per_id_sorted_by_start():
    def info(conversation_id: str, starts_at: datetime, received_at: datetime, digest: str):
        parts = storage.ConversationName(UID, starts_at, conversation_id, digest)
        return storage.ConversationInfo(f"{conversation_id}-{digest}", 2, received(received_at), parts)

    later_start = STARTED + timedelta(minutes=30)
    a_old, a_new = info("a", later_start, STARTED, "1"), info("a", later_start, STARTED + timedelta(1), "0")
    b_old, b_tie = info("b", STARTED, STARTED, "1"), info("b", STARTED, STARTED, "2")
    assert storage.newest_versions([a_new, b_tie, a_old, b_old]) == [b_tie, a_new]
    assert storage.newest_versions([a_old, a_new, b_old, b_tie]) == [b_tie, a_new]


def test_conversations_are_listed_by_start_in_since_until(store):
    starts = [STARTED + timedelta(hours=h) for h in range(4)]
    for n, at in enumerate(starts):
        store.put_conversation(UID, at, f"c{n}", b"{}", received(at), 10)
    store.put_conversation("someone else", starts[1], "other", b"{}", {}, 10)
    assert [i for i, _ in listed(store)] == ["c0", "c1", "c2", "c3"]
    assert [i for i, _ in listed(store, since=starts[1], until=starts[3])] == ["c1", "c2"]
    assert [i for i, _ in listed(store, since=starts[1] + timedelta(microseconds=1))] == ["c2", "c3"]
    assert [i for i, _ in listed(store, until=starts[0])] == []


def test_strange_ids_are_stored_and_listed_as_sent(store):
    for conversation_id in STRANGE_IDS:
        store.put_conversation(UID, STARTED, conversation_id, conversation_id.encode(), {}, 10)
    assert sorted(i for i, _ in listed(store)) == sorted(STRANGE_IDS)


def test_audio_listings_never_list_conversations(store):
    """Chunk listings, bounded or open-ended, neither return nor cost anything for conversations."""
    store.put(UID, STARTED, b"RIFF", {}, "w1", 10)
    for n in range(5):
        store.put_conversation(UID, STARTED - timedelta(hours=n), f"c{n}", b"{}", {}, 10)
    for since in (None, STARTED - timedelta(days=1)):
        assert [c.name for c in store.list_chunks(UID, since)] == [storage.object_name(UID, STARTED)]
    assert len(list(store.list_conversations(UID))) == 5


def test_an_open_ended_audio_listing_lists_no_conversation_name(bucket, fake_gcs, monkeypatch):
    store = storage.GcsStore(bucket.name)
    store.put(UID, STARTED, b"RIFF", {}, "w1", 10)
    for n in range(5):
        store.put_conversation(UID, STARTED + timedelta(hours=n), f"c{n}", b"{}", {}, 10)
    with CountingProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        chunks = list(storage.GcsStore(bucket.name).list_chunks(UID, STARTED - timedelta(days=1)))
    assert len(chunks) == 1
    assert (len(proxy.list_calls), proxy.names_listed) == (1, 1)
    assert len(objects(bucket)) == 6
