"""The Omi senders, simulated on a virtual clock, with the truth of when each chunk was captured.

The Omi backend receives the wearable's audio live (its clock is the capture clock),
buffers it, and once the buffer holds more than N seconds sends that batch, as the
Omi backend's webhook code does:

* the current backend as back-to-back 1-second pieces plus a shorter remainder, one
  request at a time per uid, each piece with its own Idempotency-Key, a failed piece
  retried 1, 5 and 30 s later, the rest of the batch abandoned after its last failure;
* the older backend as one request per batch, no key, retried the same way;
* the phone as one request per batch, no key, never retried.

Each request takes a random network time each way (a few are seconds late) and its
body's upload time, so the receiver sees the body at ``send + uplink`` on the
virtual clock.  `run` calls a
receiver (the real function, in the tests) with the clock set to that moment and acts
on the status it answers, as the sender does.  Nothing sleeps: an hour runs in seconds.
"""

from __future__ import annotations

import random
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

SAMPLE_RATE = 16000
SAMPLE_BYTES = 2
# The backend appends the stream as it arrives from the device in small frames, and checks
# the buffer after each: a batch is N seconds and one frame (or a little more).
FRAME_SECONDS = 0.02
RETRY_DELAYS_SECONDS = (1.0, 5.0, 30.0)
# One way across the internet, per request: 30 to 300 ms for a round trip.
ONE_WAY_SECONDS = (0.015, 0.150)
# Now and then a request is much slower (a lost packet resent, a new instance starting):
# this share of requests reaches the function up to a few seconds late.
SLOW_SHARE = 0.02
SLOW_EXTRA_SECONDS = (0.5, 3.0)
# Upload speed: a data centre's egress for the backend, a phone's Wi-Fi or mobile uplink.
BACKEND_BYTES_PER_SECOND = 100e6 / 8
PHONE_BYTES_PER_SECOND = 20e6 / 8


@dataclass
class VirtualClock:
    """The simulation's time: the backend's capture clock, and the function's clock in the tests."""

    origin: datetime
    seconds: float = 0.0

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=self.seconds)


@contextmanager
def function_on_virtual_clock(source: Path, origin: datetime) -> Iterator[tuple[object, VirtualClock]]:
    """The real function on functions-framework's test client, its clock a `VirtualClock`.

    Yields (client, clock).  create_app loads `source` as a new module "main", whose
    `datetime` is made the clock's; the module other tests import is put back afterwards.
    """
    import functions_framework

    others = sys.modules.get("main")
    app = functions_framework.create_app("receive_audio", str(source))
    main = sys.modules["main"]  # the module create_app just loaded: the one serving `app`
    clock = VirtualClock(origin)

    class VirtualDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return clock.now().astimezone(tz)

    main.datetime = VirtualDatetime
    try:
        yield app.test_client(), clock
    finally:
        if others is None:
            del sys.modules["main"]
        else:
            sys.modules["main"] = others


@dataclass
class Sent:
    """One chunk of audio the sender posted: where it sits in the stream, and what it got back."""

    capture_start: float  # stream seconds of its first sample (virtual clock)
    body: bytes
    key: str | None
    statuses: list[int] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return any(200 <= status < 300 for status in self.statuses)


@dataclass(frozen=True)
class Sender:
    """How one kind of sender batches, posts and retries."""

    name: str
    interval_seconds: float  # N: a batch goes out once the buffer holds more than this
    pieces: bool  # 1-second pieces (current backend) or the whole batch in one request
    idempotency_keys: bool
    retry_delays: tuple[float, ...]
    bytes_per_second: float


def current_backend(interval_seconds: float) -> Sender:
    name = f"backend N={interval_seconds:g}"
    return Sender(name, interval_seconds, True, True, RETRY_DELAYS_SECONDS, BACKEND_BYTES_PER_SECOND)


