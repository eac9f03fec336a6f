"""omi-audio export --by conversation: each conversation back as its audio, a WebVTT transcript and a JSON document.

Conversations are stored with the real storage module (``put_conversation``)
and audio chunks as receive_audio stores them, in fake-gcs-server and in a
local directory.  The audio files are read back by the stdlib `wave` module,
libsndfile and sox (`assert_decodes`), the transcripts by a strict WebVTT
reader written here from the format's grammar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import soundfile
from conftest import OMI_AUDIO, PAGE_FILES, ROOT, assert_decodes, exported, pcm_tone, run, stderr_on_a_terminal
from storage_proxy import StorageProxy

import names
import storage
import wav
from omi_audio import archive, cli, console, conversations, export, vtt

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
T0 = datetime(2026, 11, 30, 14, 3, tzinfo=UTC)
# When the function received a conversation, unless a test says otherwise: a fixed
# moment, so that "a later version" means the same on any day the suite runs.
RECEIVED = T0 + timedelta(hours=1)
RATE = 16000
PAD = archive.CONVERSATION_PAD.total_seconds()


# -- a strict WebVTT reader -------------------------------------------------------------

_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_TIMING_RE = re.compile(rf"{_TIME} --> {_TIME}")
_VOICE_RE = re.compile(r"<v ([^>\n]+)>([^<\n]*)")
_ENTITY_RE = re.compile(r"&(?:amp|lt|gt|nbsp|lrm|rlm);")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_vtt(text: str) -> list[tuple[float, float, str, str]]:
    """(start, end, speaker, text) of each cue; fails on anything the WebVTT grammar (as we write it) refuses."""
    assert text.startswith("WEBVTT\n"), "no WEBVTT signature line"
    assert "\r" not in text and "\x00" not in text
    blocks = text.split("\n\n")
    assert blocks[0] == "WEBVTT"
    assert text.endswith("\n")
    cues = []
    for block in blocks[1:]:
        lines = block.rstrip("\n").split("\n")
        assert lines != [""], "an empty block: more than one blank line between cues"
        if "-->" not in lines[0]:
            lines.pop(0)  # the cue identifier, which must not hold "-->"
        timing = _TIMING_RE.fullmatch(lines[0])
        assert timing, f"bad timing line {lines[0]!r}"
        start, end = _seconds(*timing.groups()[:4]), _seconds(*timing.groups()[4:])
        assert end >= start
        assert len(lines) == 2, f"cue text must be one line here: {lines[1:]!r}"
        assert "-->" not in lines[1]
        voice = _VOICE_RE.fullmatch(lines[1])
        assert voice, f"not one voice span: {lines[1]!r}"
        for part in voice.groups():
            assert "&" not in _ENTITY_RE.sub("", part), f"a bare '&' in {part!r}"
        cues.append((start, end, html.unescape(voice[1]), html.unescape(voice[2])))
    assert [c[0] for c in cues] == sorted(c[0] for c in cues), "cues out of order"
    return cues


# -- helpers --------------------------------------------------------------------------------


def chunk_metadata(at: datetime, pcm: bytes, rate: int) -> dict[str, str]:
    """The metadata receive_audio stores with a chunk."""
    return {
        "sample_rate": str(rate),
        "received_at": names.iso(at),
        "duration_seconds": str(wav.duration_seconds(len(pcm), rate)),
        "pcm_bytes": str(len(pcm)),
        "idempotency_key": str(uuid.uuid4()),
    }


def put_chunk(store, received_at: datetime, pcm: bytes, rate: int = RATE) -> str:
    """One chunk, stored through the storage module as the function stores it."""
    data = wav.frame(pcm, rate)
    return store.put(UID, received_at, data, chunk_metadata(received_at, pcm, rate), uuid.uuid4().hex, 10).name


def store_audio(store, start: datetime, seconds: int, seed: int = 0, skip: range = range(0)) -> list[bytes]:
    """One-second chunks captured from `start` on, each sent as soon as captured (an interval of 0:
    every ~1 s frame), except those whose index is in `skip` (lost).  Returns every second's PCM."""
    pcms = [pcm_tone(1, RATE, seed * 10_000 + i) for i in range(seconds)]
    for i, pcm in enumerate(pcms):
        if i not in skip:
            put_chunk(store, start + timedelta(seconds=i + 1), pcm)
    return pcms


def segment(start: float, end: float, text: str, speaker: int = 0, is_user: bool = False, **extra) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "text": text,
        "speaker": f"SPEAKER_{speaker:02d}",
        "speaker_id": speaker,
        "is_user": is_user,
        "person_id": None,
        "start": start,
        "end": end,
        **extra,
    }


def conversation(cid: str, started: datetime | None, finished: datetime | None, title: str = "Planning", **extra):
    body = {
        "id": cid,
        "created_at": (finished or T0).isoformat(),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "structured": {
            "title": title,
            "overview": f"About {title}.",
            "emoji": "\N{ROCKET}",
            "category": "work",
            "action_items": [],
            "events": [],
        },
        "transcript_segments": [segment(1.0, 3.5, "Hello there."), segment(4.0, 6.0, "Hi!", 1, is_user=True)],
        "discarded": False,
        "language": "en",
        "source": "omi",
    }
    body.update(extra)
    return body


