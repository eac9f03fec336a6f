"""The phone as sender: the app's webhook-only mode, as its source describes it.

One POST per batch (60 s by default, up to 300 s at 16 kHz or 120 s at 48 kHz), the
configured URL with ``?uid=…&sample_rate=…`` appended as text (so a configured
``?token=T`` arrives in the legacy form), the device's name as uid when there is no
Omi uid, no Idempotency-Key, no retry and a 30 s timeout: a batch that does not get
a 2xx the first time is lost.  Each batch must be stored once, bit-exact, and come
back out of omi-audio export as one recording.
"""

from __future__ import annotations

import http.client
import uuid
from urllib.parse import quote, urlsplit

import pytest
from conftest import assert_decodes, pcm_tone, serve_function

import storage
import wav
from omi_audio import cli

TOKEN = "phone-Token_abcdefghijklmnop"
PHONE_TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def server(fake_gcs, tmp_path_factory):
    from google.cloud import storage as gcs

    bucket = gcs.Client().create_bucket(f"phone-{uuid.uuid4().hex[:12]}")
    log = tmp_path_factory.mktemp("phone") / "server.log"
    env = {"GCS_BUCKET_NAME": bucket.name, "WEBHOOK_TOKEN": TOKEN, "STORAGE_EMULATOR_HOST": fake_gcs}
    with serve_function(log, **env) as (url, _):
        yield url, bucket


def phone_posts(configured_url: str, uid: str, rate: int, pcm: bytes) -> int:
    """Send one batch as WebhookOnlySocketService does: once, no key, 30 s timeout; return the status."""
    url = f"{configured_url}?uid={uid}&sample_rate={rate}"
    parts = urlsplit(url)
    target = f"{parts.path or '/'}?{quote(parts.query, safe='=&?!$()*,;:@/~-._' + chr(39))}"  # Dart's Uri.parse
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PHONE_TIMEOUT_SECONDS)
    try:
        conn.request("POST", target, body=pcm, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("device_name", "prefix"),
    [("Omi DevKit 2", "Omi~20DevKit~202"), ("Zoë's Omi", "Zo~C3~AB~27s~20Omi"), ("webhook-device", "webhook-device")],
)
def test_phone_batches_under_a_device_name_are_stored_once_bit_exact_and_exported_whole(
    server, tmp_path, device_name, prefix
):
    url, bucket = server
    batches = [pcm_tone(60, seed=1), pcm_tone(60, seed=2), pcm_tone(7, seed=3)]  # a short batch flushed at stop
    for pcm in batches:
        assert phone_posts(f"{url}/?token={TOKEN}", device_name, 16000, pcm) == 200

    blobs = sorted(bucket.client.list_blobs(bucket, prefix=f"{prefix}/"), key=lambda b: b.name)
    assert len(blobs) == len(batches)  # once each: no retry, no duplicate
    for blob, pcm in zip(blobs, batches, strict=True):
        assert storage.parse_object_name(blob.name).uid == device_name
        assert "idempotency_key" not in blob.metadata
        assert_decodes(blob.download_as_bytes(), 16000, pcm)

    out = tmp_path / "exported"
    assert cli.main(["export", "--uid", device_name, "--bucket", bucket.name, "--out", str(out), "--quiet"]) == 0
    (session,) = sorted(out.glob("*.wav"))
    assert session.name.startswith(prefix + "_")
    assert_decodes(session.read_bytes(), 16000, b"".join(batches))


@pytest.mark.parametrize(
    ("seconds", "rate"), [(300, 16000), (120, 48000)], ids=["300 s at 16 kHz (9.6 MB)", "120 s at 48 kHz (11.5 MB)"]
)
def test_the_longest_phone_batches_are_stored_once_by_default(server, seconds, rate):
    url, bucket = server
    uid = f"long-batch-{rate}"
    pcm = (bytes(range(256)) * (seconds * rate * 2 // 256 + 1))[: seconds * rate * 2]
    assert len(pcm) > 8 * 1024 * 1024  # over the multipart limit: a resumable upload
    assert phone_posts(f"{url}/?token={TOKEN}", uid, rate, pcm) == 200
    (blob,) = bucket.client.list_blobs(bucket, prefix=f"{uid}/")
    data = blob.download_as_bytes()
    assert wav.parse_header(data[: wav.HEADER_SIZE]) == (rate, len(pcm))
    assert data[wav.HEADER_SIZE :] == pcm
