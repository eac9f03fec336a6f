"""The omi-audio command as a user runs it: installed into the venv, from any folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OMI_AUDIO, ROOT

from omi_audio import cli

INSTALLED = Path(sys.executable).with_name("omi-audio")


@pytest.mark.skipif(not INSTALLED.exists(), reason="make test installs omi-audio into the venv (pip install -e .)")
def test_the_installed_command_runs_from_any_folder_with_every_subcommand(tmp_path):
    """The console script finds the package and the function's modules it reads through
    (storage, names, wav, conversation), wherever it is started."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()

    help_text = subprocess.run([INSTALLED, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    status = subprocess.run(
        [INSTALLED, "status", "--local-dir", str(recordings)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert help_text.returncode == 0, help_text.stderr
    for command in cli.COMMANDS:
        assert f"    {command} " in help_text.stdout
    assert status.returncode == 3, status.stderr  # read the store, found nothing: stale
    assert "no uid has any chunk" in status.stderr


def test_python_m_omi_audio_is_the_same_command(tmp_path):
    result = subprocess.run([*OMI_AUDIO, "export", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: omi-audio export ")