def put_conversation(store, body: dict, received_at: datetime | None = None) -> bytes:
    """Store `body` through storage.put_conversation, with the metadata the function gives it."""
    raw = json.dumps(body).encode()
    starts_at = archive.parse_time(body.get("started_at")) or archive.parse_time(body.get("created_at"))
    metadata = {
        "conversation_id": body["id"],
        "received_at": names.iso(received_at or RECEIVED),
        "title": body["structured"]["title"][:200],
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    for key in ("started_at", "finished_at"):
        if isinstance(body.get(key), str):
            metadata[key] = body[key]
    store.put_conversation(UID, starts_at, body["id"], raw, metadata, 10)
    return raw


@pytest.fixture(params=["gcs", "local"])
def source(request, tmp_path):
    """(store, CLI source arguments) for each backend."""
    if request.param == "gcs":
        bucket = request.getfixturevalue("bucket")
        return storage.GcsStore(bucket.name), ["--bucket", bucket.name]
    root = request.getfixturevalue("local_dir")
    root.mkdir(parents=True, exist_ok=True)
    return storage.LocalStore(root), ["--local-dir", str(root)]


BY_CONVERSATION = ("export", "--uid", UID, "--by", "conversation", "--quiet")


def expected_file(store, started: datetime, finished: datetime) -> tuple[bytes, list[tuple[int, int]]]:
    """The file the cut should be, built independently: every listed chunk's PCM laid at its capture time
    on a silent time line from started - pad to finished + pad; and the silent runs (frame ranges)."""
    window_start = started - archive.CONVERSATION_PAD
    total = round(((finished - started).total_seconds() + 2 * PAD) * RATE)
    line = bytearray(total * 2)
    covered = bytearray(total)
    chunks = archive.select_chunks(store, UID).chunks
    for c in archive.captured(chunks):
        pcm = store.read(c.chunk.name)[wav.HEADER_SIZE :]
        at = round((c.start - window_start).total_seconds() * RATE)
        for frame in range(max(0, -at), min(len(pcm) // 2, total - at)):
            line[(at + frame) * 2 : (at + frame) * 2 + 2] = pcm[frame * 2 : frame * 2 + 2]
            covered[at + frame] = 1
    runs, frame = [], 0
    while frame < total:
        if covered[frame]:
            frame += 1
            continue
        end = covered.find(1, frame)
        end = total if end < 0 else end
        runs.append((frame, end - frame))
        frame = end
    return bytes(line), runs


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "part"),
    [
        ("Product launch planning", "Product-launch-planning"),
        ("Sam's 1:1 — Q3 review?", "Sams-1-1-Q3-review"),
        ("\N{ROCKET}\N{PARTY POPPER} Launch \N{FIRE}", "Launch"),
        ("R\u00e9union d\u2019\u00e9quipe", "R\u00e9union-d\u00e9quipe"),
        (
            "\u05e4\u05d2\u05d9\u05e9\u05d4 \u05e2\u05dd \u05d3\u05e0\u05d4",
            "\u05e4\u05d2\u05d9\u05e9\u05d4-\u05e2\u05dd-\u05d3\u05e0\u05d4",
        ),
        ("\u202eevil\u202c name", "evil-name"),
        ("会议 纪要", "会议-纪要"),
        ("../../etc/passwd", "etc-passwd"),
        ('a/b\\c:d*e?f"g<h>i|j', "a-b-c-d-e-f-g-h-i-j"),
        ("..", "untitled"),
        ("", "untitled"),
        ("   \t\n", "untitled"),
        ("CON", "CON"),
    ],
)
def test_titles_become_safe_name_parts_keeping_letters_of_any_script(title, part):
    assert conversations.title_part(title) == part


def test_a_300_character_title_is_cut_at_a_character_well_under_255_bytes():
    taken: set[str] = set()
    for title in ("x" * 300, "é" * 300, "会" * 300, "\N{ROCKET}a" * 300):
        stem = conversations.conversation_stem(T0, title, taken)
        for suffix in (".flac", ".json", ".vtt"):
            assert len(f"{stem}-99{suffix}".encode()) < 128
        stem.encode("utf-8").decode("utf-8")  # whole characters only
        assert stem.startswith("2026-11-30_1403_")


def test_stems_sort_by_start_and_collisions_get_numbers_case_blind():
    taken: set[str] = set()
    first = conversations.conversation_stem(T0, "Standup", taken)
    second = conversations.conversation_stem(T0 + timedelta(seconds=30), "standup", taken)
    third = conversations.conversation_stem(T0, "Standup", taken)
    later = conversations.conversation_stem(T0 + timedelta(hours=1), "Standup", taken)
    assert first == "2026-11-30_1403_Standup"
    assert second == "2026-11-30_1403_standup-2"
    assert third == "2026-11-30_1403_Standup-3"
    assert later == "2026-11-30_1503_Standup"
    assert sorted([later, first]) == [first, later]


def test_the_stem_is_in_utc_whatever_the_offset_of_the_start():
    start = datetime.fromisoformat("2026-11-30T23:30:00-05:00")
    assert conversations.conversation_stem(start, "Late", set()) == "2026-12-01_0430_Late"


# -- WebVTT -------------------------------------------------------------------------------


def test_webvtt_escapes_text_and_never_holds_an_arrow():
    nasty = "a --> b & <c.x>d</c>\n\nnext line\r\n<v Other>"
    text = vtt.document([(0.0, 1.0, "Dr <Who> & co -->", nasty), (1.0, 2.5, "You", "fine")])
    cues = parse_vtt(text)
    assert cues[0][2] == "Dr <Who> & co -->"
    assert cues[0][3] == "a --> b & <c.x>d</c> next line <v Other>"
    assert cues[1] == (1.0, 2.5, "You", "fine")
    assert text.count("-->") == 2  # the two timing lines only


def test_webvtt_timestamps_pass_an_hour_and_round_to_milliseconds():
    assert vtt.timestamp(0) == "00:00:00.000"
    assert vtt.timestamp(3725.0006) == "01:02:05.001"
    assert vtt.timestamp(-0.2) == "00:00:00.000"
    assert vtt.timestamp(100 * 3600) == "100:00:00.000"


def test_speakers_are_you_then_names_then_speaker_numbers():
    assert archive.speaker_of(segment(0, 1, "x", 2, is_user=True, speaker_name="Ann")) == "You"
    assert archive.speaker_of(segment(0, 1, "x", 2, speaker_name="Ann  Lee")) == "Ann Lee"
    assert archive.speaker_of(segment(0, 1, "x", 2)) == "Speaker 2"
    assert archive.speaker_of({"speaker": "SPEAKER_03", "text": "x"}) == "Speaker 3"
    assert archive.speaker_of({"text": "x"}) == "Speaker"


# -- cuts (the model alone) ---------------------------------------------------------------


def _captured(start: datetime, seconds: float, name: str = "c") -> archive.CapturedChunk:
    frames = round(seconds * RATE)
    chunk = export.Chunk(name, start, 0, wav.HEADER_SIZE + 2 * frames, RATE, 2 * frames)
    return archive.CapturedChunk(chunk, start, frames, RATE)


def test_a_cut_covers_the_padded_span_and_lists_the_holes_where_nothing_was_stored():
    chunks = [_captured(T0 + timedelta(seconds=i), 1.0, f"c{i}") for i in range(30) if not 12 <= i < 17]
    cut = archive.plan_cut(chunks, T0 + timedelta(seconds=5), T0 + timedelta(seconds=25))
    assert cut is not None
    assert cut.start == T0 + timedelta(seconds=5) - archive.CONVERSATION_PAD
    assert cut.frames == round((20 + 2 * PAD) * RATE)
    assert [(h.at, h.frames) for h in cut.holes] == [(round((12 - 5 + PAD) * RATE), 5 * RATE)]
    assert sum(p.frames for p in cut.pieces) + 5 * RATE == cut.frames
    assert cut.coverage == pytest.approx(15 / 20)
    assert cut.holes[0].at / RATE == 12 - 5 + PAD


def test_a_cut_starts_and_ends_inside_chunks_at_the_right_sample():
    chunks = [_captured(T0 + timedelta(seconds=i), 1.0, f"c{i}") for i in range(10)]
    started = T0 + timedelta(seconds=3, microseconds=250_000)
    cut = archive.plan_cut(chunks, started, T0 + timedelta(seconds=5), pad=timedelta(0))
    first, *_, last = cut.pieces
    assert (first.chunk.chunk.name, first.skip, first.frames, first.at) == ("c3", RATE // 4, 3 * RATE // 4, 0)
    assert (last.chunk.chunk.name, last.skip, last.frames) == ("c4", 0, RATE)
    assert cut.holes == [] and cut.frames == round(1.75 * RATE)


def test_chunks_a_little_off_back_to_back_are_joined_and_none_of_their_samples_dropped():
    jitter = [0.0, 1.03, 1.98, 3.05]  # reconstructed starts, within the join distance of back to back
    chunks = [_captured(T0 + timedelta(seconds=s), 1.0, f"c{i}") for i, s in enumerate(jitter)]
    cut = archive.plan_cut(chunks, T0 + archive.CONVERSATION_PAD, T0 + timedelta(seconds=4) - archive.CONVERSATION_PAD)
    assert [(p.at, p.skip, p.frames) for p in cut.pieces] == [(i * RATE, 0, RATE) for i in range(4)]
    assert cut.holes == []


def test_no_stored_audio_in_the_span_is_no_cut():
    chunks = [_captured(T0, 1.0), _captured(T0 + timedelta(minutes=10), 1.0)]
    assert archive.plan_cut(chunks, T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)) is None


# -- the export, end to end -------------------------------------------------------------

# Neither edge on a chunk's boundary: the cut starts and ends inside chunks.
STARTED = T0 + timedelta(seconds=10, milliseconds=250)
FINISHED = T0 + timedelta(seconds=40, milliseconds=600)
SPAN = (FINISHED - STARTED).total_seconds()


def test_a_conversation_becomes_its_audio_cut_sample_exact_with_silence_where_a_batch_was_lost(
    source, tmp_path, capsys
):
    store, args = source
    pcms = store_audio(store, T0, 60, skip=range(20, 25))  # seconds 20 to 25 never arrived
    raw = put_conversation(store, conversation("c-1", STARTED, FINISHED, "Product launch planning"))

    code, out, err = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))

    assert (code, err) == (0, "")
    stem = "2026-11-30_1403_Product-launch-planning"
    assert [p.name for p in exported(tmp_path / "out")] == [
        f"{stem}.json",
        f"{stem}.vtt",
        f"{stem}.wav",
    ]
    data = (tmp_path / "out" / f"{stem}.wav").read_bytes()
    line, silent = expected_file(store, STARTED, FINISHED)
    assert data == wav.frame(line, RATE)  # every stored sample in the span, where its capture time puts it
    assert_decodes(data, RATE, line)
    # The lost batch is one hole of its length, and the audio on both sides is the stored PCM, whole.
    [(hole_at, hole_frames)] = silent
    assert abs(hole_frames - 5 * RATE) <= 0.5 * RATE
    assert b"".join(pcms[9:19]) in line[: hole_at * 2]
    assert b"".join(pcms[26:41]) in line[(hole_at + hole_frames) * 2 :]

    document = json.loads((tmp_path / "out" / f"{stem}.json").read_bytes())
    added = {k: document.pop(k) for k in conversations.ADDED_KEYS}
    assert document == json.loads(raw)  # the conversation as stored
    assert added["audio_seconds"] == SPAN + 2 * PAD
    assert added["audio_start"] == names.iso(STARTED - archive.CONVERSATION_PAD)
    assert added["audio_end"] == names.iso(
        STARTED - archive.CONVERSATION_PAD + timedelta(seconds=(len(line) // 2 - 1) / RATE)
    )
    assert added["gaps"] == [{"start": hole_at / RATE, "seconds": hole_frames / RATE}]

    cues = parse_vtt((tmp_path / "out" / f"{stem}.vtt").read_text(encoding="utf-8"))
    assert cues == [(1.0 + PAD, 3.5 + PAD, "Speaker 0", "Hello there."), (4.0 + PAD, 6.0 + PAD, "You", "Hi!")]
    assert "Product launch planning" in out and f"{(SPAN - 5) / SPAN:.0%}" in out
    assert "1 conversation(s) written: 1 with audio" in out and "1 hole(s)" in out


def test_flac_holds_the_same_samples(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 50, skip=range(30, 33))
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Flac"))

    code, _, err = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"), "--format", "flac")

    assert (code, err) == (0, "")
    [flac] = (tmp_path / "out").glob("*.flac")
    decoded, rate = soundfile.read(flac, dtype="int16")
    line, _ = expected_file(store, STARTED, FINISHED)
    assert rate == RATE and decoded.tobytes() == line
    assert soundfile.info(flac).format == "FLAC"
    assert json.loads(flac.with_suffix(".json").read_bytes())["audio_seconds"] == SPAN + 2 * PAD


def test_the_newest_version_of_a_conversation_is_the_one_exported(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 45)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "First draft"), T0 + timedelta(minutes=5))
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Reprocessed"), T0 + timedelta(hours=2))
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Retried older"), T0 + timedelta(minutes=9))

    code, out, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    [document] = exported(tmp_path / "out", "*.json")
    assert document.name == "2026-11-30_1403_Reprocessed.json"
    assert json.loads(document.read_bytes())["structured"]["title"] == "Reprocessed"
    assert "1 conversation(s)" in out


