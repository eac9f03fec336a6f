"""Measure `receive_audio` against its floor, side by side in one run (`make bench`).

The floor is what no receiver can beat on this machine: functions-framework's own
cost (an echo function that reads the body and answers 200, `bench/echo.py`) plus
the storage write itself (a bare google-cloud-storage upload of the same WAV bytes
with the same does-not-exist precondition, from a warm client).  Both servers run
under the `functions-framework` CLI (gunicorn, its default workers and threads) and
write to one fake-gcs-server on 127.0.0.1.

Four figures, each a ratio or a delta measured in the same run, so that the noise
of a shared 2-core machine hits both sides alike.  Every figure is the median over
repeats with its min-max:

1. latency: function / (echo + bare) for one 32,000-byte POST, goal <= 1.05;
2. throughput: function req/s / (1 / (1/echo + 1/bare)) with 16 senders, goal >= 0.9;
3. cold start: import cost of main.py beyond functions_framework and
   google.cloud.storage, goal <= 10 ms; process start to first stored chunk,
   reported next to the echo function's start to first answer;
4. memory: peak RSS of the worker for 16 concurrent 11.52 MB bodies (the deployed
   concurrency, each the largest batch a sender posts: 120 s at 48 kHz), served
   with THREADS=16 as deployed: its growth against the bodies, goal <= 4 x their
   total, and the peak itself, which sizes deploy.sh's --memory; RSS growth between
   the first and last thousand of a 5,000-request run, goal: none (<= 1 MiB, the
   allocator's granularity).

The load generator is a minimal HTTP/1.1 client on raw keep-alive sockets, so that
its own cost (the same for echo and function) stays small next to the server's.

Run ``python bench/measure.py --quick`` for a seconds-long smoke run (figures meaningless).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/conftest.py imports its helpers from tests/

import psutil  # noqa: E402

import wav  # noqa: E402
from tests.conftest import fake_gcs_binary, free_port, wait_http  # noqa: E402

CHUNK_BYTES = 32_000  # one second at 16 kHz, what Omi posts now
BIG_BODY_BYTES = 11_520_000  # 120 s at 48 kHz, the largest batch a sender posts
SAMPLE_RATE = 16000
SENDERS = 16
BIG_BODIES = 16  # deploy.sh's --concurrency
DEPLOYED_THREADS = "16"  # deploy.sh sets THREADS to the concurrency
# The environment deploy.sh gives the function, beyond its settings:
# - glibc gives every buffer over 128 KiB its own mapping, returned to the system
#   when freed (otherwise large freed bodies stay in per-thread arenas);
# - storage's host is in NO_PROXY (here the stand-in's, on Cloud Run
#   storage.googleapis.com), so requests skips its proxy lookup in the environment
#   on every call.
DEPLOYED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}
TOKEN = "bench-token"
# The modules deploy.sh uploads beside main.py's libraries (its staged copy: every *.py at the root).
FUNCTION_MODULES = tuple(sorted(path.name for path in ROOT.glob("*.py")))
# RSS moves in allocator arenas and pages: below this, "growth" is noise.
LEAK_TOLERANCE_BYTES = 1024 * 1024
# What main.py keeps per instance for retries; the leak run starts with it full.
IDEMPOTENCY_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Settings:
    """How much to measure: full for `make bench`, tiny for the smoke test."""

    rounds: int
    latency_requests: int
    throughput_seconds: float
    import_repeats: int
    start_repeats: int
    memory_repeats: int
    leak_requests: int
    leak_block: int
    cache_fill: int


FULL = Settings(
    rounds=7,
    latency_requests=300,
    throughput_seconds=3.0,
    import_repeats=11,
    start_repeats=5,
    memory_repeats=3,
    leak_requests=5000,
    leak_block=1000,
    cache_fill=IDEMPOTENCY_CACHE_SIZE,
)
QUICK = Settings(
    rounds=2,
    latency_requests=10,
    throughput_seconds=0.3,
    import_repeats=2,
    start_repeats=1,
    memory_repeats=1,
    leak_requests=200,
    leak_block=40,
    cache_fill=50,
)


# --------------------------------------------------------------------- storage


@dataclass
class FakeGcs:
    url: str
    pid: int


@contextmanager
def fake_gcs(workdir: Path) -> Iterator[FakeGcs]:
    """fake-gcs-server on 127.0.0.1, objects kept as files in memory (tmpfs).

    Its memory backend rewrites a bucket's index on every insert, so uploads slow
    down by about 2 ms per 1,000 objects already there; that drift would swamp the
    figures.  The filesystem backend on tmpfs stays flat.
    """
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="omi-bench-gcs-", dir=shm if shm.is_dir() else None))
    port = free_port()
    with open(workdir / "fake-gcs.log", "ab") as log:
        proc = subprocess.Popen(
            [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]  # noqa: RUF005
            + ["-backend", "filesystem", "-filesystem-root", str(root), "-log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/storage/v1/b")
        yield FakeGcs(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- client


class Closed(Exception):
    """The server closed the connection before answering."""


class HttpConn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, as cheap as Python allows."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, target: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """POST `body`; reconnect once if an idle keep-alive connection was closed."""
        lines = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(body)}"]
        lines += ["Content-Type: application/octet-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                if len(body) <= 65536:
                    self.sock.sendall(head + body)
                else:
                    self.sock.sendall(head)
                    self.sock.sendall(body)
                return self._response()
            except (Closed, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _response(self) -> tuple[int, bytes]:
        assert self.sock is not None
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(65536)
            if not piece:
                raise Closed
            data += piece
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in fields:
            length = int(fields["content-length"])
            while len(rest) < length:
                piece = self.sock.recv(65536)
                if not piece:
                    raise Closed
                rest += piece
        else:  # only rejections stream their answer, and they close the connection
            while piece := self.sock.recv(65536):
                rest += piece
            fields["connection"] = "close"
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, rest


# --------------------------------------------------------------------- servers


@dataclass
class Server:
    proc: subprocess.Popen
    port: int

    @property
    def worker(self) -> psutil.Process:
        """The gunicorn worker that serves requests (the CLI process is the arbiter)."""
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            children = psutil.Process(self.proc.pid).children()
            if children:
                return children[0]
            time.sleep(0.01)
        raise RuntimeError("gunicorn started no worker")


def serve_command(source: Path, target: str, port: int) -> list[str]:
    cli = Path(sys.executable).parent / "functions-framework"
    return [str(cli), f"--source={source}", f"--target={target}", "--host=127.0.0.1", f"--port={port}"]


def server_env(gcs_url: str, bucket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("THREADS", "WORKERS", "LOCAL_AUDIO_DIR", "K_SERVICE")}
    env.update(STORAGE_EMULATOR_HOST=gcs_url, GCS_BUCKET_NAME=bucket, WEBHOOK_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    env.update(DEPLOYED_MALLOC, NO_PROXY=urlsplit(gcs_url).hostname)
    env.pop("ALLOWED_UIDS", None)
    env.pop("MAX_CHUNK_BYTES", None)
    return env


@contextmanager
def serving(kind: str, env: dict[str, str], logs: Path) -> Iterator[Server]:
    """Run the function ("function") or the echo ("echo") under the functions-framework CLI."""
    source, target = (ROOT / "main.py", "receive_audio") if kind == "function" else (ROOT / "bench/echo.py", "echo")
    port = free_port()
    with open(logs / f"{kind}-{port}.log", "ab") as log:
        proc = subprocess.Popen(
            serve_command(source, target, port),
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield Server(proc, port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ------------------------------------------------------------------ senders


def pcm(size: int, seed: int = 1) -> bytes:
    """Deterministic non-silent PCM16."""
    import random

    return random.Random(seed).randbytes(size)


class FunctionSender:
    """Posts chunks as Omi does: merged query with token, one Idempotency-Key per chunk."""

    def __init__(self, port: int, uid: str, body: bytes) -> None:
        self.conn = HttpConn(port)
        self.target = f"/?token={TOKEN}&sample_rate={SAMPLE_RATE}&uid={uid}"
        self.body = body

    def __call__(self) -> None:
        status, answer = self.conn.post(self.target, self.body, {"Idempotency-Key": str(uuid.uuid4())})
        self.status = status
        if status != 200:
            raise RuntimeError(f"function answered {status}: {answer[:200]!r}")


class EchoSender:
    def __init__(self, port: int, body: bytes) -> None:
        self.conn = HttpConn(port)
        self.body = body

    def __call__(self) -> None:
        status, _ = self.conn.post("/", self.body)
        if status != 200:
            raise RuntimeError(f"echo answered {status}")


class BareUploader:
    """The storage half of the floor: the library's plain upload, same bytes, same precondition."""

    def __init__(self, bucket: object, wav_bytes: bytes, prefix: str, with_metadata: bool = False) -> None:
        self.bucket = bucket
        self.wav_bytes = wav_bytes
        self.prefix = prefix
        self.count = 0
        self.with_metadata = with_metadata  # diagnostic only: the metadata receive_audio writes

    def __call__(self) -> None:
        self.count += 1
        blob = self.bucket.blob(f"{self.prefix}/{self.count}.wav")
        if self.with_metadata:
            blob.metadata = {
                "sample_rate": str(SAMPLE_RATE),
                "received_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "duration_seconds": "1.0",
                "pcm_bytes": str(CHUNK_BYTES),
                "idempotency_key": str(uuid.uuid4()),
                "write_id": uuid.uuid4().hex,
            }
        blob.upload_from_string(self.wav_bytes, content_type="audio/wav", if_generation_match=0)


