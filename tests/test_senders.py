"""Every answer reaches every client as its status, through the real functions-framework server.

Clients send the whole body before they read the answer (the Omi backend's httpx
does).  A server that answers early and closes while body bytes are still on the
way makes the client's TCP stack reset, and the client sees a transport error
instead of the status, then retries what a 4xx should have stopped.  Here each
rejection is tried with httpx 0.27 (the backend's pin), requests, urllib and curl,
for bodies from 0 B to over the cap, `SENDER_TRIES` times each (3 in `make test`, 20 in `make senders`):
every answer must be its status, with no transport error at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest
import requests
from conftest import serve_function

import body

TOKEN = "sender-test-token-0123"
UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
TRIES = int(os.environ.get("SENDER_TRIES", "3"))
KB, MB = 1000, 1000 * 1000
SIZES = [0, 32 * KB, 96 * KB, 1 * MB, 4 * MB, 8 * MB]
OVER_THE_CAP = 32 * 1024 * 1024 + 1  # over Cloud Run's request limit, the function's hard cap
SMALL_CAP = 16_000  # the 413 server's MAX_CHUNK_BYTES, so that every size but 0 B is over it

# (status, method, query): one request per kind of rejection.
REJECTIONS = [
    (400, "POST", f"token={TOKEN}&sample_rate=1e4&uid={UID}"),
    (401, "POST", f"token=wrong-token&sample_rate=16000&uid={UID}"),
    (403, "POST", f"token={TOKEN}&sample_rate=16000&uid=not-allowed"),
    (405, "PUT", f"token={TOKEN}&sample_rate=16000&uid={UID}"),
    (413, "POST", f"token={TOKEN}&sample_rate=16000&uid={UID}"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The function as deployed (token, allow-list), and the same with a small cap for 413s."""
    tmp = tmp_path_factory.mktemp("senders")
    settings = {"WEBHOOK_TOKEN": TOKEN, "ALLOWED_UIDS": UID, "LOCAL_AUDIO_DIR": str(tmp / "recordings")}
    with (
        serve_function(tmp / "server.log", **settings) as (url, _),
        serve_function(tmp / "capped.log", **settings, MAX_CHUNK_BYTES=str(SMALL_CAP)) as (capped_url, _),
    ):
        yield {"default": url, "capped": capped_url, "recordings": tmp / "recordings"}


def send_httpx(client: httpx.Client, method: str, url: str, body: bytes) -> int:
    return client.request(method, url, content=body, headers={"Content-Type": "application/octet-stream"}).status_code


def send_requests(session: requests.Session, method: str, url: str, body: bytes) -> int:
    return session.request(method, url, data=body, headers={"Content-Type": "application/octet-stream"}).status_code


