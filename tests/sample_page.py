"""A small real export for the page (tests, `make screenshot`) and a year of synthetic
conversations (`bench/page_bench.py`), plus the headless Chromium they open it in.

`python tests/sample_page.py docs/page.png` writes the screenshot in the README."""

from __future__ import annotations

import functools
import math
import os
import random
import shutil
import struct
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy

import wav
from omi_audio import loudness, page

UID = "demo-owner"
RATE = 16000
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Each conversation: (stem, emoji, title, category, start (UTC), seconds of audio,
# overview, gaps, lines).  Lines are (speaker, text), one every LINE_SECONDS.
LINE_SECONDS = 6.0
CONVERSATIONS = [
    (
        "2026-11-30_1403_Product-launch-planning",
        "🚀",
        "Product launch planning",
        "work",
        datetime(2026, 11, 30, 14, 3, 12, tzinfo=UTC),
        54.0,
        "Sam and I went through the launch checklist: the landing page copy is final, the press "
        "kit still needs photos, and the date moves to the 14th so support can be trained first.",
        [{"start": 30.0, "seconds": 6.0}],
        [
            ("You", "Okay, let's go through the launch list one more time."),
            ("Sam", "Landing page copy is final. Marketing signed it off this morning."),
            ("You", "Great. What about the press kit?"),
            ("Sam", "Still waiting on the product photos, Friday at the latest."),
            ("You", "Then I'd rather move the date to the 14th."),
            ("Sam", "Agreed, that gives support a full week of training."),
            ("You", "I'll tell the team this afternoon."),
            ("Sam", "And I'll update the calendar invite."),
            ("You", "Perfect, thanks Sam."),
        ],
    ),
    (
        "2026-11-30_0912_Coffee-with-Amira",
        "☕",
        "Coffee with Amira about the move",
        "personal",
        datetime(2026, 11, 30, 9, 12, 40, tzinfo=UTC),
        36.0,
        "Amira moves to Lisbon in March; she asked for help packing the books and recommended "
        "a moving company that also stores furniture.",
        [],
        [
            ("Amira", "So it's official, we're moving to Lisbon in March."),
            ("You", "That's wonderful news! Do you need help packing?"),
            ("Amira", "Mostly the books, there are about twenty boxes."),
            ("You", "Count me in for a Saturday."),
            ("Amira", "The movers we found also store furniture, by the way."),
            ("You", "Send me their name, I might need that too."),
        ],
    ),
    (
        "2026-11-29_1930_Book-club",
        "📚",
        "Book club: The Left Hand of Darkness",
        "social",
        datetime(2026, 11, 29, 19, 30, 5, tzinfo=UTC),
        42.0,
        "We talked about Genly Ai's loneliness on Gethen and the crossing of the Gobrin ice; next "
        "month's book is Piranesi.",
        [],
        [
            ("Speaker 1", "What stayed with me is how alone Genly is the whole time."),
            ("You", "Until the crossing of the ice, that's where it turns."),
            ("Speaker 2", "The Gobrin chapters are the best writing in the book."),
            ("You", "Estraven's journal entries especially."),
            ("Speaker 1", "Shall we do Piranesi next month?"),
            ("Speaker 2", "Yes, Piranesi. I've heard it's short."),
            ("You", "Piranesi it is."),
        ],
    ),
    (
        "2026-11-29_1115_Bike-repair-shop",
        "🚲",
        "Bike repair shop",
        "errand",
        datetime(2026, 11, 29, 11, 15, 0, tzinfo=UTC),
        0.0,
        "The rear brake pads are worn; the repair will be ready on Wednesday.",
        [],
        [
            ("Speaker 1", "Your rear brake pads are almost gone."),
            ("You", "How long would the repair take?"),
            ("Speaker 1", "It'll be ready Wednesday."),
        ],
    ),
]
# Audio stored on top of the conversations: the wearer's day, in pieces (UTC).
EXTRA_SPANS = [
    (datetime(2026, 11, 30, 8, 40, tzinfo=UTC), datetime(2026, 11, 30, 10, 5, tzinfo=UTC)),
    (datetime(2026, 11, 30, 13, 50, tzinfo=UTC), datetime(2026, 11, 30, 15, 20, tzinfo=UTC)),
    (datetime(2026, 11, 30, 17, 10, tzinfo=UTC), datetime(2026, 11, 30, 17, 45, tzinfo=UTC)),
    (datetime(2026, 11, 29, 19, 10, tzinfo=UTC), datetime(2026, 11, 29, 21, 0, tzinfo=UTC)),
]


def tone(seconds: float, pitch: float) -> bytes:
    """Quiet speech-like audio: a tone that swells and fades once a second."""
    frames = round(seconds * RATE)
    samples = (
        int(3000 * math.sin(2 * math.pi * pitch * n / RATE) * (0.55 + 0.45 * math.sin(2 * math.pi * n / RATE)))
        for n in range(frames)
    )
    return struct.pack(f"<{frames}h", *samples)


@functools.cache
def speech(number: int) -> tuple[bytes, str]:
    """A sample conversation's audio as the export writes it, and its loudness as the export
    measures it: each line spoken (a tone that swells and fades, some lines louder), a
    second's pause after it, silence where it has a hole."""
    _, _, _, _, _, seconds, _, gaps, _ = CONVERSATIONS[number]
    n = numpy.arange(round(seconds * RATE))
    line = (n / RATE // LINE_SECONDS).astype(int)
    amplitude = numpy.where((n / RATE) % LINE_SECONDS < LINE_SECONDS - 1, 1500 + 2500 * (line % 3), 20)
    swell = 0.55 + 0.45 * numpy.sin(2 * numpy.pi * n / RATE)
    pcm = amplitude * swell * numpy.sin(2 * numpy.pi * (180 + 40 * number) * n / RATE)
    meter, at = loudness.Meter(RATE), 0
    for gap in gaps:
        start, end = round(gap["start"] * RATE), round((gap["start"] + gap["seconds"]) * RATE)
        pcm[start:end] = 0
        meter.add(pcm[at:start].astype("<i2").tobytes())
        meter.hole(end - start)
        at = end
    meter.add(pcm[at:].astype("<i2").tobytes())
    return pcm.astype("<i2").tobytes(), meter.text()


def sample_conversations() -> list[dict]:
    """The conversations as omi-audio export hands them to `page.write_index`."""
    result = []
    for number, (stem, emoji, title, category, start, seconds, overview, gaps, lines) in enumerate(CONVERSATIONS):
        cues = [
            {"start": i * LINE_SECONDS + 0.5, "end": (i + 1) * LINE_SECONDS, "speaker": speaker, "text": text}
            for i, (speaker, text) in enumerate(lines)
        ]
        spoken = len(lines) * LINE_SECONDS
        missing = sum(g["seconds"] for g in gaps)
        result.append(
            {
                "stem": stem,
                "id": f"conv-{number}",
                "title": title,
                "emoji": emoji,
                "overview": overview,
                "category": category,
                "started_at": start.isoformat().replace("+00:00", "Z"),
                "finished_at": (start + timedelta(seconds=max(seconds, spoken))).isoformat().replace("+00:00", "Z"),
                "audio": f"{stem}.wav" if seconds else None,
                "audio_start": start.isoformat().replace("+00:00", "Z") if seconds else None,
                "audio_seconds": seconds,
                "coverage": (seconds - missing) / seconds if seconds else 0.0,
                "gaps": gaps,
                "cues": cues,
                **({"loudness": speech(number)[1]} if seconds else {}),
            }
        )
    return result


def audio_spans(conversations: list[dict]) -> list[tuple[datetime, datetime]]:
    spans = list(EXTRA_SPANS)
    for c in conversations:
        if c["audio"]:
            start = datetime.fromisoformat(c["audio_start"])
            spans.append((start, start + timedelta(seconds=c["audio_seconds"])))
    return sorted(spans)


def write_sample_export(out_dir: Path) -> list[dict]:
    """A real export folder: a WAV per conversation with audio, and `index.html` (in UTC)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    conversations = sample_conversations()
    for number, c in enumerate(conversations):
        if c["audio"]:
            (out_dir / c["audio"]).write_bytes(wav.frame(speech(number)[0], RATE))
    page.write_index(out_dir, UID, conversations, [], audio_spans(conversations), tz=UTC)
    return conversations


WORDS = (
    "the launch budget meeting project garden kids school dinner doctor train ticket invoice call "
    "plan weekend holiday coffee review design client report music football recipe apartment rent "
    "insurance birthday present flight hotel museum book film running yoga team hiring offer"
).split()


def synthetic_loudness(seconds: float, rng: random.Random) -> str:
    """A loudness string as the export measures it: runs of speech and pauses, a rare hole."""
    runs, total = [], math.ceil(seconds)
    while total > 0:
        length = min(total, rng.randint(1, 12))
        runs.append(rng.choice("456789") * length if rng.random() < 0.7 else rng.choice("0-01") * length)
        total -= length
    return "".join(runs)


def year_of_conversations(count: int, seconds_per_cue: float, seed: int = 1) -> tuple[list[dict], list[tuple]]:
    """`count` synthetic conversations of 2 to 60 minutes spread over a year, a line
    every `seconds_per_cue` seconds, its loudness, and the audio stored around each."""
    rng = random.Random(seed)
    start_of_year = datetime(2026, 1, 1, tzinfo=UTC)
    conversations, spans = [], []
    for n in range(count):
        start = start_of_year + timedelta(seconds=n * 365 * 86400 / count + rng.uniform(0, 3600))
        seconds = rng.uniform(120, 3600)
        stem = f"{start:%Y-%m-%d_%H%M}_Conversation-{n}"
        cues_each = max(1, round(seconds / seconds_per_cue))
        cue_length = seconds / cues_each
        cues = [
            {
                "start": round(i * cue_length, 3),
                "end": round((i + 1) * cue_length, 3),
                "speaker": rng.choice(["You", "Speaker 1", "Speaker 2"]),
                "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 22))).capitalize() + ".",
            }
            for i in range(cues_each)
        ]
        conversations.append(
            {
                "stem": stem,
                "id": f"id-{n}",
                "title": f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} {n}",
                "emoji": rng.choice("🚀☕📚🚲🎵🏡💼🍽️"),
                "overview": " ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + ".",
                "category": rng.choice(["work", "personal", "social"]),
                "started_at": start.isoformat(),
                "finished_at": (start + timedelta(seconds=seconds)).isoformat(),
                "audio": f"{stem}.wav",
                "audio_start": start.isoformat(),
                "audio_seconds": seconds,
                "coverage": rng.uniform(0.7, 1.0),
                "gaps": [],
                "cues": cues,
                "loudness": synthetic_loudness(seconds, rng),
            }
        )
        spans.append((start - timedelta(minutes=20), start + timedelta(seconds=seconds + 600)))
    return conversations, spans


# --- the browser -------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # play() from a test's script, as after a click
    "--mute-audio",
]


def browser_missing() -> str | None:
    """Why the real browser cannot run here, or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-test.txt)"
    return None


class Chromium:
    """Headless Debian Chromium through its own chromedriver, with a fresh profile."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="page-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot(png: Path, width: int = 1200, height: int = 1000) -> None:
    """The sample export's page as a person sees it mid-conversation: one conversation
    open, its player paused on a line, that line highlighted."""
    with tempfile.TemporaryDirectory(prefix="page-sample-") as folder, Chromium(width, height) as browser:
        out = Path(folder)
        conversations = write_sample_export(out)
        shown = conversations[0]
        driver = browser.driver
        driver.get((out / "index.html").as_uri() + f"#{shown['stem']}")
        play = "const a = document.getElementById(arguments[0]).querySelector('audio'); a.currentTime = arguments[1];"
        driver.execute_script(play + "a.play()", shown["stem"], shown["cues"][2]["start"] + 0.5)
        for _ in range(100):
            if driver.execute_script("return document.querySelector('li.current') !== null"):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the sample page never highlighted a line")
        driver.execute_script(play + "a.pause(); scrollTo(0, 0)", shown["stem"], shown["cues"][2]["start"] + 0.5)
        time.sleep(0.3)  # let the player's controls settle
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/page.png")
    screenshot(target)
    print(f"wrote {target}")
