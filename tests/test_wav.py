"""wav.py: the header every decoder must accept, checked by independent decoders."""

from __future__ import annotations

import io
import struct
import wave

import pytest
import soundfile
from conftest import assert_decodes
from hypothesis import given, settings
from hypothesis import strategies as st

import wav


def test_header_is_44_bytes_of_pcm16_mono():
    head = wav.header(32000, 16000)
    assert len(head) == wav.HEADER_SIZE == 44
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and head[36:40] == b"data"
    fields = struct.unpack("<IHHIIHH", head[16:36])
    assert fields == (16, 1, 1, 16000, 32000, 2, 16)
    assert struct.unpack("<I", head[4:8])[0] == 36 + 32000
    assert struct.unpack("<I", head[40:44])[0] == 32000


def test_one_second_at_16khz_decodes_everywhere():
    pcm = bytes(range(256)) * 125
    assert_decodes(wav.frame(pcm, 16000), 16000, pcm)


def test_empty_audio_is_a_valid_zero_frame_wav():
    assert_decodes(wav.frame(b"", 8000), 8000, b"")


def test_odd_length_keeps_the_last_byte_and_adds_a_riff_pad_byte():
    data = wav.frame(b"\1\2\3", 16000)
    assert len(data) == 44 + 3 + 1
    assert data[44:47] == b"\1\2\3" and data[-1:] == b"\0"
    assert struct.unpack("<I", data[40:44])[0] == 3  # the data chunk keeps its true size
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert_decodes(data, 16000, b"\1\2")


def test_frame_of_pieces_equals_frame_of_the_joined_bytes():
    assert wav.frame([b"\1\2", b"\3", b"\4\5"], 8000) == wav.frame(b"\1\2\3\4\5", 8000)


@pytest.mark.parametrize(
    ("size", "rate"), [(-1, 16000), (0, 0), (0, -5), (wav.MAX_DATA_SIZE + 1, 16000), (0, 16000.0), (0, 2**32)]
)
def test_invalid_sizes_and_rates_are_refused(size, rate):
    with pytest.raises(ValueError):
        wav.header(size, rate)


def test_parse_header_reads_back_rate_and_size():
    assert wav.parse_header(wav.header(1234, 44100)) == (44100, 1234)


@pytest.mark.parametrize("junk", [b"", b"RIFF", b"ID3" + b"\0" * 60, wav.header(10, 8000).replace(b"data", b"LIST")])
def test_parse_header_refuses_what_is_not_our_wav(junk):
    with pytest.raises(ValueError):
        wav.parse_header(junk)


@settings(max_examples=150, deadline=None)
@given(rate=st.integers(8000, 48000), pcm=st.binary(min_size=0, max_size=4001))
def test_any_rate_and_length_decodes_the_same_in_wave_and_libsndfile(rate, pcm):
    data = wav.frame(pcm, rate)
    assert len(data) == 44 + len(pcm) + (len(pcm) & 1)
    frames = len(pcm) // 2
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnframes()) == (rate, frames)
        from_wave = w.readframes(frames)
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.frames, info.channels) == (rate, frames, 1)
    from_sndfile = soundfile.read(io.BytesIO(data), dtype="int16")[0].tobytes() if frames else b""
    assert from_wave == from_sndfile == pcm[: frames * 2]
    assert wav.parse_header(data) == (rate, len(pcm))
