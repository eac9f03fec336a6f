"""Storage faults, injected by a proxy between the function and fake-gcs-server.

Each test gets a fresh bucket, so the function builds a fresh storage client
that talks to storage only through the proxy.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pytest
from conftest import assert_decodes, log_lines, objects, pcm_tone
from storage_proxy import StorageProxy, is_any, is_upload

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
SENDER_TIMEOUT_SECONDS = 30  # Omi's HTTP client gives up after this


def send(client, pcm: bytes, key: str | None = None):
    """POST one chunk as the Omi backend does, returning (response, seconds taken)."""
    headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": key or str(uuid.uuid4())}
    started = time.monotonic()
    response = client.post(f"/?sample_rate=16000&uid={UID}", data=pcm, headers=headers)
    return response, time.monotonic() - started


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_first_failed_upload_attempts_are_retried_and_the_chunk_stored_once(client, bucket, proxy, fault):
    proxy.arm(fault, times=3)
    pcm = pcm_tone(0.5, seed=1)
    response, _ = send(client, pcm)
    assert response.status_code == 200, response.get_json()
    assert proxy.count() == 4  # three failed attempts, then the one that landed
    (data,) = objects(bucket).values()
    assert_decodes(data, 16000, pcm)


def test_upload_whose_response_is_cut_is_found_by_the_retry_not_written_twice(client, bucket, proxy, capsys):
    proxy.arm("cut", times=1)
    pcm = pcm_tone(0.5, seed=2)
    response, _ = send(client, pcm)
    assert response.status_code == 200, response.get_json()
    assert proxy.count("cut") == 1 and proxy.count("forwarded") == 1
    stored = objects(bucket)
    assert len(stored) == 1
    (name, data), *_ = stored.items()
    assert response.get_json()["object"] == f"gs://{bucket.name}/{name}"
    assert not name.endswith("-1.wav")
    assert_decodes(data, 16000, pcm)
    (line,) = log_lines(capsys)
    assert line["message"] == "stored (found from an earlier attempt)"


def test_hanging_storage_gets_503_within_the_deadline_writes_nothing_then_recovers(client, bucket, proxy, monkeypatch):
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "2")
    proxy.arm("hang", match=is_any)
    key = str(uuid.uuid4())
    pcm = pcm_tone(0.5, seed=3)
    response, took = send(client, pcm, key)
    assert response.status_code == 503
    assert "storage" in response.get_json()["error"]
    assert 2 <= took < 4 < SENDER_TIMEOUT_SECONDS
    assert objects(bucket) == {}

    proxy.clear()
    again, took = send(client, pcm, key)  # the sender's retry of the same chunk
    assert again.status_code == 200
    assert took < 5  # not another deadline-long wait: nothing is stuck
    (data,) = objects(bucket).values()
    assert_decodes(data, 16000, pcm)
    following, _ = send(client, pcm_tone(0.5, seed=4))
    assert following.status_code == 200
    assert len(objects(bucket)) == 2


def test_storage_answering_a_byte_at_a_time_still_gets_503_within_the_deadline(client, bucket, proxy, monkeypatch):
    """Socket timeouts bound each read, not the whole answer: the deadline must too."""
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "2")
    proxy.arm("trickle", match=is_any)
    response, took = send(client, pcm_tone(0.2, seed=5))
    assert response.status_code == 503
    assert took < 4 < SENDER_TIMEOUT_SECONDS


def test_sender_retry_after_storage_hung_past_the_write_finds_it_and_writes_no_second(
    client, bucket, proxy, monkeypatch
):
    """The write landed but its answer never came: 503, then the retry gets that object."""
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "2")
    proxy.arm("hang-after", times=1)
    key = str(uuid.uuid4())
    pcm = pcm_tone(0.5, seed=6)
    first, _ = send(client, pcm, key)
    assert first.status_code == 503
    (name,) = objects(bucket)

    retry, _ = send(client, pcm, key)
    assert retry.status_code == 200
    assert retry.get_json()["object"] == f"gs://{bucket.name}/{name}"
    (data,) = objects(bucket).values()
    assert_decodes(data, 16000, pcm)


@pytest.mark.parametrize("outage", ["refused", "reset"])
def test_storage_down_then_back_gives_503_while_down_and_200_after(client, bucket, proxy, monkeypatch, outage):
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "1")
    assert send(client, pcm_tone(0.1, seed=7))[0].status_code == 200  # the client is built and pooled
    chunks = [(str(uuid.uuid4()), pcm_tone(0.3, seed=10 + i)) for i in range(4)]

    if outage == "refused":
        proxy.down()
    else:
        proxy.arm("reset", match=is_any)
        proxy.drop_connections()
    for key, pcm in chunks[:2]:
        response, took = send(client, pcm, key)
        assert response.status_code == 503
        assert took < 3
    assert len(objects(bucket)) == 1

    if outage == "refused":
        proxy.up()
    else:
        proxy.clear()
    for key, pcm in chunks:  # the sender retries the two that failed, then goes on
        response, took = send(client, pcm, key)
        assert response.status_code == 200, response.get_json()
        assert took < 5  # no stuck connection or backoff carried over from the outage
    stored = objects(bucket)
    assert len(stored) == 1 + len(chunks)
    by_payload = {data[44:]: data for data in stored.values()}
    for _, pcm in chunks:
        assert_decodes(by_payload[pcm], 16000, pcm)


def test_many_chunks_through_intermittent_failures_are_all_kept_once(client, bucket, proxy):
    """Every other upload fails one way or another; nothing is lost or doubled."""
    faults = ["503", "reset", "cut", "503", "cut"]
    sent = []
    for i, fault in enumerate(faults * 2):
        proxy.arm(fault, times=1)
        pcm = pcm_tone(0.1, seed=100 + i)
        response, _ = send(client, pcm)
        assert response.status_code == 200, response.get_json()
        sent.append(pcm)
    stored = objects(bucket)
    assert sorted(data[44:] for data in stored.values()) == sorted(sent)
    assert proxy.count(match=is_upload) >= 2 * len(sent)


# -- senders that never retry get all the time they wait -------------------------------------

PHONE_TIMEOUT_SECONDS = 30  # the app's http.post(...).timeout(30 s); it never retries


@dataclass(frozen=True)
class Deadlines:
    """The two storage deadlines, and outages sized to them as the real ones are to the defaults.

    The defaults (20 s with an Idempotency-Key, 27 s without; test_main pins them) take
    the real outages: 25 s (the phone waits it out, the backend gets its 503 and
    retries) and 35 s (longer than the phone waits).  The same sizes relative to a
    shorter pair run in seconds; the real ones run under `make soak` and in CI.
    """

    with_key: float
    without_key: float
    short_outage: float  # longer than with_key, shorter than without_key
    long_outage: float  # longer than without_key

    def configure(self, monkeypatch) -> None:
        monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", str(self.with_key))
        monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", str(self.without_key))


DEADLINES = [
    pytest.param(Deadlines(4, 6, 5, 9), id="scaled"),
    pytest.param(Deadlines(20, 27, 25, 35), id="default", marks=pytest.mark.full_outage),
]


def outage(proxy: StorageProxy, seconds: float) -> threading.Timer:
    """Storage refuses connections from now for `seconds`, then is back."""
    proxy.down()
    timer = threading.Timer(seconds, proxy.up)
    timer.start()
    return timer


def phone_sends(client, pcm: bytes):
    """POST one batch as the phone does: no Idempotency-Key; returns (response, seconds taken)."""
    started = time.monotonic()
    response = client.post(
        f"/?sample_rate=16000&uid={UID}", data=pcm, headers={"Content-Type": "application/octet-stream"}
    )
    return response, time.monotonic() - started


@pytest.mark.parametrize("deadlines", DEADLINES)
def test_a_phone_batch_outlives_a_storage_outage_shorter_than_it_waits_and_is_stored_once(
    client, bucket, proxy, deadlines, monkeypatch
):
    deadlines.configure(monkeypatch)
    assert send(client, pcm_tone(0.1, seed=20))[0].status_code == 200  # the client is built and pooled
    batch = pcm_tone(60, seed=21)
    timer = outage(proxy, deadlines.short_outage)
    response, took = phone_sends(client, batch)
    timer.join()
    assert response.status_code == 200, response.get_json()
    assert deadlines.short_outage <= took < deadlines.without_key + 1 <= PHONE_TIMEOUT_SECONDS - 2
    stored = [data for data in objects(bucket).values() if data[44:] == batch]
    assert len(stored) == 1
    assert_decodes(stored[0], 16000, batch)


@pytest.mark.parametrize("deadlines", DEADLINES)
def test_the_same_outage_with_an_idempotency_key_gets_503_by_the_deadline_and_the_retry_stores_once(
    client, bucket, proxy, deadlines, monkeypatch
):
    deadlines.configure(monkeypatch)
    assert send(client, pcm_tone(0.1, seed=22))[0].status_code == 200
    chunk, key = pcm_tone(1, seed=23), str(uuid.uuid4())
    timer = outage(proxy, deadlines.short_outage)
    response, took = send(client, chunk, key)
    assert response.status_code == 503
    assert deadlines.with_key <= took < deadlines.with_key + 2  # the backend retries after 1, 5 and 30 s
    timer.join()
    retry, _ = send(client, chunk, key)  # the backend's retry, once storage is back
    assert retry.status_code == 200
    stored = [data for data in objects(bucket).values() if data[44:] == chunk]
    assert len(stored) == 1


@pytest.mark.parametrize("deadlines", DEADLINES)
def test_an_outage_longer_than_the_phone_waits_gets_503_before_its_timeout_and_writes_nothing(
    client, bucket, proxy, deadlines, monkeypatch
):
    deadlines.configure(monkeypatch)
    assert send(client, pcm_tone(0.1, seed=24))[0].status_code == 200
    before = objects(bucket)
    timer = outage(proxy, deadlines.long_outage)
    try:
        response, took = phone_sends(client, pcm_tone(60, seed=25))
    finally:
        timer.join()
    assert response.status_code == 503
    assert deadlines.without_key <= took < deadlines.without_key + 1  # answered with time to reach the phone
    assert objects(bucket) == before
