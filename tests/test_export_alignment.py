"""A conversation's transcript lands on its words in the exported audio, as the Omi backend sends.

The backend (`omi_backend`, on a virtual clock) streams audio to the real function
in 1-second pieces every N seconds, one piece retried after a 503 and one whole
batch lost inside the conversation; then it posts the conversation, through the
same function.  The function's clock is the simulation's, so every chunk is named
by the moment its body arrived.  ``omi-audio export --by conversation`` then cuts the
conversation's file.  The simulator says when each sample was really captured:
for every cue, the audio at the cue's start in the file must be what was captured
within `GOAL_SECONDS` of that segment's words, and ``audio_start`` must be within
it of when the file's first sample was captured.
"""

from __future__ import annotations

import json
import re
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import omi_backend
import pytest
from conftest import ROOT

import storage
from omi_audio import cli

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
TOKEN = "alignment-test-token-01"
GOAL_SECONDS = 0.5
ORIGIN = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
RATE = omi_backend.SAMPLE_RATE
# Audio at a cue's start is recognised by this much of it (random audio: unique in the stream).
PROBE_SECONDS = 0.05
CUE_RE = re.compile(r"^(\d+):(\d\d):(\d\d)\.(\d{3}) --> ", re.MULTILINE)

# (sender, stream seconds, failures {(batch, piece): failed attempts}, conversation (from, to) in stream seconds).
# One failed attempt is one retry after a 503; four fail the piece for good, and with it
# the rest of its batch (piece 0: the whole batch).  Both fall inside the conversation.
SCENARIOS = {
    "backend N=5": (omi_backend.current_backend(5), 600, {(55, 2): 1, (60, 0): 4}, (250.0, 400.0)),
    "backend N=30": (omi_backend.current_backend(30), 1200, {(14, 10): 1, (15, 0): 4}, (400.0, 560.0)),
}


@pytest.fixture
def function(local_dir, monkeypatch):
    """The real function on the test client, its clock the simulation's: (client, clock)."""
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    with omi_backend.function_on_virtual_clock(ROOT / "main.py", ORIGIN) as served:
        yield served


def receiver(client, local_dir: Path):
    """The real function, answering 503 when asked to fail: a file stands where the uid's folder was."""
    query = f"token={TOKEN}&sample_rate={RATE}&uid={UID}"

    def receive(body: bytes, headers: dict[str, str], fail: bool) -> int:
        if not fail:
            return client.post(f"/?{query}", data=body, headers=headers).status_code
        folder = local_dir / storage.uid_prefix(UID)
        parked = folder.with_name(folder.name + ".parked")
        folder.rename(parked)
        folder.write_bytes(b"")
        try:
            status = client.post(f"/?{query}", data=body, headers=headers).status_code
        finally:
            folder.unlink()
            parked.rename(folder)
        assert status == 503
        return status

    return receive


def captured_stream(sent: list[omi_backend.Sent]) -> bytes:
    """What was stored, where the simulator captured it: the stream with what was lost as zeros."""
    stream = bytearray()
    for chunk in sent:
        if chunk.stored:
            at = round(chunk.capture_start * RATE) * 2
            stream[len(stream) :] = bytes(max(0, at + len(chunk.body) - len(stream)))
            stream[at : at + len(chunk.body)] = chunk.body
    return bytes(stream)


def true_time(probe: bytes, stream: bytes) -> float | None:
    """Stream seconds at which `probe` was captured, or None when it is silence (audio never stored)."""
    if probe == bytes(len(probe)):
        return None
    at = stream.find(probe)
    while at >= 0 and at % 2:
        at = stream.find(probe, at + 1)
    assert at >= 0, "the file holds audio the sender never captured"
    return at / 2 / RATE


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_cue_starts_within_half_a_second_of_its_words(function, local_dir, tmp_path, capsys, scenario):
    sender, stream_seconds, failures, (begin, end) = SCENARIOS[scenario]
    client, clock = function
    sent = omi_backend.run(sender, stream_seconds, receiver(client, local_dir), clock, failures)
    assert any(len(chunk.statuses) > 1 and chunk.stored for chunk in sent), "one piece was retried and stored"
    assert any(not chunk.stored for chunk in sent), "a batch was lost"
    # Segments every 7 s through the conversation, times from its start, as the backend gives them.
    segments = [
        {"text": f"line {n}", "start": s, "end": s + 3.0, "speaker": "SPEAKER_00", "speaker_id": 0, "is_user": False}
        for n, s in enumerate(x * 7.0 + 1.3 for x in range(int((end - begin) // 7)))
    ]
    started = ORIGIN + timedelta(seconds=begin)
    body = {
        "id": "conv-aligned",
        "created_at": (ORIGIN + timedelta(seconds=end + 20)).isoformat(),
        "started_at": started.isoformat(),
        "finished_at": (ORIGIN + timedelta(seconds=end)).isoformat(),
        "structured": {"title": "Aligned", "overview": "", "emoji": "", "category": "other"},
        "transcript_segments": segments,
    }
    clock.seconds = stream_seconds + 60
    posted = client.post(
        f"/?token={TOKEN}&uid={UID}", data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert posted.status_code == 200, posted.get_data(as_text=True)

    code = cli.main(
        [
            "export",
            "--uid",
            UID,
            "--by",
            "conversation",
            "--local-dir",
            str(local_dir),
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )

    assert code == 0, capsys.readouterr()
    [audio] = tmp_path.glob("*.wav")
    with wave.open(str(audio)) as w:
        pcm = w.readframes(w.getnframes())
    document = json.loads(audio.with_suffix(".json").read_bytes())
    audio_start = (datetime.fromisoformat(document["audio_start"]) - ORIGIN).total_seconds()
    probe_bytes = round(PROBE_SECONDS * RATE) * 2

    stream = captured_stream(sent)
    first = true_time(pcm[:probe_bytes], stream)
    assert first is not None, "the file's first sample is stored audio (the stream began before the pad)"
    errors = {"audio_start": abs(audio_start - first)}
    silent = 0
    transcript = audio.with_suffix(".vtt").read_text(encoding="utf-8")
    cue_starts = [
        int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000 for h, m, sec, ms in CUE_RE.findall(transcript)
    ]
    assert len(cue_starts) == len(segments)
    for segment, cue_start in zip(segments, cue_starts, strict=True):
        at = round(cue_start * RATE) * 2
        found = true_time(pcm[at : at + probe_bytes], stream)
        words = round((begin + segment["start"]) * RATE) * 2
        if found is None:  # silence in the file: only where audio was lost within the goal of the words
            near = stream[words - round(GOAL_SECONDS * RATE) * 2 : words + round(GOAL_SECONDS * RATE) * 2 + probe_bytes]
            assert bytes(probe_bytes) in near, f"{segment['text']} is silent in the file but its audio was stored"
            silent += 1
            continue
        errors[segment["text"]] = abs(found - (begin + segment["start"]))
    worst = max(errors.values())
    print(f"\n{scenario}: {len(errors) - 1} cues checked ({silent} in the lost batch), worst error {worst:.3f} s")
    assert silent < len(segments) / 2
    assert worst <= GOAL_SECONDS, errors