def test_a_conversation_without_stored_audio_gets_its_transcript_and_document_and_says_no_audio(
    source, tmp_path, capsys
):
    store, args = source
    store_audio(store, T0, 45)
    later = T0 + timedelta(hours=3)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Heard"))
    put_conversation(store, conversation("c-2", later, later + timedelta(minutes=1), "Phone was offline"))

    code, out, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    stem = "2026-11-30_1703_Phone-was-offline"
    assert not list((tmp_path / "out").glob(f"{stem}.wav"))
    document = json.loads((tmp_path / "out" / f"{stem}.json").read_bytes())
    assert (document["audio_start"], document["audio_end"], document["audio_seconds"], document["gaps"]) == (
        None,
        None,
        0.0,
        [],
    )
    assert len(parse_vtt((tmp_path / "out" / f"{stem}.vtt").read_text(encoding="utf-8"))) == 2
    assert re.search(r"17:03:00 .* no audio  Phone was offline", out)
    assert "2 conversation(s) written: 1 with audio" in out and "1 with no audio" in out


def test_nasty_titles_give_safe_unique_names_inside_the_folder(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    titles = [
        "\N{ROCKET} Launch \N{FIRE}\N{FIRE}",
        "\u05e4\u05d2\u05d9\u05e9\u05d4 \u05e2\u05dd \u05d3\u05e0\u05d4",
        "Long " * 60,
        "../../outside",
        "a/b",
        "..",
        "",
        "Same",
        "same",
    ]
    for n, title in enumerate(titles):
        start = T0 + timedelta(seconds=n)
        put_conversation(store, conversation(f"c-{n}", start, start + timedelta(seconds=5), title))

    out_dir = tmp_path / "a" / "b" / "out"
    code, _, _ = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert code == 0
    documents = [p.name for p in exported(out_dir, "*.json")]
    assert len(documents) == len(titles) == len({d.casefold() for d in documents})
    assert [p.name for p in (tmp_path / "a").rglob("*") if p.parent != out_dir] == ["b", "out"]  # nothing outside
    assert all(len(name.encode()) < 128 and name.startswith("2026-11-30_1403_") for name in documents)
    assert "2026-11-30_1403_untitled.json" in documents and "2026-11-30_1403_untitled-2.json" in documents
    assert "2026-11-30_1403_Same.json" in documents and "2026-11-30_1403_same-2.json" in documents
    assert "2026-11-30_1403_outside.json" in documents


def test_the_export_takes_conversations_that_overlap_the_range(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    day = datetime(2026, 11, 30, tzinfo=UTC)
    spans = {
        "ends-just-inside": (day - timedelta(minutes=30), day + timedelta(minutes=1)),
        "ends-at-midnight": (day - timedelta(minutes=30), day),
        "inside": (day + timedelta(hours=9), day + timedelta(hours=10)),
        "starts-at-the-end": (day + timedelta(days=1), day + timedelta(days=1, minutes=5)),
    }
    for cid, (start, end) in spans.items():
        put_conversation(store, conversation(cid, start, end, cid))

    code, out, _ = run(
        capsys,
        *BY_CONVERSATION,
        "--local-dir",
        str(local_dir),
        "--list",
        "--since",
        "2026-11-30",
        "--until",
        "2026-11-30",
    )

    assert code == 0
    assert "ends-just-inside" in out and "inside" in out
    assert "ends-at-midnight" not in out and "starts-at-the-end" not in out


def test_list_prints_the_table_and_downloads_no_audio(bucket, fake_gcs, tmp_path, monkeypatch, capsys):
    store = storage.GcsStore(bucket.name)
    store_audio(store, T0, 45, skip=range(25, 40))
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Half heard"))
    later = T0 + timedelta(hours=1)
    put_conversation(store, conversation("c-2", later, later + timedelta(minutes=65), "Long and unheard"))

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, out, err = run(capsys, *BY_CONVERSATION, "--bucket", bucket.name, "--list")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["DATE", "TIME", "(UTC)", "DURATION", "AUDIO", "TITLE"]
    heard = (25 - 10.25) + (40.6 - 40)  # stored seconds inside the span
    assert lines[1].split() == ["2026-11-30", "14:03:10", "0:00:30.3", f"{heard / SPAN:.0%}", "Half", "heard"]
    assert lines[2].split() == ["2026-11-30", "15:03:00", "1:05:00.0", "no", "audio", "Long", "and", "unheard"]
    assert "would be written (listed from metadata; no audio downloaded)" in out
    assert proxy.downloads == 2  # the two conversations' documents, no chunk
    assert not (tmp_path / "out").exists()


def test_skip_existing_keeps_finished_conversations_and_redoes_the_rest(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 45)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "One"))
    put_conversation(store, conversation("c-2", STARTED + timedelta(seconds=5), FINISHED, "Two"))
    out_dir = tmp_path / "out"
    assert run(capsys, *BY_CONVERSATION, *args, "--out", str(out_dir))[0] == 0
    one, two = out_dir / "2026-11-30_1403_One.wav", out_dir / "2026-11-30_1403_Two.wav"
    first = one.stat().st_mtime_ns
    two.unlink()  # as if interrupted before it was written

    code, out, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(out_dir), "--skip-existing")

    assert code == 0 and "1 already complete, kept" in out
    assert one.stat().st_mtime_ns == first
    line, _ = expected_file(store, STARTED + timedelta(seconds=5), FINISHED)
    assert two.read_bytes() == wav.frame(line, RATE)

    # A new version of a kept conversation is not complete: it is written again.
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "One", language="de"), T0 + timedelta(days=1))
    code, out, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(out_dir), "--skip-existing")
    assert code == 0 and "1 already complete, kept" in out
    assert json.loads((out_dir / "2026-11-30_1403_One.json").read_bytes())["language"] == "de"


