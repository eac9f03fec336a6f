"""A stand-in for Omi's Developer API, as /work/shared/OMI_SENDER.md describes it.

``GET /v1/dev/user/conversations`` with ``Authorization: Bearer KEY``; query
``start_date``/``end_date`` (inclusive, compared with ``created_at``), ``limit``
(default 25, capped at `MAX_LIMIT`), ``offset``, ``include_transcript`` (default
false: no transcript).  The answer is a bare JSON array, newest ``created_at``
first; every answer carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``
(epoch seconds) for a fixed window of `window_seconds` holding `per_window`
requests, and past them a 429.  A wrong key gets 401.  `faults` scripts the next
answers: a status code (503, 429, ...) or "drop" (the connection closed unanswered).

The conversations are in the API's shape: times with "Z", transcript segments with
``speaker_name`` and no ``is_user`` (`api_conversation`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LIST_PATH = "/v1/dev/user/conversations"
DEFAULT_LIMIT = 25
MAX_LIMIT = 100


def api_time(moment: datetime) -> str:
    """A time as the Developer API writes it: ISO 8601 with "Z"."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def api_conversation(
    cid: str, started: datetime, seconds: float = 60.0, title: str = "Planning", segments: list[dict] | None = None
) -> dict:
    """A conversation as the Developer API lists it with its transcript."""
    finished = started + timedelta(seconds=seconds)
    if segments is None:
        segments = [
            {"id": f"{cid}-1", "text": "Hello there.", "speaker_id": 1, "speaker_name": "Speaker 1", "start": 1.0,
             "end": 3.5},
            {"id": f"{cid}-2", "text": "Hi!", "speaker_id": 0, "speaker_name": "User", "start": 4.0, "end": 6.0},
        ]  # fmt: skip
    return {
        "id": cid,
        "created_at": api_time(finished + timedelta(seconds=30)),  # processed after it ended
        "started_at": api_time(started),
        "finished_at": api_time(finished),
        "structured": {
            "title": title,
            "overview": f"About {title}.",
            "emoji": "\N{ROCKET}",
            "category": "work",
            "action_items": [],
            "events": [],
        },
        "language": "en",
        "source": "omi",
        "geolocation": None,
        "transcript_segments": segments,
    }


def parse_api_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class OmiApi:
    """The stand-in server on 127.0.0.1; `url` is its base.  Use as a context manager."""

    def __init__(self, key: str, conversations: list[dict], per_window: int = 100, window_seconds: float = 60.0):
        self.key = key
        self.conversations = list(conversations)
        self.per_window = per_window
        self.window_seconds = window_seconds
        self.faults: list[int | str] = []
        self.requests: list[dict] = []  # each: path, query, authorization, status
        self._lock = threading.Lock()
        self._window_start = time.time()
        self._used = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                api._answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OmiApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def statuses(self) -> list[int | str]:
        return [request["status"] for request in self.requests]

    @staticmethod
    def body_of(conversation: dict) -> bytes:
        """The bytes this stand-in sends for `conversation` inside a page."""
        return json.dumps(conversation, ensure_ascii=False, indent=1).encode()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        record = {"path": parts.path, "query": query, "authorization": handler.headers.get("Authorization")}
        with self._lock:
            self.requests.append(record)
            fault = self.faults.pop(0) if self.faults else None
            now = time.time()
            if now - self._window_start >= self.window_seconds:
                self._window_start, self._used = now, 0
            reset = math.ceil(self._window_start + self.window_seconds)
            if fault is None and self._used >= self.per_window:
                fault = 429
            if fault is None or fault == 429:
                self._used += fault is None
            remaining = max(self.per_window - self._used, 0)
        record["status"] = fault or 200
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        limits = {"X-RateLimit-Limit": self.per_window, "X-RateLimit-Remaining": remaining, "X-RateLimit-Reset": reset}
        if handler.headers.get("Authorization") != f"Bearer {self.key}":
            record["status"] = 401
            return self._send(handler, 401, b'{"detail":"Invalid API key"}', limits)
        if fault is not None:
            return self._send(handler, fault, json.dumps({"detail": f"stand-in {fault}"}).encode(), limits)
        if parts.path != LIST_PATH:
            record["status"] = 404
            return self._send(handler, 404, b'{"detail":"Not Found"}', limits)
        self._send(handler, 200, self._page(query), limits)

    def _page(self, query: dict[str, str]) -> bytes:
        chosen = sorted(self.conversations, key=lambda c: c["created_at"], reverse=True)
        if "start_date" in query:
            chosen = [c for c in chosen if parse_api_time(c["created_at"]) >= parse_api_time(query["start_date"])]
        if "end_date" in query:
            chosen = [c for c in chosen if parse_api_time(c["created_at"]) <= parse_api_time(query["end_date"])]
        limit = min(int(query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT)
        offset = int(query.get("offset", 0))
        page = chosen[offset : offset + limit]
        if query.get("include_transcript") != "true":
            page = [{k: v for k, v in c.items() if k != "transcript_segments"} for c in page]
        return b"[\n" + b",\n".join(self.body_of(c) for c in page) + b"\n]"

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, str(value))
        handler.end_headers()
        handler.wfile.write(body)