def older_backend(interval_seconds: float) -> Sender:
    name = f"older backend N={interval_seconds:g}"
    return Sender(name, interval_seconds, False, False, RETRY_DELAYS_SECONDS, BACKEND_BYTES_PER_SECOND)


def phone(delay_seconds: float) -> Sender:
    return Sender(f"phone {delay_seconds:g} s", delay_seconds, False, False, (), PHONE_BYTES_PER_SECOND)


# receiver(body, headers, fail) -> HTTP status; called with the clock at the moment the body arrived.
# `fail` asks the receiver to make this one request fail (storage unwritable).
Receiver = Callable[[bytes, dict[str, str], bool], int]


def retried(status: int) -> bool:
    """Whether the sender tries again after this status: 408, 429 and 5xx."""
    return status in (408, 429) or status >= 500


def batches(stream_seconds: float, interval_seconds: float) -> list[tuple[int, int]]:
    """(first sample, end sample) of each batch the sender cuts from a live stream.

    A batch is ready the moment its last frame is captured, at ``end / SAMPLE_RATE``.
    The tail shorter than a batch is dropped, as the sender does.
    """
    frame = round(FRAME_SECONDS * SAMPLE_RATE)
    total = int(stream_seconds * SAMPLE_RATE)
    found, start, end = [], 0, 0
    while end + frame <= total:
        end += frame
        if end - start > interval_seconds * SAMPLE_RATE:
            found.append((start, end))
            start = end
    return found


def run(
    sender: Sender,
    stream_seconds: float,
    receiver: Receiver,
    clock: VirtualClock,
    failures: dict[tuple[int, int], int],
    outages: Sequence[tuple[float, float]] = (),
    seed: int = 0,
) -> list[Sent]:
    """Capture `stream_seconds` of audio and send it all as `sender` does.

    Args:
        failures: ``{(batch, piece): attempts}``: that piece's first `attempts` attempts are
            made to fail (1: one retry; more attempts than the sender makes: lost).
        outages: ``(start, end)`` stream seconds during which every attempt is made to fail.
        seed: the audio and the network's randomness.

    Returns:
        Every chunk posted, in order, with the status of each attempt.
    """
    rng = random.Random(seed)
    stream = rng.randbytes(int(stream_seconds * SAMPLE_RATE) * SAMPLE_BYTES)
    piece_samples = SAMPLE_RATE if sender.pieces else None
    sent: list[Sent] = []
    free_at = 0.0  # the sender sends one request at a time (one lock per uid)
    for index, (first, end) in enumerate(batches(stream_seconds, sender.interval_seconds)):
        t = max(free_at, end / SAMPLE_RATE)
        step = piece_samples or end - first
        for piece, start in enumerate(range(first, end, step)):
            body = stream[start * SAMPLE_BYTES : min(start + step, end) * SAMPLE_BYTES]
            key = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if sender.idempotency_keys else None
            chunk = Sent(start / SAMPLE_RATE, body, key)
            sent.append(chunk)
            headers = {"Content-Type": "application/octet-stream"}
            if chunk.key:
                headers["Idempotency-Key"] = chunk.key
            to_fail = failures.get((index, piece), 0)
            for attempt in range(len(sender.retry_delays) + 1):
                if attempt:
                    t += sender.retry_delays[attempt - 1]
                t += rng.uniform(*ONE_WAY_SECONDS) + len(chunk.body) / sender.bytes_per_second
                if rng.random() < SLOW_SHARE:
                    t += rng.uniform(*SLOW_EXTRA_SECONDS)
                clock.seconds = t
                down = any(down_from <= t < back_at for down_from, back_at in outages)
                chunk.statuses.append(receiver(chunk.body, headers, attempt < to_fail or down))
                t += rng.uniform(*ONE_WAY_SECONDS)
                if chunk.stored or not retried(chunk.statuses[-1]):
                    break
            if not chunk.stored:
                break  # the rest of the batch is abandoned
        free_at = t
    return sent
