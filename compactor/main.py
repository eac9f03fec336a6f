"""The daily compaction, deployed by deploy.sh as the private function omi-audio-compact.

Cloud Scheduler calls it once a day.  It runs `omi-audio compact` on the
bucket: every whole UTC day older than COMPACT_AFTER_DAYS of every uid's
chunks becomes one FLAC object per session and an index, and the chunks are
deleted (see omi_audio/compact.py).  Each day is logged as one JSON line; a
day that fails is left as it was and tried again the next day.

Staged beside it by deploy.sh: the root's modules (but the receiving
function's main.py) and the omi_audio package.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import flask
import functions_framework

import storage
from omi_audio import compact


def log(severity: str, message: str, **fields: object) -> None:
    print(json.dumps({"severity": severity, "message": message, **fields}), flush=True)


@functions_framework.http
def compact_daily(request: flask.Request) -> tuple[dict, int]:
    """Compact the bucket's finished days.

    Args:
        request: the scheduler's call (its body is not read).

    Returns:
        A summary and 200, or 500 when a day failed (the next run tries it again).
    """
    after_days = int(os.environ.get("COMPACT_AFTER_DAYS", compact.DEFAULT_AFTER_DAYS))
    if after_days <= 0:
        return {"compacted": 0, "note": "compaction is off (COMPACT_AFTER_DAYS=0)"}, 200
    store = storage.GcsStore(os.environ["GCS_BUCKET_NAME"])
    before = compact.default_before(datetime.now(UTC).date(), after_days)

    def report(result: compact.DayResult) -> None:
        severity = "ERROR" if result.error else "INFO"
        log(severity, compact.describe(result), uid=result.uid, day=result.day.isoformat(), action=result.action)

    results = compact.compact_store(store, before, report=report)
    failed = sum(1 for result in results if result.error)
    summary = {
        "before": before.isoformat(),
        "days": len(results),
        "compacted": sum(1 for result in results if result.action == "compacted"),
        "failed": failed,
    }
    log("ERROR" if failed else "INFO", "compaction done", **summary)
    return summary, 500 if failed else 200