def test_a_stem_held_by_another_conversations_files_is_not_overwritten(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    put_conversation(store, conversation("c-1", STARTED, STARTED + timedelta(seconds=5), "Standup"))
    out_dir = tmp_path / "out"
    assert run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))[0] == 0
    put_conversation(store, conversation("c-2", STARTED + timedelta(seconds=20), FINISHED, "Standup"))

    code, _, _ = run(
        capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir), "--since", "2026-11-30T14:03:20"
    )

    assert code == 0
    assert json.loads((out_dir / "2026-11-30_1403_Standup.json").read_bytes())["id"] == "c-1"
    assert json.loads((out_dir / "2026-11-30_1403_Standup-2.json").read_bytes())["id"] == "c-2"


def test_no_conversation_in_the_range_is_a_clear_message_and_exit_1(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 5)
    code, out, err = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))
    assert (code, out) == (1, "")
    assert f"no conversations for uid {UID}" in err


def test_a_day_of_conversations_lists_it_once_and_downloads_only_the_chunks_inside(
    bucket, fake_gcs, tmp_path, monkeypatch, capsys
):
    store = storage.GcsStore(bucket.name)
    start = datetime(2026, 11, 30, 9, tzinfo=UTC)
    store_audio(store, start, 600)  # ten minutes of one-second chunks
    a, b = start + timedelta(seconds=60), start + timedelta(seconds=400)
    put_conversation(store, conversation("c-1", a, a + timedelta(seconds=30), "A"))
    put_conversation(store, conversation("c-2", b, b + timedelta(seconds=20), "B"))

    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        code, _, _ = run(
            capsys, *BY_CONVERSATION, "--bucket", bucket.name, "--out", str(tmp_path / "out"), "--since", "2026-11-30"
        )

    assert code == 0
    print(f"{len(proxy.list_calls)} list calls, {proxy.names_listed} names, {proxy.downloads} downloads")
    assert proxy.names_listed == 600 + 2  # every chunk of the day once, and the two conversations
    # the conversations, the range's compacted day folders (none), one range of chunks (600 names: one page)
    assert len(proxy.list_calls) == 1 + 1 + 1
    # Each conversation's chunks: its 30 s (20 s) and the pads, plus at most one chunk straddling each edge.
    assert 30 + 20 + 4 * PAD <= proxy.downloads - 2 <= 30 + 20 + 4 * PAD + 4