def timed(send: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        send()
        times.append(time.perf_counter() - started)
    return times


def rate(senders: list[Callable[[], None]], seconds: float, pids: tuple[int, ...] = ()) -> tuple[float, float]:
    """Requests per second with one thread per sender, each sending back to back.

    Returns:
        (requests per second, CPU seconds per request of this process and `pids` together).
    """
    processes = [psutil.Process(), *(psutil.Process(pid) for pid in pids)]
    cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
    done = [0] * len(senders)
    errors: list[BaseException] = []
    start = threading.Barrier(len(senders) + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        start.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                senders[i]()
                done[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(senders))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu_before
    return sum(done) / elapsed, cpu / max(sum(done), 1)


# --------------------------------------------------------------------- report


@dataclass
class Figure:
    name: str
    values: list[float]
    unit: str
    goal: str
    met: bool | None

    def line(self) -> str:
        med = statistics.median(self.values)
        spread = f"({fmt(min(self.values))}-{fmt(max(self.values))})" if len(self.values) > 1 else ""
        verdict = {True: "met", False: "NOT MET", None: "(reported)"}[self.met]
        return f"{self.name:<52} {fmt(med):>9} {spread:<20} {self.unit:<6} {self.goal:<18} {verdict}"


def fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


FIGURES: list[Figure] = []


def report(name: str, values: list[float], unit: str, goal: str, check: Callable[[float], bool] | None) -> Figure:
    figure = Figure(name, values, unit, goal, None if check is None else check(statistics.median(values)))
    FIGURES.append(figure)
    print(figure.line(), flush=True)
    return figure


def median_spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    return f"{statistics.median(values) * scale:.3f}{unit} ({min(values) * scale:.3f}-{max(values) * scale:.3f})"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("functions-framework", "gunicorn", "google-cloud-storage")
    )
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores {cpu}, {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {versions}"
    )


# ---------------------------------------------------------------------- phases


def latency_and_throughput(settings: Settings, server: FakeGcs, logs: Path) -> None:
    from google.cloud import storage as gcs

    gcs_url = server.url

    client = gcs.Client()
    for name in ("bench-fn", "bench-bare"):
        client.create_bucket(name)
    bare_bucket = client.bucket("bench-bare")
    chunk = pcm(CHUNK_BYTES)
    wav_bytes = wav.frame(chunk, SAMPLE_RATE)

    with (
        serving("function", server_env(gcs_url, "bench-fn"), logs) as fn,
        serving("echo", server_env(gcs_url, "bench-fn"), logs) as echo,
    ):
        one_fn = FunctionSender(fn.port, "benchlatency", chunk)
        one_echo = EchoSender(echo.port, chunk)
        one_bare = BareUploader(bare_bucket, wav_bytes, "latency")
        for send in (one_fn, one_echo, one_bare):  # warm: connections, clients, code paths
            timed(send, 20)

        one_meta = BareUploader(bare_bucket, wav_bytes, "latency-metadata", with_metadata=True)
        timed(one_meta, 20)
        ratios, fn_ms, echo_ms, bare_ms, meta_ms, meta_ratios = [], [], [], [], [], []
        for _ in range(settings.rounds):
            times: dict[str, list[float]] = {"fn": [], "echo": [], "bare": [], "meta": []}
            order = [("fn", one_fn), ("echo", one_echo), ("bare", one_bare), ("meta", one_meta)]
            for i in range(settings.latency_requests):
                for name, send in order[i % 4 :] + order[: i % 4]:  # rotate who goes first
                    times[name] += timed(send, 1)
            f, e, b, m = (statistics.median(times[k]) for k in ("fn", "echo", "bare", "meta"))
            ratios.append(f / (e + b))
            meta_ratios.append(f / (e + m))
            fn_ms.append(f * 1000)
            echo_ms.append(e * 1000)
            bare_ms.append(b * 1000)
            meta_ms.append(m * 1000)
        print(f"  echo {median_spread(echo_ms)} ms + bare upload {median_spread(bare_ms)} ms")
        print(f"  function {median_spread(fn_ms)} ms  (32,000-byte POST, median of {settings.latency_requests})")
        print(
            f"  (diagnostic: bare upload with the function's 6 metadata fields {median_spread(meta_ms)} ms; "
            f"function / (echo + that) {median_spread(meta_ratios)})"
        )
        report("1. latency: function / (echo + bare)", ratios, "ratio", "<= 1.05", lambda r: r <= 1.05)

        fn_senders = [FunctionSender(fn.port, f"benchsender{i:02d}", chunk) for i in range(SENDERS)]
        echo_senders = [EchoSender(echo.port, chunk) for _ in range(SENDERS)]
        bare_senders = [BareUploader(bare_bucket, wav_bytes, f"rate{i}") for i in range(SENDERS)]
        rate(fn_senders, min(settings.throughput_seconds, 1.0))  # warm the pools
        rate(bare_senders, min(settings.throughput_seconds, 1.0))
        ratios, fn_rps, echo_rps, bare_rps, floor_rps, fn_cpu, floor_cpu = [], [], [], [], [], [], []
        for r in range(settings.rounds):
            order = [
                ("fn", fn_senders, (fn.worker.pid, server.pid)),
                ("echo", echo_senders, (echo.worker.pid,)),
                ("bare", bare_senders, (server.pid,)),
            ]
            got = {
                name: rate(s, settings.throughput_seconds, pids) for name, s, pids in order[r % 3 :] + order[: r % 3]
            }
            floor = 1 / (1 / got["echo"][0] + 1 / got["bare"][0])
            ratios.append(got["fn"][0] / floor)
            fn_rps.append(got["fn"][0])
            echo_rps.append(got["echo"][0])
            bare_rps.append(got["bare"][0])
            floor_rps.append(floor)
            fn_cpu.append(got["fn"][1] * 1000)
            floor_cpu.append((got["echo"][1] + got["bare"][1]) * 1000)
        print(f"  echo {median_spread(echo_rps)} req/s, bare upload {median_spread(bare_rps)} req/s")
        print(f"  floor {median_spread(floor_rps)} req/s; function {median_spread(fn_rps)} req/s ({SENDERS} senders)")
        print(
            f"  CPU per request, all processes: function {median_spread(fn_cpu)} ms, "
            f"echo + bare {median_spread(floor_cpu)} ms"
        )
        report("2. throughput: function / floor, 16 senders", ratios, "ratio", ">= 0.9", lambda r: r >= 0.9)


IMPORT_PROBE = """
import time
t0 = time.perf_counter()
import functions_framework, google.cloud.storage
t1 = time.perf_counter()
import {module}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def cold_start(settings: Settings, gcs_url: str, logs: Path) -> None:
    def probe(module: str) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE.format(module=module)],
            cwd=ROOT,
            env=server_env(gcs_url, "bench-cold"),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        base, extra = out.stdout.split()
        return float(base), float(extra)

    probe("main")  # compile .pyc once, as a deployed instance would have
    runs = [probe("main") for _ in range(settings.import_repeats)]
    base_ms = [b * 1000 for b, _ in runs]
    extra_ms = [e * 1000 for _, e in runs]
    print(f"  importing functions_framework + google.cloud.storage: {median_spread(base_ms)} ms")
    report("3. cold start: import main.py beyond its libraries", extra_ms, "ms", "<= 10 ms", lambda v: v <= 10)
    compile_ms = []
    for _ in range(settings.import_repeats):
        started = time.perf_counter()
        for name in FUNCTION_MODULES:
            compile((ROOT / name).read_text(), name, "exec")
        compile_ms.append((time.perf_counter() - started) * 1000)
    print(f"  (without shipped bytecode, compiling {', '.join(FUNCTION_MODULES)} adds {median_spread(compile_ms)} ms)")

    from google.cloud import storage as gcs

    gcs.Client().create_bucket("bench-cold")
    chunk = pcm(CHUNK_BYTES)

    def first_answer(kind: str) -> float:
        port = free_port()
        env = server_env(gcs_url, "bench-cold")
        source, target = (ROOT / "main.py", "receive_audio") if kind == "function" else (ROOT / "bench/echo.py", "echo")
        with open(logs / f"cold-{kind}-{port}.log", "ab") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                serve_command(source, target, port),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        send = FunctionSender(port, "benchcold", chunk) if kind == "function" else EchoSender(port, chunk)
        try:
            give_up = started + 60
            while True:
                try:
                    send()
                    return time.perf_counter() - started
                except (ConnectionRefusedError, Closed, ConnectionResetError):
                    send.conn.close()
                    if time.perf_counter() > give_up:
                        raise RuntimeError(f"{kind} did not answer within 60 s") from None
                    time.sleep(0.005)
        finally:
            send.conn.close()
            proc.terminate()
            proc.wait(10)

    fn_start, echo_start = [], []
    for _ in range(settings.start_repeats):
        fn_start.append(first_answer("function") * 1000)
        echo_start.append(first_answer("echo") * 1000)
    report("3. cold start: process start -> first stored chunk", fn_start, "ms", "(report)", None)
    report("   echo: process start -> first answer", echo_start, "ms", "(report)", None)


def rss_reader(pid: int) -> Callable[[str], int]:
    def read(field: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for {pid}")

    return read


def memory(settings: Settings, gcs_url: str, logs: Path) -> None:
    from google.cloud import storage as gcs

    gcs.Client().create_bucket("bench-mem")
    env = server_env(gcs_url, "bench-mem") | {"THREADS": DEPLOYED_THREADS}
    small = pcm(CHUNK_BYTES)
    big = pcm(BIG_BODY_BYTES, seed=2)
    total = BIG_BODIES * BIG_BODY_BYTES

    growths, peaks = [], []
    for _ in range(settings.memory_repeats):
        with serving("function", env, logs) as fn:
            timed(FunctionSender(fn.port, "benchwarm", small), 20)
            worker = fn.worker
            read = rss_reader(worker.pid)
            Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) here
            before = read("VmRSS")
            senders = [FunctionSender(fn.port, f"benchbig{i}", big) for i in range(BIG_BODIES)]
            threads = [threading.Thread(target=send) for send in senders]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            growths.append((read("VmHWM") - before) / total)
            peaks.append(read("VmHWM") / 2**20)
            if any(sender.status != 200 for sender in senders):
                raise RuntimeError(f"large bodies answered {[sender.status for sender in senders]}")
    print(f"  {BIG_BODIES} x {BIG_BODY_BYTES:,} bytes = {total / 1e6:.2f} MB in flight, THREADS={DEPLOYED_THREADS}")
    report("4. memory: peak RSS growth / bodies in flight", growths, "x", "<= 4", lambda g: g <= 4)
    report("4. memory: worker's peak RSS (sizes deploy.sh --memory)", peaks, "MiB", "(report)", None)

    with serving("function", env, logs) as fn:
        read = rss_reader(fn.worker.pid)
        # main.py remembers the last 10,000 chunks for retries, by design; start
        # with that cache full so that growth in the run is growth that never stops.
        fill = [FunctionSender(fn.port, f"benchfill{i:02d}", b"\0\0") for i in range(SENDERS)]
        count_run(fill, settings.cache_fill, None, lambda: None)
        samples: list[int] = []
        senders = [FunctionSender(fn.port, f"benchsoak{i:02d}", small) for i in range(SENDERS)]
        count_run(senders, settings.leak_requests, settings.leak_block, lambda: samples.append(read("VmRSS")))
    first, last = samples[0], samples[-1]
    print(f"  RSS after each {settings.leak_block} requests (MiB): " + " ".join(f"{s / 2**20:.1f}" for s in samples))
    report(
        f"4. memory: RSS growth, first to last {settings.leak_block} of {settings.leak_requests}",
        [(last - first) / 2**20],
        "MiB",
        "<= 1 MiB (none)",
        lambda g: g * 2**20 <= LEAK_TOLERANCE_BYTES,
    )


def count_run(senders: list[Callable[[], None]], total: int, block: int | None, at_block: Callable[[], None]) -> None:
    """Send exactly `total` requests from all senders at once; call `at_block` after every `block`."""
    lock = threading.Lock()
    state = {"issued": 0, "done": 0}
    errors: list[BaseException] = []

    def run(send: Callable[[], None]) -> None:
        try:
            while True:
                with lock:
                    if state["issued"] >= total or errors:
                        return
                    state["issued"] += 1
                send()
                with lock:
                    state["done"] += 1
                    if block and state["done"] % block == 0:
                        at_block()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(send,)) for send in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    if errors:
        raise errors[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run; figures are meaningless")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a goal is not met")
    parser.add_argument(
        "--only", default="speed,cold,memory", help="comma-separated phases: speed (1, 2), cold (3), memory (4)"
    )
    parser.add_argument("--rounds", type=int, help="repeats of each side-by-side measurement")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    phases = set(args.only.split(","))

    print(f"machine: {machine()}")
    print(f"mode: {'quick (smoke only)' if args.quick else 'full'}; medians over repeats, (min-max)\n")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="omi-bench-") as tmp:
        logs = Path(tmp)
        # Servers and probes load everything from bytecode, as an installed package
        # does; cached here rather than beside the sources.
        os.environ["PYTHONPYCACHEPREFIX"] = str(logs / "pycache")
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        with fake_gcs(logs) as gcs:
            gcs_url = gcs.url
            os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
            if "speed" in phases:
                latency_and_throughput(settings, gcs, logs)
            if "cold" in phases:
                cold_start(settings, gcs_url, logs)
            if "memory" in phases:
                memory(settings, gcs_url, logs)

    print(f"\nsummary ({time.monotonic() - began:.0f} s):")
    for figure in FIGURES:
        print("  " + figure.line())
    unmet = [f.name for f in FIGURES if f.met is False]
    print("all goals met" if not unmet else "goals not met: " + "; ".join(re.sub(r"\s+", " ", n) for n in unmet))
    return 1 if unmet and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
