"""End to end: the real functions-framework server, fed the way the Omi backend sends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from conftest import CONFIG_VARS, ROOT, assert_decodes, free_port, pcm_tone, serve_function, wait_http

import wav

TOKEN = "e2e-Token_abcdefghijklmnop"


@pytest.fixture(scope="module")
def server(fake_gcs, tmp_path_factory):
    """functions-framework serving main.py into a fresh bucket on the GCS stand-in."""
    from google.cloud import storage as gcs

    bucket = gcs.Client().create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    env = {"GCS_BUCKET_NAME": bucket.name, "WEBHOOK_TOKEN": TOKEN, "STORAGE_EMULATOR_HOST": fake_gcs}
    with serve_function(log, **env) as (url, _):
        yield url, bucket, log
    assert TOKEN not in log.read_text(errors="replace")


def send_like_omi(url: str, query: str, pcm: bytes, rate: int, session: requests.Session) -> list[dict]:
    """POST `pcm` in 1-second chunks plus a shorter remainder, each with its own Idempotency-Key."""
    step = rate * 2
    answers = []
    for start in range(0, len(pcm), step):
        response = session.post(
            f"{url}/?{query}",
            data=pcm[start : start + step],
            headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def download_in_name_order(bucket, uid: str) -> tuple[list[str], bytes, list[bytes]]:
    blobs = sorted(bucket.client.list_blobs(bucket, prefix=f"{uid}/"), key=lambda b: b.name)
    datas = [b.download_as_bytes() for b in blobs]
    return [b.name for b in blobs], b"".join(d[wav.HEADER_SIZE :] for d in datas), datas


@pytest.mark.parametrize(
    ("form", "rate"),
    [
        ("token={token}&sample_rate={rate}&uid={uid}", 16000),  # merged (current backend)
        ("token={token}?sample_rate={rate}&uid={uid}", 16000),  # legacy (older backend)
        ("uid={uid}&sample_rate={rate}&token={token}", 16000),  # app webhook-only mode
        ("token={token}&sample_rate={rate}&uid={uid}", 8000),  # DevKit 1
        ("token={token}?sample_rate={rate}&uid={uid}", 8000),
    ],
)
def test_stream_of_one_second_chunks_comes_back_bit_exact(server, form, rate):
    url, bucket, _ = server
    uid = f"u{uuid.uuid4().hex[:20]}"
    pcm = pcm_tone(5.5, rate, seed=rate)  # 5 whole seconds and a remainder, as Omi sends a batch
    with requests.Session() as session:
        answers = send_like_omi(url, form.format(token=TOKEN, rate=rate, uid=uid), pcm, rate, session)
    assert [a["bytes"] for a in answers] == [rate * 2] * 5 + [rate]
    names, joined, datas = download_in_name_order(bucket, uid)
    assert len(names) == 6
    assert [f"gs://{bucket.name}/{n}" for n in names] == [a["object"] for a in answers]
    assert joined == pcm
    for data, start in zip(datas, range(0, len(pcm), rate * 2), strict=True):
        assert_decodes(data, rate, pcm[start : start + rate * 2])


def test_retried_chunk_with_same_idempotency_key_is_stored_once(server):
    url, bucket, _ = server
    uid = f"r{uuid.uuid4().hex[:20]}"
    query = f"token={TOKEN}&sample_rate=16000&uid={uid}"
    chunk = pcm_tone(1.0, seed=7)
    headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())}
    first = requests.post(f"{url}/?{query}", data=chunk, headers=headers, timeout=30)
    retry = requests.post(f"{url}/?{query}", data=chunk, headers=headers, timeout=30)
    assert first.status_code == retry.status_code == 200
    assert retry.json()["object"] == first.json()["object"]
    names, joined, _ = download_in_name_order(bucket, uid)
    assert len(names) == 1 and joined == chunk


def test_chunked_upload_without_length_is_stored_whole(server):
    url, bucket, _ = server
    uid = f"c{uuid.uuid4().hex[:20]}"
    pcm = pcm_tone(2.0, seed=3)
    pieces = (pcm[i : i + 4093] for i in range(0, len(pcm), 4093))  # a generator: chunked transfer
    response = requests.post(f"{url}/?token={TOKEN}&sample_rate=16000&uid={uid}", data=pieces, timeout=30)
    assert response.status_code == 200, response.text
    assert download_in_name_order(bucket, uid)[1] == pcm


def test_wrong_token_over_http_is_401_and_stores_nothing(server):
    url, bucket, _ = server
    uid = f"t{uuid.uuid4().hex[:20]}"
    response = requests.post(f"{url}/?token=nope&sample_rate=16000&uid={uid}", data=b"\0" * 3200, timeout=30)
    assert response.status_code == 401
    assert download_in_name_order(bucket, uid)[0] == []


def test_server_logs_one_json_line_per_request(server):
    import json

    url, _, log = server
    before = len(log.read_text().splitlines())
    uid = f"l{uuid.uuid4().hex[:20]}"
    requests.post(f"{url}/?token={TOKEN}&sample_rate=16000&uid={uid}", data=b"\1\0" * 160, timeout=30)
    lines = [json.loads(x) for x in log.read_text().splitlines()[before:] if x.startswith("{")]
    assert [(x["uid"], x["status"]) for x in lines] == [(uid, 200)]


def test_make_run_says_where_it_serves_and_then_serves(tmp_path):
    """The README's first command: a ready line naming the URL and the folder, then a working server."""
    venv = Path(sys.executable).parent.parent
    if not (ROOT / ".venv").exists() or (ROOT / ".venv").resolve() != venv.resolve():
        pytest.skip("make run uses the checkout's .venv, which is not the one running the tests")
    port, out = free_port(), tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    with open(out, "wb") as log:
        run = subprocess.Popen(
            [shutil.which("make"), "--no-print-directory", "run", f"PORT={port}", f"LOCAL_AUDIO_DIR={tmp_path}/rec"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        answer = requests.post(f"http://127.0.0.1:{port}/?sample_rate=16000&uid=test-user", data=b"\1\0" * 160)
        assert answer.status_code == 200
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(10)
    first = out.read_text().splitlines()[0]
    assert first == f"Serving on http://127.0.0.1:{port}/ into {tmp_path}/rec; Ctrl-C stops"
