"""The request contract of receive_audio, through functions-framework's own app."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from conftest import assert_decodes, local_objects, objects, pcm_tone

import storage
import wav

NAME_RE = re.compile(r"^[A-Za-z0-9._~-]{1,384}/\d{8}T\d{6}\.\d{6}Z(-[1-9]\d*)?\.wav$")
UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"  # shaped like a Firebase uid


def post(client, query: str, body: bytes = b"\x01\x00" * 100, **headers):
    return client.post(f"/?{query}", data=body, headers={"Content-Type": "application/octet-stream", **headers})


# -- 1. method ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_with_allow_post(client, local_dir, method):
    response = client.open(f"/?sample_rate=16000&uid={UID}", method=method, data=b"\0\0")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    if method != "HEAD":  # a HEAD answer has no body
        assert "error" in response.get_json()
    assert not local_dir.exists()


# -- 2, 3. query validation ------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"uid={UID}",
        f"sample_rate=abc&uid={UID}",
        f"sample_rate=0&uid={UID}",
        f"sample_rate=-16000&uid={UID}",
        f"sample_rate=16000.0&uid={UID}",
        f"sample_rate=1e4&uid={UID}",
        f"sample_rate=7999&uid={UID}",
        f"sample_rate=48001&uid={UID}",
        f"sample_rate={'1' * 5000}&uid={UID}",
        f"sample_rate=&uid={UID}",
        f"sample_rate=%2016000&uid={UID}",
    ],
)
def test_bad_sample_rate_is_400_and_writes_nothing(client, local_dir, query):
    response = post(client, query)
    assert response.status_code == 400
    assert "sample_rate" in response.get_json()["error"]
    assert not local_dir.exists() or local_objects(local_dir) == {}


@pytest.mark.parametrize(
    "uid",
    ["", "x" * 129, "%C3%A9" * 65, "a%0Ab", "a%00b", "a%7Fb", "a%E2%80%8Bb", "a%FFb", "%ED%A0%80"],
    ids=[
        "empty",
        "129 bytes",
        "130 bytes of e-acute",
        "newline",
        "NUL",
        "DEL",
        "zero-width space",
        "bad UTF-8",
        "surrogate",
    ],
)
def test_empty_overlong_or_unprintable_uid_is_400_and_writes_nothing(client, local_dir, uid):
    response = post(client, f"sample_rate=16000&uid={uid}")
    assert response.status_code == 400
    assert "uid" in response.get_json()["error"]
    assert not local_dir.exists() or list(local_dir.rglob("*")) == []


@pytest.mark.parametrize(
    ("sent", "uid", "prefix"),
    [
        ("Omi%20DevKit%202", "Omi DevKit 2", "Omi~20DevKit~202"),  # the phone's device name, as Dart encodes it
        ("Zo%C3%AB%27s+Omi", "Zo\u00eb's Omi", "Zo~C3~AB~27s~20Omi"),
        ("../x", "../x", "~2E~2E~2Fx"),
        ("a%2Fb", "a/b", "a~2Fb"),
        ("..", "..", "~2E~2E"),
        (".", ".", "~2E"),
        ("~", "~", "~7E"),
        ("x" * 128, "x" * 128, "x" * 128),
    ],
)
def test_any_printable_uid_is_stored_under_a_safe_prefix_that_reads_back(client, local_dir, sent, uid, prefix):
    response = post(client, f"sample_rate=16000&uid={sent}", b"\1\0")
    assert response.status_code == 200
    (name,) = local_objects(local_dir)
    assert name.startswith(prefix + "/") and name.count("/") == 1
    assert storage.parse_object_name(name).uid == uid


def test_missing_uid_is_400(client, local_dir):
    response = post(client, "sample_rate=16000")
    assert response.status_code == 400
    assert "uid" in response.get_json()["error"]


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_accepted_sample_rates_are_written_into_the_header(client, local_dir, rate):
    pcm = pcm_tone(0.25, rate)
    response = post(client, f"sample_rate={rate}&uid={UID}", pcm)
    assert response.status_code == 200
    (data,) = local_objects(local_dir).values()
    assert_decodes(data, rate, pcm)


def test_uid_of_128_allowed_characters_is_accepted(client, local_dir):
    uid = ("aZ09._-" * 20)[:128]
    response = post(client, f"sample_rate=16000&uid={uid}")
    assert response.status_code == 200
    (name,) = local_objects(local_dir)
    assert name.startswith(uid + "/")


# -- 4. the three URL forms -------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"token=T0k&sample_rate=16000&uid={UID}",  # merged, current backend
        f"token=T0k?sample_rate=16000&uid={UID}",  # legacy: appended after the token
        f"uid={UID}&sample_rate=16000&token=T0k",  # app webhook-only mode
        f"token=T0k&sample_rate=16000&uid={UID}&token=T0k",  # repeated with the same value
    ],
)
def test_every_omi_url_form_is_accepted(client, local_dir, monkeypatch, query):
    monkeypatch.setenv("WEBHOOK_TOKEN", "T0k")
    pcm = pcm_tone(0.1)
    response = post(client, query, pcm)
    assert response.status_code == 200, response.get_json()
    (name, data), *_ = local_objects(local_dir).items()
    assert name.startswith(f"{UID}/")
    assert_decodes(data, 16000, pcm)


def test_legacy_query_form_recovers_sample_rate_at_8000(client, local_dir, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", "abc")
    pcm = pcm_tone(0.2, 8000)
    response = post(client, f"token=abc?sample_rate=8000&uid={UID}", pcm)
    assert response.status_code == 200
    (data,) = local_objects(local_dir).values()
    assert_decodes(data, 8000, pcm)


def test_webhook_device_uid_from_app_mode_is_accepted(client, local_dir):
    response = post(client, "uid=webhook-device&sample_rate=16000")
    assert response.status_code == 200
    assert next(iter(local_objects(local_dir))).startswith("webhook-device/")


def test_conflicting_repeated_parameter_is_400(client, local_dir):
    response = post(client, f"sample_rate=16000&uid={UID}&sample_rate=8000")
    assert response.status_code == 400
    assert "twice" in response.get_json()["error"]


# -- 5. token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"sample_rate=16000&uid={UID}",
        f"token=wrong&sample_rate=16000&uid={UID}",
        f"token=&sample_rate=16000&uid={UID}",
        f"token=s3cret-Token_x&sample_rate=16000&uid={UID}&x=1",
        f"token=s3cret-Token_?sample_rate=16000&uid={UID}",
    ],
)
def test_wrong_or_missing_token_is_401_and_writes_nothing(client, local_dir, monkeypatch, capsys, query):
    monkeypatch.setenv("WEBHOOK_TOKEN", "s3cret-Token_xyz")
    response = post(client, query)
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]
    assert not local_dir.exists()
    assert "s3cret-Token_xyz" not in capsys.readouterr().out + response.get_data(as_text=True)


def test_token_never_appears_in_logs_or_responses(client, local_dir, monkeypatch, capsys):
    secret = "Sup3rS3cretT0ken-abc_def"
    monkeypatch.setenv("WEBHOOK_TOKEN", secret)
    responses = [
        post(client, f"token={secret}&sample_rate=16000&uid={UID}"),
        post(client, f"token={secret}?sample_rate=16000&uid={UID}"),
        post(client, f"token={secret}&sample_rate=bad&uid={UID}"),
        post(client, f"token={secret}&sample_rate=16000&uid=a%0Ab"),
        post(client, f"token={secret}&sample_rate=16000&uid={UID}", b""),
    ]
    assert [r.status_code for r in responses] == [200, 200, 400, 400, 200]
    logged = capsys.readouterr()
    seen = logged.out + logged.err + "".join(r.get_data(as_text=True) for r in responses)
    assert secret not in seen
    assert len([line for line in logged.out.splitlines() if line.startswith("{")]) == 5


def test_empty_body_is_200_with_nothing_stored(client, local_dir):
    response = post(client, f"sample_rate=16000&uid={UID}", b"")
    assert response.status_code == 200
    assert response.get_json() == {"stored": None}
    assert not local_dir.exists() or local_objects(local_dir) == {}


class _Unread:
    """A request body of `size` zero bytes, made as it is read; records how much the
    function read before it answered (functions-framework reads the rest after)."""

    def __init__(self, size: int):
        self.left = size
        self.read_total = 0
        self.read_when_answered: int | None = None

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        self.read_total += n
        return bytes(n)

    def readline(self, n: int = -1) -> bytes:
        return self.read(n)

    def note_answer(self) -> None:
        self.read_when_answered = self.read_total


def post_lazy(client, query: str, body: _Unread, size: int):
    return client.post(
        f"/?{query}",
        headers={"Content-Type": "application/octet-stream"},
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(size)},
    )


@pytest.mark.parametrize(
    ("status", "query", "env"),
    [
        (400, f"sample_rate=1e4&uid={UID}", {}),
        (401, f"token=wrong&sample_rate=16000&uid={UID}", {"WEBHOOK_TOKEN": "right-token-xyz"}),
        (403, f"sample_rate=16000&uid={UID}", {"ALLOWED_UIDS": "someone-else"}),
        (413, f"sample_rate=16000&uid={UID}", {"MAX_CHUNK_BYTES": str(8 * 1024 * 1024)}),
    ],
)
def test_rejected_body_is_read_to_its_end_and_thrown_away_in_constant_memory(
    client, local_dir, monkeypatch, status, query, env
):
    """So the sender, still sending, reads the status instead of a reset; and the connection stays open."""
    import tracemalloc

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    size = 16 * 1024 * 1024
    body = _Unread(size)
    tracemalloc.start()
    try:
        response = post_lazy(client, query, body, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == status
    assert body.read_when_answered == size  # read to its end by the function itself...
    assert peak < 1024 * 1024  # ...without holding it (8 MiB would be the cap's worth)
    assert not local_dir.exists()


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_audio_posted_as_a_form_is_415_naming_data_binary_read_to_its_end_and_not_stored(
    client, local_dir, content_type
):
    """`curl -d @tone.pcm` (or -F) instead of --data-binary: the bytes would arrive damaged."""
    size = 1024 * 1024
    body = _Unread(size)
    response = client.post(
        f"/?sample_rate=16000&uid={UID}",
        headers={"Content-Type": content_type},
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(size)},
    )
    assert response.status_code == 415
    assert "--data-binary" in response.get_json()["error"]
    assert body.read_when_answered == size  # so the sender reads the status
    assert not local_dir.exists()


def test_body_too_large_to_reach_a_deployed_function_is_answered_unread(client, local_dir):
    """Streamed, so that functions-framework does not read it after the answer either."""
    size = 200 * 1024 * 1024  # Cloud Run refuses anything over 32 MiB before it reaches us
    body = _Unread(size)
    response = post_lazy(client, f"sample_rate=16000&uid={UID}", body, size)
    assert response.status_code == 413
    assert "MAX_CHUNK_BYTES" in response.get_json()["error"]
    assert body.read_total == 0  # by anyone, functions-framework included
    assert not local_dir.exists()


def test_body_at_the_cap_is_stored(client, local_dir, monkeypatch):
    monkeypatch.setenv("MAX_CHUNK_BYTES", "1000")
    assert post(client, f"sample_rate=16000&uid={UID}", b"\1" * 1000).status_code == 200


def test_chunked_body_over_the_cap_is_413_read_to_its_end_but_never_held(client, local_dir, monkeypatch):
    import tracemalloc

    monkeypatch.setenv("MAX_CHUNK_BYTES", "1000")
    body = _Iter(b"\0" * 1000 for _ in range(10_000))  # 10 MB offered with no length: read and thrown away

    tracemalloc.start()
    try:
        response = post_unsized(client, f"sample_rate=16000&uid={UID}", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert body.read_when_answered == 10_000_000 and peak < 1024 * 1024
    assert not local_dir.exists()


def test_chunked_body_within_the_cap_is_stored_whole(client, local_dir):
    pcm = pcm_tone(0.5)
    pieces = [pcm[i : i + 999] for i in range(0, len(pcm), 999)]
    response = post_unsized(client, f"sample_rate=16000&uid={UID}", iter(pieces))
    assert response.status_code == 200
    assert response.get_json()["bytes"] == len(pcm)
    (data,) = local_objects(local_dir).values()
    assert_decodes(data, 16000, pcm)


def test_default_cap_is_cloud_runs_32_mib_limit_and_no_setting_exceeds_it(monkeypatch):
    import main

    assert main.max_chunk_bytes() == 32 * 1024 * 1024  # the phone's 300 s and 120 s at 48 kHz fit
    monkeypatch.setenv("MAX_CHUNK_BYTES", str(64 * 1024 * 1024))
    assert main.max_chunk_bytes() == 32 * 1024 * 1024


@pytest.mark.parametrize("value", ["abc", "", "0", "0.5", "29", "-3", "nan"])
def test_a_deadline_that_is_unreadable_or_out_of_bounds_falls_back_to_its_default(monkeypatch, value):
    import main

    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", value)
    monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", value)
    assert main.storage_deadline_seconds(retried=True) == 20.0
    assert main.storage_deadline_seconds(retried=False) == 27.0


def test_deadlines_within_bounds_are_taken(monkeypatch):
    import main

    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "5")
    monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", "28")
    assert (main.storage_deadline_seconds(retried=True), main.storage_deadline_seconds(retried=False)) == (5, 28)


def test_odd_length_body_keeps_every_byte_in_a_valid_wav(client, bucket):
    pcm = pcm_tone(0.1) + b"\x7f"
    response = post(client, f"sample_rate=16000&uid={UID}", pcm)
    assert response.status_code == 200
    assert response.get_json()["bytes"] == len(pcm)
    (data,) = objects(bucket).values()
    assert len(data) == wav.HEADER_SIZE + len(pcm) + 1  # RIFF pad byte
    assert data[wav.HEADER_SIZE : wav.HEADER_SIZE + len(pcm)] == pcm
    assert_decodes(data, 16000, pcm)


# -- 7. what is stored ---------------------------------------------------------------


def test_chunk_is_stored_in_gcs_as_wav_with_name_and_metadata(client, bucket):
    pcm = pcm_tone(1.0)
    key = str(uuid.uuid4())
    response = post(client, f"sample_rate=16000&uid={UID}", pcm, **{"Idempotency-Key": key})
    assert response.status_code == 200
    body = response.get_json()
    (blob,) = list(bucket.client.list_blobs(bucket))
    assert body == {"object": f"gs://{bucket.name}/{blob.name}", "bytes": 32000, "duration_seconds": 1.0}
    assert NAME_RE.match(blob.name) and blob.name.startswith(f"{UID}/")
    assert blob.content_type == "audio/wav"
    meta = blob.metadata
    assert meta["sample_rate"] == "16000"
    assert meta["duration_seconds"] == "1.0"
    assert meta["idempotency_key"] == key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", meta["received_at"])
    stamp = blob.name.split("/")[1][:22]
    assert meta["received_at"].replace("-", "").replace(":", "")[:22] == stamp
    assert_decodes(blob.download_as_bytes(), 16000, pcm)


# -- 8. retries with Idempotency-Key ---------------------------------------------------


@pytest.mark.parametrize("backend", ["bucket", "local_dir"])
def test_same_idempotency_key_twice_stores_once_and_names_the_first(client, request, backend):
    target = request.getfixturevalue(backend)
    key = str(uuid.uuid4())
    pcm = pcm_tone(0.3)
    first = post(client, f"sample_rate=16000&uid={UID}", pcm, **{"Idempotency-Key": key})
    second = post(client, f"sample_rate=16000&uid={UID}", pcm, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 200
    assert second.get_json()["object"] == first.get_json()["object"]
    stored = objects(target) if backend == "bucket" else local_objects(target)
    assert len(stored) == 1


def test_same_idempotency_key_from_another_uid_is_a_different_chunk(client, local_dir):
    key = str(uuid.uuid4())
    assert post(client, "sample_rate=16000&uid=alice", **{"Idempotency-Key": key}).status_code == 200
    assert post(client, "sample_rate=16000&uid=bob", **{"Idempotency-Key": key}).status_code == 200
    assert len(local_objects(local_dir)) == 2


def test_absurd_idempotency_key_is_ignored_and_audio_kept(client, local_dir):
    response = post(client, f"sample_rate=16000&uid={UID}", **{"Idempotency-Key": "k" * 5000})
    assert response.status_code == 200
    assert len(local_objects(local_dir)) == 1


# -- 10. storage failure ---------------------------------------------------------------


def test_unreachable_storage_is_503_within_the_deadline_then_recovers(client, monkeypatch, bucket, proxy):
    import time

    monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", "1.5")
    proxy.down()  # nothing listens where storage was
    started = time.monotonic()
    response = post(client, f"sample_rate=16000&uid={UID}")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "storage" in response.get_json()["error"]
    assert 1.0 <= elapsed < 5
    proxy.up()  # the same instance, its client unchanged, reaches storage again
    assert post(client, f"sample_rate=16000&uid={UID}").status_code == 200
    assert len(objects(bucket)) == 1


def test_missing_bucket_is_500_pointing_at_deploy_sh_with_the_detail_only_in_the_log(
    client, fake_gcs, monkeypatch, capsys
):
    """A retry cannot cure a missing bucket or permission: 500, not 503, and no bucket name in the answer."""
    bucket_name = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GCS_BUCKET_NAME", bucket_name)
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert "deploy.sh" in error and "IAM" in error
    assert bucket_name not in response.get_data(as_text=True) and "http" not in error
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert (line["severity"], line["status"]) == ("ERROR", 500) and bucket_name in line["message"]


def test_local_write_failure_is_503_and_leaves_no_partial_file(client, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("LOCAL_AUDIO_DIR", str(blocker))
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 503
    assert blocker.read_text() == "x"


# -- 11. configuration ------------------------------------------------------------------


def test_no_storage_configured_is_500_naming_both_variables(client):
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert "GCS_BUCKET_NAME" in error and "LOCAL_AUDIO_DIR" in error


def test_local_backend_is_refused_on_cloud_functions(client, local_dir, monkeypatch):
    monkeypatch.setenv("K_SERVICE", "omi-audio")
    monkeypatch.setenv("WEBHOOK_TOKEN", "a-token-of-16-chars")
    response = post(client, f"token=a-token-of-16-chars&sample_rate=16000&uid={UID}")
    assert response.status_code == 500
    assert "LOCAL_AUDIO_DIR" in response.get_json()["error"]
    assert not local_dir.exists()


def test_deployed_without_a_token_stores_nothing_and_names_webhook_token(client, bucket, monkeypatch):
    monkeypatch.setenv("K_SERVICE", "omi-audio")
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 500
    assert "WEBHOOK_TOKEN" in response.get_json()["error"]
    assert objects(bucket) == {}
    monkeypatch.delenv("K_SERVICE")  # run locally, the same function stores without a token
    assert post(client, f"sample_rate=16000&uid={UID}").status_code == 200


def test_bucket_wins_over_local_dir(client, bucket, local_dir):
    assert post(client, f"sample_rate=16000&uid={UID}").status_code == 200
    assert len(objects(bucket)) == 1
    assert not local_dir.exists()


def test_local_backend_keeps_the_metadata_in_a_json_file_beside_each_wav(client, local_dir):
    key = str(uuid.uuid4())
    response = post(client, f"sample_rate=8000&uid={UID}", pcm_tone(0.5, 8000), **{"Idempotency-Key": key})
    assert response.status_code == 200
    wav_path = Path(response.get_json()["object"])
    meta = json.loads(wav_path.with_suffix(".json").read_text())
    assert (meta["sample_rate"], meta["duration_seconds"], meta["idempotency_key"]) == ("8000", "0.5", key)
    assert meta["received_at"].replace("-", "").replace(":", "")[:22] == wav_path.name[:22]
    assert meta["write_id"]


def test_local_backend_creates_directories_and_leaves_no_temporary_files(client, local_dir):
    for _ in range(3):
        assert post(client, f"sample_rate=16000&uid={UID}").status_code == 200
    files = sorted(p.name for p in local_dir.rglob("*") if p.is_file())
    assert len([f for f in files if f.endswith(".wav")]) == 3
    assert not [f for f in files if f.startswith(".incoming")]


# -- 12. one client per instance ---------------------------------------------------------


def test_one_storage_client_is_built_under_concurrent_first_requests(bucket, monkeypatch):
    import threading

    import main
    import storage

    built = []
    real_init = storage.GcsStore.__init__

    def counting_init(self, name):
        built.append(name)
        real_init(self, name)

    monkeypatch.setattr(storage.GcsStore, "__init__", counting_init)
    main._store = None  # as a new instance
    barrier = threading.Barrier(8)

    def first_request():
        barrier.wait()
        main.instance_store()

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [bucket.name]


# -- 13. logs -----------------------------------------------------------------------------


def test_one_json_log_line_per_request_with_the_fields(client, bucket, capsys):
    post(client, f"sample_rate=16000&uid={UID}", pcm_tone(0.1))
    post(client, "sample_rate=nope&uid=x")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    ok, bad = lines
    assert {"severity", "message", "uid", "object", "bytes", "status", "latency_ms"} <= ok.keys()
    assert (ok["severity"], ok["status"], ok["uid"], ok["bytes"]) == ("INFO", 200, UID, 3200)
    assert ok["object"].startswith(f"gs://{bucket.name}/{UID}/")
    assert (bad["severity"], bad["status"]) == ("WARNING", 400)
    assert "sample_rate" in bad["message"]


def test_storage_unavailable_is_503_saying_retry_with_the_detail_only_in_the_log(client, monkeypatch, capsys):
    from conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens
    monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", "1")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
    monkeypatch.setenv("GCS_BUCKET_NAME", f"absent-{uuid.uuid4().hex[:8]}")
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 503
    assert response.get_json() == {"error": "storage is unavailable: retry later"}
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert (line["severity"], line["status"]) == ("ERROR", 503)
    assert "storage" in line["message"] and "Connection refused" in line["message"]


def post_unsized(client, query, body):
    """POST a body with no Content-Length (chunked transfer), as a WSGI server passes it on."""
    return client.post(
        f"/?{query}",
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"},
        environ_overrides={
            "wsgi.input": body if isinstance(body, _Iter) else _Iter(body),
            "wsgi.input_terminated": True,
        },
    )


class _Iter:
    """A file-like over an iterator of bytes, for a request body with no length; records
    how much the function read before it answered (functions-framework reads the rest after)."""

    def __init__(self, it):
        self._it = it
        self._buf = b""
        self.read_total = 0
        self.read_when_answered: int | None = None

    def read(self, n=-1):
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        self.read_total += len(out)
        return out

    def readline(self, n=-1):
        return self.read(n)

    def note_answer(self) -> None:
        self.read_when_answered = self.read_total


@pytest.mark.parametrize("query", [f"sample_rate=16000&uid={UID}", f"sample_rate=bad&uid={UID}"])
def test_every_answer_is_one_line_of_json_ending_in_a_newline(client, local_dir, query):
    text = post(client, query).get_data(as_text=True)
    assert text.endswith("\n") and text.count("\n") == 1 and json.loads(text)


def test_a_wrong_token_names_what_to_do_locally_and_deployed(client, bucket, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", "s3cret-Token_xyz")
    local = post(client, f"token=wrong&sample_rate=16000&uid={UID}").get_json()["error"]
    monkeypatch.setenv("K_SERVICE", "omi-audio")
    deployed = post(client, f"token=wrong&sample_rate=16000&uid={UID}").get_json()["error"]
    assert "WEBHOOK_TOKEN this server was started with" in local and "deploy.sh" not in local
    assert "the URL deploy.sh printed" in deployed