def test_progress_bar_shows_on_a_terminal_and_quiet_silences_it(tmp_path, local_dir):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Bar"))

    def shown(*extra: str) -> str:
        command = [
            *OMI_AUDIO,
            "export",
            "--uid",
            UID,
            "--by",
            "conversation",
            "--local-dir",
            str(local_dir),
        ]
        return stderr_on_a_terminal([*command, "--out", str(tmp_path / "out"), *extra])

    output = shown()
    assert "/35 [" in output  # chunks 8 to 42 hold the padded span and "chunk/s" in output
    assert shown("--quiet") == ""


def test_a_corrupt_chunk_inside_a_conversation_becomes_silence_named_and_listed(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Damaged"))
    line, silent = expected_file(store, STARTED, FINISHED)
    broken = storage.object_name(UID, T0 + timedelta(seconds=21))  # the chunk captured from second 20
    Path(store.location(broken)).write_bytes(b"<html>not audio</html>")  # its metadata still says a second

    code, _, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(tmp_path / "out"))

    assert code == 0
    assert f"{broken} is not a usable WAV chunk" in err and "silence in its place" in err
    stem = tmp_path / "out" / "2026-11-30_1403_Damaged"
    at = round((20 - (10.25 - PAD)) * RATE)  # where second 20 sits in the file
    assert silent == []
    expected = line[: at * 2] + bytes(RATE * 2) + line[(at + RATE) * 2 :]
    assert stem.with_suffix(".wav").read_bytes() == wav.frame(expected, RATE)
    assert json.loads(stem.with_suffix(".json").read_bytes())["gaps"] == [{"start": at / RATE, "seconds": 1.0}]


def test_a_conversation_without_times_takes_its_span_from_its_name_and_its_transcript():
    created = T0 + timedelta(minutes=5)
    body = conversation("c-1", None, None, "No times")
    body["created_at"] = created.isoformat()
    info = storage.ConversationInfo("n", 0, {}, storage.ConversationName(UID, created, "c-1", "0" * 32))

    found = archive.conversation_from(info, json.dumps(body).encode())

    assert found.started_at == created
    assert found.finished_at == created + timedelta(seconds=6.0)  # the last segment's end
    assert [cue.start for cue in found.cues()] == [1.0 + PAD, 4.0 + PAD]  # from where its file would start


