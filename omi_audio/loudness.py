"""Where sound is in a recording: one character a second, for the page's loudness strip.

An exported audio file's loudness is measured while it is written (`Meter`, fed the
same 16-bit mono PCM as the file, no second read): each second of audio becomes one
character of `LEVELS`, its RMS level in steps of `STEP_DB` from `FLOOR_DB` ("0":
quieter than -54 dBFS, silence included; "9": -6 dBFS or louder), or `HOLE` when most
of that second is a hole (time with no stored audio, written as silence).  A file of
n seconds gives ceil(n) characters (its last second may be short); an hour is 3.6 kB.
"""

from __future__ import annotations

import math

import numpy  # comes with soundfile, a tools dependency

LEVELS = "0123456789"
HOLE = "-"
FLOOR_DB = -60.0  # the bottom of level 1 is FLOOR_DB + STEP_DB: below it, quiet
STEP_DB = 6.0
FULL_SCALE = 32768.0**2  # a 16-bit sample's largest square
SAMPLE_BYTES = 2


def level(mean_square: float) -> str:
    """The character for one second whose samples' mean square is `mean_square`."""
    if mean_square <= 0:
        return LEVELS[0]
    db = 10 * math.log10(mean_square / FULL_SCALE)
    return LEVELS[max(0, min(len(LEVELS) - 1, math.floor((db - FLOOR_DB) / STEP_DB)))]


class Meter:
    """A running per-second loudness of 16-bit little-endian mono PCM, fed in pieces of any size.

    Memory stays bounded: one second's sums, and a character per second done.
    """

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, not {sample_rate}")
        self.rate = sample_rate
        self.levels: list[str] = []
        self._squares = 0  # of this second's stored samples
        self._samples = 0  # this second's samples so far, holes included
        self._holes = 0  # this second's samples that are a hole
        self._odd = b""  # half a sample, left from the last piece

    def add(self, pcm: bytes | memoryview) -> None:
        """Stored audio, as written to the file."""
        data = self._odd + bytes(pcm) if self._odd else pcm
        whole = len(data) - len(data) % SAMPLE_BYTES
        self._odd = bytes(data[whole:])
        samples = numpy.frombuffer(data, dtype="<i2", count=whole // SAMPLE_BYTES).astype(numpy.int64)
        at = 0
        while at < len(samples):
            part = samples[at : at + self.rate - self._samples]
            self._squares += int(numpy.dot(part, part))
            self._count(len(part))
            at += len(part)

    def hole(self, samples: int) -> None:
        """`samples` of time with no stored audio (the file holds silence there)."""
        while samples > 0:
            part = min(samples, self.rate - self._samples)
            self._holes += part
            self._count(part)
            samples -= part

    def _count(self, samples: int) -> None:
        self._samples += samples
        if self._samples == self.rate:
            self.levels.append(self._second())
            self._squares = self._samples = self._holes = 0

    def _second(self) -> str:
        if 2 * self._holes > self._samples:
            return HOLE
        return level(self._squares / (self._samples - self._holes))

    def text(self) -> str:
        """The levels so far, a last short second included: one character a second."""
        return "".join(self.levels) + (self._second() if self._samples else "")


def of_pcm(pcm: bytes, sample_rate: int) -> str:
    """The loudness of `pcm` at once (see `Meter`)."""
    meter = Meter(sample_rate)
    meter.add(pcm)
    return meter.text()


def coarse(levels: str, seconds: int) -> str:
    """`levels` with one character for every `seconds` of them: the loudest, or a hole when all are."""
    out = []
    for at in range(0, len(levels), seconds):
        part = levels[at : at + seconds].replace(HOLE, "")
        out.append(max(part) if part else HOLE)
    return "".join(out)
