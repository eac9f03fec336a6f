"""bench/measure.py runs end to end and prints every figure with its goal.

It checks that the benchmark works, not what it measures: in quick mode every figure
comes from a handful of requests, and only `make bench` gives figures to judge.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_mode_prints_every_figure_with_its_goal(tmp_path):
    out = tmp_path / "bench.txt"
    with open(out, "w") as log:
        result = subprocess.run(
            [sys.executable, str(ROOT / "bench/measure.py"), "--quick"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    text = out.read_text()
    assert result.returncode == 0, text
    for figure, goal in [
        ("1. latency", "<= 1.05"),
        ("2. throughput", ">= 0.9"),
        ("3. cold start: import", "<= 10 ms"),
        ("3. cold start: process start", "(report)"),
        ("4. memory: peak RSS growth", "<= 4"),
        ("4. memory: worker's peak RSS", "(report)"),
        ("4. memory: RSS growth", "<= 1 MiB"),
    ]:
        assert any(line.startswith(figure) and goal in line for line in text.splitlines()), (figure, text)
