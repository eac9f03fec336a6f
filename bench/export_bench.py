"""Measure `export.py` against a one-at-a-time download loop (`make bench-export`).

2,000 one-second chunks (16 kHz, as receive_audio stores them, in Omi's bursts of
five) are written to fake-gcs-server on 127.0.0.1.  Both contenders then read
them through a loopback proxy that holds every request for 20 ms, standing in for
the tens of milliseconds each small object costs on real Cloud Storage:

* baseline: list the chunks, then download them one after another and append
  their PCM to a file, the obvious loop;
* export: ``export.main`` with its default 16 concurrent downloads.

Both run in the same process, one after the other, against the same objects; the
export's output is checked to hold exactly the baseline's bytes.  Goal: export at
least 8x faster.  Exit status 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import start_fake_gcs  # noqa: E402

import export  # noqa: E402
import storage  # noqa: E402
import wav  # noqa: E402

GOAL = 8.0
UID = "BenchUser0000000000000000000"
RATE = 16000


def populate(bucket_name: str, chunks: int) -> int:
    """Store `chunks` one-second chunks as the function does; returns the PCM bytes written."""
    store = storage.GcsStore(bucket_name)
    start = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    pcm_bytes = 0

    def put(i: int) -> int:
        at = start + timedelta(seconds=(i // 5) * 5, milliseconds=15 * (i % 5))
        pcm = (i.to_bytes(4, "little") * (RATE // 2))[: RATE * 2]  # distinct per chunk
        metadata = {
            "sample_rate": str(RATE),
            "received_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "duration_seconds": str(wav.duration_seconds(len(pcm), RATE)),
            "pcm_bytes": str(len(pcm)),
            "idempotency_key": str(uuid.uuid4()),
        }
        store.put(UID, at, wav.frame(pcm, RATE), metadata, uuid.uuid4().hex, 20)
        return len(pcm)

    with ThreadPoolExecutor(16) as pool:
        pcm_bytes = sum(pool.map(put, range(chunks)))
    return pcm_bytes


def one_at_a_time(bucket_name: str, out: Path) -> float:
    """The baseline: list, then download each chunk in turn and append its PCM."""
    started = time.perf_counter()
    store = storage.GcsStore(bucket_name)
    names = sorted((storage.parse_object_name(info.name).received_at, info.name) for info in store.list_chunks(UID))
    with open(out, "wb") as f:
        f.write(wav.header(0, RATE))
        size = 0
        for _, name in names:
            data = store.read(name)
            f.write(data[wav.HEADER_SIZE :])
            size += len(data) - wav.HEADER_SIZE
        f.seek(0)
        f.write(wav.header(size, RATE))
    return time.perf_counter() - started


def with_export(bucket_name: str, out_dir: Path, jobs: int) -> float:
    """The contender: the export command itself, table printed to nowhere."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = export.main(
            ["--uid", UID, "--bucket", bucket_name, "--out", str(out_dir), "--quiet", "--jobs", str(jobs)]
        )
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"export failed with status {code}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="chunk objects to export (default 2000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay the proxy adds per request (default 20)")
    parser.add_argument("--jobs", type=int, default=export.DEFAULT_JOBS, help="export's concurrent downloads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server, upstream = start_fake_gcs(tmp / "fake-gcs.log")
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = upstream
            from google.cloud import storage as gcs

            bucket_name = f"bench-{uuid.uuid4().hex[:8]}"
            gcs.Client().create_bucket(bucket_name)
            written = time.perf_counter()
            pcm_bytes = populate(bucket_name, args.chunks)
            written = time.perf_counter() - written
            print(f"stored {args.chunks} chunks ({pcm_bytes / 1e6:.1f} MB of PCM) in {written:.1f} s")

            # The proxy runs in a process of its own, as storage latency is not this process's CPU.
            proxy = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "latency_proxy.py"), upstream, str(args.latency_ms / 1000)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                os.environ["STORAGE_EMULATOR_HOST"] = proxy.stdout.readline().strip()
                baseline = one_at_a_time(bucket_name, tmp / "baseline.wav")
                exported = with_export(bucket_name, tmp / "out", args.jobs)
            finally:
                proxy.terminate()
                proxy.wait(10)
        finally:
            server.terminate()
            server.wait(10)

        [output] = sorted((tmp / "out").glob("*.wav"))
        if output.read_bytes() != (tmp / "baseline.wav").read_bytes():
            print("FAIL: the export differs from the baseline's bytes")
            return 1

    ratio = baseline / exported
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"latency added per request: {args.latency_ms:g} ms (loopback proxy in front of fake-gcs-server)")
    print(f"one-at-a-time loop : {baseline:7.2f} s  ({args.chunks / baseline:6.0f} chunks/s)")
    print(f"export --jobs {args.jobs:<4} : {exported:7.2f} s  ({args.chunks / exported:6.0f} chunks/s)")
    print(f"speed-up           : {ratio:7.1f}x  (goal >= {GOAL:g}x)  {'PASS' if ratio >= GOAL else 'FAIL'}")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
