"""What storage promises, the same in a bucket and in a local directory.

Objects are created, never replaced: a taken name moves the write to the next free
name, and a retried write recognises its own object.  Conversations are stored
under their digest, and listings give one uid's names in a time range.

The bucket is fake-gcs-server behind tests/storage_proxy.py, which makes it answer
as Cloud Storage does where the stand-in does not: it enforces the does-not-exist
precondition on resumable uploads (bodies over 8 MiB), and it can answer a taken
name with 403 instead of 412, as Cloud Storage may to a caller without
storage.objects.delete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import objects
from storage_proxy import StorageProxy

import storage
import wav

SMALL = 32_000  # one second at 16 kHz: a multipart upload
LARGE = 120 * 48_000 * 2  # 11.5 MB, 120 s at 48 kHz: over 8 MiB, a resumable upload
AT = datetime(2026, 11, 28, 20, 12, 11, 123456, tzinfo=UTC)


@contextmanager
def gcs_answering(taken_status: int, fake_gcs: str, monkeypatch) -> Iterator[StorageProxy]:
    """The storage client behind a proxy that answers as Cloud Storage, a taken name with `taken_status`."""
    with StorageProxy(fake_gcs, resumable_preconditions=True, taken_status=taken_status) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield proxy


@pytest.fixture(params=[412, 403], ids=["taken-412", "taken-403"])
def gcs_like(request, bucket, fake_gcs, monkeypatch):
    with gcs_answering(request.param, fake_gcs, monkeypatch) as proxy:
        yield proxy


@pytest.fixture(params=["gcs-412", "gcs-403", "local"])
def store(request, tmp_path, monkeypatch):
    """Each store: the bucket (a taken name answered 412, or 403) and the local directory."""
    if request.param == "local":
        yield storage.LocalStore(tmp_path / "recordings")
        return
    bucket = request.getfixturevalue("bucket")
    with gcs_answering(int(request.param[-3:]), request.getfixturevalue("fake_gcs"), monkeypatch):
        yield storage.GcsStore(bucket.name)


def audio(size: int, fill: int) -> bytes:
    return wav.frame(bytes([fill]) * size, 48_000)


def uploads(proxy: StorageProxy) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(s.path).query) for s in proxy.seen if s.method == "POST" and "/upload/" in s.path]


# -- create, never replace ------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["multipart", "resumable"])
def test_a_taken_name_moves_to_the_next_suffix_and_never_overwrites(store, size):
    written = [store.put("u1", AT, audio(size, fill), {}, f"w{fill}", 20) for fill in (1, 2, 3)]
    assert [stored.name for stored in written] == [
        "u1/20261128T201211.123456Z.wav",
        "u1/20261128T201211.123456Z-1.wav",
        "u1/20261128T201211.123456Z-2.wav",
    ]
    assert not any(stored.existed for stored in written)
    assert [store.read(stored.name) for stored in written] == [audio(size, fill) for fill in (1, 2, 3)]


def test_a_write_retried_with_its_write_id_finds_its_own_object_and_stores_no_copy(store):
    data = audio(SMALL, 1)
    first = store.put("u2", AT, data, {"sample_rate": "48000"}, "same-write", 20)
    retried = store.put("u2", AT, data, {"sample_rate": "48000"}, "same-write", 20)  # its first answer lost
    assert (first.existed, retried.name, retried.existed) == (False, first.name, True)
    [listed] = store.list_chunks("u2")
    assert (listed.name, listed.metadata) == (first.name, {"sample_rate": "48000", "write_id": "same-write"})


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["multipart", "resumable"])
def test_every_upload_carries_the_does_not_exist_precondition(bucket, gcs_like, size):
    storage.GcsStore(bucket.name).put("u1", AT, audio(size, 1), {}, "w1", 20)
    (query,) = uploads(gcs_like)
    assert query["ifGenerationMatch"] == ["0"]
    assert query["uploadType"] == ["multipart" if size == SMALL else "resumable"]


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["multipart", "resumable"])
def test_a_retry_after_a_lost_upload_response_finds_its_own_object(bucket, gcs_like, size):
    """The upload landed but its answer was cut: the retry meets 412 or 403 and recognises its write."""
    store = storage.GcsStore(bucket.name)
    data = audio(size, 7)
    carries_the_audio = "POST" if size == SMALL else "PUT"  # a resumable upload's data follows its start
    gcs_like.arm("cut", times=1, match=lambda method, path: method == carries_the_audio and "/upload/" in path)
    stored = store.put("u1", AT, data, {}, "same-write", 20)
    assert (stored.name, stored.existed) == ("u1/20261128T201211.123456Z.wav", True)
    assert objects(bucket) == {stored.name: data}
    assert gcs_like.count("cut", match=lambda method, path: True) == 1


def test_a_403_for_a_name_that_is_free_is_a_refusal_not_a_retry_loop(bucket, fake_gcs, monkeypatch):
    """Storage's 403 with nothing at the name means a permission is missing: refused at once."""
    with gcs_answering(403, fake_gcs, monkeypatch):
        store = storage.GcsStore(bucket.name)
        missing = storage.GcsStore(f"{bucket.name}-missing")
        with pytest.raises(storage.StorageRefused):
            missing.put("u1", AT, audio(SMALL, 1), {}, "w1", 20)
        assert store.put("u1", AT, audio(SMALL, 1), {}, "w1", 20).existed is False


