"""Conversation events beside the audio: how they are named, stored, listed and answered.

The storage half runs against both backends (fake-gcs-server and a local
directory); the webhook half sends the way the Omi backend sends (httpx 0.27,
``json=``, an ``Idempotency-Key``) through functions-framework's app and its
real server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import log_lines, objects, serve_function
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_proxy import StorageProxy, is_any

import conversation
import main
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

EMPTY_DIGEST = hashlib.sha256(b"{}").hexdigest()


@pytest.mark.parametrize("conversation_id", [CONVERSATION_ID, *STRANGE_IDS, "é" * 64])
def test_a_conversation_name_reads_back_as_its_uid_start_id_and_digest(conversation_id):
    name = storage.conversation_name("Zoë's Omi", STARTED, conversation_id, EMPTY_DIGEST)
    parts = storage.parse_conversation_name(name)
    assert parts == storage.ConversationName("Zoë's Omi", STARTED, conversation_id, parts.digest)
    assert len(parts.digest) == 32 and name.endswith(f"_{parts.digest}.json")
    folder, stamp_id_digest = name.rsplit("/", 1)
    assert folder == "Zo~C3~AB~27s~20Omi/conversations"
    assert len(stamp_id_digest.split("_")) == 3  # "_" only separates the stamp, the id and the digest


def test_the_digest_follows_the_exact_bytes(tmp_path):
    store = storage.LocalStore(tmp_path)
    first = store.put_conversation(UID, STARTED, CONVERSATION_ID, b'{"id": "x"}', {}, 10)
    again = store.put_conversation(UID, STARTED, CONVERSATION_ID, b'{"id": "x"}', {}, 10)
    changed = store.put_conversation(UID, STARTED, CONVERSATION_ID, b'{"id":"x"}', {}, 10)
    assert (again.name, again.existed) == (first.name, True) and changed.name != first.name
    assert storage.parse_conversation_name(first.name).digest == hashlib.sha256(b'{"id": "x"}').hexdigest()[:32]


@pytest.mark.parametrize("conversation_id", ["", "x" * 129, "é" * 65, "\ud800", 7, None])
def test_an_id_a_name_cannot_hold_is_refused(conversation_id):
    assert not storage.is_valid_conversation_id(conversation_id)
    with pytest.raises(ValueError, match="id must be a string of 1 to 128 bytes"):
        storage.conversation_name(UID, STARTED, conversation_id, EMPTY_DIGEST)


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
    conversation = storage.conversation_name(UID, STARTED, CONVERSATION_ID, EMPTY_DIGEST)
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
    sha256 = hashlib.sha256(body.encode()).hexdigest()  # the store adds the body's digest
    assert (info.name, info.size, info.metadata) == (stored.name, len(body.encode()), {**metadata, "sha256": sha256})
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
    assert info.metadata == {**received(STARTED), "sha256": EMPTY_DIGEST}


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
    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        chunks = list(storage.GcsStore(bucket.name).list_chunks(UID, STARTED - timedelta(days=1)))
    assert len(chunks) == 1
    assert (len(proxy.list_calls), proxy.names_listed) == (1, 1)
    assert len(objects(bucket)) == 6


# -- the webhook ----------------------------------------------------------------------

TOKEN = "conversation-test-token-0123"
QUERY = f"token={TOKEN}&uid={UID}"  # Omi merges uid into the configured URL; no sample_rate
TITLE = "Réunion avec Zoë: 東京の計画 ☕"


def omi_conversation(
    conversation_id: str = CONVERSATION_ID, segments: int = 2000, title: str = TITLE, started: datetime | None = STARTED
) -> dict:
    """A conversation event shaped as the Omi backend posts it (times from Python's isoformat())."""
    at = started or STARTED
    finished = at + timedelta(seconds=segments * 4.2 + 3.9)
    return {
        "id": conversation_id,
        "created_at": (finished + timedelta(seconds=4.5)).isoformat(),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if started else None,
        "source": "omi",
        "language": "fr",
        "status": "completed",
        "discarded": False,
        "visibility": "private",
        "structured": {
            "title": title,
            "overview": "On a fixé le voyage à Tokyo; Sam réserve les billets.",
            "emoji": "🗾",
            "category": "travel",
            "action_items": [{"description": "Réserver les billets", "completed": False}],
            "events": [{"title": "Départ", "start": finished.isoformat(), "duration": 60, "created": False}],
        },
        "transcript_segments": [
            {
                "id": str(uuid.UUID(int=n)),
                "text": f"segment {n}: on en parle encore, d'accord? — はい",
                "speaker": f"SPEAKER_{n % 3:02d}",
                "speaker_id": n % 3,
                "is_user": n % 3 == 0,
                "person_id": None,
                "start": round(n * 4.2, 3),
                "end": round(n * 4.2 + 3.9, 3),
                "translations": [],
                "speech_profile_processed": True,
            }
            for n in range(segments)
        ],
        "geolocation": {"latitude": 48.8566, "longitude": 2.3522, "address": "Paris, France"},
        "photos": [],
        "apps_results": [{"app_id": "summary", "content": "Un voyage."}],
        "external_data": None,
    }


def post_json(client, payload, key: str | None = None, query: str = QUERY, **headers):
    """POST through functions-framework's app as Omi does: a JSON body and an Idempotency-Key."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **headers}
    if key is not False:
        headers["Idempotency-Key"] = key or str(uuid.uuid4())
    return client.post(f"/?{query}", data=body, headers=headers)


@pytest.fixture
def configured(bucket, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    return bucket


@pytest.fixture
def server(configured, fake_gcs, tmp_path):
    """The real functions-framework server, storing through a fault proxy."""
    with (
        StorageProxy(fake_gcs) as faults,
        serve_function(
            tmp_path / "server.log",
            GCS_BUCKET_NAME=configured.name,
            WEBHOOK_TOKEN=TOKEN,
            STORAGE_EMULATOR_HOST=faults.url,
            STORAGE_DEADLINE_SECONDS="1",
        ) as (url, _),
        httpx.Client(timeout=httpx.Timeout(30, connect=2)) as omi,  # the backend's client and timeouts
    ):
        yield url, omi, faults


def send(omi: httpx.Client, url: str, payload: dict, key: str, query: str = QUERY) -> tuple[httpx.Response, bytes]:
    """POST as the Omi backend does (httpx ``json=``); returns the answer and the exact body sent."""
    request = omi.build_request("POST", f"{url}/?{query}", json=payload, headers={"Idempotency-Key": key})
    return omi.send(request), request.content


def test_a_conversation_posted_as_omi_posts_it_is_stored_once_byte_identical(configured, server):
    url, omi, _ = server
    key = str(uuid.uuid4())
    response, body = send(omi, url, omi_conversation(), key)
    assert response.status_code == 200, response.text
    (name,) = objects(configured)
    assert response.json() == {
        "conversation": f"gs://{configured.name}/{name}",
        "id": CONVERSATION_ID,
        "bytes": len(body),
    }
    assert objects(configured)[name] == body
    print(f"2,000-segment conversation: {len(body):,} bytes")
    assert name.startswith(f"{UID}/conversations/20261130T140312.482913Z_{CONVERSATION_ID}_")
    blob = configured.get_blob(name)
    assert blob.content_type == "application/json"
    metadata = dict(blob.metadata)
    received_at = metadata.pop("received_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", received_at)
    assert metadata == {
        "conversation_id": CONVERSATION_ID,
        "started_at": "2026-11-30T14:03:12.482913+00:00",
        "finished_at": "2026-11-30T16:23:16.382913+00:00",
        "title": TITLE,
        "sha256": hashlib.sha256(body).hexdigest(),
        "idempotency_key": key,
    }


def test_a_retry_after_a_lost_answer_is_told_already_stored_and_stores_nothing_more(configured, server):
    """The upload landed but storage's answer never came: 503 at the deadline, then the retry finds it."""
    url, omi, faults = server
    faults.arm("hang-after", times=1)
    key = str(uuid.uuid4())
    first, body = send(omi, url, omi_conversation(), key)
    assert first.status_code == 503 and "retry" in first.json()["error"]
    faults.release()
    retry, _ = send(omi, url, omi_conversation(), key)
    assert retry.status_code == 200, retry.text
    (name,) = objects(configured)
    location = f"gs://{configured.name}/{name}"
    assert retry.json() == {"conversation": location, "id": CONVERSATION_ID, "bytes": len(body), "duplicate": True}
    assert objects(configured)[name] == body
    assert faults.count("hang-after") == 1


def test_a_delivery_whose_storage_answer_is_cut_is_stored_once(configured, server):
    url, omi, faults = server
    faults.arm("cut", times=1)
    response, body = send(omi, url, omi_conversation(), str(uuid.uuid4()))
    assert response.status_code == 200, response.text
    assert list(objects(configured).values()) == [body]
    assert faults.count("cut") == 1


def test_storage_down_gets_503_writes_nothing_and_the_retry_stores_it(configured, server):
    url, omi, faults = server
    faults.arm("503", match=is_any)
    key = str(uuid.uuid4())
    first, body = send(omi, url, omi_conversation(), key)
    assert first.status_code == 503 and first.json() == {"error": "storage is unavailable: retry later"}
    faults.clear()
    assert objects(configured) == {}
    retry, _ = send(omi, url, omi_conversation(), key)
    assert retry.status_code == 200 and "duplicate" not in retry.json()
    assert list(objects(configured).values()) == [body]


def test_the_same_delivery_again_is_a_duplicate_naming_the_same_object(configured, client):
    key = str(uuid.uuid4())
    first = post_json(client, omi_conversation(segments=3), key)
    again = post_json(client, omi_conversation(segments=3), key)
    assert first.status_code == again.status_code == 200
    assert again.get_json() == {**first.get_json(), "duplicate": True}
    assert len(objects(configured)) == 1


def test_a_byte_identical_body_under_a_new_key_is_stored_once(configured, client):
    first = post_json(client, omi_conversation(segments=3))
    again = post_json(client, omi_conversation(segments=3))
    assert again.get_json() == {**first.get_json(), "duplicate": True}
    assert len(objects(configured)) == 1


def test_a_reprocessed_conversation_adds_a_version_that_readers_prefer(configured, client):
    old = post_json(client, omi_conversation(segments=3, title="Voyage"))
    new = post_json(client, omi_conversation(segments=4, title="Voyage à Tokyo"))
    assert old.status_code == new.status_code == 200
    old_name = old.get_json()["conversation"].removeprefix(f"gs://{configured.name}/")
    new_name = new.get_json()["conversation"].removeprefix(f"gs://{configured.name}/")
    assert old_name != new_name and "duplicate" not in new.get_json()
    store = storage.GcsStore(configured.name)
    (newest,) = storage.newest_versions(store.list_conversations(UID))
    assert (newest.name, newest.metadata["title"]) == (new_name, "Voyage à Tokyo")
    assert json.loads(store.read(old_name))["structured"]["title"] == "Voyage"


def test_a_conversation_without_started_at_is_named_by_created_at(configured, client):
    payload = omi_conversation(segments=2, started=None)
    response = post_json(client, payload)
    assert response.status_code == 200
    (info,) = storage.GcsStore(configured.name).list_conversations(UID)
    assert info.parts.starts_at == datetime.fromisoformat(payload["created_at"])
    assert "started_at" not in info.metadata and "finished_at" not in info.metadata


def test_a_conversation_with_no_time_is_named_by_its_first_receipt_even_when_retried(configured, client):
    payload = {"id": CONVERSATION_ID, "started_at": None, "created_at": "yesterday"}
    key = str(uuid.uuid4())
    before = datetime.now(UTC)
    first = post_json(client, payload, key)
    again = post_json(client, payload, key)
    assert again.get_json() == {**first.get_json(), "duplicate": True}
    (info,) = storage.GcsStore(configured.name).list_conversations(UID)
    assert before <= info.parts.starts_at <= datetime.now(UTC)
    assert info.metadata["received_at"] == info.parts.starts_at.isoformat().replace("+00:00", "Z")


def test_raw_utf8_bodies_and_non_ascii_ids_are_stored_as_sent(configured, client):
    conversation_id = "réunion_東京 #1"
    body = json.dumps(omi_conversation(conversation_id, segments=5), ensure_ascii=False).encode()
    response = post_json(client, body, **{"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == conversation_id
    (name, stored), *_ = objects(configured).items()
    assert stored == body
    assert storage.parse_conversation_name(name).conversation_id == conversation_id


def test_a_local_store_keeps_the_body_and_its_metadata_beside_it(local_dir, client):
    body = json.dumps(omi_conversation(segments=3)).encode()
    response = post_json(client, body, query=f"uid={UID}")
    assert response.status_code == 200
    path = Path(response.get_json()["conversation"])
    assert path.read_bytes() == body and path.is_relative_to(local_dir)
    assert json.loads(path.with_suffix(".meta.json").read_text())["title"] == TITLE
    (info,) = storage.LocalStore(local_dir).list_conversations(UID)
    assert info.name == str(path.relative_to(local_dir))


# -- what is not stored -----------------------------------------------------------

NOT_A_CONVERSATION = [
    (b"", "the body is empty: a conversation event is a JSON object with a string id"),
    (b'{"id": "x"', "the body is not JSON (Expecting ',' delimiter: line 1 column 11 (char 10)): "),
    (b"\xff\xfe{", "the body is not JSON ("),
    (b"[1, 2]", "the body is JSON but an array, not an object: a conversation event is one"),
    (b'"abc"', "the body is JSON but a string of 3 bytes, not an object: a conversation event is one"),
    (b"null", "the body is JSON but null, not an object: a conversation event is one"),
    (b"true", "the body is JSON but a boolean, not an object: a conversation event is one"),
    (b"[" * 100_000 + b"]" * 100_000, "the body is JSON nested too deeply to read"),
    (b'{"title": "no id"}', conversation.MISSING_ID),
    (b'{"id": 17}', '"id" must be a string of 1 to 128 bytes (UTF-8); got a number'),
    (b'{"id": null}', '"id" must be a string of 1 to 128 bytes (UTF-8); got null'),
    (b'{"id": ""}', '"id" must be a string of 1 to 128 bytes (UTF-8); got a string of 0 bytes'),
    (b'{"id": "%s"}' % (b"x" * 129), '"id" must be a string of 1 to 128 bytes (UTF-8); got a string of 129 bytes'),
    (b'{"id": "\\ud800"}', '"id" must be a string of 1 to 128 bytes (UTF-8); got a string of 3 bytes'),
]


@pytest.mark.parametrize(("body", "error"), NOT_A_CONVERSATION, ids=range(len(NOT_A_CONVERSATION)))
def test_a_body_that_is_not_a_conversation_is_400_saying_why_and_writes_nothing(configured, client, body, error):
    response = post_json(client, body)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(error)
    assert objects(configured) == {}


IGNORED = [
    ({"segments": [{"text": "hi", "speaker": "SPEAKER_00", "start": 0.0, "end": 1.2}], "session_id": "s1"}, "realtime"),
    ({"summary": "Une journée calme.", "uid": UID, "created_at": STARTED.isoformat(), "summary_json": {}}, "summary"),
]


@pytest.mark.parametrize(("payload", "kind"), IGNORED, ids=["realtime transcript", "day summary"])
def test_omis_other_json_webhooks_get_200_not_stored_and_one_log_line(configured, client, capsys, payload, kind):
    capsys.readouterr()
    response = post_json(client, payload)
    assert response.status_code == 200
    assert response.get_json()["stored"] is None and kind in response.get_json()["ignored"]
    (line,) = log_lines(capsys)
    assert (line["severity"], line["status"], line["object"]) == ("INFO", 200, None)
    assert line["message"].startswith("not stored: a ")
    assert objects(configured) == {}


def test_only_a_json_media_type_is_a_conversation(configured, client):
    """The same JSON posted as audio is audio (and needs its sample_rate); parameters do not matter."""
    body = json.dumps(omi_conversation(segments=1)).encode()
    as_audio = client.post(f"/?{QUERY}", data=body, headers={"Content-Type": "application/octet-stream"})
    assert as_audio.status_code == 400 and "sample_rate" in as_audio.get_json()["error"]
    assert objects(configured) == {}
    for media_type in ("application/json; charset=utf-8", "Application/JSON"):
        assert post_json(client, body, **{"Content-Type": media_type}).status_code == 200


def test_the_token_and_allowed_uids_guard_conversations_as_audio(configured, client, monkeypatch):
    monkeypatch.setenv("ALLOWED_UIDS", "someone-else")
    payload = omi_conversation(segments=1)
    wrong_token = post_json(client, payload, query=f"token=wrong&uid={UID}")
    assert wrong_token.status_code == 401 and "token" in wrong_token.get_json()["error"]
    assert post_json(client, payload, query=f"uid={UID}").status_code == 401
    not_allowed = post_json(client, payload)
    assert not_allowed.status_code == 403 and "ALLOWED_UIDS" in not_allowed.get_json()["error"]
    assert post_json(client, payload, query=f"token={TOKEN}").status_code == 400  # no uid
    monkeypatch.setenv("ALLOWED_UIDS", f"someone-else, {UID}")
    assert post_json(client, payload).status_code == 200
    assert len(objects(configured)) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_over_16_mib_is_413_whether_declared_or_not(configured, client, chunked):
    body = json.dumps({"id": "x", "pad": "x" * (16 * 1024 * 1024 - 21)}).encode()
    assert len(body) == main.MAX_CONVERSATION_BYTES + 1
    stream = io.BytesIO(body)
    environ = {"CONTENT_TYPE": "application/json", "QUERY_STRING": QUERY, "wsgi.input": stream}
    if chunked:
        environ |= {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True, "CONTENT_LENGTH": None}
    else:
        environ["CONTENT_LENGTH"] = str(len(body))
    response = client.open("/", method="POST", environ_overrides=environ)
    assert response.status_code == 413 and "16777216-byte limit" in response.get_json()["error"]
    assert stream.tell() == len(body)  # read to its end before the answer
    assert objects(configured) == {}
    exactly_the_cap = json.loads(body) | {"pad": "x" * (16 * 1024 * 1024 - 22)}
    assert post_json(client, exactly_the_cap).status_code == 200


REJECTIONS = [  # (status, method, query, body)
    (400, "POST", QUERY, b'{"title": "no id"}'),
    (400, "POST", QUERY, b"not json at all " * 100_000),
    (401, "POST", f"token=wrong&uid={UID}", json.dumps(omi_conversation()).encode()),
    (403, "POST", f"token={TOKEN}&uid=someone-else", json.dumps(omi_conversation()).encode()),
    (405, "PUT", QUERY, json.dumps(omi_conversation()).encode()),
    (413, "POST", QUERY, b"[" + b"1," * (8 * 1024 * 1024) + b"1]"),  # 16 MiB + 3 bytes
]


def test_every_rejection_reaches_httpx_as_its_status_and_writes_nothing(configured, fake_gcs, tmp_path):
    settings = {"GCS_BUCKET_NAME": configured.name, "WEBHOOK_TOKEN": TOKEN, "ALLOWED_UIDS": UID}
    with (
        serve_function(tmp_path / "server.log", **settings) as (url, _),
        httpx.Client(timeout=httpx.Timeout(30, connect=2)) as omi,
    ):
        for status, method, query, body in REJECTIONS:
            for _ in range(3):
                headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
                response = omi.request(method, f"{url}/?{query}", content=body, headers=headers)
                assert response.status_code == status, (status, len(body), response.text[:200])
                assert "error" in response.json()
        ignored, _ = send(omi, url, IGNORED[0][0], str(uuid.uuid4()))
        assert ignored.status_code == 200
    assert objects(configured) == {}


def test_a_conversation_over_the_instance_budget_gets_503_and_the_budget_comes_back(tmp_path):
    """The budget counts a conversation at three times its size: parsed JSON takes several times its bytes."""
    mib = 1024 * 1024
    settings = {"LOCAL_AUDIO_DIR": str(tmp_path / "rec"), "MAX_CHUNK_BYTES": str(3 * mib)}
    settings["BODY_BUDGET_BYTES"] = str(3 * mib + mib // 4)
    small = json.dumps({"id": "small", "pad": "x" * 100_000}).encode()  # ~300 KB counted: fits beside 2 MiB
    large = json.dumps({"id": "large", "pad": "x" * 500_000}).encode()  # ~1.5 MB counted: does not
    with serve_function(tmp_path / "server.log", **settings) as (url, _), httpx.Client(timeout=30) as omi:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            head = f"POST /?sample_rate=16000&uid={UID} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {3 * mib}\r\n\r\n"
            slow.sendall(head.encode() + b"\x01\x00" * (mib + mib // 4))  # 2.5 MiB of 3: two 1 MiB pieces held
            time.sleep(0.5)  # the function has taken the pieces that arrived whole
            headers = {"Content-Type": "application/json"}
            refused = omi.post(f"{url}/?uid={UID}", content=large, headers=headers)
            assert refused.status_code == 503 and "retry" in refused.json()["error"]
            assert omi.post(f"{url}/?uid={UID}", content=small, headers=headers).status_code == 200
            slow.sendall(b"\x01\x00" * (mib // 4))
            assert slow.makefile("rb").readline().split()[1] == b"200"
        assert omi.post(f"{url}/?uid={UID}", content=large, headers=headers).status_code == 200
    stored = storage.LocalStore(tmp_path / "rec")
    assert sorted(info.parts.conversation_id for info in stored.list_conversations(UID)) == ["large", "small"]


def test_a_days_audio_listing_is_the_same_with_conversations_beside_it(bucket, fake_gcs, monkeypatch):
    store = storage.GcsStore(bucket.name)
    day = datetime(2026, 11, 30, tzinfo=UTC)
    for minute in range(0, 24 * 60, 90):
        store.put(UID, day + timedelta(minutes=minute), b"RIFF", {}, f"w{minute}", 10)

    def listing(since, until):
        with StorageProxy(fake_gcs) as proxy:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            names = [chunk.name for chunk in storage.GcsStore(bucket.name).list_chunks(UID, since, until)]
        return names, len(proxy.list_calls), proxy.names_listed

    bounds = [(day, day + timedelta(days=1)), (day, None), (None, None)]
    before = [listing(*bound) for bound in bounds]
    for n in range(30):
        at = day + timedelta(minutes=47 * n)
        store.put_conversation(UID, at, f"c{n}", json.dumps(omi_conversation(f"c{n}", 3)).encode(), {}, 10)
    assert [listing(*bound) for bound in bounds] == before
    assert before[0] == (before[0][0], 1, 16) and len(before[0][0]) == 16


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
ids = st.one_of(st.uuids().map(str), st.text(max_size=140), json_values)
payloads = st.one_of(
    st.fixed_dictionaries(
        {"id": ids},
        optional={
            "started_at": st.one_of(st.datetimes(timezones=st.timezones()).map(datetime.isoformat), json_values),
            "created_at": st.one_of(st.datetimes().map(datetime.isoformat), json_values),
            "structured": st.one_of(st.fixed_dictionaries({"title": st.text(max_size=300)}), json_values),
            "segments": json_values,
        },
    ).map(lambda payload: json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
)


def test_whatever_json_arrives_the_answer_is_200_or_400_and_only_what_a_200_names_is_stored(configured, client):
    stored: dict[str, bytes] = {}
    statuses: Counter[int] = Counter()

    @settings(max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "300")), deadline=None, database=None)
    @given(body=payloads)
    def one(body):
        response = post_json(client, body)
        statuses[response.status_code] += 1
        assert response.status_code in (200, 400), response.get_data()[:300]
        answer = response.get_json()
        if "conversation" in answer:
            name = answer["conversation"].removeprefix(f"gs://{configured.name}/")
            parts = storage.parse_conversation_name(name)
            assert parts.uid == UID and parts.conversation_id == answer["id"] == json.loads(body)["id"]
            assert stored.setdefault(name, body) == body
        else:
            assert response.status_code == 400 or answer["stored"] is None

    one()
    print(f"JSON bodies: {statuses.total()} requests, statuses {dict(statuses)}, {len(stored)} conversations stored")
    assert statuses.keys() == {200, 400} and stored
    assert objects(configured) == stored
