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

* Audio is contiguous except where lost: inside a run without loss a chunk's
  capture start is the run's start plus the durations before it.
* A batch is sent once its last sample is captured, so each of its pieces arrives
  after the batch's end was captured: the batch's first receipt, less all the
  audio up to the batch's end, bounds the stream's start from above, tightly (one
  request's latency) when the batch went out on schedule.  The pieces of a batch
  come back to back; a slow request or a retry may part them, and they are joined
  again when together they are no longer than a batch (the audio between two
  remainders).
* A retry, a slow request or a backlog delays batches only for a while: the lowest
  bound of the next `WINDOW_SECONDS` is the estimate.  Lost audio raises every
  later bound for good and no earlier one, so the window looks forward only.
* A rise of that lowest bound is a hole, unless it is one late batch alone (the
  level rises again right after it, or nothing follows), or the head of a batch
  whose rest was dropped: that head ends on a whole piece and, with the rise,
  would be one batch long, so the hole comes after it.

The estimate is late by about the smallest latency in the window; the receipt is
taken once the body is read, so a large body's upload time counts too.  The
function's clock and the backend's are both network-synchronised.  No I/O.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# The current backend cuts each batch into pieces of exactly one second.  A piece that
# long (within float noise) is followed by more of its batch; a shorter one ends it.
PIECE_SECONDS = 1.0
PIECE_TOLERANCE_SECONDS = 1e-6
# The next piece of a batch goes out as soon as the previous answer is back, one round
# trip (tens to a few hundred ms) later; between batches the sender waits for audio.
# A longer pause ends a burst: ending one too early only loosens a bound.
BURST_GAP_SECONDS = 0.5
# After a slow request, or a retry that succeeds by its third attempt (1 + 5 s of
# waits), the rest of a batch comes within this.  A last attempt comes 36 s after the
# first, as late as a final failure that drops the rest of the batch, so a longer
# pause is never taken for a batch resuming.
RESUME_SECONDS = 30.0
# How far ahead (receipt time) to look for a batch sent on schedule.  It must outlast
# the sender's whole retry sequence and the backlog after it (1 + 5 + 30 s of waits,
# four attempts) and hold several 120 s batches; device clock drift of 100 ppm moves
# an estimate 0.06 s over it.
WINDOW_SECONDS = 600.0
# Bounds of batches sent on schedule differ by the spread of network latency: a rise
# smaller than this is that spread, not lost audio.  Well under the 0.5 s an export
# may be off, well over the spread of the smallest latency.
HOLE_TOLERANCE_SECONDS = 0.25
# Batches differ in length by a frame or two, and a bound by one request's latency.
BATCH_TOLERANCE_SECONDS = 0.5
# Audio placed from a single batch is late by that batch's first request, a slow one
# by up to a few seconds; a rise measured from it is short by as much.
LATE_REFERENCE_SECONDS = 3.0


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
    ends = _running_sums(durations)  # audio up to each chunk's end, as if none were lost

    whole = _batch_length(received, durations, ends)
    batches = _batches(received, durations, ends, whole)
    firsts = [received[first] for first, _ in batches]
    # The latest stream start (capture time less the audio before) that each batch's receipt allows.
    bounds = [received[first] - ends[last] for first, last in batches]
    lowest = _window(firsts, bounds, firsts, 0.0, WINDOW_SECONDS, min)

    lengths = [ends[last] - ends[first] + durations[first] for first, last in batches]
    heads = _since_remainder(durations, ends)
    offsets = [lowest[0]]
    lost_after = 0.0  # audio known lost at the end of the batch before (a cut batch's rest)
    index = 1
    while index < len(batches):
        first, last = batches[index]
        expected = offsets[-1] + lost_after  # where this batch starts if nothing more was lost
        rise = lowest[index] - expected
        lost_after = 0.0
        if rise <= HOLE_TOLERANCE_SECONDS:  # latency, not loss; never before the audio already placed
            offsets.append(max(offsets[-1], min(expected, lowest[index])))
            index += 1
            continue
        # Audio was lost before the first batch that sets the new level.  If a batch up
        # to it is the head of a cut batch, the loss is that batch's rest.
        sets_level = next(j for j in range(index, len(batches)) if bounds[j] <= lowest[index] + HOLE_TOLERANCE_SECONDS)
        cut = next(
            (
                j
                for j in range(index, sets_level + 1)
                if _is_cut_head(durations[batches[j][1]], heads[batches[j][1]], rise, whole[batches[j][0]])
            ),
            None,
        )
        if cut is not None:
            offsets.extend([expected] * (cut + 1 - index))
            lost_after = whole[batches[cut][0]] - heads[batches[cut][1]]
            index = cut + 1
            continue
        if (
            not _level_holds(index, firsts, lowest)
            and rise < (whole[first] or lengths[index]) - BATCH_TOLERANCE_SECONDS
        ):
            offsets.append(expected)  # this batch alone is late, by less than a batch: not a loss
        else:
            offsets.append(lowest[index])  # audio was lost before this batch
        index += 1

    starts = []
    for (first, last), offset in zip(batches, offsets, strict=True):
        starts.extend(origin + timedelta(seconds=offset + ends[k] - durations[k]) for k in range(first, last + 1))
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


def _batch_length(received: Sequence[float], durations: Sequence[float], ends: Sequence[float]) -> list[float]:
    """For each chunk, how long a whole batch is around it: 0 when batches are not cut into pieces.

    The audio from one remainder's end to the next is one batch, or more where a
    batch lost its remainder; the shortest within `WINDOW_SECONDS` either way is it.
    """
    remainders = [k for k, seconds in enumerate(durations) if not _is_whole_piece(seconds)]
    times = [received[k] for k in remainders[1:]]
    lengths = [ends[k] - ends[before] for before, k in itertools.pairwise(remainders)]
    found = _window(times, lengths, received, WINDOW_SECONDS, WINDOW_SECONDS, min)
    return [length or 0.0 for length in found]


def _batches(
    received: Sequence[float], durations: Sequence[float], ends: Sequence[float], whole: Sequence[float]
) -> list[tuple[int, int]]:
    """(first, last) chunk index of each batch, as far as the receipts tell.

    Pieces received back to back after a whole piece are one burst.  A burst that
    ends on a whole piece was cut short, and the next burst is the rest of its batch
    if the two are no longer than a batch and it came within `RESUME_SECONDS`, or
    if it ends the batch exactly (its remainder completes one batch length: the rest
    of a cut batch never comes, and a new batch is longer).
    """
    bursts: list[tuple[int, int]] = []
    for k in range(len(received)):
        if bursts and _is_whole_piece(durations[k - 1]) and received[k] - received[k - 1] <= BURST_GAP_SECONDS:
            bursts[-1] = (bursts[-1][0], k)
        else:
            bursts.append((k, k))
    batches = [bursts[0]]
    for first, last in bursts[1:]:
        head_first, head_last = batches[-1]
        if _is_whole_piece(durations[head_last]):
            length = ends[last] - ends[head_first] + durations[head_first]
            fits = length <= whole[head_first] + BATCH_TOLERANCE_SECONDS
            completes = (
                not _is_whole_piece(durations[last]) and abs(length - whole[head_first]) <= BATCH_TOLERANCE_SECONDS
            )
            if completes or (fits and received[first] - received[head_last] < RESUME_SECONDS):
                batches[-1] = (head_first, last)
                continue
        batches.append((first, last))
    return batches


def _level_holds(index: int, firsts: Sequence[float], lowest: Sequence[float]) -> bool:
    """Whether a later batch in the window confirms the level that batch `index` rose to.

    A batch that was merely late (a slow request, a retry) sets the level by itself;
    if the level rises again right after it (a loss follows), or nothing follows, it
    is kept with the audio before it.
    """
    following = index + 1
    return (
        following < len(firsts)
        and firsts[following] <= firsts[index] + WINDOW_SECONDS
        and lowest[following] - lowest[index] <= HOLE_TOLERANCE_SECONDS
    )


def _since_remainder(durations: Sequence[float], ends: Sequence[float]) -> list[float]:
    """For each chunk, the audio from the end of the last remainder before it to its own end."""
    found, batch_start = [], 0.0
    for k, seconds in enumerate(durations):
        found.append(ends[k] - batch_start)
        if not _is_whole_piece(seconds):
            batch_start = ends[k]
    return found


def _is_cut_head(last_duration: float, head: float, rise: float, whole: float) -> bool:
    """Whether a batch where the level rises by `rise` ends the head of a batch whose rest was dropped.

    Such a head ends on a whole piece (its remainder never came), and the rise is
    the audio it lost: `head` (the audio since the last remainder) and the rise
    make one batch (less, when the audio before was itself placed late).  Otherwise
    the hole lies before it.
    """
    return _is_whole_piece(last_duration) and -LATE_REFERENCE_SECONDS <= head + rise - whole <= BATCH_TOLERANCE_SECONDS


def _window(
    times: Sequence[float],
    values: Sequence[float],
    queries: Sequence[float],
    before: float,
    after: float,
    pick: Callable[[float, float], float],
) -> list[float | None]:
    """For each query time q: `pick` (min or max) of the values whose time is in [q - before, q + after].

    Times and queries ascending; None where no value is in range.  Linear time: a
    deque holds the values that may still be picked, the one to pick first.
    """
    result: list[float | None] = []
    candidates: deque[int] = deque()
    coming = 0
    for query in queries:
        while coming < len(times) and times[coming] <= query + after:
            while candidates and pick(values[coming], values[candidates[-1]]) == values[coming]:
                candidates.pop()  # in every later window the newcomer is too, and as good
            candidates.append(coming)
            coming += 1
        while candidates and times[candidates[0]] < query - before:
            candidates.popleft()
        result.append(values[candidates[0]] if candidates else None)
    return result
