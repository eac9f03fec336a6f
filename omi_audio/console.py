"""What the omi-audio subcommands share on the command line: where to read, how to
read times and uids, and how to speak to the terminal."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

import names
import storage
from omi_audio.archive import Selection, select_chunks

# What a terminal acts on instead of showing: C0 controls, DEL and C1 controls.  A
# title or an object name holding them could retitle the terminal, clear it or fake
# a line of output.
_TERMINAL_CONTROLS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """`text` as it may reach a terminal: each control character (C0, DEL, C1) replaced by U+FFFD."""
    return _TERMINAL_CONTROLS_RE.sub("\ufffd", text)


def say(message: str, bar=None) -> None:
    """One line on stderr (above the progress bar `bar`, if any), made safe by `terminal_text`."""
    (bar.write if bar is not None else print)(terminal_text(message), file=sys.stderr)


def time_arg(end_of_day: bool) -> Callable[[str], datetime]:
    def parse(text: str) -> datetime:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            day = None
        if day is not None:
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        moment = names.parse_time(text)
        if moment is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an ISO 8601 date or time, e.g. 2025-03-01 or 2025-03-01T14:30:00Z"
            )
        return moment

    parse.__name__ = "time"
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def uid_arg(text: str) -> str:
    """A uid exactly as the sender sends it (a device name may hold spaces)."""
    if not storage.is_valid_uid(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a uid: a uid is {storage.UID_RULE}")
    return text


class UnknownUid(Exception):
    """The store holds no folder for the uid asked for."""


def resolve_uid(store: storage.Store, uid: str) -> str:
    """The uid to read for `uid` as typed, when listing `uid` found nothing.

    A folder name as ``gcloud storage ls`` shows it (``Omi~20DevKit~202``) stands
    for its uid ("Omi DevKit 2"): that uid is returned, with a note.  One listing
    of the store's top-level folders, made only when nothing was found.

    Raises:
        UnknownUid: `uid` is not in the store; the message lists the uids it holds.
    """
    known = store.list_uids()
    if uid in known:
        return uid
    decoded = storage.uid_from_prefix(uid)
    if decoded is not None and decoded != uid and decoded in known:
        say(f"note: {uid!r} is the folder of the uid {decoded!r}; reading that uid")
        return decoded
    shown = ", ".join(repr(name) for name in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    raise UnknownUid(f"unknown uid {uid!r} in {store.location('')}: known: {shown or 'none (nothing stored yet)'}")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--bucket / --local-dir, shared by omi-audio export and omi-audio status."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--bucket", metavar="NAME", help="GCS bucket (default: $GCS_BUCKET_NAME; honours $STORAGE_EMULATOR_HOST)"
    )
    source.add_argument(
        "--local-dir", type=Path, metavar="PATH", help="the function's LOCAL_AUDIO_DIR (default: $LOCAL_AUDIO_DIR)"
    )


def open_store(args: argparse.Namespace, parser: argparse.ArgumentParser) -> storage.Store:
    """The store named by --bucket / --local-dir, else by the function's environment variables."""
    bucket = args.bucket
    local_dir = args.local_dir
    if not bucket and not local_dir:
        bucket = os.environ.get("GCS_BUCKET_NAME", "").strip()
        local_dir = Path(os.environ["LOCAL_AUDIO_DIR"]) if os.environ.get("LOCAL_AUDIO_DIR", "").strip() else None
    if bucket:
        try:
            return storage.GcsStore(bucket)
        except storage.MissingCredentials as exc:
            # The library's own text is a paragraph; its reason matters only for a key file named wrongly.
            key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            reason = f" ({' '.join(str(exc.__cause__).split())})" if key_file else ""
            say(
                f"error: no Google Cloud credentials to read gs://{bucket}{reason}: run `gcloud auth "
                "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key"
            )
            sys.exit(1)
    if local_dir is None:
        parser.error("no source: give --bucket NAME or --local-dir PATH (or set GCS_BUCKET_NAME / LOCAL_AUDIO_DIR)")
    if not local_dir.is_dir():
        parser.error(f"--local-dir {local_dir}: no such directory")
    return storage.LocalStore(local_dir)


def progress_bar(total: int | None, quiet: bool, unit: str = "chunk", desc: str | None = None):
    """A tqdm bar on stderr when it is a terminal, else None; with no total, a running count."""
    if quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with requirements-tools.txt; without it, no bar
        return None
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


class Progress:
    """A progress bar on stderr (`progress_bar`; None when not shown) and warnings printed above it."""

    def __init__(self, total: int | None = None, quiet: bool = True, unit: str = "chunk", desc: str | None = None):
        self.bar = progress_bar(total, quiet, unit, desc)

    @property
    def update(self) -> Callable[[int], None] | None:
        """What to call with the count of things done, or None when no bar is shown."""
        return self.bar.update if self.bar is not None else None

    def warn(self, message: str) -> None:
        say(f"warning: {message}", self.bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_table(rows: Iterable[Sequence[str]], align: str, out: TextIO) -> None:
    """`rows` (the first: headings) in columns two spaces apart, each line without trailing spaces.

    `align` holds ``<`` (left) or ``>`` (right) for each column but the last,
    which is written as it is.
    """
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    for row in rows:
        cells = [f"{cell:{side}{width}}" for cell, side, width in zip(row, align, widths, strict=False)]
        out.write("  ".join([*cells, row[len(align)]]).rstrip() + "\n")


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}.{int((seconds - whole) * 10)}"


def list_with_progress(
    store: storage.Store,
    uid: str,
    since: datetime | None,
    until: datetime | None,
    quiet: bool,
) -> Selection:
    """`select_chunks` with a running count of names listed on a terminal, and warnings on stderr."""
    progress = Progress(None, quiet, unit="name", desc="listing")
    try:
        return select_chunks(store, uid, since, until, progress=progress.update, warn=progress.warn)
    finally:
        progress.close()
