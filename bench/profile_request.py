"""Profile `receive_audio` on its request path with py-spy (`make profile`).

Serves the function with the functions-framework CLI into fake-gcs-server on
127.0.0.1, drives it with 16 senders posting 32,000-byte chunks, and samples the
gunicorn worker's threads with py-spy (only the thread holding the GIL, i.e. Python CPU).
Prints where the worker's CPU goes, inclusive and self, as shares of all samples.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import CHUNK_BYTES, SENDERS, FunctionSender, count_run, fake_gcs, pcm, server_env, serving  # noqa: E402


def summarize(collapsed: str, top: int) -> str:
    """Inclusive and self shares per function from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # not a sample line (py-spy may cut the last one short)
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return "no samples"
    lines = [f"{total} samples of the worker's busy threads", "", "inclusive  function"]
    lines += [f"{100 * n / total:8.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self       function"]
    lines += [f"{100 * n / total:8.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``fn (path/to/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({Path(path).parent.name}/{Path(path).name})" if "/" in path else f"{name} ({path})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="chunks to send while sampling")
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="omi-profile-") as tmp, fake_gcs(Path(tmp)) as gcs_server:
        url = gcs_server.url
        from google.cloud import storage as gcs

        os.environ["STORAGE_EMULATOR_HOST"] = url
        gcs.Client().create_bucket("bench-profile")
        with serving("function", server_env(url, "bench-profile"), Path(tmp)) as fn:
            chunk = pcm(CHUNK_BYTES)
            senders = [FunctionSender(fn.port, f"benchprofile{i:02d}", chunk) for i in range(SENDERS)]
            count_run(senders, 200, None, lambda: None)  # warm
            out = Path(tmp) / "profile.txt"
            spy = Path(sys.executable).parent / "py-spy"
            with open(Path(tmp) / "py-spy.log", "ab") as log:
                proc = subprocess.Popen(
                    [str(spy), "record", "--pid", str(fn.worker.pid), "--rate", "500", "--gil"]  # noqa: RUF005
                    + ["--format", "raw", "--output", str(out), "--nonblocking"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                threading.Event().wait(1.0)  # let py-spy attach
                count_run(senders, args.requests, None, lambda: None)
            finally:
                proc.send_signal(2)  # py-spy writes its output on SIGINT
                proc.wait(30)
            collapsed = out.read_text() if out.exists() else ""
            if args.raw:
                args.raw.write_text(collapsed)
            print(summarize(collapsed, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
