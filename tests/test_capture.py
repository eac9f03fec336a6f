"""Capture times reconstructed from what the real function stored, as the Omi senders send.

The senders (`omi_backend`) run on a virtual clock and post to the real function in
process (functions-framework's test client), whose clock is made the same virtual
clock: each chunk is named by the moment its body reached the function.  Failures
are real 503s: the uid's folder is made unwritable for that one request.  Every
stored chunk's audio says, through the simulator, when it was really captured;
`capture.capture_starts` must land within `GOAL_SECONDS` of that for every chunk,
and the gaps it leaves between chunks must be exactly the audio that was lost.
"""

from __future__ import annotations

import io
import os
import wave
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import omi_backend
import pytest
from conftest import ROOT

import storage
from omi_audio import capture

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
TOKEN = "capture-test-token-0123"
# Every cue within 0.5 s of its words, every conversation's audio_start within 0.5 s of
# its first sample: both follow from every chunk's capture start being that close.
GOAL_SECONDS = 0.5
ORIGIN = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
ROUNDING = timedelta(microseconds=1)  # capture times are datetimes: whole microseconds
# The three URL forms: merged (current backend), legacy (older backend), the phone's own.
QUERIES = {
    "current": f"token={TOKEN}&sample_rate=16000&uid={UID}",
    "older": f"token={TOKEN}?sample_rate=16000&uid={UID}",
    "phone": f"token={TOKEN}?uid={UID}&sample_rate=16000",
}

# (sender, stream seconds, URL form, {(batch, piece): failed attempts}, storage outages).
# One failed attempt is one retry; four is the current backend's last attempt: that
# piece and the rest of its batch are lost (the first piece: the whole batch).
SCENARIOS = {
    "backend N=5": (omi_backend.current_backend(5), 600, "current", {(20, 2): 1, (60, 0): 4, (90, 3): 4}, ()),
    "backend N=30": (omi_backend.current_backend(30), 1200, "current", {(5, 10): 1, (15, 0): 4, (25, 12): 4}, ()),
    "backend N=1": (omi_backend.current_backend(1), 300, "current", {(20, 0): 1, (100, 0): 4, (200, 1): 4}, ()),
    "backend N=120": (omi_backend.current_backend(120), 1200, "current", {(2, 10): 1, (4, 0): 4, (6, 12): 4}, ()),
    "backend N=5, storage down 100 s": (omi_backend.current_backend(5), 600, "current", {}, [(300, 400)]),
    "backend N=30, storage down 100 s": (omi_backend.current_backend(30), 1200, "current", {}, [(500, 600)]),
    "older backend N=60": (omi_backend.older_backend(60), 1200, "older", {(5, 0): 1, (12, 0): 4}, ()),
    "phone 60 s": (omi_backend.phone(60), 1800, "phone", {(8, 0): 1}, ()),
}
# Each scenario runs once per seed (the audio, the network's latency and its slow
# requests): CAPTURE_SEEDS=0-9 for the figures in docs/export.md.
FIRST_SEED, _, LAST_SEED = os.environ.get("CAPTURE_SEEDS", "0").partition("-")
SEEDS = range(int(FIRST_SEED), int(LAST_SEED or FIRST_SEED) + 1)


@pytest.fixture
def function(local_dir, monkeypatch):
    """A fresh instance of the real function on the test client, its clock the simulation's: (client, clock)."""
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    with omi_backend.function_on_virtual_clock(ROOT / "main.py", ORIGIN) as served:
        yield served


@contextmanager
def storage_unwritable(folder: Path):
    """Make the uid's folder unwritable for one request: a file stands where the folder was."""
    parked = folder.with_name(folder.name + ".parked")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        folder.rename(parked)
    folder.write_bytes(b"")
    try:
        yield
    finally:
        folder.unlink()
        if parked.exists():
            parked.rename(folder)


def send(client, local_dir: Path, form: str):
    """The receiver the simulator posts to: the real function, failing on request."""

    def receive(body: bytes, headers: dict[str, str], fail: bool) -> int:
        if not fail:
            return client.post(f"/?{QUERIES[form]}", data=body, headers=headers).status_code
        with storage_unwritable(local_dir / storage.uid_prefix(UID)):
            status = client.post(f"/?{QUERIES[form]}", data=body, headers=headers).status_code
        assert status == 503, "a write that storage refuses must be answered 503"
        return status

    return receive


def stored_chunks(local_dir: Path) -> list[tuple[datetime, float, bytes]]:
    """What the function stored, in receipt order: (received_at, duration_seconds, pcm)."""
    store = storage.LocalStore(local_dir)
    infos = sorted(store.list_chunks(UID), key=lambda info: (info.parts.received_at, info.parts.seq))
    found = []
    for info in infos:
        with wave.open(io.BytesIO(store.read(info.name))) as audio:
            pcm = audio.readframes(audio.getnframes())
        found.append((info.parts.received_at, float(info.metadata["duration_seconds"]), pcm))
    return found


def worst_error(estimates: list[datetime], truths: list[datetime]) -> float:
    return max(abs((estimate - truth).total_seconds()) for estimate, truth in zip(estimates, truths, strict=True))


def holes(chunks: list[tuple[datetime, float]], starts: list[datetime]) -> dict[int, float]:
    """{index of the chunk before it: seconds} for each gap the capture starts leave between two chunks."""
    gaps = {k: (starts[k + 1] - starts[k]).total_seconds() - chunks[k][1] for k in range(len(chunks) - 1)}
    # Contiguous chunks differ by rounding to microseconds only.
    return {k: gap for k, gap in gaps.items() if gap > capture.HOLE_TOLERANCE_SECONDS / 2}