def send_urllib(method: str, url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/octet-stream"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as answer:
        answer.close()
        return answer.code


def send_curl(method: str, url: str, body_file: Path) -> int:
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--max-time", "30",
         "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{body_file}", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        raise ConnectionError(f"curl exit {result.returncode}: {result.stderr.strip()}")
    return int(result.stdout)


CLIENTS = ["httpx", "requests", "urllib", "curl"]


@pytest.mark.parametrize("client_name", CLIENTS)
def test_every_rejection_reaches_the_client_as_its_status_for_every_body_size(servers, tmp_path, capsys, client_name):
    if client_name == "curl" and not shutil.which("curl"):
        pytest.fail("curl is not installed (.ci/run installs it)")
    outcomes: Counter[tuple[int, int, str]] = Counter()
    with httpx.Client(timeout=httpx.Timeout(30, connect=2)) as hx, requests.Session() as session:
        for size in [*SIZES, OVER_THE_CAP]:
            body = b"\x01\x00" * (size // 2) + b"\x01" * (size % 2)
            body_file = tmp_path / "body.pcm"
            body_file.write_bytes(body)
            for status, method, query in REJECTIONS:
                if status == 413 and size <= SMALL_CAP:
                    continue  # no body this small is over a cap
                url = f"{servers['capped' if status == 413 else 'default']}/?{query}"
                for _ in range(TRIES):
                    try:
                        if client_name == "httpx":
                            got = send_httpx(hx, method, url, body)
                        elif client_name == "requests":
                            got = send_requests(session, method, url, body)
                        elif client_name == "urllib":
                            got = send_urllib(method, url, body)
                        else:
                            got = send_curl(method, url, body_file)
                        outcomes[(status, size, str(got))] += 1
                    except (httpx.TransportError, requests.ConnectionError, urllib.error.URLError, OSError) as exc:
                        outcomes[(status, size, type(exc).__name__)] += 1
    wrong = {key: n for key, n in outcomes.items() if key[2] != str(key[0])}
    tried = sum(outcomes.values())
    with capsys.disabled():
        print(f"\n{client_name}: {tried} rejected requests, {sum(wrong.values())} not answered with their status")
    assert tried == TRIES * (len(REJECTIONS) * (len(SIZES) + 1) - 1)
    assert wrong == {}
    assert not servers["recordings"].exists()  # nothing of a rejected body was stored


def test_curl_d_gets_415_naming_data_binary_and_the_readmes_command_stores_the_tone(servers, tmp_path):
    """The README's first post, and the commonest mistake in typing it (-d strips the file's line breaks)."""
    if not shutil.which("curl"):
        pytest.fail("curl is not installed (.ci/run installs it)")
    tone = tmp_path / "tone.pcm"  # the README's one second of 440 Hz
    tone.write_bytes(
        b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / 16000))) for i in range(16000))
    )
    url = f"{servers['default']}/?token={TOKEN}&sample_rate=16000&uid={UID}"

    def curl(*args: str) -> tuple[int, dict]:
        result = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", *args, url],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        body, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(body)

    before = set(servers["recordings"].rglob("*.wav")) if servers["recordings"].exists() else set()
    status, answer = curl("-d", f"@{tone}")
    assert status == 415 and "--data-binary" in answer["error"]
    assert (set(servers["recordings"].rglob("*.wav")) if servers["recordings"].exists() else set()) == before
    status, answer = curl("--data-binary", f"@{tone}", "-H", "Content-Type: application/octet-stream")
    assert status == 200 and answer["bytes"] == 32000 and answer["duration_seconds"] == 1.0
    Path(answer["object"]).unlink()  # the other tests here expect nothing stored
    Path(answer["object"]).with_suffix(".json").unlink()


def test_the_connection_stays_usable_after_a_rejection(servers):
    """A rejected body is read to its end, so the same connection carries the next chunk."""
    host, port = servers["default"].removeprefix("http://").split(":")
    body = b"\x01\x00" * 500_000  # 1 MB
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = sock.makefile("rb")
        for query, status in [(REJECTIONS[1][2], 401), (f"token={TOKEN}&sample_rate=16000&uid={UID}", 200)]:
            head = (
                f"POST /?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            status_line = reader.readline().decode()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            reader.read(int(headers["content-length"]))
            assert status_line.split()[1] == str(status)
            assert headers.get("connection", "").lower() != "close"


def test_bodies_over_the_instance_budget_get_503_read_to_their_end_and_the_budget_comes_back(tmp_path):
    """The budget counts the body bytes the function holds, as they arrive; a body that does not fit is
    told to retry."""
    piece = body.READ_PIECE_BYTES  # what the function takes from the stream at a time
    cap = 2 * piece
    settings = {
        "LOCAL_AUDIO_DIR": str(tmp_path / "rec"),
        "MAX_CHUNK_BYTES": str(cap),
        "BODY_BUDGET_BYTES": str(cap + piece // 2),
    }
    with serve_function(tmp_path / "server.log", **settings) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        target = f"/?sample_rate=16000&uid={UID}"
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            head = f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {cap}\r\n\r\n"
            slow.sendall(head.encode() + b"\x01" * (piece + 20))  # one piece of the body held, the rest to come
            time.sleep(0.5)  # the function has taken that piece
            with requests.Session() as session:
                refused = session.post(url + target, data=b"\x01\x00" * piece)  # a whole cap: 1.5 of them fit
                assert refused.status_code == 503 and "retry" in refused.json()["error"]
                slow.sendall(b"\x01" * (piece - 20))  # the rest: the first body is stored
                answer = slow.makefile("rb").readline().decode()
                assert answer.split()[1] == "200"
                assert session.post(url + target, data=b"\x01\x00" * piece).status_code == 200
    assert len(list((tmp_path / "rec").rglob("*.wav"))) == 2