def test_an_interrupted_export_leaves_whole_conversations_only_and_resumes(bucket, fake_gcs, tmp_path, capsys):
    store = storage.GcsStore(bucket.name)
    store_audio(store, T0, 20)
    later = T0 + timedelta(hours=1)
    store_audio(store, later, 160, seed=1)
    put_conversation(store, conversation("c-1", STARTED, STARTED + timedelta(seconds=5), "Short"))
    put_conversation(store, conversation("c-2", later + timedelta(seconds=5), later + timedelta(seconds=150), "Long"))
    out = tmp_path / "out"
    short = out / "2026-11-30_1403_Short"

    with StorageProxy(fake_gcs, delay=0.02) as proxy:  # 20 ms a request: the long one takes seconds at one job
        env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
        command = [
            *OMI_AUDIO,
            "export",
            "--uid",
            UID,
            "--by",
            "conversation",
            "--bucket",
            bucket.name,
        ]
        proc = subprocess.Popen(
            [*command, "--out", str(out), "--jobs", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        give_up = time.monotonic() + 60
        while not (short.with_suffix(".json").exists() and list(out.glob(".export-*"))) and time.monotonic() < give_up:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert [p.name for p in exported(out)] == [f"{short.name}{suffix}" for suffix in (".json", ".vtt", ".wav")]
    finished = short.with_suffix(".wav").read_bytes()

    code, text, _ = run(capsys, *BY_CONVERSATION, "--bucket", bucket.name, "--out", str(out), "--skip-existing")

    assert code == 0 and "1 already complete, kept" in text
    assert short.with_suffix(".wav").read_bytes() == finished
    line, _ = expected_file(store, later + timedelta(seconds=5), later + timedelta(seconds=150))
    assert (out / "2026-11-30_1503_Long.wav").read_bytes() == wav.frame(line, RATE)


def test_a_cut_takes_the_rate_most_of_its_audio_has_and_leaves_the_other_out_as_a_hole():
    chunks = [_captured(T0 + timedelta(seconds=i), 1.0, f"c{i}") for i in range(11) if i != 5]
    low = round(0.5 * 8000)
    odd = export.Chunk("low", T0 + timedelta(seconds=5), 0, wav.HEADER_SIZE + 2 * low, 8000, 2 * low)
    chunks.append(archive.CapturedChunk(odd, T0 + timedelta(seconds=5), low, 8000))
    chunks.sort(key=lambda c: c.start)
    cut = archive.plan_cut(chunks, T0, T0 + timedelta(seconds=11), pad=timedelta(0))
    assert (cut.sample_rate, cut.other_rate) == (RATE, 1)
    assert [(h.at, h.frames) for h in cut.holes] == [(5 * RATE, RATE)]


# -- the page -----------------------------------------------------------------------------

_ARTICLE_RE = re.compile(r'<article id="([^"]+)"')
_DATA_RE = re.compile(r'<script type="application/json" id="page-data"[^>]*>(.*?)</script>', re.S)


def articles(page: Path) -> dict[str, dict]:
    """Each article of an exported index.html by its anchor: the data its script plays and searches by."""
    text = page.read_text("utf-8")
    anchors = [html.unescape(anchor) for anchor in _ARTICLE_RE.findall(text)]
    [data] = _DATA_RE.findall(text)
    items = json.loads(data)["items"]
    assert [item["stem"] for item in items] == anchors  # one item per article, in the articles' order
    return {item["stem"]: item for item in items}


def test_a_conversation_export_writes_the_page_with_every_conversation_and_the_vtt_cues(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 45)
    later = T0 + timedelta(hours=3)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Heard <loud> & clear"))
    put_conversation(store, conversation("c-2", later, later + timedelta(minutes=1), "Unheard"))

    code, _, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    found = articles(tmp_path / "out" / "index.html")
    stems = [p.stem for p in exported(tmp_path / "out", "*.json")]
    assert sorted(found) == stems == ["2026-11-30_1403_Heard-loud-clear", "2026-11-30_1703_Unheard"]
    heard, unheard = (found[stem] for stem in stems)
    assert (heard["audio"], unheard["audio"]) == (f"{stems[0]}.wav", None)
    for stem, data in found.items():
        cues = parse_vtt((tmp_path / "out" / f"{stem}.vtt").read_text(encoding="utf-8"))
        assert [(round(s, 3), round(e, 3), text) for s, e, _, text in cues] == [
            (round(s, 3), round(e, 3), text) for s, e, _, text in data["cues"]
        ]
        assert [data["speakers"][n] for *_, n, _ in data["cues"]] == [speaker for _, _, speaker, _ in cues]


def test_a_session_export_writes_the_page_with_its_sessions(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 5)
    store_audio(store, T0 + timedelta(hours=1), 5, seed=1)

    code = cli.main(["export", "--uid", UID, "--local-dir", str(local_dir), "--out", str(tmp_path / "out"), "--quiet"])

    assert code == 0
    found = articles(tmp_path / "out" / "index.html")
    assert sorted(data["audio"] for data in found.values()) == sorted(p.name for p in (tmp_path / "out").glob("*.wav"))
    assert len(found) == 2


# -- crafted conversations: each read on its own, never stopping the export ------------------


def stored_name(store, cid: str) -> str:
    """The object name of conversation `cid`'s (only) stored version."""
    [name] = [info.name for info in store.list_conversations(UID) if info.parts.conversation_id == cid]
    return name


def _finished_at_the_end_of_time(body: dict) -> None:
    body["finished_at"] = "9999-12-31T23:59:59Z"


def _started_in_year_one(body: dict) -> None:
    body["started_at"] = "0001-01-01T00:00:00Z"


def _a_segment_ending_at_1e300_and_no_finish(body: dict) -> None:
    body["finished_at"] = None
    body["transcript_segments"][1]["end"] = 1e300


def _a_segment_starting_at_a_400_digit_number(body: dict) -> None:
    body["transcript_segments"][0]["start"] = 10**400


def _a_span_of_four_years(body: dict) -> None:
    body["finished_at"] = (T0 + timedelta(days=4 * 365)).isoformat()


@pytest.mark.parametrize(
    ("craft", "why"),
    [
        (_finished_at_the_end_of_time, "finished_at 9999-12-31T23:59:59+00:00 is out of range (1970 to 9998)"),
        (_started_in_year_one, "started_at 0001-01-01T00:00:00+00:00 is out of range (1970 to 9998)"),
        (_a_segment_ending_at_1e300_and_no_finish, "transcript segment 2's end is more than 48 h from the start"),
        (_a_segment_starting_at_a_400_digit_number, "transcript segment 1's start is more than 48 h from the start"),
        (_a_span_of_four_years, "it spans 3.5e+04 h, more than 48 h"),
    ],
)
def test_a_conversation_that_cannot_be_placed_is_skipped_named_once_and_the_rest_exported(
    craft, why, tmp_path, local_dir, capsys
):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    crafted = conversation("crafted", STARTED, FINISHED, "Crafted")
    craft(crafted)
    put_conversation(store, crafted)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Ordinary"))
    out_dir = tmp_path / "out"

    code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert code == export.EXIT_SKIPPED == 3
    assert err.splitlines() == [f"warning: skipped {stored_name(store, 'crafted')}: {why}"]
    stem = "2026-11-30_1403_Ordinary"
    assert [p.name for p in exported(out_dir)] == [f"{stem}.json", f"{stem}.vtt", f"{stem}.wav"]
    assert all((out_dir / name).is_file() for name in PAGE_FILES)
    assert list(articles(out_dir / "index.html")) == [stem]
    assert "1 conversation(s) written" in out and "1 skipped (named above)" in out

    code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--list")
    assert code == 3 and len(err.splitlines()) == 1 and "Ordinary" in out and "Crafted" not in out


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"id": "broken"', "not JSON (Expecting ',' delimiter: line 1 column 16 (char 15))"),
        (b'["a list"]', "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply to read"),
    ],
)
def test_a_stored_body_that_is_not_a_json_object_is_skipped_named_once(body, why, tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Ordinary"))
    name = store.put_conversation(UID, STARTED, "broken", body, {}, 10).name  # a bucket can hold anything

    code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(tmp_path / "out"))

    assert code == 3
    assert err.splitlines() == [f"warning: skipped {name}: {why}"]
    assert "Ordinary" in out and (tmp_path / "out" / "index.html").is_file()


