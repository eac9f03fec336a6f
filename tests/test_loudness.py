"""The loudness strip's data: one character a second of 16-bit mono PCM, measured as it streams."""

from __future__ import annotations

import math
import struct

import pytest

from omi_audio import loudness


def sine(seconds: float, rate: int, amplitude: float, pitch: float = 440.0) -> bytes:
    frames = round(seconds * rate)
    return struct.pack(
        f"<{frames}h", *(round(amplitude * math.sin(2 * math.pi * pitch * n / rate)) for n in range(frames))
    )


@pytest.mark.parametrize("rate", [8000, 16000])
def test_silence_is_the_lowest_level_one_character_a_second(rate):
    assert loudness.of_pcm(bytes(2 * rate * 3), rate) == "000"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_tone_is_its_rms_level_in_six_db_steps_whatever_the_rate(rate):
    """A full-scale sine's RMS is -3 dBFS (the top level); one at a tenth of it -23 dBFS:
    (-23 + 60) // 6 = level 6; a hundredth -43 dBFS: level 2."""
    pcm = sine(1, rate, 32767) + sine(1, rate, 3277) + sine(1, rate, 328)
    assert loudness.of_pcm(pcm, rate) == "962"


def test_a_hole_is_its_own_mark_not_silence():
    meter = loudness.Meter(16000)
    meter.add(sine(1, 16000, 3277))
    meter.hole(2 * 16000)
    meter.add(bytes(2 * 16000))  # stored silence
    meter.add(sine(0.5, 16000, 3277))
    assert meter.text() == "6--06"


def test_a_second_is_a_hole_only_when_most_of_it_is():
    meter = loudness.Meter(8000)
    meter.add(sine(0.6, 8000, 3277))
    meter.hole(round(0.4 * 8000))  # a second mostly stored: its level, from the stored part alone
    meter.hole(round(0.6 * 8000))
    meter.add(sine(0.4, 8000, 3277))  # a second mostly missing: a hole
    assert meter.text() == "6-"


def test_the_last_short_second_counts_and_a_final_half_sample_is_ignored():
    pcm = sine(2.25, 16000, 3277)
    assert loudness.of_pcm(pcm + b"\x7f", 16000) == "666"


def test_pieces_split_anywhere_even_inside_a_sample_measure_as_the_whole():
    pcm = sine(1, 16000, 32767) + sine(1.5, 16000, 328)
    meter = loudness.Meter(16000)
    for start in range(0, len(pcm), 3333):  # odd sizes: samples cut in half between pieces
        meter.add(memoryview(pcm)[start : start + 3333])
    assert meter.text() == loudness.of_pcm(pcm, 16000) == "922"


def test_one_piece_of_many_seconds_gives_a_character_for_each():
    assert loudness.of_pcm(sine(7, 8000, 3277), 8000) == "6666666"


def test_text_can_be_read_midway_and_the_meter_goes_on():
    meter = loudness.Meter(8000)
    meter.add(sine(1.5, 8000, 3277))
    assert meter.text() == "66"
    meter.add(sine(0.5, 8000, 3277))
    assert meter.text() == "66"


def test_the_coarse_strip_keeps_the_loudest_of_each_stretch_and_holes_only_when_all_are():
    assert loudness.coarse("0160--26----0", 4) == "66-0"
    assert loudness.coarse("", 60) == ""
