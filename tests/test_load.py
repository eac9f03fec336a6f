"""Load and soak through the real functions-framework server.

32 senders share 8 uids; each uid sends one chunk at a time, as the Omi
backend does (one lock per uid), in the sizes it uses: 1-second chunks with a
shorter remainder now and then, at 16 and 8 kHz.  Every chunk must come back
bit-exact, in send order, and the server's memory must stay flat.

LOAD_CHUNKS sets the count: `make test` runs a short CI-sized load, `make soak`
the full 5,000.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import threading
import time
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil
import pytest
import requests
import soundfile
from conftest import assert_decodes, serve_function

import storage

pytestmark = pytest.mark.load

CHUNKS = int(os.environ.get("LOAD_CHUNKS", "1200"))
SENDERS = 32
UIDS = [f"load{i}{uuid.uuid4().hex[:20]}" for i in range(8)]
TOKEN = "load-Token_0123456789abcdef"
# "Flat" memory: the last window of requests may not grow RSS more than this
# over where it stood after the first window.
WINDOW = min(1000, CHUNKS // 3)
MAX_RSS_GROWTH_BYTES = 10 * 1024 * 1024
RSS_SAMPLE_EVERY = 50


@dataclass
class Uid:
    """One simulated Omi user: its chunks go out strictly one after another."""

    name: str
    rate: int
    quota: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: list[tuple[int, str]] = field(default_factory=list)  # (seq, object) in send order


def chunk_pcm(uid: str, seq: int, rate: int) -> bytes:
    """The chunk's audio, rebuilt on demand so thousands need not be held in memory."""
    rng = random.Random(f"{uid}/{seq}")
    size = rate * 2 if seq % 6 != 5 else rng.randrange(1, rate) * 2  # every sixth is a remainder
    return rng.randbytes(size)


def rss_of_tree(proc: psutil.Process) -> int:
    """Resident bytes of the server: gunicorn's arbiter plus its worker."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.fixture(scope="module")
def server(fake_gcs, tmp_path_factory):
    from google.cloud import storage as gcs

    bucket = gcs.Client().create_bucket(f"load-{uuid.uuid4().hex[:12]}")
    log = tmp_path_factory.mktemp("load") / "server.log"
    env = {"GCS_BUCKET_NAME": bucket.name, "WEBHOOK_TOKEN": TOKEN, "STORAGE_EMULATOR_HOST": fake_gcs}
    with serve_function(log, **env) as (url, proc):
        yield url, bucket, psutil.Process(proc.pid), log


def test_thousands_of_chunks_from_concurrent_senders_are_all_kept_in_order_in_flat_memory(server, capsys):
    url, bucket, proc, log = server
    users = [
        Uid(name, 16000 if i % 2 == 0 else 8000, CHUNKS // len(UIDS) + (i < CHUNKS % len(UIDS)))
        for i, name in enumerate(UIDS)
    ]
    latencies: list[float] = []
    failures: list[str] = []
    rss: list[tuple[int, int]] = [(0, rss_of_tree(proc))]  # (requests done, bytes)
    done = 0
    tally = threading.Lock()

    def sender(user: Uid) -> None:
        nonlocal done
        with requests.Session() as session:
            while True:
                with user.lock:  # Omi: chunk k+1 only after chunk k's attempts end
                    seq = len(user.sent)
                    if seq >= user.quota:
                        return
                    started = time.perf_counter()
                    key = str(uuid.uuid4())
                    for attempt in range(2):  # as Omi's client: a dropped connection is retried, same key
                        try:
                            response = session.post(
                                f"{url}/?token={TOKEN}&sample_rate={user.rate}&uid={user.name}",
                                data=chunk_pcm(user.name, seq, user.rate),
                                headers={"Content-Type": "application/octet-stream", "Idempotency-Key": key},
                                timeout=30,
                            )
                            break
                        except requests.ConnectionError:  # a kept-alive connection the server had closed
                            if attempt:
                                raise
                    took = time.perf_counter() - started
                    if response.status_code != 200:
                        failures.append(f"{user.name} #{seq}: {response.status_code} {response.text[:200]}")
                        return
                    user.sent.append((seq, response.json()["object"]))
                with tally:
                    latencies.append(took)
                    done += 1
                    if done % RSS_SAMPLE_EVERY == 0 or done == CHUNKS:
                        rss.append((done, rss_of_tree(proc)))

    started = time.monotonic()
    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(sender, [users[i % len(users)] for i in range(SENDERS)]))
    wall = time.monotonic() - started
    assert failures == []
    assert done == CHUNKS

    # Every chunk is there once, under its uid, in send order, bit-exact.
    checked = 0
    for user in users:
        names = sorted(blob.name for blob in bucket.client.list_blobs(bucket, prefix=f"{user.name}/"))
        assert all(storage.parse_object_name(name) for name in names)
        assert [f"gs://{bucket.name}/{name}" for name in names] == [obj for _, obj in user.sent]
        with ThreadPoolExecutor(8) as pool:
            datas = list(pool.map(lambda name: bucket.blob(name).download_as_bytes(), names))
        for (seq, _), data in zip(user.sent, datas, strict=True):
            pcm = chunk_pcm(user.name, seq, user.rate)
            with wave.open(io.BytesIO(data)) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (user.rate, 1, 2)
                assert w.readframes(w.getnframes()) == pcm
            decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
            assert (rate, decoded.tobytes()) == (user.rate, pcm)
            checked += 1
        assert_decodes(datas[-1], user.rate, chunk_pcm(user.name, user.sent[-1][0], user.rate))  # sox, ffprobe too
    assert checked == CHUNKS

    # Memory: after the first window, the last window adds at most 10 MB.
    after_first = next(b for n, b in rss if n >= WINDOW)
    last_window_peak = max(b for n, b in rss if n >= CHUNKS - WINDOW)
    growth = last_window_peak - after_first

    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    with capsys.disabled():
        print(
            f"\nload: {CHUNKS} chunks, {SENDERS} senders, {len(UIDS)} uids in {wall:.1f} s"
            f" ({CHUNKS / wall:.0f} req/s); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms;"
            f" RSS {rss[0][1] / 2**20:.1f} MB at start, {after_first / 2**20:.1f} MB after {WINDOW},"
            f" peak {last_window_peak / 2**20:.1f} MB in the last {WINDOW}"
            f" (growth {growth / 2**20:+.1f} MB); lost 0 of {checked} verified"
        )
    assert growth <= MAX_RSS_GROWTH_BYTES
    assert p99 < 30_000  # the sender's timeout
    assert TOKEN not in log.read_text(errors="replace")