def test_a_lone_surrogate_is_replaced_where_the_conversation_is_read_for_every_writer(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    body = conversation("c-1", STARTED, FINISHED, "Plan \ud800 B")  # valid JSON: "Plan \ud800 B"
    body["structured"]["overview"] = "Over \udfff view"
    body["transcript_segments"][0]["text"] = "Said \ud800 this"
    body["transcript_segments"][0]["speaker_name"] = "Ann \udc00"
    body["notes"] = {"\ud800": ["\udc00"]}  # anywhere in the document, keys too
    put_conversation(store, body)
    out_dir = tmp_path / "out"

    code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert (code, err) == (0, "")
    stem = "2026-11-30_1403_Plan-B"  # U+FFFD is a symbol: a separator in the name
    assert (out_dir / f"{stem}.wav").is_file()
    assert "Plan \ufffd B" in out
    document = json.loads((out_dir / f"{stem}.json").read_bytes())
    assert document["structured"]["title"] == "Plan \ufffd B" and document["notes"] == {"\ufffd": ["\ufffd"]}
    assert parse_vtt((out_dir / f"{stem}.vtt").read_text(encoding="utf-8"))[0][2:] == ("Ann \ufffd", "Said \ufffd this")
    [data] = articles(out_dir / "index.html").values()
    assert data["cues"][0][3] == "Said \ufffd this" and data["speakers"][0] == "Ann \ufffd"
    assert "Over \ufffd view" in (out_dir / "index.html").read_text(encoding="utf-8")

    code, _, _ = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir), "--skip-existing")
    assert code == 0  # what was written is this very version: kept


def test_a_conversation_too_long_for_one_wav_file_is_skipped_named_and_the_rest_exported(
    tmp_path, local_dir, monkeypatch, capsys
):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    put_conversation(store, conversation("long", STARTED, FINISHED, "Long"))  # 34 s of audio
    short_end = STARTED + timedelta(seconds=5)
    put_conversation(store, conversation("short", STARTED + timedelta(seconds=1), short_end, "Short"))
    small = dataclasses.replace(export.FORMATS["wav"], part_limit=20 * RATE * archive.FRAME_BYTES)
    monkeypatch.setitem(export.FORMATS, "wav", small)  # as if a WAV file held 20 s

    code, _, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(tmp_path / "out"))

    assert code == 3
    assert err.splitlines() == [
        f"warning: skipped {stored_name(store, 'long')}: its 0:00:34.3 of audio is more than one WAV file holds:"
        " use --format flac"
    ]
    assert sorted(p.suffix for p in (tmp_path / "out").glob("2026-11-30_1403_Short*")) == [".json", ".vtt", ".wav"]
    assert not list((tmp_path / "out").glob("*Long*"))


# -- an audio file is bounded by the audio that exists ---------------------------------------


def test_a_long_span_around_a_few_seconds_of_audio_writes_only_those_seconds_and_moves_the_cues(
    tmp_path, local_dir, capsys
):
    store = storage.LocalStore(local_dir)
    heard = T0 + timedelta(hours=1)
    pcms = store_audio(store, heard, 4)
    body = conversation("c-1", T0, T0 + timedelta(hours=2), "Two hours")
    body["transcript_segments"] = [segment(3600.5, 3602.0, "In the middle."), segment(10.0, 12.0, "Unheard.")]
    put_conversation(store, body)
    out_dir = tmp_path / "out"

    code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert (code, err) == (0, "")
    stem = out_dir / "2026-11-30_1403_Two-hours"
    data = stem.with_suffix(".wav").read_bytes()
    print(f"a 2 h span around 4 s of audio: {len(data):,} bytes")
    assert data == wav.frame(b"".join(pcms), RATE)  # the 4 s stored, nothing else (230 MB before)
    document = json.loads(stem.with_suffix(".json").read_bytes())
    start = datetime.fromisoformat(document["audio_start"])
    assert abs((start - heard).total_seconds()) < 0.1  # the capture time of its first sample
    assert (document["audio_seconds"], document["gaps"]) == (4.0, [])
    cues = parse_vtt(stem.with_suffix(".vtt").read_text(encoding="utf-8"))
    spoken = (T0 + timedelta(seconds=3600.5) - start).total_seconds()  # where the words are in the file
    assert cues == [
        (0.0, 0.0, "Speaker 0", "Unheard."),
        (round(spoken, 3), round(spoken + 1.5, 3), "Speaker 0", "In the middle."),
    ]
    assert re.search(r"2:00:00\.0 +0%  Two hours", out)


