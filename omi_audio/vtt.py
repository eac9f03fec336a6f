"""WebVTT (https://www.w3.org/TR/webvtt1/): a transcript as timed cues, one per line spoken.

Each cue is ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` then ``<v Speaker>text``.  Text is
escaped as the format requires (``&``, ``<`` and ``>`` as character references,
so ``-->`` can never appear in it) and kept on one line (a blank line would end
the cue).  Pure text in, text out: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Line breaks and the other control characters a cue cannot hold on one line.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm`` for `seconds` (not negative), to the nearest millisecond."""
    millis = max(round(seconds * 1000), 0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def one_line(text: str) -> str:
    """`text` with line breaks and control characters as single spaces, trimmed."""
    return " ".join(_CONTROL_RE.sub(" ", text).split())


def escape(text: str) -> str:
    """Cue text as WebVTT holds it: one line, ``&``, ``<``, ``>`` as references."""
    return one_line(text).translate(_ESCAPES)


def document(cues: Iterable[tuple[float, float, str, str]]) -> str:
    """A WebVTT file of `cues`, each (start seconds, end seconds, speaker, text), in the order given."""
    blocks = ["WEBVTT\n"]
    for n, (start, end, speaker, text) in enumerate(cues, 1):
        end = max(end, start)
        voice = escape(speaker) or "Speaker"
        blocks.append(f"{n}\n{timestamp(start)} --> {timestamp(end)}\n<v {voice}>{escape(text)}\n")
    return "\n".join(blocks)
