"""Measure `omi-audio compact` (`make bench-compact`; needs espeak-ng for its speech).

Every chunk is stored as receive_audio stores it (a WAV object with its metadata),
in Omi's bursts of five one-second chunks, straight into fake-gcs-server (objects
as files on tmpfs, so the stand-in does not slow with a bucket's size).  The audio
is speech: espeak-ng reads varied sentences in several voices, speeds and pitches,
resampled here to 16 kHz mono PCM16 (an FFT resampler, band-limited), with pauses
of 0.3 to 2 s between sentences.  Without espeak-ng a speech-like fallback signal
(voiced harmonics in syllables) stands in, and the output says so.

1. Size: a day of speech in two sessions is compacted; bytes stored (audio objects
   and index) ÷ the chunks' WAV bytes, goal <= 0.6; objects the day holds after,
   goal <= sessions + 2.  The same speech over a -60 dBFS noise floor (a
   microphone's hiss) is reported beside it, not judged.
2. One day of 28,800 chunks (8 h of that speech repeated, pauses included, in four
   two-hour sessions) compacted by ``omi-audio compact`` in a subprocess, through
   a proxy holding every request for 20 ms: wall time (goal < 3 min), the requests
   by kind, and the subprocess's peak RSS (goal < 256 MiB).
3. ``omi-audio export`` of 30 days (10 minutes of audio a day) in chunks, then of
   the same 30 days compacted, each in a subprocess through the same proxy: time
   and requests; the two exports must be byte for byte the same, and the compacted
   one must download no more objects than the compacted days hold.
4. The cost of a year (one owner, 8 h a day) recomputed from figure 1's ratio.

The proxy (tests/storage_proxy.py) runs in a thread of this process, which is
otherwise idle while the measured command runs in its own process; the requests
are counted from the proxy's record.  Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from measure import fake_gcs  # noqa: E402
from storage_proxy import Seen, StorageProxy  # noqa: E402

import names  # noqa: E402
import storage  # noqa: E402
import wav  # noqa: E402
from omi_audio import archive, compact, compacted  # noqa: E402

UID = "BenchUser0000000000000000000"
RATE = 16000
CHUNK_BYTES = RATE * wav.SAMPLE_WIDTH  # one second of PCM16 mono
DAY = date(2025, 3, 15)  # the day figures 1 and 2 compact; figure 3's days end on it
LATENCY = 0.020  # seconds the proxy holds each request
_BUCKET_PATH = re.compile(r"/storage/v1/b/[^/]+")

RATIO_GOAL = 0.6
EXTRA_OBJECTS_GOAL = 2  # objects a compacted day may hold beyond one per session
SECONDS_GOAL = 180.0
RSS_GOAL_MIB = 256

# The cost table of issue 23: one owner streaming 8 h a day; list prices in USD.
HOURS_A_DAY = 8
STANDARD_PER_GB_MONTH = 0.020
ARCHIVE_PER_GB_MONTH = 0.0012

SENTENCES = (
    "Good morning, did you sleep well last night?",
    "I think we should leave before the traffic gets worse on the bridge.",
    "The meeting moved to Thursday at three, so Wednesday is free again.",
    "Could you pick up some bread, two lemons and a bag of rice on your way home?",
    "She said the report was nearly finished, but the charts still needed work.",
    "Honestly, I had no idea the museum was closed on Mondays.",
    "Let me check my calendar and I will get back to you this afternoon.",
    "The weather forecast promised sunshine, and yet here we are under an umbrella.",
    "Remind me to call the dentist tomorrow about moving my appointment.",
    "We sold forty two tickets in the first hour, which is a record for us.",
    "If the train is late again, I am going to start cycling to work.",
    "That was the best soup I have had in years; what did you put in it?",
    "Turn left at the second light, then follow the signs to the station.",
    "The children were building a castle out of cardboard boxes all afternoon.",
    "Please send me the invoice by Friday so I can approve it before the weekend.",
    "Why does the printer always jam when I am already running late?",
    "Our flight lands at half past nine, so dinner will have to be late.",
    "He practised the piano for two hours and still could not play the last bars.",
    "I read somewhere that octopuses have three hearts and blue blood.",
    "Can we talk about the budget after lunch, when everyone is back?",
    "The garden needs water; the tomatoes look tired in this heat.",
    "Thank you for coming, it really means a lot to all of us.",
    "My phone battery died halfway through the call, sorry about that.",
    "The new library opens next spring with a café on the top floor.",
    "Seven, eight, nine, ten: ready or not, here I come!",
    "Would you rather go hiking on Saturday or visit your parents on Sunday?",
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland+m3", "en+f2", "en-029", "en-gb-x-rp+f4", "en-us+m7")


# ------------------------------------------------------------------- speech


def resample(samples: numpy.ndarray, rate: int, to: int) -> numpy.ndarray:
    """Band-limited resampling by FFT (everything above the new Nyquist frequency dropped)."""
    if rate == to:
        return samples.astype(numpy.float64)
    out = round(len(samples) * to / rate)
    spectrum = numpy.fft.rfft(samples.astype(numpy.float64))
    return numpy.fft.irfft(spectrum[: out // 2 + 1], out) * (out / len(samples))


def spoken(sentence: str, voice: str, speed: int, pitch: int) -> numpy.ndarray:
    """One sentence read by espeak-ng, as float samples at RATE."""
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", sentence]
    data = subprocess.run(command, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(data)) as audio:
        rate = audio.getframerate()
        frames = audio.readframes(audio.getnframes())
    return resample(numpy.frombuffer(frames, dtype="<i2"), rate, RATE)


def speech_like(rng: random.Random) -> numpy.ndarray:
    """A fallback 'sentence': voiced syllables (a falling pitch with its harmonics), no words."""
    pieces = []
    for _ in range(rng.randint(6, 16)):
        seconds = rng.uniform(0.12, 0.3)
        t = numpy.arange(round(seconds * RATE)) / RATE
        f0 = rng.uniform(90, 240) * (1 - 0.15 * t / seconds)
        phase = 2 * numpy.pi * numpy.cumsum(f0) / RATE
        voiced = sum(numpy.sin(k * phase) / k for k in range(1, 12))
        envelope = numpy.sin(numpy.pi * t / seconds) ** 2
        pieces.append(
            6000 * voiced * envelope + numpy.random.default_rng(rng.randrange(1 << 30)).normal(0, 200, len(t))
        )
        pieces.append(numpy.zeros(round(rng.uniform(0.02, 0.08) * RATE)))
    return numpy.concatenate(pieces)


def make_speech(seconds: float, seed: int = 23) -> tuple[bytes, str]:
    """(at least `seconds` of PCM16 at RATE: sentences with pauses between them, what made it)."""
    rng = random.Random(seed)
    have_espeak = shutil.which("espeak-ng") is not None
    pieces: list[numpy.ndarray] = []
    total = 0
    n = 0
    while total < seconds * RATE:
        if have_espeak:
            voice, speed, pitch = VOICES[n % len(VOICES)], rng.randint(130, 200), rng.randint(30, 70)
            sentence = spoken(SENTENCES[n % len(SENTENCES)], voice, speed, pitch)
        else:
            sentence = speech_like(rng)
        pause = numpy.zeros(round(rng.uniform(0.3, 2.0) * RATE))
        pieces += [sentence, pause]
        total += len(sentence) + len(pause)
        n += 1
    samples = numpy.clip(numpy.rint(numpy.concatenate(pieces)), -32768, 32767).astype("<i2")
    what = (
        f"espeak-ng: {n} sentences, {len(VOICES)} voices, pauses of 0.3-2 s"
        if have_espeak
        else f"FALLBACK SIGNAL, not speech (espeak-ng is missing): {n} runs of voiced syllables"
    )
    return samples.tobytes(), what


def with_noise_floor(pcm: bytes, dbfs: float = -60.0, seed: int = 5) -> bytes:
    """`pcm` with white noise at `dbfs` RMS added (a microphone's own hiss)."""
    samples = numpy.frombuffer(pcm, dtype="<i2").astype(numpy.float64)
    noise = numpy.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), len(samples))
    return numpy.clip(numpy.rint(samples + noise), -32768, 32767).astype("<i2").tobytes()


