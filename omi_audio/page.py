"""The export folder's `index.html`: every conversation, playable, with its words.

Pure: data in, one HTML file out; nothing here reads storage.  `omi-audio export` calls
`write_index` with what it exported.  The page is `page.html` (its CSS and a small
script inline) filled with server-rendered HTML, so it reads without its script, and
the data as JSON in a `<script type="application/json">` block, one article's item a
line, from which the script builds a player's cues when it is opened (Chromium
refuses a `<track>` file over `file://`) and the search index.
It opens by double-click: no server, no network, nothing outside the folder.

Times are shown in the time zone of the machine that exports (the owner's), unless a
zone is given; each `<time datetime>` holds the exact instant with its offset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from html import escape
from pathlib import Path
from urllib.parse import quote

import names
from omi_audio import loudness

TEMPLATE = Path(__file__).with_name("page.html")
INDEX_NAME = "index.html"
# Beside it, what every export into the folder gave the page (see `update_index`).
INDEX_DATA = "index.json"

# A conversation with neither its end nor any audio is drawn this long on the
# timeline, so it can still be seen and clicked.
MIN_MARK_SECONDS = 60.0

# Offscreen days are not laid out (CSS content-visibility: auto) until scrolled to;
# until then they take this estimated height, so the scrollbar is about right.  A
# year's 365 timelines and 2,000 articles laid out at once took the first view past 1 s.
DAY_HEAD_REM = 6.0  # the day's heading and timeline
ARTICLE_REM = 8.75  # a closed article (heading, times, two lines of overview) and its margin

# A day's strip draws loudness a character a minute: 24 h span about a thousand pixels,
# so a finer one would not show, and a year of it stays small (the player's strip has
# every second, from the page's data).
STRIP_SECONDS_PER_LEVEL = 60

# Where page.html takes a value: {{title}}, {{heading}}, {{days}}, {{kind}}, {{data}}.
_MARKER_RE = re.compile(r"\{\{(\w+)\}\}")

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January February March April May June July August September October November December").split()


def write_index(
    out_dir: Path,
    uid: str,
    conversations: list[dict],
    sessions: list[dict],
    audio_spans: list[tuple[datetime, datetime]],
    tz: tzinfo | None = None,
) -> Path:
    """Write `index.html` into `out_dir` and return its path.

    Args:
        out_dir: the export folder; audio, .vtt and .json files are named relative to it.
        uid: whose recordings these are (shown in the heading).
        conversations: one dict per exported conversation (`conversations.page_conversation`
            makes them): stem (file stem and #anchor), id, title, emoji, overview, category,
            started_at and finished_at (ISO or None), audio (file name or None),
            audio_start, audio_seconds, coverage (0 to 1), gaps ([{start, seconds, left_out?}]) and
            cues ([{start, end, speaker, text}], seconds from the file's first sample).
        sessions: recording sessions, listed when there are no conversations.
        audio_spans: when audio was stored (UTC), drawn on each day's timeline.
        tz: the zone to show times in; None means the exporting machine's local zone.

    Returns:
        The path of the written page.
    """
    path = Path(out_dir) / INDEX_NAME
    temporary = path.with_name(f".{INDEX_NAME}.partial")
    temporary.write_text(render(uid, conversations, sessions, audio_spans, tz), encoding="utf-8")
    temporary.replace(path)  # never a half-written page under its real name
    return path


def update_index(
    out_dir: Path,
    uid: str,
    conversations: list[dict],
    sessions: list[dict],
    audio_spans: list[tuple[datetime, datetime]],
    tz: tzinfo | None = None,
) -> Path:
    """Merge what this export wrote into the folder's `index.json`, then write `index.html`
    from everything it holds, so one page lists every export into the folder.

    `index.json` keeps each conversation by its id and each session by its file's
    stem (a newer export of the same one replaces it; exporting it again changes
    nothing), the stored-audio spans as their union, and the uids.  Entries whose
    files are no longer in the folder are dropped.  Arguments as in `write_index`.
    """
    out_dir = Path(out_dir)
    held = read_index(out_dir)
    found_conversations = {_conversation_key(c): c for c in held["conversations"]}
    found_conversations.update({_conversation_key(c): _keep_loudness(c, found_conversations) for c in conversations})
    found_sessions = {str(s["stem"]): s for s in held["sessions"]}
    found_sessions.update({str(s["stem"]): _keep_loudness(s, found_sessions, str(s["stem"])) for s in sessions})
    merged = {
        "uids": sorted({*held["uids"], uid}),
        "conversations": sorted(
            (c for c in found_conversations.values() if (out_dir / f"{c['stem']}.json").is_file()),
            key=lambda c: (str(c.get("started_at") or ""), str(c["stem"])),
        ),
        "sessions": sorted(
            (s for s in found_sessions.values() if (out_dir / str(s.get("audio") or "")).is_file()),
            key=lambda s: (str(s.get("started_at") or ""), str(s["stem"])),
        ),
        "spans": _union([*held["spans"], *((_utc(a), _utc(b)) for a, b in audio_spans)]),
    }
    document = {**merged, "spans": [[a.isoformat(), b.isoformat()] for a, b in merged["spans"]]}
    temporary = out_dir / f".{INDEX_DATA}.partial"
    temporary.write_text(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    temporary.replace(out_dir / INDEX_DATA)
    return write_index(
        out_dir, ", ".join(merged["uids"]), merged["conversations"], merged["sessions"], merged["spans"], tz
    )


def read_index(out_dir: Path) -> dict:
    """What the folder's `index.json` holds: uids, conversations, sessions, spans (empty when there is none)."""
    try:
        document = json.loads((Path(out_dir) / INDEX_DATA).read_bytes())
    except (OSError, ValueError):
        document = {}
    if not isinstance(document, dict):
        document = {}

    def listed(key: str) -> list:
        value = document.get(key)
        return value if isinstance(value, list) else []

    spans = []
    for span in listed("spans"):
        if isinstance(span, list) and len(span) == 2:
            start, end = names.parse_time(span[0]), names.parse_time(span[1])
            if start and end:
                spans.append((start, end))
    return {
        "uids": [u for u in listed("uids") if isinstance(u, str)],
        "conversations": [c for c in listed("conversations") if isinstance(c, dict) and c.get("stem")],
        "sessions": [s for s in listed("sessions") if isinstance(s, dict) and s.get("stem")],
        "spans": spans,
    }


def _keep_loudness(entry: dict, held: dict[str, dict], key: str | None = None) -> dict:
    """`entry`, with the loudness measured when its file was written by an earlier export
    (an export that keeps a file it finds whole does not read it again to measure it)."""
    before = held.get(key or _conversation_key(entry))
    if "loudness" in entry or not before or before.get("audio") != entry.get("audio") or "loudness" not in before:
        return entry
    return {**entry, "loudness": before["loudness"]}


def _conversation_key(conversation: dict) -> str:
    return f"id:{conversation['id']}" if conversation.get("id") else f"stem:{conversation['stem']}"


def _union(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def render(
    uid: str,
    conversations: list[dict],
    sessions: list[dict],
    audio_spans: list[tuple[datetime, datetime]],
    tz: tzinfo | None = None,
) -> str:
    """The whole page as one string (see `write_index`)."""
    local = _converter(tz)
    talks = [_conversation_item(c, local) for c in conversations]
    recordings = [_session_item(s, local) for s in sessions]
    kind = "mixed" if talks and recordings else "conversation" if talks or not recordings else "session"
    items = _nest(talks, recordings)
    spans = [(local(_utc(start)), local(_utc(end))) for start, end in audio_spans]
    spans = [(start, end) for start, end in spans if end > start]
    days = _days(items, spans, local, tz)
    fill = {
        "title": escape(f"Recordings of {uid}"),
        "heading": _heading(uid, talks, recordings),
        "days": _legend(talks, recordings) + "".join(_day_html(day) for day in days) if days else _nothing_html(),
        "kind": kind,
        "data": _data_block(uid, kind, [each for day in days for item in day.items for each in (item, *item.children)]),
    }
    template = TEMPLATE.read_text(encoding="utf-8")
    if sorted(_MARKER_RE.findall(template)) != sorted(fill):
        raise ValueError(f"{TEMPLATE.name} must hold each of {', '.join(sorted(fill))} exactly once, as {{{{name}}}}")
    # One pass over the template alone: a title or transcript holding "{{data}}" is text.
    return _MARKER_RE.sub(lambda marker: fill[marker[1]], template)


def json_for_script(value: object) -> str:
    """JSON safe inside a `<script>` element: no `<` at all, so neither `</script>` nor
    `<!--` can end or bend the element; JSON.parse reads `\\u003c` back as `<`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).replace("<", "\\u003c")


# --- the model the HTML is rendered from -----------------------------------------


@dataclass
class _Item:
    """One listed thing (a conversation, or a session when there are none), in local time."""

    stem: str
    title: str
    emoji: str
    start: datetime | None
    end: datetime | None
    seconds: float
    source: dict
    audio: str | None
    kind: str = "conversation"  # or "session"
    children: list[_Item] = field(default_factory=list)  # a session's conversations, newest first
    parent: _Item | None = None  # the session a conversation happened in


@dataclass
class _Day:
    day: date
    start: datetime  # local midnight
    end: datetime  # the next local midnight (23 or 25 hours later on a DST change)
    items: list[_Item] = field(default_factory=list)
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)


def _converter(tz: tzinfo | None) -> Callable[[datetime], datetime]:
    if tz is None:
        return lambda moment: moment.astimezone()  # the system zone, DST rules included
    return lambda moment: moment.astimezone(tz)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def _conversation_item(conversation: dict, local: Callable[[datetime], datetime]) -> _Item:
    start = names.parse_time(conversation.get("started_at")) or names.parse_time(conversation.get("audio_start"))
    end = names.parse_time(conversation.get("finished_at"))
    seconds = _seconds(conversation.get("audio_seconds"))
    if start and end and end > start:
        seconds = (end - start).total_seconds()
    elif start and seconds:
        end = start + timedelta(seconds=seconds)
    return _Item(
        stem=str(conversation["stem"]),
        title=str(conversation.get("title") or "Untitled conversation"),
        emoji=str(conversation.get("emoji") or ""),
        start=local(start) if start else None,
        end=local(end) if end else None,
        seconds=seconds,
        source=conversation,
        audio=conversation.get("audio") or None,
    )


def _session_item(session: dict, local: Callable[[datetime], datetime]) -> _Item:
    start = names.parse_time(session.get("started_at"))
    seconds = _seconds(session.get("seconds"))
    end = start + timedelta(seconds=seconds) if start else None
    return _Item(
        stem=str(session["stem"]),
        title=f"Recording at {local(start):%H:%M}" if start else "Recording",
        emoji="",
        start=local(start) if start else None,
        end=local(end) if end else None,
        seconds=seconds,
        source=session,
        audio=session.get("audio") or None,
        kind="session",
    )


def _nest(talks: list[_Item], recordings: list[_Item]) -> list[_Item]:
    """Each conversation inside the session it overlaps most; the listed items (sessions and
    the conversations in none)."""
    top = list(recordings)
    for talk in talks:
        best, most = None, -1.0
        if talk.start is not None:
            end = talk.end or talk.start
            for recording in recordings:
                if recording.start is None or recording.end is None:
                    continue
                overlap = (min(end, recording.end) - max(talk.start, recording.start)).total_seconds()
                if overlap >= 0 and overlap > most:
                    best, most = recording, overlap
        if best is None:
            top.append(talk)
        else:
            talk.parent = best
            best.children.append(talk)
    for recording in recordings:
        recording.children.sort(key=lambda item: (item.start, item.stem), reverse=True)
    return top


def _midnight(day: date, tz: tzinfo | None) -> datetime:
    if tz is None:
        return datetime(day.year, day.month, day.day).astimezone()  # naive means local here
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _days(items: list[_Item], spans: list[tuple[datetime, datetime]], local: Callable, tz: tzinfo | None) -> list[_Day]:
    """Days with something listed or stored, newest first; items newest first in each."""
    by_day: dict[date, _Day] = {}

    def day_of(moment: datetime) -> _Day:
        key = moment.date()
        if key not in by_day:
            start = _midnight(key, tz)
            by_day[key] = _Day(key, start, local(_midnight(key + timedelta(days=1), tz)))
        return by_day[key]

    undated = [item for item in items if item.start is None]
    for item in items:
        if item.start is not None:
            day_of(item.start).items.append(item)
    for start, end in spans:
        moment = start
        while moment < end:  # a span past midnight is drawn on each day it touches
            day = day_of(moment)
            day.spans.append((moment, min(end, day.end)))
            moment = day.end
    days = sorted(by_day.values(), key=lambda d: d.day, reverse=True)
    for day in days:
        day.items.sort(key=lambda item: (item.start, item.stem), reverse=True)
    if undated:
        days.append(_Day(date.min, datetime.min, datetime.min, undated))
    return days


# --- HTML --------------------------------------------------------------------------


def _day_label(day: date) -> str:
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def _offset(moment: datetime) -> str:
    text = moment.strftime("%z")
    return "UTC" if text in ("+0000", "") else f"UTC{text[:3]}:{text[3:]}"


def _clock(moment: datetime) -> str:
    return f"{moment:%H:%M}"


def duration_text(seconds: float) -> str:
    """`38 s`, `42 min`, `1 h 05 min`: how long, at a glance."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def clock_text(seconds: float) -> str:
    """A position in a recording: `0:07`, `12:34`, `1:02:03`."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _src(name: str) -> str:
    """A file in the export folder as a relative URL (names may hold any character)."""
    return escape(quote(name, safe=""))


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _heading(uid: str, talks: list[_Item], recordings: list[_Item]) -> str:
    items = [*talks, *recordings]
    dated = sorted(item.start for item in items if item.start)
    parts = [_counted(len(talks), "conversation")] if talks or not recordings else []
    if recordings:
        parts.append(_counted(len(recordings), "recording"))
    if dated:
        first, last = _day_label(dated[0].date()), _day_label(dated[-1].date())
        parts.append(first if first == last else f"{first} to {last}")
        offsets = sorted({moment.utcoffset(): moment for moment in dated}.items())  # two across a DST change
        parts.append(f"times in {' / '.join(_offset(moment) for _, moment in offsets)}")
    summary = escape(" · ".join(parts))
    return f"<h1>Recordings of <span class=uid>{escape(uid)}</span></h1><p class=summary>{summary}</p>"


def _legend(talks: list[_Item], recordings: list[_Item]) -> str:
    keys = ["<span class=key-audio></span> audio stored"]
    if recordings:
        keys.append("<span class=key-session></span> a recording")
    if talks or not recordings:
        keys.append("<span class=key-item></span> a conversation")
    if any(_loudness(item) for item in (*talks, *recordings)):
        keys.append(
            "<span class=key-loud></span> how loud (a flat line: quiet; <span class=key-hole></span> none stored)"
        )
    shown = ", ".join(keys)
    return f"<p class=legend>Each day's strip shows 24 hours: {shown} (click one to open it and play from there).</p>"


def _nothing_html() -> str:
    return "<p class=empty>Nothing was exported for this range.</p>"


def _position(moment: datetime, day: _Day) -> float:
    whole = (day.end - day.start).total_seconds()
    return max(0.0, min(100.0, (moment - day.start).total_seconds() / whole * 100))


def _audio_start(item: _Item) -> datetime | None:
    """When the first sample of the item's audio file was captured."""
    key = "audio_start" if item.kind == "conversation" else "started_at"
    return names.parse_time(item.source.get(key)) if item.audio else None


def _loudness(item: _Item) -> str:
    levels = item.source.get("loudness")
    return levels if isinstance(levels, str) else ""


def _loudness_html(item: _Item, day: _Day) -> str:
    """Where sound is in the item's audio, drawn by the script over the day's strip once in view."""
    levels, start = _loudness(item), _audio_start(item)
    if not levels or start is None:
        return ""
    whole = (day.end - day.start).total_seconds()
    left = (start - day.start).total_seconds() / whole * 100  # past midnight: cut off by the strip's edge
    width = len(levels) / whole * 100
    coarse = loudness.coarse(levels, STRIP_SECONDS_PER_LEVEL)
    return (
        f'<canvas class=tl-loud style="left:{left:.3f}%;width:{width:.3f}%" data-loudness="{escape(coarse)}"></canvas>'
    )


def _timeline_html(day: _Day) -> str:
    whole = (day.end - day.start).total_seconds()
    parts = []
    for start, end in day.spans:
        left = _position(start, day)
        parts.append(f'<span class=tl-audio style="left:{left:.3f}%;width:{_position(end, day) - left:.3f}%"></span>')
    shown = [item for item in day.items if item.kind == "session"]  # sessions under their conversations
    shown += [each for item in day.items for each in (item, *item.children) if each.kind == "conversation"]
    for item in shown:
        left = _position(item.start, day)
        end = item.end or item.start + timedelta(seconds=MIN_MARK_SECONDS)
        width = max(_position(end, day) - left, MIN_MARK_SECONDS / whole * 100)
        label = f"{_clock(item.start)} {item.emoji} {item.title}".replace("  ", " ")
        css = "tl-item tl-session" if item.kind == "session" else "tl-item"
        parts.append(
            f'<a class="{css}" href="#{escape(item.stem)}" data-stem="{escape(item.stem)}" '
            f'style="left:{left:.3f}%;width:{width:.3f}%" title="{escape(label)}">'
            f"<span class=visually-hidden>{escape(label)}</span></a>"
        )
    # Each recording's loudness over its mark: a session's, or a conversation's when in none.
    parts += [_loudness_html(item, day) for item in shown if item.kind == "session" or item.parent is None]
    ticks = "".join(
        f'<span class=tl-tick style="left:{hour / 24 * 100:.3f}%">{hour:02d}</span>' for hour in range(0, 25, 3)
    )
    return (
        f'<div class=timeline aria-label="24 hours of {_day_label(day.day)}: stored audio, how loud, and '
        f'where each recording sits"><div class=tl-strip data-start="{day.start.timestamp():.0f}" '
        f'data-seconds="{whole:.0f}">{"".join(parts)}</div>'
        f"<div class=tl-ticks aria-hidden=true>{ticks}</div></div>"
    )


def _day_html(day: _Day) -> str:
    if day.day == date.min:
        head = "<h2>Date unknown</h2>"
        timeline = ""
    else:
        head = f'<h2><time datetime="{day.day.isoformat()}">{_day_label(day.day)}</time></h2>'
        timeline = _timeline_html(day)
    articles = "".join(_article_html(item) for item in day.items)
    if not articles:
        articles = "<p class=empty>Audio was stored this day, but nothing of it was exported here.</p>"
    height = DAY_HEAD_REM + ARTICLE_REM * max(1, sum(1 + len(item.children) for item in day.items))
    return (
        f'<section class=day id="day-{day.day.isoformat()}" style="contain-intrinsic-size:auto {height:g}rem">'
        f"{head}{timeline}{articles}</section>"
    )


def _meta_html(item: _Item) -> str:
    parts = []
    if item.start:
        parts.append(f'<time datetime="{item.start.isoformat()}">{_clock(item.start)}</time>')
    if item.seconds:
        parts.append(f"<span class=duration>{duration_text(item.seconds)}</span>")
    if item.kind == "conversation":
        coverage = item.source.get("coverage")
        if not item.audio:
            parts.append("<span class=coverage data-none>no audio</span>")
        elif isinstance(coverage, (int, float)):
            share = max(0.0, min(1.0, float(coverage)))
            parts.append(
                f'<span class=coverage title="share of the conversation with stored audio">'
                f'<meter min=0 max=1 value="{share:.3f}"></meter> audio {share:.0%}</span>'
            )
        if item.source.get("category"):
            parts.append(f"<span class=category>{escape(str(item.source['category']))}</span>")
    return f"<p class=meta>{' · '.join(parts)}</p>"


def _gaps_html(gaps: Iterable[dict]) -> str:
    holes = [g for g in gaps if isinstance(g, dict)]
    if not holes:
        return ""
    shown = ", ".join(f"{clock_text(_seconds(g.get('start')))} ({_hole_length(g)})" for g in holes)
    noun = "hole" if len(holes) == 1 else "holes"
    return f"<p class=gaps>Silence where no audio was stored: {len(holes)} {noun}, at {shown}</p>"


def _hole_length(gap: dict) -> str:
    """How long a hole lasted; for one cut short in the file (its ``left_out``), how long it is there too."""
    seconds, left_out = _seconds(gap.get("seconds")), _seconds(gap.get("left_out"))
    if not left_out:
        return duration_text(seconds)
    return f"{duration_text(seconds + left_out)}, shortened to {duration_text(seconds)}"


def _article_html(item: _Item) -> str:
    """The article as it reads without a script.  Its player and transcript are made
    by the script when it is opened: 2,000 media elements and half a million lines
    would take the first view seconds to build.  Without a script, the player is the
    `<noscript>` one (parsed only then) and the transcript is the .vtt file."""
    stem, kind = escape(item.stem), item.kind
    emoji = f"<span class=emoji aria-hidden=true>{escape(item.emoji)}</span> " if item.emoji else ""
    overview = item.source.get("overview") if kind == "conversation" else None
    overview_html = f"<p class=overview>{escape(str(overview))}</p>" if overview else ""
    cues = (item.source.get("cues") or []) if kind == "conversation" else []
    if item.audio:
        player = f'<noscript><audio controls preload=none src="{_src(item.audio)}"></audio></noscript>'
    else:
        player = "<p class=no-audio>No audio was stored for this conversation.</p>"
    files = [item.audio] if item.audio else []
    if kind == "conversation":
        files += [f"{item.stem}.vtt", f"{item.stem}.json"]
    links = " ".join(f'<a href="{_src(name)}">{escape(Path(name).suffix[1:].upper())}</a>' for name in files)
    gaps = _gaps_html(item.source.get("gaps") or [])
    transcript = "" if cues or kind != "conversation" else "<p class=no-transcript>No transcript.</p>"
    if cues:
        summary = f"Play and read <span class=count>{len(cues)} lines</span>"
    else:
        summary = "Play" if item.audio else "Details"
    holds = ""
    if item.children:
        listed = ", ".join(
            f'<a href="#{escape(c.stem)}">{escape(f"{c.emoji} {c.title}".strip())}</a>'
            + (f" ({_clock(c.start)})" if c.start else "")
            for c in reversed(item.children)
        )
        holds = f"<p class=holds>{_counted(len(item.children), 'conversation')} in it: {listed}</p>"
    inside = "".join(_article_html(child) for child in item.children)
    inside = f"<div class=inside>{inside}</div>" if inside else ""
    return (
        f'<article id="{stem}" class="item {kind}"><header><h3>{emoji}<a href="#{stem}">{escape(item.title)}</a></h3>'
        f"{_meta_html(item)}</header>{overview_html}{holds}"
        f"<details><summary>{summary}</summary>"
        f"<div class=listen><div class=player>{player}{gaps}<p class=files>Files: {links}</p></div>{transcript}</div>"
        f"</details>{inside}</article>"
    )


def _data_block(uid: str, kind: str, items: list[_Item]) -> str:
    """The page's data: one JSON object whose `items` follow the articles' order, one
    item to a line.  The script reads a line when its article is opened or searched,
    so a year of transcripts is never parsed at once (JSON escapes every newline
    inside a string, so a line is always one whole item)."""
    head = json_for_script({"uid": uid, "kind": kind})[:-1]
    lines = [json_for_script(_item_data(item)) for item in items]
    return head + ',"items":[\n' + ",\n".join(lines) + "\n]}"


def _item_data(item: _Item) -> dict:
    """What the script needs of one article, compactly: its audio file, the words it is
    searched by, and its cues as [start, end, speaker number, text] (a year of
    transcripts is tens of megabytes; repeating key names would add half as much)."""
    speakers: dict[str, int] = {}
    cues = [
        [
            _seconds(cue.get("start")),
            _seconds(cue.get("end")),
            speakers.setdefault(str(cue.get("speaker") or ""), len(speakers)),
            str(cue.get("text") or ""),
        ]
        for cue in ((item.source.get("cues") or []) if item.kind == "conversation" else [])
    ]
    words = [str(item.source.get(key) or "") for key in ("title", "overview", "category")]
    start = _audio_start(item)
    return {
        "stem": item.stem,
        "audio": item.audio,
        "at": round(start.timestamp(), 3) if start else None,  # when its first sample was captured
        "loudness": _loudness(item),
        "words": " ".join(words) if item.kind == "conversation" else item.title,
        "kind": item.kind,
        "speakers": list(speakers),
        "cues": cues,
    }
