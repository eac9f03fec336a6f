"""When each stored chunk was captured, reconstructed from when it was received.

A chunk's name holds its RECEIPT time at the function, but the Omi backend sends
audio seconds after it was spoken: it buffers the live stream and, once more than N
seconds are buffered (N from 1 to 120), sends that batch as back-to-back 1-second
pieces plus a shorter remainder; a failed piece is retried 1, 5 and 30 s later, and
after its last failure the rest of its batch is dropped.  Older backends and the
phone post each batch whole.  Conversations (``started_at``, segment times) are on
the backend's clock of the live stream, so matching them to audio needs the capture
time of each chunk's first sample: `capture_starts` estimates it; a gap between one
chunk's end and the next one's start is audio that was lost.

The model:

* Audio is contiguous except where lost: inside a run without loss a chunk's
  capture start is the run's start plus the durations before it.
* A batch is sent once its last sample is captured, so each of its pieces arrives
  after the batch's end was captured: the batch's first receipt, less the audio up
  to the batch's end, bounds the stream's start from above, tightly (one request's
  latency) when the batch went out on schedule.  The pieces of a batch come back to
  back; where a slow request or a retry parted them they are joined again when
  together they are no longer than a batch (the audio between two remainders).
* A retry, a slow request or a backlog delays batches only for a while: the lowest
  bound of the next `WINDOW_SECONDS` is the estimate.  Lost audio raises every
  later bound for good and no earlier one, so the window looks forward only.
* A rise of that lowest bound is lost audio, placed where the sender can lose it:
  after the head of a batch whose rest was dropped (it ends on a whole piece, and
  with the rise it is one batch long), or else before the first batch that follows
  a pause long enough for a loss (a retry sequence, or the lost audio itself from a
  sender that never retries).  Batches before that place were merely late, and so
  is a batch whose rise nothing after it confirms, when the rise is less than a
  lost batch.

Known limits: a backlog still draining when the chunks end leaves the last batches
late by what is left of it; two losses inside one backlog, or chunks that begin with
a cut batch, may misplace a batch by its loss.  The estimate is late by about the
smallest latency in the window, and the receipt comes once the body is read, so a
large body's upload time counts.  The function's clock and the backend's are both
network-synchronised.  No I/O.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
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
# A piece's retries come 1, 5 and 30 s apart: a loss (the last attempt failing) leaves
# at least 36 s without a receipt.  After a slow request, or a retry that succeeds by
# its third attempt, the rest of a batch comes sooner than this.
RETRY_SEQUENCE_SECONDS = 30.0
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
# A request may reach the function a few seconds late (a lost packet resent, a new
# instance starting), so audio placed from one batch alone may be that late, and a
# rise measured from it that short.
SLOW_REQUEST_SECONDS = 3.0


@dataclass(frozen=True)
class _Batch:
    """What the receipts say about one batch: chunks ``first..last``."""

    first: int
    last: int
    bound: float  # latest stream start its first receipt allows (seconds from the first receipt)
    pause: float  # seconds without a receipt before it
    pieces: bool  # sent as 1-second pieces, by a sender that retries
    cut_short: bool  # ends on a whole piece: its remainder has not come
    head: float  # audio from the last remainder before it to its end
    whole: float  # how long a whole batch is around it


def capture_starts(chunks: Sequence[tuple[datetime, float]]) -> list[datetime]:
    """Estimate when the first sample of each chunk was captured.

    Args:
        chunks: one uid's chunks as ``(received_at, duration_seconds)``, in receipt
            order, duplicates removed; `received_at` timezone-aware.

    Returns:
        The capture time of each chunk's first sample, on the backend's clock.
        Where no audio is lost a chunk starts exactly where the one before ends;
        a gap between them is audio lost.  Never overlapping.
    """
    if not chunks:
        return []
    origin = chunks[0][0]
    received = [(at - origin).total_seconds() for at, _ in chunks]
    durations = [seconds for _, seconds in chunks]
    ends = list(itertools.accumulate(durations))  # audio up to each chunk's end, as if none were lost
    batches = _batches(received, durations, ends)
    offsets = _offsets(batches, [received[batch.first] for batch in batches])
    starts = []
    for batch, offset in zip(batches, offsets, strict=True):
        for k in range(batch.first, batch.last + 1):
            starts.append(origin + timedelta(seconds=offset + ends[k] - durations[k]))
    return starts


def _offsets(batches: Sequence[_Batch], firsts: Sequence[float]) -> list[float]:
    """The stream start (capture time less the audio before) that places each batch."""
    lowest = _window_min(firsts, [batch.bound for batch in batches], firsts, 0.0, WINDOW_SECONDS)
    offsets = [lowest[0]]
    lost_after = 0.0  # audio known lost at the end of the batch before (a cut batch's rest)
    index = 1
    while index < len(batches):
        expected = offsets[-1] + lost_after  # where this batch starts if nothing more was lost
        rise = lowest[index] - expected
        lost_after = 0.0
        if rise <= HOLE_TOLERANCE_SECONDS:  # latency, not loss; never before the audio already placed
            offsets.append(max(offsets[-1], min(expected, lowest[index])))
            index += 1
            continue
        # Audio was lost: after a cut batch's head up to the first batch that sets the
        # new level; or, unless nothing later confirms the level and the rise is less
        # than a lost batch (then this batch was only late), before the first batch at
        # that level whose pause fits a loss, or else right here.
        sets_level = next(
            j for j in range(index, len(batches)) if batches[j].bound <= lowest[index] + HOLE_TOLERANCE_SECONDS
        )
        candidates = range(index, sets_level + 1)
        cut = next((j for j in candidates if _is_cut_head(batches[j], rise)), None)
        if cut is not None:
            offsets.extend([expected] * (cut + 1 - index))
            lost_after = batches[cut].whole - batches[cut].head
            index = cut + 1
        elif (
            not _level_holds(index, firsts, lowest)
            and rise < max(batches[index].whole, SLOW_REQUEST_SECONDS) - BATCH_TOLERANCE_SECONDS
        ):
            offsets.append(expected)  # this batch alone was late
            index += 1
        else:
            same_level = index
            while (
                same_level + 1 < len(batches)
                and firsts[same_level + 1] <= firsts[index] + WINDOW_SECONDS
                and lowest[same_level + 1] <= lowest[index] + HOLE_TOLERANCE_SECONDS
            ):
                same_level += 1
            loss = next((j for j in range(index, same_level + 1) if _loss_fits(batches[j], rise)), index)
            offsets.extend([expected] * (loss - index) + [lowest[loss]])
            index = loss + 1
    return offsets


def _level_holds(index: int, firsts: Sequence[float], lowest: Sequence[float]) -> bool:
    """Whether the next batch, within the window, confirms the level that batch `index` rose to."""
    following = index + 1
    return (
        following < len(firsts)
        and firsts[following] <= firsts[index] + WINDOW_SECONDS
        and lowest[following] - lowest[index] <= HOLE_TOLERANCE_SECONDS
    )


def _is_cut_head(batch: _Batch, rise: float) -> bool:
    """Whether `batch` is the head of a batch whose rest was dropped, the rest being `rise`.

    Such a head ends on a whole piece (its remainder never came), and with the rise
    it makes one batch (less, when the audio before was itself placed late).
    """
    return batch.cut_short and -SLOW_REQUEST_SECONDS <= batch.head + rise - batch.whole <= BATCH_TOLERANCE_SECONDS


def _loss_fits(batch: _Batch, rise: float) -> bool:
    """Whether the receipts paused before `batch` long enough for `rise` seconds of audio to be lost.

    A sender that retries gives up only after a whole retry sequence; the phone,
    which never retries, loses a batch and goes on with the next, so the pause holds
    at least the lost audio.  (A stream that stopped and started again pauses too.)
    """
    return batch.pause >= RETRY_SEQUENCE_SECONDS or (not batch.pieces and batch.pause >= rise - BATCH_TOLERANCE_SECONDS)


def _is_whole_piece(seconds: float) -> bool:
    return abs(seconds - PIECE_SECONDS) <= PIECE_TOLERANCE_SECONDS


def _batches(received: Sequence[float], durations: Sequence[float], ends: Sequence[float]) -> list[_Batch]:
    """The batches, as far as the receipts tell.

    Pieces received back to back after a whole piece are one burst.  A burst that
    ends on a whole piece was cut short, and the next burst is the rest of its batch
    if the two are no longer than a batch and it came within a retry sequence, or if
    it ends the batch exactly (the rest of a cut batch never comes, and a new batch
    alone is a whole batch).
    """
    whole = _batch_lengths(received, durations, ends)
    bursts: list[tuple[int, int]] = []
    for k in range(len(received)):
        if bursts and _is_whole_piece(durations[k - 1]) and received[k] - received[k - 1] <= BURST_GAP_SECONDS:
            bursts[-1] = (bursts[-1][0], k)
        else:
            bursts.append((k, k))
    joined = [bursts[0]]
    for first, last in bursts[1:]:
        head_first, head_last = joined[-1]
        if _is_whole_piece(durations[head_last]):
            length = ends[last] - ends[head_first] + durations[head_first]
            fits = length <= whole[head_first] + BATCH_TOLERANCE_SECONDS
            ends_batch = (
                not _is_whole_piece(durations[last]) and abs(length - whole[head_first]) <= BATCH_TOLERANCE_SECONDS
            )
            if ends_batch or (fits and received[first] - received[head_last] < RETRY_SEQUENCE_SECONDS):
                joined[-1] = (head_first, last)
                continue
        joined.append((first, last))

    batch_start = 0.0  # end of the last remainder
    heads = []
    for k, seconds in enumerate(durations):
        heads.append(ends[k] - batch_start)
        if not _is_whole_piece(seconds):
            batch_start = ends[k]
    return [
        _Batch(
            first=first,
            last=last,
            bound=received[first] - ends[last],
            pause=received[first] - received[first - 1] if first else float("inf"),
            pieces=last > first or _is_whole_piece(durations[first]),
            cut_short=_is_whole_piece(durations[last]),
            head=heads[last],
            whole=whole[first],
        )
        for first, last in joined
    ]


def _batch_lengths(received: Sequence[float], durations: Sequence[float], ends: Sequence[float]) -> list[float]:
    """For each chunk, how long a whole batch is around it (0 when no two remainders are near).

    The audio from one remainder's end to the next is one batch, or more where a
    batch lost its remainder: the shortest within `WINDOW_SECONDS` either way.
    """
    remainders = [k for k, seconds in enumerate(durations) if not _is_whole_piece(seconds)]
    times = [received[k] for k in remainders[1:]]
    lengths = [ends[k] - ends[before] for before, k in itertools.pairwise(remainders)]
    return [length or 0.0 for length in _window_min(times, lengths, received, WINDOW_SECONDS, WINDOW_SECONDS)]


def _window_min(
    times: Sequence[float], values: Sequence[float], queries: Sequence[float], before: float, after: float
) -> list[float | None]:
    """For each query time q, the least value whose time is in [q - before, q + after] (None if none).

    Times and queries ascending.  Linear time: a deque holds the values that may
    still be the least, in increasing order.
    """
    result: list[float | None] = []
    candidates: deque[int] = deque()
    coming = 0
    for query in queries:
        while coming < len(times) and times[coming] <= query + after:
            while candidates and values[candidates[-1]] >= values[coming]:
                candidates.pop()  # every later window that holds them holds the newcomer, as low
            candidates.append(coming)
            coming += 1
        while candidates and times[candidates[0]] < query - before:
            candidates.popleft()
        result.append(values[candidates[0]] if candidates else None)
    return result