def one_second_chunks(pcm: bytes, count: int | None = None) -> list[bytes]:
    """`pcm` cut into one-second chunks (the last one shorter), repeated over as needed to make `count`."""
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]
    if count is None:
        return chunks
    return [chunks[i % len(chunks)] for i in range(count)]


# ------------------------------------------------------------------- storing


def burst_times(start: datetime, count: int) -> list[datetime]:
    """Receipt times of `count` one-second chunks from `start`, in Omi's bursts of five (every 5 s)."""
    return [start + timedelta(seconds=(i // 5) * 5, milliseconds=15 * (i % 5)) for i in range(count)]


def put_chunks(bucket_name: str, timed: Iterable[tuple[datetime, bytes]], jobs: int = 16) -> int:
    """Store each (receipt time, PCM) as receive_audio does, `jobs` at a time; returns the chunks' WAV bytes."""
    own = compacted.per_thread(storage.GcsStore(bucket_name))

    def put(item: tuple[datetime, bytes]) -> int:
        at, pcm = item
        metadata = {
            "sample_rate": str(RATE),
            "received_at": names.iso(at),
            "duration_seconds": str(wav.duration_seconds(len(pcm), RATE)),
            "pcm_bytes": str(len(pcm)),
            "idempotency_key": str(uuid.uuid4()),
        }
        body = wav.frame(pcm, RATE)
        own().put(UID, at, body, metadata, uuid.uuid4().hex, 60)
        return len(body)

    with ThreadPoolExecutor(jobs) as pool:
        return sum(pool.map(put, timed))


def new_bucket() -> str:
    from google.cloud import storage as gcs

    name = f"bench-{uuid.uuid4().hex[:10]}"
    gcs.Client().create_bucket(name)
    return name


def day_objects(store: storage.Store, day: date) -> tuple[int, int]:
    """(objects in the day's compacted folder, chunks of the day still loose)."""
    held = sum(1 for _ in store.list_objects(compacted.day_folder(UID, day)))
    loose = sum(1 for _ in store.list_chunks(UID, compacted.day_start(day), compacted.day_end(day)))
    return held, loose


def sessions_in(times: list[datetime]) -> int:
    splitter = archive.SessionSplitter(archive.DEFAULT_GAP_SECONDS)
    return sum(1 for at in times if splitter.starts_new(at, RATE))


def kinds(seen: list[Seen]) -> Counter:
    """Requests by kind: list, download, bucket read, metadata read, upload, delete, batch (of deletes)."""
    counts: Counter = Counter()
    for s in seen:
        if s.is_list:
            counts["list"] += 1
        elif s.is_download:
            counts["download"] += 1
        elif s.method == "DELETE":
            counts["delete"] += 1  # one by one, or a part of a batch
        elif s.method == "POST" and s.path.startswith("/batch/"):
            counts["batch"] += 1
        elif s.method in ("POST", "PUT") and ("/upload/" in s.path or "upload_id" in s.path):
            counts["upload"] += 1
        elif s.method == "GET" and _BUCKET_PATH.fullmatch(urlsplit(s.path).path):
            counts["bucket read"] += 1  # the storage library's, once per client (one per thread)
        elif s.method == "GET":
            counts["metadata read"] += 1
        else:
            counts[f"other {s.method}"] += 1
    return counts


def described(counts: Counter) -> str:
    order = ("list", "download", "bucket read", "metadata read", "upload", "delete")
    parts = [f"{counts[kind]:,} {kind}" for kind in order if counts[kind]]
    parts += [f"{n:,} {kind}" for kind, n in sorted(counts.items()) if kind not in order]
    return f"{sum(counts.values()):,} requests: " + ", ".join(parts)


def timed_run(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of `command` in a subprocess; output to `log`.

    Raises:
        SystemExit: the command failed.
    """
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(command[2:5])} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # KiB on Linux


def omi_audio(*args: str) -> list[str]:
    return [sys.executable, "-m", "omi_audio", *args]


def through(proxy_url: str) -> dict[str, str]:
    return {**os.environ, "STORAGE_EMULATOR_HOST": proxy_url}


# ------------------------------------------------------------------- the figures


def size(speech: bytes, url: str) -> dict:
    """Figure 1: a day of the speech in two sessions, and the next day the same over a noise floor."""
    os.environ["STORAGE_EMULATOR_HOST"] = url
    bucket_name = new_bucket()
    store = storage.GcsStore(bucket_name)
    figures = {}
    for day, pcm in ((DAY, speech), (DAY + timedelta(days=1), with_noise_floor(speech))):
        chunks = one_second_chunks(pcm)
        half = len(chunks) // 2
        times = burst_times(compacted.day_start(day) + timedelta(hours=9), half)
        times += burst_times(compacted.day_start(day) + timedelta(hours=14), len(chunks) - half)
        wav_bytes = put_chunks(bucket_name, zip(times, chunks, strict=True))
        [result] = compact.compact_store(store, day + timedelta(days=1), [UID])
        if result.error:
            raise SystemExit(f"FAIL: compacting {day}: {result.error}")
        held, loose = day_objects(store, day)
        index_bytes = (
            sum(info.size for info in store.list_objects(compacted.day_folder(UID, day))) - result.stored_bytes
        )
        figures[day] = {
            "chunks": len(chunks),
            "seconds": len(pcm) / CHUNK_BYTES,
            "wav_bytes": wav_bytes,
            "audio_bytes": result.stored_bytes,
            "index_bytes": index_bytes,
            "sessions": sessions_in(times),
            "objects": held + loose,
        }
    return figures


def one_day(speech: bytes, count: int, url: str, tmp: Path, jobs: int) -> dict:
    """Figure 2: `count` chunks on one day, in four sessions of equal length, compacted through the proxy."""
    os.environ["STORAGE_EMULATOR_HOST"] = url
    bucket_name = new_bucket()
    chunks = one_second_chunks(speech, count)
    times: list[datetime] = []
    for session in range(4):
        share = count // 4 + (1 if session < count % 4 else 0)
        times += burst_times(compacted.day_start(DAY) + timedelta(hours=6 + 2.25 * session), share)
    started = time.perf_counter()
    put_chunks(bucket_name, zip(times, chunks, strict=True))
    filled = time.perf_counter() - started
    with StorageProxy(url, delay=LATENCY, delete_preconditions=True, batches=True) as proxy:
        before = str(DAY + timedelta(days=1))
        command = omi_audio("compact", "--bucket", bucket_name, "--uid", UID, "--before", before, "--jobs", str(jobs))
        elapsed, cpu, rss = timed_run([*command, "--quiet"], through(proxy.url), tmp / "compact.log")
        seen = list(proxy.seen)
    store = storage.GcsStore(bucket_name)
    held, loose = day_objects(store, DAY)
    index = compacted.CompactedDays(store, UID).index(DAY)
    if index is None or len(index.chunks) != count or loose:
        raise SystemExit(f"FAIL: the day did not compact: {loose} chunks loose, index {index and len(index.chunks)}")
    return {
        "chunks": count,
        "filled": filled,
        "seconds": elapsed,
        "cpu": cpu,
        "rss": rss,
        "requests": kinds(seen),
        "sessions": sessions_in(times),
        "objects": held,
        "log": (tmp / "compact.log").read_text().strip(),
    }


def export_days(speech: bytes, days: int, per_day: int, url: str, tmp: Path) -> dict:
    """Figure 3: `days` days of `per_day` chunks exported in chunks, then compacted and exported again."""
    os.environ["STORAGE_EMULATOR_HOST"] = url
    bucket_name = new_bucket()
    first = DAY - timedelta(days=days - 1)
    chunks = one_second_chunks(speech, per_day)
    timed = [
        (at, chunks[i])
        for d in range(days)
        for i, at in enumerate(
            burst_times(compacted.day_start(first + timedelta(days=d)) + timedelta(hours=9), per_day)
        )
    ]
    started = time.perf_counter()
    put_chunks(bucket_name, timed)
    filled = time.perf_counter() - started
    figures: dict = {"days": days, "per_day": per_day, "filled": filled}
    with StorageProxy(url, delay=LATENCY) as proxy:
        for form in ("chunks", "compacted"):
            if form == "compacted":
                store = storage.GcsStore(bucket_name)  # straight to the stand-in: not what is measured
                failed = [r for r in compact.compact_store(store, DAY + timedelta(days=1), [UID]) if r.error]
                if failed:
                    raise SystemExit(f"FAIL: compacting {failed[0].day}: {failed[0].error}")
                figures["objects"] = sum(1 for _ in store.list_objects(compacted.uid_folder(UID)))
            proxy.reset()
            out = tmp / form
            command = omi_audio("export", "--bucket", bucket_name, "--uid", UID, "--out", str(out), "--quiet")
            elapsed, _, _ = timed_run(command, through(proxy.url), tmp / f"export-{form}.log")
            figures[form] = {"seconds": elapsed, "requests": kinds(proxy.seen)}
    exported = {form: {p.name: p.read_bytes() for p in (tmp / form).rglob("*.wav")} for form in ("chunks", "compacted")}
    figures["same"] = bool(exported["chunks"]) and exported["chunks"] == exported["compacted"]
    figures["files"] = len(exported["chunks"])
    return figures


# ------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=28800, help="chunks in figure 2's day (default 28800: 8 h)")
    parser.add_argument("--jobs", type=int, default=compact.DEFAULT_JOBS, help="figure 2's omi-audio compact --jobs")
    parser.add_argument("--days", type=int, default=30, help="days exported in figure 3 (default 30)")
    parser.add_argument("--per-day", type=int, default=600, help="chunks a day in figure 3 (default 600: 10 min)")
    parser.add_argument("--speech-seconds", type=float, default=300, help="speech made for figure 1 (default 300)")
    args = parser.parse_args()

    started = time.perf_counter()
    speech, made_by = make_speech(args.speech_seconds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    made = time.perf_counter() - started
    print(f"speech: {len(speech) / CHUNK_BYTES:.0f} s at {RATE} Hz made in {made:.1f} s by {made_by}")
    with tempfile.TemporaryDirectory(prefix="compact-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with fake_gcs(tmp) as server:
            sized = size(speech, server.url)
        with fake_gcs(tmp) as server:
            day = one_day(speech, args.chunks, server.url, tmp, args.jobs)
        with fake_gcs(tmp) as server:
            exports = export_days(speech, args.days, args.per_day, server.url, tmp)

    met = True

    def verdict(ok: bool) -> str:
        nonlocal met
        met = met and ok
        return "PASS" if ok else "FAIL"

    clean, noisy = sized[DAY], sized[DAY + timedelta(days=1)]
    ratio = (clean["audio_bytes"] + clean["index_bytes"]) / clean["wav_bytes"]
    noisy_ratio = (noisy["audio_bytes"] + noisy["index_bytes"]) / noisy["wav_bytes"]
    print(
        f"1. speech, FLAC against WAV: {clean['chunks']} chunks ({clean['seconds']:.0f} s in {clean['sessions']}"
        f" sessions), {clean['wav_bytes']:,} bytes as chunks, {clean['audio_bytes']:,} as FLAC"
        f" + {clean['index_bytes']:,} index"
    )
    print(f"   bytes stored / chunk WAV bytes: {ratio:.3f} (goal <= {RATIO_GOAL})  {verdict(ratio <= RATIO_GOAL)}")
    extra_ok = clean["objects"] <= clean["sessions"] + EXTRA_OBJECTS_GOAL
    print(
        f"   objects per compacted uid-day: {clean['objects']} for {clean['sessions']} sessions"
        f" (goal <= sessions + {EXTRA_OBJECTS_GOAL})  {verdict(extra_ok)}"
    )
    print(f"   the same speech over a -60 dBFS noise floor: {noisy_ratio:.3f} (reported, not judged)")

    n = day["chunks"]
    print(
        f"2. one day of {n:,} one-second chunks (the speech repeated, pauses included, {day['sessions']} sessions),"
        f" filled in {day['filled']:.0f} s; omi-audio compact through the {LATENCY * 1000:g} ms proxy:"
    )
    fast = day["seconds"] < SECONDS_GOAL
    print(f"   time: {day['seconds']:.1f} s (goal < {SECONDS_GOAL:.0f} s)  {verdict(fast)}; CPU {day['cpu']:.1f} s")
    print(f"   {described(day['requests'])}; the day now holds {day['objects']} objects")
    small = day["rss"] < RSS_GOAL_MIB
    print(f"   peak RSS of the compacting process: {day['rss']:.0f} MiB (goal < {RSS_GOAL_MIB} MiB)  {verdict(small)}")

    chunked, packed = exports["chunks"], exports["compacted"]
    downloads_ok = packed["requests"]["download"] <= exports["objects"]
    print(
        f"3. omi-audio export of {exports['days']} days of {exports['per_day']} chunks"
        f" ({exports['per_day'] / 60:g} min of audio a day, filled in {exports['filled']:.0f} s)"
        f" through the {LATENCY * 1000:g} ms proxy, {exports['files']} files:"
    )
    print(f"   in chunks : {chunked['seconds']:6.1f} s, {described(chunked['requests'])}")
    print(f"   compacted : {packed['seconds']:6.1f} s, {described(packed['requests'])}")
    print(f"   time compacted / in chunks: {packed['seconds'] / chunked['seconds']:.2f}x (reported, not judged)")
    print(f"   the same files, byte for byte: {'yes' if exports['same'] else 'NO'}  {verdict(exports['same'])}")
    print(
        f"   downloads <= the {exports['objects']} objects the compacted days hold:"
        f" {packed['requests']['download']}  {verdict(downloads_ok)}"
    )

    chunks_a_year = HOURS_A_DAY * 3600 * 365
    gb = chunks_a_year * (CHUNK_BYTES + wav.HEADER_SIZE) / 1e9
    objects_a_year = 365 * day["objects"]
    print(f"4. a year of one owner streaming {HOURS_A_DAY} h a day (list prices, USD, storage only):")
    print(
        f"   chunks in Standard     : {chunks_a_year:>10,} objects, {gb:5.0f} GB"
        f" x ${STANDARD_PER_GB_MONTH:.3f}/GB-month = ${gb * STANDARD_PER_GB_MONTH:.2f} a month after one year"
    )
    print(
        f"   compacted FLAC, Archive: {objects_a_year:>10,} objects, {gb * ratio:5.0f} GB"
        f" x ${ARCHIVE_PER_GB_MONTH:.4f}/GB-month = ${gb * ratio * ARCHIVE_PER_GB_MONTH:.2f} a month after one year"
        f" (ratio {ratio:.3f} from 1.)"
    )
    print("goals met" if met else "GOAL MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
