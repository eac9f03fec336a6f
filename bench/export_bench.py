"""Measure `omi-audio export` against a one-at-a-time download loop (`make bench-export`).

2,000 one-second chunks (16 kHz, as receive_audio stores them, in Omi's bursts of
five) are written to fake-gcs-server on 127.0.0.1.  Both contenders then read
them through a loopback proxy that holds every request for 20 ms, standing in for
the tens of milliseconds each small object costs on real Cloud Storage:

* baseline: list the chunks, then download them one after another and append
  their PCM to a file, the obvious loop;
* export: ``export.main`` with its default 16 concurrent downloads.

Both run in the same process, one after the other, against the same objects; the
export's output is checked to hold exactly the baseline's bytes.  Goal: export at
least 8x faster.

Then what a range costs: one day (150 one-second chunks) is exported from a
bucket holding 30 such days and from a bucket holding only that day, both behind
the same proxy, alternating, the median of several runs each.  Listing only the
range makes the archive's size irrelevant.  Goal: the 30-day archive at most
1.2x the time of the one-day bucket.

Last, what exporting a day's conversations costs: a day holding an hour of audio
(3,600 one-second chunks in Omi's bursts of five) and four conversations in it is
exported ``--by conversation`` through a proxy that counts requests.  Goal: the
day's chunks are listed once (one list call per 1,000 names) and only the chunks
inside the conversations and their pads are downloaded, besides the conversations'
own documents.  Exit status 1 when any goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
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
from storage_proxy import StorageProxy  # noqa: E402

import storage  # noqa: E402
import wav  # noqa: E402
from omi_audio import archive, cli, export  # noqa: E402

GOAL = 8.0
RANGE_GOAL = 1.2
UID = "BenchUser0000000000000000000"
RATE = 16000
ARCHIVE_DAYS = 30
DAY = datetime(2025, 3, 15, tzinfo=UTC)  # the day exported from the archive


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


def populate_days(
    bucket_name: str, days: list[datetime], per_day: int, tiny: bool = False, start_hour: int = 8
) -> None:
    """`per_day` one-second chunks on each day, in Omi's bursts of five from `start_hour` (UTC)."""
    store = storage.GcsStore(bucket_name)
    times = [
        day + timedelta(hours=start_hour, seconds=(i // 5) * 5, milliseconds=15 * (i % 5))
        for day in days
        for i in range(per_day)
    ]

    def put(at: datetime) -> None:
        pcm = (int(at.timestamp() * 1000).to_bytes(8, "little") * (RATE // 4))[: RATE * 2]
        if tiny and at.date() != DAY.date():
            pcm = pcm[:64]
        metadata = {"sample_rate": str(RATE), "pcm_bytes": str(len(pcm)), "idempotency_key": str(uuid.uuid4())}
        store.put(UID, at, wav.frame(pcm, RATE), metadata, uuid.uuid4().hex, 20)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, times))


def export_day(bucket_name: str, out_dir: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``omi-audio export --since DAY --until DAY`` (the whole day), in this process."""
    day = DAY.date().isoformat()
    cpu = time.process_time()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(
            [
                "export",
                "--uid",
                UID,
                "--bucket",
                bucket_name,
                "--out",
                str(out_dir),
                "--quiet",
                "--since",
                day,
                "--until",
                day,
            ]
        )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if code != 0:
        raise SystemExit(f"export failed with status {code}")
    return elapsed, cpu


def one_at_a_time(bucket_name: str, out: Path) -> float:
    """The baseline: list, then download each chunk in turn and append its PCM."""
    started = time.perf_counter()
    store = storage.GcsStore(bucket_name)
    names = sorted((info.parts.received_at, info.name) for info in store.list_chunks(UID))
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
        code = cli.main(
            ["export", "--uid", UID, "--bucket", bucket_name, "--out", str(out_dir), "--quiet", "--jobs", str(jobs)]
        )
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"export failed with status {code}")
    return elapsed


def start_proxy(upstream: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    """The latency proxy, in a process of its own: storage latency is not this process's CPU."""
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "storage_proxy.py"), upstream, str(latency_ms / 1000)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proxy, proxy.stdout.readline().strip()


def speed_up(args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    """(one-at-a-time seconds, export seconds) for `args.chunks` chunks."""
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
        proxy, os.environ["STORAGE_EMULATOR_HOST"] = start_proxy(upstream, args.latency_ms)
        try:
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
        raise SystemExit("FAIL: the export differs from the baseline's bytes")
    return baseline, exported


def list_day(bucket_name: str) -> float:
    """Seconds for the one list call that selects DAY, made directly: the stand-in's own cost of it."""
    store = storage.GcsStore(bucket_name)
    started = time.perf_counter()
    names = sum(1 for _ in store.list_chunks(UID, DAY, DAY + timedelta(days=1)))
    elapsed = time.perf_counter() - started
    if not names:
        raise SystemExit("FAIL: nothing listed")
    return elapsed


def range_cost(args: argparse.Namespace, tmp: Path) -> tuple[list, list, list[float], list[float]]:
    """Alternating runs: DAY exported from the archive and from the one-day bucket, and their list calls.

    fake-gcs-server keeps objects as files on tmpfs here: its memory backend looks
    an object up by scanning the bucket, so every download would slow with the
    archive's size, which real Cloud Storage does not.  Its listing still reads
    every object of the bucket whatever the range; the bare list calls measure that.
    """
    from measure import fake_gcs as fake_gcs_on_tmpfs

    with contextlib.ExitStack() as stack:
        if args.stand_in == "tmpfs":
            url = stack.enter_context(fake_gcs_on_tmpfs(tmp)).url
        else:
            server, url = start_fake_gcs(tmp / "fake-gcs.log")
            stack.callback(server.wait, 10)
            stack.callback(server.terminate)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from google.cloud import storage as gcs

        archive, single = f"bench-archive-{uuid.uuid4().hex[:8]}", f"bench-day-{uuid.uuid4().hex[:8]}"
        gcs.Client().create_bucket(archive)
        gcs.Client().create_bucket(single)
        written = time.perf_counter()
        first = DAY - timedelta(days=ARCHIVE_DAYS // 2)
        populate_days(archive, [first + timedelta(days=d) for d in range(ARCHIVE_DAYS)], args.per_day)
        populate_days(single, [DAY], args.per_day)
        written = time.perf_counter() - written
        print(f"stored {ARCHIVE_DAYS} days of {args.per_day} chunks, and that day alone, in {written:.1f} s")
        for name, bucket_name in (("archive", archive), ("day alone", single)):
            with StorageProxy(url) as counter:  # once, untimed: what the export asks storage for
                os.environ["STORAGE_EMULATOR_HOST"] = counter.url
                export_day(bucket_name, tmp / f"counted-{name}")
            print(
                f"exporting the day from the {name}: {len(counter.list_calls)} list call(s) returning"
                f" {counter.names_listed} names, {counter.downloads} downloads"
            )
        proxy, os.environ["STORAGE_EMULATOR_HOST"] = start_proxy(url, args.latency_ms)
        runs: tuple[list[float], ...] = ([], [], [], [])
        try:
            for n in range(args.repeats):
                runs[0].append(export_day(archive, tmp / f"archive-{n}"))
                runs[1].append(export_day(single, tmp / f"single-{n}"))
            for _ in range(3 * args.repeats):
                runs[2].append(list_day(archive))
                runs[3].append(list_day(single))
        finally:
            proxy.terminate()
            proxy.wait(10)
    outputs = [
        sorted((tmp / f"{kind}-{n}").glob("*.wav")) for kind in ("archive", "single") for n in range(args.repeats)
    ]
    if any([f.read_bytes() for f in files] != [f.read_bytes() for f in outputs[0]] for files in outputs):
        raise SystemExit("FAIL: the day exported from the archive differs from the one-day bucket's")
    return runs


# The conversations of the cost benchmark's day: (minutes after the audio's start, length in minutes).
CONVERSATIONS = ((2, 3), (15, 5), (31, 2), (44, 12))


def conversation_cost(args: argparse.Namespace, tmp: Path) -> tuple[int, int, int, int, int, int]:
    """(list calls, names listed, downloads, conversations, chunks inside them, chunks stored) for one day."""
    server, url = start_fake_gcs(tmp / "fake-gcs.log")
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from google.cloud import storage as gcs

        bucket_name = f"bench-conversations-{uuid.uuid4().hex[:8]}"
        gcs.Client().create_bucket(bucket_name)
        store = storage.GcsStore(bucket_name)
        start = DAY + timedelta(hours=10)
        populate_days(bucket_name, [DAY], args.conversation_chunks, start_hour=10)
        for n, (offset, minutes) in enumerate(CONVERSATIONS):
            begun = start + timedelta(minutes=offset)
            body = {
                "id": f"bench-{n}",
                "started_at": begun.isoformat(),
                "finished_at": (begun + timedelta(minutes=minutes)).isoformat(),
                "structured": {"title": f"Conversation {n}"},
                "transcript_segments": [{"text": "hello", "start": 1.0, "end": 2.0, "is_user": True}],
            }
            raw = json.dumps(body).encode()
            store.put_conversation(UID, begun, body["id"], raw, {"received_at": begun.isoformat()}, 20)
        with StorageProxy(url) as counter:
            os.environ["STORAGE_EMULATOR_HOST"] = counter.url
            day = DAY.date().isoformat()
            with contextlib.redirect_stdout(io.StringIO()):
                common = ["--uid", UID, "--bucket", bucket_name, "--quiet", "--since", day, "--until", day]
                code = cli.main(["export", *common, "--by", "conversation", "--out", str(tmp / "out")])
        if code != 0:
            raise SystemExit(f"export --by conversation failed with status {code}")
    finally:
        server.terminate()
        server.wait(10)
    seconds = sum(minutes * 60 + 2 * archive.CONVERSATION_PAD.total_seconds() for _, minutes in CONVERSATIONS)
    return (
        len(counter.list_calls),
        counter.names_listed,
        counter.downloads,
        len(CONVERSATIONS),
        round(seconds),
        args.conversation_chunks,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="chunk objects to export (default 2000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay the proxy adds per request (default 20)")
    parser.add_argument("--jobs", type=int, default=export.DEFAULT_JOBS, help="export's concurrent downloads")
    parser.add_argument("--per-day", type=int, default=150, help="chunks a day in the range benchmark (default 150)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side of the range benchmark (default 5)")
    parser.add_argument(
        "--stand-in",
        choices=["tmpfs", "memory"],
        default="tmpfs",
        help="fake-gcs-server backend for the range benchmark (default tmpfs: files on tmpfs)",
    )
    parser.add_argument(
        "--conversation-chunks", type=int, default=3600, help="chunks in the conversation benchmark's day (3600)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "speed").mkdir()
        (tmp / "range").mkdir()
        (tmp / "conversations").mkdir()
        baseline, exported = speed_up(args, tmp / "speed")
        from_archive, from_single, list_archive, list_single = range_cost(args, tmp / "range")
        lists, listed, downloads, conversations, inside, stored = conversation_cost(args, tmp / "conversations")

    ratio = baseline / exported
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"latency added per request: {args.latency_ms:g} ms (loopback proxy in front of fake-gcs-server)")
    print(f"one-at-a-time loop : {baseline:7.2f} s  ({args.chunks / baseline:6.0f} chunks/s)")
    print(f"export --jobs {args.jobs:<4} : {exported:7.2f} s  ({args.chunks / exported:6.0f} chunks/s)")
    print(f"speed-up           : {ratio:7.1f}x  (goal >= {GOAL:g}x)  {'PASS' if ratio >= GOAL else 'FAIL'}")

    archive_s, single_s = (statistics.median(wall for wall, _ in runs) for runs in (from_archive, from_single))
    archive_cpu, single_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (from_archive, from_single))
    range_ratio = archive_s / single_s
    stand_in = statistics.median(list_archive) - statistics.median(list_single)
    runs = ", ".join(f"{a:.2f}/{b:.2f}" for (a, _), (b, _) in zip(from_archive, from_single, strict=True))
    print(f"export one day ({args.per_day} chunks) of a {ARCHIVE_DAYS}-day archive vs. a bucket of that day alone,")
    print(f"  {args.repeats} alternating runs, archive/alone: {runs} s")
    print(f"  medians              : {archive_s:.2f} s / {single_s:.2f} s")
    verdict = "PASS" if range_ratio <= RANGE_GOAL else "FAIL"
    print(f"  ratio                : {range_ratio:7.2f}x  (goal <= {RANGE_GOAL:g}x)  {verdict}")
    print(
        f"  the stand-in's own list call (same range, no export): {statistics.median(list_archive) * 1000:.0f} ms"
        f" in the archive, {statistics.median(list_single) * 1000:.0f} ms alone (median of {len(list_archive)})"
    )
    print(f"  ratio without that difference: {(archive_s - stand_in) / single_s:.2f}x (reported, not the goal)")
    print(
        f"  export's own CPU time: {archive_cpu:.2f} s / {single_cpu:.2f} s = {archive_cpu / single_cpu:.2f}x"
        " (reported, not the goal)"
    )
    # Listed once: the conversations (one call), the day's compacted folder (one), then the
    # day's chunks, 1,000 names a call.
    list_goal = 2 + -(-stored // 1000)
    # Downloaded: the conversations' documents, and each one's chunks plus at most one straddling either edge.
    download_goal = conversations + inside + 2 * conversations
    print(
        f"export --by conversation of one day ({stored} chunks, {conversations} conversations covering"
        f" {inside} s with their pads):"
    )
    print(
        f"  {lists} list call(s) returning {listed} names (goal <= {list_goal} calls);"
        f" {downloads} downloads = {conversations} documents + {downloads - conversations} chunks"
        f" (goal <= {download_goal}; the whole day is {stored})"
        f"  {'PASS' if lists <= list_goal and downloads <= download_goal else 'FAIL'}"
    )
    cost_ok = lists <= list_goal and downloads <= download_goal and listed <= stored + conversations
    return 0 if ratio >= GOAL and range_ratio <= RANGE_GOAL and cost_ok else 1


if __name__ == "__main__":
    sys.exit(main())
