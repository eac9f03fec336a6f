"""WAV (RIFF/WAVE) framing for the raw PCM the Omi app streams.

Omi always sends 16-bit signed little-endian mono PCM, so one fixed 44-byte
header describes every chunk.  This module only builds and reads bytes: no I/O.

A body of odd length (half a sample at the end) is still framed as a valid RIFF
file: the data chunk keeps its true size and one pad byte follows it, as the
RIFF specification requires, so no received byte is dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

WAVE_FORMAT_PCM = 1
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes per sample: PCM16
BITS_PER_SAMPLE = SAMPLE_WIDTH * 8
HEADER_SIZE = 44

# Any positive rate that fits the header's 32-bit fields; the HTTP layer narrows
# this to what the Omi backend accepts.
MIN_SAMPLE_RATE = 1
MAX_SAMPLE_RATE = 0xFFFFFFFF // (CHANNELS * SAMPLE_WIDTH)

# RIFF sizes are unsigned 32-bit: the RIFF size field counts everything after
# its own 8 bytes, i.e. 36 header bytes + data (+ pad byte).
MAX_DATA_SIZE = 0xFFFFFFFF - (HEADER_SIZE - 8) - 1

# One little-endian format for the whole header (cf. CPython's Lib/wave.py).
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def header(data_size: int, sample_rate: int) -> bytes:
    """Return the 44-byte header for `data_size` bytes of PCM16 mono audio.

    Args:
        data_size: length of the PCM payload in bytes (odd is allowed).
        sample_rate: frames per second.

    Returns:
        The header bytes. An odd `data_size` must be followed by one pad byte
        after the data, which `frame` adds.
    """
    if not isinstance(data_size, int) or data_size < 0:
        raise ValueError(f"data size must be a non-negative integer, got {data_size!r}")
    if data_size > MAX_DATA_SIZE:
        raise ValueError(f"data size {data_size} exceeds the WAV limit of {MAX_DATA_SIZE}")
    if not isinstance(sample_rate, int) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}")
    pad = data_size & 1
    block_align = CHANNELS * SAMPLE_WIDTH
    return _HEADER.pack(
        b"RIFF",
        HEADER_SIZE - 8 + data_size + pad,
        b"WAVE",
        b"fmt ",
        16,  # size of the PCM fmt chunk
        WAVE_FORMAT_PCM,
        CHANNELS,
        sample_rate,
        sample_rate * block_align,  # byte rate
        block_align,
        BITS_PER_SAMPLE,
        b"data",
        data_size,
    )


def frame(pcm: bytes | Sequence[bytes], sample_rate: int) -> bytes:
    """Return `pcm` as a complete WAV file (header, data, pad byte if odd).

    Args:
        pcm: the audio, as one bytes object or as the pieces it was read in.
        sample_rate: frames per second.

    Returns:
        The WAV bytes. The PCM is copied exactly once, into the result.
    """
    pieces = [pcm] if isinstance(pcm, (bytes, bytearray)) else list(pcm)
    size = sum(len(piece) for piece in pieces)
    return b"".join([header(size, sample_rate), *pieces, b"\0" if size & 1 else b""])


def duration_seconds(data_size: int, sample_rate: int) -> float:
    """Seconds of audio in `data_size` bytes of PCM16 mono (whole frames only)."""
    return round(data_size // (CHANNELS * SAMPLE_WIDTH) / sample_rate, 6)


def parse_header(head: bytes) -> tuple[int, int]:
    """Read back a header written by `header`.

    Args:
        head: at least the first 44 bytes of a WAV object.

    Returns:
        (sample_rate, data_size).

    Raises:
        ValueError: if the bytes are not a 44-byte PCM16 mono header.
    """
    if len(head) < HEADER_SIZE:
        raise ValueError(f"too short for a WAV header: {len(head)} bytes")
    riff, _, wave, fmt, fmt_size, tag, channels, rate, _, _, bits, data, size = _HEADER.unpack_from(head)
    if (riff, wave, fmt, data) != (b"RIFF", b"WAVE", b"fmt ", b"data"):
        raise ValueError("not a RIFF/WAVE file with a data chunk at byte 36")
    if (fmt_size, tag, channels, bits) != (16, WAVE_FORMAT_PCM, CHANNELS, BITS_PER_SAMPLE):
        raise ValueError("not 16-bit mono PCM")
    if rate < MIN_SAMPLE_RATE:
        raise ValueError("sample rate is zero")
    return rate, size