def test_a_40_hour_span_is_exported_with_its_long_hole_cut_to_a_minute_and_the_cues_moved(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    finished = T0 + timedelta(hours=40)
    first = store_audio(store, T0, 3)
    last = store_audio(store, finished - timedelta(seconds=3), 3, seed=1)
    body = conversation("c-1", T0, finished, "Forty hours")
    late = 40 * 3600 - 2.5  # seconds after started_at: in the last stored second but two
    body["transcript_segments"] = [segment(0.5, 1.0, "First."), segment(late, late + 0.5, "Last.")]
    put_conversation(store, body)
    out_dir = tmp_path / "out"

    code, _, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert (code, err) == (0, "")
    stem = out_dir / "2026-11-30_1403_Forty-hours"
    data = stem.with_suffix(".wav").read_bytes()
    minute = archive.MAX_HOLE.total_seconds()
    assert data == wav.frame(b"".join(first) + bytes(round(minute * RATE) * 2) + b"".join(last), RATE)
    document = json.loads(stem.with_suffix(".json").read_bytes())
    [gap] = document["gaps"]
    assert (gap["start"], gap["seconds"]) == (3.0, minute)
    assert gap["left_out"] == pytest.approx(40 * 3600 - 6 - minute, abs=0.01)
    assert document["audio_seconds"] == 6 + minute
    assert datetime.fromisoformat(document["audio_end"]) == pytest.approx(finished, abs=timedelta(seconds=0.1))
    (_, _, _, first_words), (start, _, _, last_words) = parse_vtt(stem.with_suffix(".vtt").read_text(encoding="utf-8"))
    assert (first_words, last_words) == ("First.", "Last.")
    assert start == pytest.approx(3 + minute + 0.5, abs=0.01)  # half a second into the last 3 s, as spoken
    assert "shortened to 1 min" in (out_dir / "index.html").read_text(encoding="utf-8")


# -- the page and the terminal take conversation text as text ---------------------------------


def test_text_that_looks_like_the_pages_template_is_shown_as_text(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    body = conversation("c-1", STARTED, FINISHED, "{{title}} {{data}}")
    body["structured"].update(overview="About {{kind}} and {{data}}.", emoji="{{heading}}", category="{{days}}")
    body["transcript_segments"][0]["text"] = "Say {{data}} {{kind}}"
    put_conversation(store, body)
    out_dir = tmp_path / "out"

    code, _, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), "--out", str(out_dir))

    assert (code, err) == (0, "")
    text = (out_dir / "index.html").read_text(encoding="utf-8")
    [data] = articles(out_dir / "index.html").values()  # one data block, one article
    assert data["cues"][0][3] == "Say {{data}} {{kind}}"
    assert "<p class=overview>About {{kind}} and {{data}}.</p>" in text
    assert "{{title}} {{data}}</a></h3>" in text and "<span class=category>{{days}}</span>" in text
    assert f"<title>Recordings of {UID}</title>" in text and 'data-kind="conversation"' in text


_TERMINAL_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every C0 but the line ends, DEL, C1


def test_control_characters_in_a_title_never_reach_the_terminal(tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    title = "\x1b]0;owned\x07\x1b[2J\x9b31mRed\x7f\x00 ok"  # retitle, clear, C1 CSI, DEL, NUL
    put_conversation(store, conversation("c-1", STARTED, FINISHED, title))

    for extra in (["--list"], ["--out", str(tmp_path / "out")]):
        code, out, err = run(capsys, *BY_CONVERSATION, "--local-dir", str(local_dir), *extra)

        assert code == 0 and err == ""
        assert not _TERMINAL_CONTROLS.search(out)
        assert "\ufffd]0;owned\ufffd\ufffd[2J\ufffd31mRed\ufffd\ufffd ok" in out


def test_terminal_text_replaces_c0_del_and_c1_and_keeps_the_rest():
    controls = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)]))
    assert console.terminal_text(controls) == "\ufffd" * 65
    kept = "Zoë 会议 \N{ROCKET} \u00a0\u202e ~"
    assert console.terminal_text(kept) == kept


# -- the loudness strip's data, measured as each file is written ----------------------------


def test_a_conversations_loudness_is_a_character_a_second_of_its_file_with_its_hole_marked(source, tmp_path, capsys):
    store, args = source
    store_audio(store, T0, 60, skip=range(20, 25))  # seconds 20 to 25 never arrived
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "Product launch planning"))

    code, _, _ = run(capsys, *BY_CONVERSATION, *args, "--out", str(tmp_path / "out"))

    assert code == 0
    [entry] = json.loads((tmp_path / "out" / "index.json").read_bytes())["conversations"]
    levels = entry["loudness"]
    assert len(levels) == math.ceil(entry["audio_seconds"])
    [gap] = entry["gaps"]
    hole = range(math.ceil(gap["start"]), math.floor(gap["start"] + gap["seconds"]))
    assert len(hole) >= 4 and all(levels[s] == "-" for s in hole)
    stored = set(range(len(levels))) - set(range(hole.start - 1, hole.stop + 1))
    assert {levels[s] for s in stored} == {"9"}  # the stored audio is loud noise
    found = articles(tmp_path / "out" / "index.html")
    assert found["2026-11-30_1403_Product-launch-planning"]["loudness"] == levels


@pytest.mark.parametrize("form", ["wav", "flac"])
def test_each_session_file_gets_its_loudness_a_character_a_second(form, tmp_path, local_dir, capsys):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 5)
    store_audio(store, T0 + timedelta(hours=1), 3, seed=1)
    out = tmp_path / "out"

    code, _, _ = run(capsys, "export", "--uid", UID, "--local-dir", str(local_dir), "--out", str(out), "--format", form)

    assert code == 0
    sessions = json.loads((out / "index.json").read_bytes())["sessions"]
    assert [(s["seconds"], s["loudness"]) for s in sessions] == [(5.0, "99999"), (3.0, "999")]


def test_a_conversation_kept_by_skip_existing_keeps_the_loudness_measured_when_it_was_written(
    tmp_path, local_dir, capsys
):
    store = storage.LocalStore(local_dir)
    store_audio(store, T0, 45)
    put_conversation(store, conversation("c-1", STARTED, FINISHED, "One"))
    out = tmp_path / "out"
    args = ("--local-dir", str(local_dir), "--out", str(out))
    assert run(capsys, *BY_CONVERSATION, *args)[0] == 0
    measured = json.loads((out / "index.json").read_bytes())["conversations"][0]["loudness"]

    code, printed, _ = run(capsys, *BY_CONVERSATION, *args, "--skip-existing")

    assert code == 0 and "1 already complete, kept" in printed
    assert json.loads((out / "index.json").read_bytes())["conversations"][0]["loudness"] == measured
