"""When each stored chunk was captured, reconstructed from when it was received.

A chunk's name holds its RECEIPT time at the function, but the Omi backend sends
audio seconds after it was spoken: it buffers the live stream and, once more than N
seconds are buffered (N from 1 to 120), sends that batch as back-to-back 1-second
pieces plus a shorter remainder; a failed piece is retried 1, 5 and 30 s later, and
after its last failure the rest of its batch is dropped.  Older backends and the
phone post each batch whole.  Conversations (``started_at``, segment times) are on
the backend's clock of the live stream, so matching them to audio needs the capture
time of each chunk's first sample: `capture_starts` estimates it, `holes` says where
audio was lost.

The model:

* Audio is contiguous except where lost, so inside a run without loss a chunk's
  capture start is the run's start plus the durations before it.
* A batch is sent once its last sample is captured, so every piece of it arrives
  after the batch's end was captured.  Pieces of one batch arrive back to back
  (a "burst"): the burst's first receipt, minus all the audio up to the burst's
  end, is an upper bound on the capture start of the stream, tight to that one
  request's latency when the batch was sent on schedule.
* A retry, a slow answer or a backlog only delays bursts, and only for a while:
  the lowest bound among the bursts of the next `WINDOW_SECONDS` is the estimate.
  Lost audio raises every later bound for good, and nothing earlier: the window
  looks forward only, so a loss never pulls earlier chunks later.
* Loss cuts a batch short (the rest of it is dropped), so the hole follows the
  surviving head of that batch: a burst that ends on a whole 1-second piece and
  would, with the hole added, be one batch long is that head, and stays joined
  to the audio before it.

The estimate is late by at most the smallest latency in the window (the receipt
is taken once the body is read, so a large body's upload time counts).  The
receipt clock (the function's) and the backend's are both network-synchronised.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# The current backend cuts each batch into pieces of exactly one second.  A piece that
# long (within float noise) is followed by more of its batch; a shorter one ends it.
PIECE_SECONDS = 1.0
PIECE_TOLERANCE_SECONDS = 1e-6
# The next piece of a batch goes out as soon as the previous answer is back, one round
# trip (tens to a few hundred ms) later.  After a failed attempt the sender waits at
# least 1 s, and between batches it waits for more audio, so a longer pause ends the
# burst.  Ending one too early only loosens a bound; joining two batches would not.
BURST_GAP_SECONDS = 0.5
# How far ahead (receipt time) to look for an on-schedule batch.  It must outlast the
# sender's whole retry sequence and the backlog after it (1 + 5 + 30 s of waits plus
# four 30 s timeouts) and hold several 120 s batches; device clock drift of 100 ppm
# moves an estimate 0.06 s over 600 s.
WINDOW_SECONDS = 600.0
# Bounds of consecutive runs differ by the spread of network latency; a gap smaller
# than this is that spread, not lost audio, and the runs are joined.  Well under the
# 0.5 s the export aims for, well over the spread of the smallest latency.
HOLE_TOLERANCE_SECONDS = 0.25
# A cut batch's head plus the hole after it is one batch long, give or take one
# request's latency and a frame or two of batch length.
BATCH_TOLERANCE_SECONDS = 0.5


@dataclass(frozen=True)
class Hole:
    """Audio lost between chunk `after` and chunk ``after + 1``."""

    after: int
    start: datetime  # capture time of the first lost sample (the end of chunk `after`)
    seconds: float


def capture_starts(chunks: Sequence[tuple[datetime, float]]) -> list[datetime]:
    """Estimate when the first sample of each chunk was captured.

    Args:
        chunks: one uid's chunks as ``(received_at, duration_seconds)``, in receipt
            order, duplicates removed; `received_at` timezone-aware.

    Returns:
        The capture time of each chunk's first sample, on the backend's clock.
        Where no audio is lost a chunk starts exactly where the one before ends;
        a gap between them is a hole (see `holes`).  Never overlapping.
    """
    if not chunks:
        return []
    origin = chunks[0][0]
    received = [(at - origin).total_seconds() for at, _ in chunks]
    durations = [seconds for _, seconds in chunks]
    ends = _running_sums(durations)  # audio before the end of each chunk, as if none were lost

    bursts = _bursts(received, durations)
    firsts = [received[first] for first, _ in bursts]
    # Per burst: the latest stream start (capture time minus audio before) consistent with its receipt.
    bounds = [received[first] - ends[last] for first, last in bursts]
    lengths = [ends[last] - ends[first] + durations[first] for first, last in bursts]
    lowest = _forward_window(firsts, bounds, WINDOW_SECONDS, min)
    batch_length = _forward_window(firsts, lengths, WINDOW_SECONDS, max)

    offsets: list[float] = []
    for index, (_, last) in enumerate(bursts):
        if not offsets:
            offsets.append(lowest[index])
            continue
        previous = offsets[-1]
        if lowest[index] - previous <= HOLE_TOLERANCE_SECONDS:
            offsets.append(previous)  # contiguous: the difference is latency, not loss
        elif _is_head_of_cut_batch(durations[last], lengths[index], bounds[index] - previous, batch_length[index]):
            offsets.append(previous)  # the hole comes after this burst
        else:
            offsets.append(lowest[index])

    starts = []
    for (first, last), offset in zip(bursts, offsets, strict=True):
        for k in range(first, last + 1):
            starts.append(origin + timedelta(seconds=offset + ends[k] - durations[k]))
    return starts


def holes(chunks: Sequence[tuple[datetime, float]], starts: Sequence[datetime]) -> list[Hole]:
    """Where audio was lost: each gap between one chunk's end and the next one's start.

    Args:
        chunks: as given to `capture_starts`.
        starts: what `capture_starts` returned for them.
    """
    found = []
    for k in range(len(chunks) - 1):
        end = starts[k] + timedelta(seconds=chunks[k][1])
        gap = (starts[k + 1] - end).total_seconds()
        if gap > HOLE_TOLERANCE_SECONDS / 2:  # contiguous chunks differ by rounding to microseconds only
            found.append(Hole(k, end, gap))
    return found


def _running_sums(values: Sequence[float]) -> list[float]:
    total, sums = 0.0, []
    for value in values:
        total += value
        sums.append(total)
    return sums


def _is_whole_piece(seconds: float) -> bool:
    return abs(seconds - PIECE_SECONDS) <= PIECE_TOLERANCE_SECONDS


def _bursts(received: Sequence[float], durations: Sequence[float]) -> list[tuple[int, int]]:
    """(first, last) chunk index of each burst: pieces of one batch received back to back."""
    bursts = []
    first = 0
    for k in range(1, len(received)):
        if not (_is_whole_piece(durations[k - 1]) and received[k] - received[k - 1] <= BURST_GAP_SECONDS):
            bursts.append((first, k - 1))
            first = k
    bursts.append((first, len(received) - 1))
    return bursts


def _is_head_of_cut_batch(last_duration: float, length: float, rise: float, batch_length: float) -> bool:
    """Whether a burst whose own bound is `rise` above the run before it is a batch cut short.

    A cut batch ends on a whole piece (its remainder never came), and its first piece
    was sent on schedule: the audio it lost is `rise`, and with it the batch is as long
    as a whole batch (the longest burst nearby).  Otherwise the hole lies before it.
    """
    return _is_whole_piece(last_duration) and length + rise <= batch_length + BATCH_TOLERANCE_SECONDS


def _forward_window(times: Sequence[float], values: Sequence[float], window: float, pick: Callable) -> list[float]:
    """For each i, `pick` (min or max) of values[j] over j >= i with times[j] <= times[i] + window.

    `times` must not decrease.  Linear time: a deque holds the values that can still
    be picked, the one to pick at its left, those still coming into view at its right.
    """
    result = [0.0] * len(values)
    candidates: deque[int] = deque()
    for i in range(len(values) - 1, -1, -1):
        while candidates and pick(values[i], values[candidates[-1]]) == values[i]:
            candidates.pop()  # i is in every window that holds them, and as good
        candidates.append(i)
        while times[candidates[0]] > times[i] + window:
            candidates.popleft()
        result[i] = values[candidates[0]]
    return result