def true_holes(truths: list[datetime], durations: list[float]) -> dict[int, float]:
    """{index of the chunk before it: seconds} for each stretch of audio really lost."""
    gaps = {k: (truths[k + 1] - truths[k]).total_seconds() - durations[k] for k in range(len(truths) - 1)}
    return {k: gap for k, gap in gaps.items() if gap > 1e-6}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_chunk_is_placed_within_half_a_second_of_its_capture(function, local_dir, scenario, seed):
    """Within GOAL_SECONDS of its capture; a sender of whole batches also has its upload time."""
    sender, stream_seconds, form, failures, outages = SCENARIOS[scenario]
    client, clock = function

    sent = omi_backend.run(sender, stream_seconds, send(client, local_dir, form), clock, failures, outages, seed)

    stored = stored_chunks(local_dir)
    captured_at = {chunk.body: ORIGIN + timedelta(seconds=chunk.capture_start) for chunk in sent if chunk.stored}
    assert sorted(pcm for _, _, pcm in stored) == sorted(captured_at), "every chunk stored once, none lost"
    truths = [captured_at[pcm] for _, _, pcm in stored]
    chunks = [(received_at, seconds) for received_at, seconds, _ in stored]
    durations = [seconds for _, seconds in chunks]

    starts = capture.capture_starts(chunks)

    worst = worst_error(starts, truths)
    receipt = worst_error([received_at for received_at, _ in chunks], truths)
    receipt_less_duration = worst_error([at - timedelta(seconds=seconds) for at, seconds in chunks], truths)
    print(
        f"\n{scenario}, seed {seed}: {len(chunks)} chunks, worst capture-time error {worst:.3f} s"
        f" (receipt: {receipt:.2f} s, receipt less duration: {receipt_less_duration:.2f} s)"
    )
    # The phone's receipt comes after its whole batch is uploaded over its own link.
    uploads = max(map(len, captured_at)) / sender.bytes_per_second if not sender.pieces else 0.0
    assert worst <= GOAL_SECONDS + uploads
    assert all(
        starts[k + 1] - starts[k] >= timedelta(seconds=durations[k]) - ROUNDING for k in range(len(starts) - 1)
    ), "chunks never overlap"
    # Every hole found is audio really lost, of about that length, and every loss
    # longer than the goal is found (a shorter one may be taken for latency).
    found = holes(chunks, starts)
    lost = true_holes(truths, durations)
    assert all(abs(seconds - lost.get(after, 0.0)) <= GOAL_SECONDS for after, seconds in found.items())
    assert {after for after, seconds in lost.items() if seconds > GOAL_SECONDS} <= found.keys()
    assert any(seconds > GOAL_SECONDS for seconds in lost.values()), "the scenario loses audio"
    # The same scenario fails the readings that ignore how the sender batches.  For a
    # sender of whole batches, receipt less duration is the model itself until a retry.
    assert receipt > GOAL_SECONDS + uploads
    if sender.pieces or sender.retry_delays:
        assert receipt_less_duration > GOAL_SECONDS + uploads


def test_no_chunks_have_no_capture_times():
    assert capture.capture_starts([]) == []


def test_a_lone_batch_was_captured_just_before_it_arrived():
    received = ORIGIN + timedelta(minutes=1)

    (start,) = capture.capture_starts([(received, 60.0)])

    assert start == received - timedelta(seconds=60)


def test_a_session_hours_later_is_a_hole_of_that_length_and_moves_nothing_before_it():
    """The phone's 60 s batches, each received 0.3 s after its end; a second session 3 h later."""
    later = 3 * 3600.0
    truths = [60.0 * k for k in range(10)] + [later + 60.0 * k for k in range(10)]
    chunks = [(ORIGIN + timedelta(seconds=t + 60.3), 60.0) for t in truths]

    starts = capture.capture_starts(chunks)

    assert worst_error(starts, [ORIGIN + timedelta(seconds=t) for t in truths]) <= GOAL_SECONDS
    ((after, seconds),) = holes(chunks, starts).items()
    assert after == 9
    assert abs(seconds - (later - 600.0)) <= GOAL_SECONDS


def test_a_batch_late_by_as_much_as_the_loss_after_it_stays_with_the_audio_before_it():
    """N = 2: batch 30 is one batch late (a slow request), batch 31 is lost (36 s of retries).

    Batch 30's own bound sits at the level the loss sets, so either place fits the
    bounds; only the pause says where a loss can be: after the retry sequence.
    """
    batch_seconds = 2.02  # a 2-second batch: two pieces and a remainder
    chunks, truths, free_at = [], [], 0.0
    for batch in range(60):
        ready = (batch + 1) * batch_seconds
        if batch == 31:
            free_at = ready + 37.0  # four failed attempts of its first piece, then the rest dropped
            continue
        sent = max(ready, free_at) + (batch_seconds if batch == 30 else 0.0)
        for piece, seconds in enumerate((1.0, 1.0, 0.02)):
            chunks.append((ORIGIN + timedelta(seconds=sent + 0.05 + 0.1 * piece), seconds))
            truths.append(ORIGIN + timedelta(seconds=ready - batch_seconds + piece))
        free_at = sent + 0.3

    starts = capture.capture_starts(chunks)

    assert worst_error(starts, truths) <= GOAL_SECONDS
    ((after, seconds),) = holes(chunks, starts).items()
    assert after == 3 * 31 - 1  # after batch 30's remainder
    assert abs(seconds - batch_seconds) <= GOAL_SECONDS
