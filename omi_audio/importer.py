"""Recover conversations from Omi: read them back through its Developer API and store the missing ones.

    omi-audio import --uid UID [--bucket NAME | --local-dir PATH] [--since T] [--until T]
                     [--api-key-file PATH] [--api-url URL] [--quiet]

Omi never re-sends a conversation that finished while the webhook was down, its
URL wrong or its token rotated half-way, and conversations from before the webhook
was set up were never sent.  Omi's Developer API lists them all
(``GET /v1/dev/user/conversations``, a personal ``omi_dev_`` key with the
``conversations:read`` scope).  Each one whose id the store does not hold yet is
stored beside the webhook's, named and described the same way (its metadata also
says ``source: developer-api``), so export, status and the page read it like any
other.

* The key comes from ``$OMI_API_KEY`` or ``--api-key-file``, never from the command
  line (where ``ps`` and shell history would show it); it is sent only in the
  ``Authorization`` header, only over https (plain http only to this machine), and
  never printed.
* Pages of `PAGE_SIZE` (``limit``/``offset``, ``include_transcript=true``) until a
  short page.  ``--since``/``--until`` become ``start_date``/``end_date``, which the
  API compares with ``created_at`` (when Omi processed a conversation).
* Within the API's limits (100 requests a minute per key, 10,000 a day): when
  ``X-RateLimit-Remaining`` reaches 0 it waits for ``X-RateLimit-Reset``; a 429
  waits for the reset (or backs off); 5xx and connection errors are retried with
  backoff.  A wait longer than `MAX_WAIT_SECONDS` (the daily limit) stops the run.
* Nothing is stored twice: the store's conversation ids are listed once first, and
  an id it holds (from the webhook or an earlier import) is passed over.  So an
  interrupted import resumes by being run again.
* Each conversation is stored exactly as the API sent it: the bytes of its object,
  cut out of the page's JSON array, not re-serialised.

Exit status: 0 when every listed conversation is stored, 4 when the API refuses the
key (401/403), 1 when the API or the store cannot be read or written, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import requests

import storage
from omi_audio import archive, console

SUMMARY = "Recover conversations from Omi's Developer API into the store"
DESCRIPTION = (
    "Store every conversation Omi's Developer API lists that the store does not hold yet, beside the webhook's. "
    "The key comes from $OMI_API_KEY or --api-key-file (make one in the Omi app: Settings, Developer, Create Key, "
    "with conversations:read)."
)

DEFAULT_API_URL = "https://api.omi.me"
LIST_PATH = "/v1/dev/user/conversations"
# The API's own default page size: a larger `limit` might be capped by the server,
# and a capped page would look short and end the listing early.
PAGE_SIZE = 25
# Retries of a 5xx or a dropped connection: 1, 2, 4, 8, 16 s apart (about half a minute).
RETRIES = 5
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# A 429 or an exhausted X-RateLimit-Remaining is waited out up to this long (the
# per-minute limit resets within a minute); a longer wait is the daily limit: the run
# stops and says when to run it again.
MAX_WAIT_SECONDS = 120.0
# Without rate-limit headers (a self-hosted backend may send none) requests are
# spaced to stay under 100 a minute.
UNPACED_INTERVAL_SECONDS = 60 / 100
REQUEST_TIMEOUT_SECONDS = 60.0
STORE_DEADLINE_SECONDS = 60.0
# What the metadata of an imported version says (`archive.IMPORTED_SOURCE`).
SOURCE = archive.IMPORTED_SOURCE
EXIT_KEY_REFUSED = 4
KEY_HELP = (
    "make a key with the conversations:read scope in the Omi app (Settings, Developer, Create Key) "
    "and give it in OMI_API_KEY or --api-key-file"
)


class ImportFailed(Exception):
    """The import stopped; the message says why and what to do.  What was stored stays."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class DeveloperApi:
    """Omi's Developer API for one key: GET with the key, within the rate limits, retried."""

    def __init__(self, base_url: str, key: str, say=console.say) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.trust_env = False  # no ~/.netrc: the key is the only credential sent
        self.say = say
        self.requests = 0
        self._next_allowed = 0.0  # monotonic time before which no request is sent

    def get(self, path: str, params: dict[str, str]) -> bytes:
        """The body of a 200 answer to ``GET path?params``.

        Raises:
            ImportFailed: the key was refused (status 4), the API kept failing, or a
                wait for its rate limit would be longer than MAX_WAIT_SECONDS.
        """
        url = self.base_url + path
        backoff = FIRST_BACKOFF_SECONDS
        failures = 0
        while True:
            pause = self._next_allowed - time.monotonic()
            if pause > MAX_WAIT_SECONDS:
                raise ImportFailed(_limit_reached(pause))
            if pause > 0:
                time.sleep(pause)
            self.requests += 1
            try:
                response = self.session.get(url, params=params, timeout=REQUEST_TIMEOUT_SECONDS, allow_redirects=False)
            except requests.RequestException as exc:
                problem = f"could not reach {url} ({type(exc).__name__})"
                response = None
            if response is not None:
                self._pace(response)
                if response.status_code == 200:
                    return response.content
                if response.status_code in (401, 403):
                    raise ImportFailed(
                        f"the Developer API refused the key ({response.status_code}): {KEY_HELP}", EXIT_KEY_REFUSED
                    )
                if response.status_code == 429:
                    wait = self._reset_wait(response)
                    wait = backoff if wait is None else wait
                    if wait > MAX_WAIT_SECONDS:
                        raise ImportFailed(_limit_reached(wait))
                    self.say(f"rate limit reached: waiting {wait:.0f} s")
                    time.sleep(wait)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                if response.status_code < 500:
                    raise ImportFailed(
                        f"{url} answered {response.status_code}: is --api-url {self.base_url} Omi's API?"
                    )
                problem = f"{url} answered {response.status_code}"
            failures += 1
            if failures > RETRIES:
                raise ImportFailed(f"{problem}, {RETRIES} retries failed: run again later (what is stored stays)")
            self.say(f"{problem}: retrying in {backoff:.0f} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _pace(self, response: requests.Response) -> None:
        """Hold the next request until the limit resets when none is left, or space them without headers."""
        remaining = _int_header(response, "X-RateLimit-Remaining")
        if remaining is None:
            self._next_allowed = time.monotonic() + UNPACED_INTERVAL_SECONDS
        elif remaining <= 0 and response.status_code != 429:
            wait = self._reset_wait(response)
            self._next_allowed = time.monotonic() + (wait if wait is not None else FIRST_BACKOFF_SECONDS)

    @staticmethod
    def _reset_wait(response: requests.Response) -> float | None:
        """Seconds until X-RateLimit-Reset (epoch seconds), else Retry-After; None when neither says."""
        reset = _int_header(response, "X-RateLimit-Reset")
        if reset is not None:
            return max(reset - time.time(), 0.0) + 0.5  # the reset is in whole seconds
        retry_after = _int_header(response, "Retry-After")
        return float(retry_after) if retry_after is not None and retry_after >= 0 else None


def _limit_reached(wait: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=wait)
    return (
        f"the Developer API's request limit (10,000 a day) is used up until {console.when(at)} UTC: "
        "run the import again after that; what is stored stays"
    )


def _int_header(response: requests.Response, name: str) -> int | None:
    try:
        return int(response.headers[name].strip())
    except (KeyError, ValueError):
        return None


def split_array(body: bytes) -> Iterator[bytes]:
    """The exact bytes of each element of the JSON array `body`, in order.

    Raises:
        ValueError: `body` is not a JSON array (UTF-8).
    """
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if text[index : index + 1] != "[":
        raise ValueError("not a JSON array")
    index = _skip_space(text, index + 1)
    if text[index : index + 1] == "]":
        if _skip_space(text, index + 1) != len(text):
            raise ValueError("extra data after the array")
        return
    while True:
        _, end = decoder.raw_decode(text, index)
        yield text[index:end].encode("utf-8")
        index = _skip_space(text, end)
        mark = text[index : index + 1]
        index = _skip_space(text, index + 1)
        if mark == "]":
            if index != len(text):
                raise ValueError("extra data after the array")
            return
        if mark != ",":
            raise ValueError(f"expected ',' or ']' at character {index}")


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def pages(api: DeveloperApi, since: datetime | None, until: datetime | None) -> Iterator[list[bytes]]:
    """Each page of the listing, as its conversations' bytes, until a short page."""
    params = {"limit": str(PAGE_SIZE), "include_transcript": "true"}
    if since is not None:
        params["start_date"] = _api_time(since)
    if until is not None:  # end_date is inclusive; --until is not
        params["end_date"] = _api_time(until - timedelta(microseconds=1))
    offset = 0
    while True:
        body = api.get(LIST_PATH, {**params, "offset": str(offset)})
        try:
            page = list(split_array(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImportFailed(
                f"{api.base_url}{LIST_PATH} answered something that is not a JSON array ({exc})"
            ) from None
        yield page
        if len(page) < PAGE_SIZE:
            return
        offset += len(page)


def _api_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_key(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The API key from --api-key-file, else $OMI_API_KEY; never shown in a message."""
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--api-key-file {args.api_key_file}: cannot read it ({type(exc).__name__})")
        where = f"--api-key-file {args.api_key_file}"
    else:
        key = os.environ.get("OMI_API_KEY", "").strip()
        where = "OMI_API_KEY"
        if not key:
            parser.error(f"no API key: set OMI_API_KEY or give --api-key-file PATH ({KEY_HELP})")
    # A header value with a space or a control character would be refused by the
    # HTTP library with the value (the key) in its message.
    if not key or not all("!" <= character <= "~" for character in key):
        parser.error(f"{where} does not hold one key (printable ASCII, no spaces): {KEY_HELP}")
    return key


def api_url_arg(text: str) -> str:
    """An https:// base URL (plain http only to this machine: the key must not cross a network in clear)."""
    parts = urlsplit(text)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not loopback):
        raise argparse.ArgumentTypeError(f"{text!r} is not an https:// URL (http:// only for localhost)")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r}: give the API's base URL, without a query")
    return text.rstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uid", required=True, type=console.uid_arg, help="the uid to store under, as export takes it")
    console.add_source_arguments(parser)
    parser.add_argument(
        "--since", type=console.time_arg(False), metavar="T", help="conversations Omi processed from T (default: all)"
    )
    parser.add_argument(
        "--until", type=console.time_arg(True), metavar="T", help="... and before T (a date: to its end)"
    )
    parser.add_argument(
        "--api-key-file", type=Path, metavar="PATH", help="file holding the omi_dev_ key (default: $OMI_API_KEY)"
    )
    parser.add_argument(
        "--api-url", type=api_url_arg, default=DEFAULT_API_URL, metavar="URL", help=f"default: {DEFAULT_API_URL}"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    key = read_key(args, parser)
    if args.since and args.until and args.since >= args.until:
        parser.error("--since must be before --until")
    store = console.open_store(args, parser)
    try:
        uid = _uid_to_store_under(store, args.uid)
        held = {info.parts.conversation_id for info in store.list_conversations(uid)}
    except console.UnknownUid as exc:
        console.say(f"error: {exc}")
        return 1
    except Exception as exc:  # the store cannot be read: say so in one line
        console.say(f"error: cannot list {store.location('')}: {exc}")
        return 1

    api = DeveloperApi(args.api_url, key)
    bar = console.progress_bar(None, args.quiet, unit="conversation", desc="importing")
    api.say = lambda message: console.say(message, bar)
    imported = already = unreadable = 0
    try:
        for page in pages(api, args.since, args.until):
            for raw in page:
                try:
                    event = describe(raw)
                except ValueError as exc:
                    unreadable += 1
                    console.say(f"warning: a listed item was not stored: {exc}", bar)
                    continue
                if event.conversation_id in held:
                    already += 1
                else:
                    _store(store, uid, event, raw)
                    held.add(event.conversation_id)
                    imported += 1
                if bar is not None:
                    bar.update(1)
    except ImportFailed as exc:
        console.say(f"error: {exc}", bar)
        return exc.status
    except (storage.StorageUnavailable, storage.StorageRefused) as exc:
        console.say(f"error: storing in {store.location('')} failed ({exc}): run again; what is stored stays", bar)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(
        f"{imported} conversation(s) imported, {already} already stored"
        + (f", {unreadable} not conversations (left out)" if unreadable else "")
        + f"; {api.requests} request(s) to {args.api_url}"
    )
    return 0


def _uid_to_store_under(store: storage.Store, uid: str) -> str:
    """`uid`, or the uid its folder name stands for; a uid the store lacks only into an empty store.

    A typo would otherwise put the conversations where no export looks.
    """
    try:
        return console.resolve_uid(store, uid)
    except console.UnknownUid:
        if store.list_uids():
            raise
        return uid


@dataclass(frozen=True)
class Listed:
    """What storing a listed conversation needs from its JSON (the bytes are stored as sent)."""

    conversation_id: str
    starts_at: datetime | None  # started_at, else created_at, in UTC
    started_at: str | None  # as sent
    finished_at: str | None  # as sent
    title: str | None


# As the function keeps them in a webhook delivery's metadata (conversation.py).
MAX_TITLE_CHARS = 200
MAX_TIME_CHARS = 64


def describe(raw: bytes) -> Listed:
    """The id, start and title of one listed conversation, read as the function reads a delivery.

    Raises:
        ValueError: not a JSON object with an id a name can hold.
    """
    document = json.loads(raw)
    if not isinstance(document, dict) or not storage.is_valid_conversation_id(document.get("id")):
        raise ValueError(f"not a conversation with an id of {storage.CONVERSATION_ID_RULE}")
    structured = document.get("structured")
    title = structured.get("title") if isinstance(structured, dict) else None

    def as_sent(key: str) -> str | None:
        value = document.get(key)
        return value if isinstance(value, str) and len(value) <= MAX_TIME_CHARS else None

    return Listed(
        document["id"],
        archive.parse_time(as_sent("started_at")) or archive.parse_time(as_sent("created_at")),
        as_sent("started_at"),
        as_sent("finished_at"),
        title[:MAX_TITLE_CHARS] if isinstance(title, str) else None,
    )


def _store(store: storage.Store, uid: str, event: Listed, raw: bytes) -> None:
    received_at = datetime.now(UTC)
    metadata = {
        "conversation_id": event.conversation_id,
        "received_at": received_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "source": SOURCE,
    }
    sent = {"started_at": event.started_at, "finished_at": event.finished_at, "title": event.title}
    metadata |= {name: value for name, value in sent.items() if value is not None}
    store.put_conversation(
        uid, event.starts_at or received_at, event.conversation_id, raw, metadata, STORE_DEADLINE_SECONDS
    )
