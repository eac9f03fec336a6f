"""Store once, whatever Cloud Storage answers for a taken name, for small and large bodies.

A proxy between the storage client and fake-gcs-server (tests/storage_proxy.py) makes
the stand-in behave like Cloud Storage where it does not: it enforces the
does-not-exist precondition on resumable uploads (bodies over 8 MiB), and it can
answer a taken name with 403 instead of 412, as Cloud Storage may to a caller
without storage.objects.delete.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import objects
from storage_proxy import StorageProxy

import storage
import wav

SMALL = 32_000  # one second at 16 kHz: a multipart upload
LARGE = 120 * 48_000 * 2  # 11.5 MB, 120 s at 48 kHz: over 8 MiB, a resumable upload
AT = datetime(2026, 11, 28, 20, 12, 11, 123456, tzinfo=UTC)


@pytest.fixture(params=[412, 403], ids=["taken-412", "taken-403"])
def gcs_like(request, bucket, fake_gcs, monkeypatch):
    """The function's storage client behind a proxy that answers a taken name with 412 or 403."""
    with StorageProxy(fake_gcs, resumable_preconditions=True, taken_status=request.param) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield proxy


def audio(size: int, fill: int) -> bytes:
    return wav.frame(bytes([fill]) * size, 48_000)


def uploads(proxy: StorageProxy) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(s.path).query) for s in proxy.seen if s.method == "POST" and "/upload/" in s.path]


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["multipart", "resumable"])
def test_every_upload_carries_the_does_not_exist_precondition(bucket, gcs_like, size):
    storage.GcsStore(bucket.name).put("u1", AT, audio(size, 1), {}, "w1", 20)
    (query,) = uploads(gcs_like)
    assert query["ifGenerationMatch"] == ["0"]
    assert query["uploadType"] == ["multipart" if size == SMALL else "resumable"]


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["multipart", "resumable"])
def test_a_taken_name_moves_to_the_next_suffix_and_never_overwrites(bucket, gcs_like, size):
    store = storage.GcsStore(bucket.name)
    names = [store.put("u1", AT, audio(size, fill), {}, f"w{fill}", 20).name for fill in (1, 2, 3)]
    assert names == [
        "u1/20261128T201211.123456Z.wav",
        "u1/20261128T201211.123456Z-1.wav",
        "u1/20261128T201211.123456Z-2.wav",
    ]
    stored = objects(bucket)
    assert [stored[name] for name in names] == [audio(size, fill) for fill in (1, 2, 3)]
    assert sum(1 for s in gcs_like.seen if s.action.startswith("taken-")) == 3  # -1 once, -2 twice


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
    with StorageProxy(fake_gcs, taken_status=403) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = storage.GcsStore(bucket.name)
        missing = storage.GcsStore(f"{bucket.name}-missing")
        with pytest.raises(storage.StorageRefused):
            missing.put("u1", AT, audio(SMALL, 1), {}, "w1", 20)
        assert store.put("u1", AT, audio(SMALL, 1), {}, "w1", 20).existed is False


def test_the_local_store_takes_the_next_name_and_recognises_its_own_earlier_write(tmp_path):
    store = storage.LocalStore(tmp_path)
    audio = wav.frame([b"\1\0" * 100], 16000)
    first = store.put("u", AT, audio, {}, "write-1", 10)
    retried = store.put("u", AT, audio, {}, "write-1", 10)  # the same write again, its answer lost
    other = store.put("u", AT, audio, {}, "write-2", 10)  # another write at the same instant
    assert (retried.name, retried.existed) == (first.name, True)
    assert other.name == storage.object_name("u", AT, 1) and not other.existed
    assert sorted(p.name for p in (tmp_path / "u").glob("*.wav")) == sorted([first.name[2:], other.name[2:]])