# -- conversations ----------------------------------------------------------------------


def test_a_conversation_is_stored_once_under_its_digest_and_a_changed_body_is_a_new_version(store):
    body, changed = b'{"id": "c-1", "title": "One"}', b'{"id": "c-1", "title": "One, edited"}'
    first = store.put_conversation("u1", AT, "c-1", body, {"title": "One"}, 20)
    again = store.put_conversation("u1", AT, "c-1", body, {"title": "One"}, 20)
    edited = store.put_conversation("u1", AT, "c-1", changed, {"title": "One, edited"}, 20)
    digest = hashlib.sha256(body).hexdigest()
    assert first.name == storage.conversation_name("u1", AT, "c-1", digest) and not first.existed
    assert (again.name, again.existed) == (first.name, True)
    assert edited.name == storage.conversation_name("u1", AT, "c-1", hashlib.sha256(changed).hexdigest())
    assert not edited.existed and edited.name != first.name
    listed = {info.name: info for info in store.list_conversations("u1")}
    assert set(listed) == {first.name, edited.name}
    assert listed[first.name].metadata == {"title": "One", "sha256": digest}
    assert (store.read(first.name), store.read(edited.name)) == (body, changed)


def test_conversations_are_listed_by_uid_and_start_in_the_range(store):
    for hour in range(3):
        store.put_conversation("u1", AT + timedelta(hours=hour), f"c-{hour}", b"{}", {}, 20)
    store.put_conversation("u10", AT, "c-other", b"{}", {}, 20)

    def ids(**within: datetime) -> list[str]:
        return [info.parts.conversation_id for info in store.list_conversations("u1", **within)]

    assert ids() == ["c-0", "c-1", "c-2"]
    assert ids(since=AT + timedelta(hours=1), until=AT + timedelta(hours=2)) == ["c-1"]  # [since, until)


# -- listing ------------------------------------------------------------------------------


def test_chunks_are_listed_by_uid_and_range_in_time_order_without_conversations(store):
    times = [AT + timedelta(minutes=minute) for minute in range(4)]
    for i, at in enumerate(reversed(times)):
        store.put("u1", at, audio(100, i), {}, f"w{i}", 20)
    store.put("u10", times[1], audio(100, 9), {}, "other", 20)  # a uid that begins like u1
    store.put_conversation("u1", times[1], "c-1", b"{}", {}, 20)  # in u1's folder, but not audio

    def names(**within: object) -> list[str]:
        return [info.name for info in store.list_chunks("u1", **within)]

    assert names() == [storage.object_name("u1", at) for at in times]
    assert names(since=times[1], until=times[3]) == [storage.object_name("u1", at) for at in times[1:3]]
    assert names(limit=2) == [storage.object_name("u1", at) for at in times[:2]]
    assert sorted(store.list_uids()) == ["u1", "u10"]
