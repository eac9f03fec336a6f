"""deploy.sh: run with a recording stub gcloud, and its flags checked by the real gcloud."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
RUN_URI = "https://omi-audio-abc123-uc.a.run.app"

STUB = r'''#!PYTHON
"""Stand-in for gcloud: records each call, answers describes from STUB_EXISTING."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
existing = set(filter(None, os.environ.get("STUB_EXISTING", "").split(",")))
with open(os.environ["STUB_LOG"]) as log:
    if any(json.loads(line)[:2] == ["functions", "deploy"] for line in log):
        existing.add("function")  # deployed earlier in this run
if args[:3] == ["config", "get-value", "project"]:
    print(os.environ.get("STUB_PROJECT", ""))
elif "describe" in args:
    kind = {"storage": "bucket", "service-accounts": "sa", "roles": "role", "functions": "function"}[
        args[1] if args[0] in ("iam", "storage") and args[1] != "buckets" else args[0]
    ]
    if kind not in existing:
        sys.exit(1)
    fmt = next((a for a in args if a.startswith("--format=")), "")
    if "WEBHOOK_TOKEN" in fmt:
        print(os.environ.get("STUB_TOKEN", ""))
    elif "uri" in fmt:
        print("RUN_URI")
'''


@pytest.fixture
def stub(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(STUB.replace("PYTHON", sys.executable).replace("RUN_URI", RUN_URI))
    gcloud.chmod(0o755)
    return tmp_path


def deploy(stub: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    log = stub / "calls.jsonl"
    log.unlink(missing_ok=True)
    environ = {
        "PATH": f"{stub / 'bin'}:{os.environ['PATH']}",
        "HOME": str(stub),
        "STUB_LOG": str(log),
        "STUB_PROJECT": "config-project",
        **env,
    }
    result = subprocess.run(
        ["bash", str(DEPLOY), *args], capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def find(calls: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in calls if c[: len(prefix)] == list(prefix)]


def flags(call: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in call if a.startswith("--"))


def test_deploy_sh_is_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (CI installs it)")
    result = subprocess.run(["shellcheck", str(DEPLOY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_first_deploy_creates_a_private_bucket_account_role_and_function(stub):
    result, calls = deploy(stub, GCS_BUCKET_NAME="my-omi-audio", GOOGLE_CLOUD_PROJECT="proj-1")
    assert result.returncode == 0, result.stderr

    (create,) = find(calls, "storage", "buckets", "create")
    assert create[3] == "gs://my-omi-audio"
    assert {"uniform-bucket-level-access", "public-access-prevention"} <= flags(create).keys()
    assert flags(create)["project"] == "proj-1"

    assert find(calls, "iam", "service-accounts", "create")[0][3] == "omi-audio-writer"
    (role,) = find(calls, "iam", "roles", "create")
    assert flags(role)["permissions"] == "storage.objects.create,storage.objects.get"
    (binding,) = find(calls, "storage", "buckets", "add-iam-policy-binding")
    assert binding[3] == "gs://my-omi-audio"  # granted on this bucket, not the project
    assert flags(binding)["member"] == "serviceAccount:omi-audio-writer@proj-1.iam.gserviceaccount.com"
    assert flags(binding)["role"] == "projects/proj-1/roles/omiAudioWriter"
    assert not find(calls, "projects", "add-iam-policy-binding")

    (fn,) = find(calls, "functions", "deploy")
    f = flags(fn)
    assert fn[2] == "omi-audio"
    assert {"gen2", "trigger-http", "allow-unauthenticated"} <= f.keys()
    assert f["entry-point"] == "receive_audio" and f["source"] == "." and f["region"] == "us-central1"
    assert re.fullmatch(r"python3\d+", f["runtime"])
    assert f["service-account"] == "omi-audio-writer@proj-1.iam.gserviceaccount.com"
    for name in ("memory", "cpu", "concurrency", "max-instances", "timeout"):
        assert f[name], name
    env = dict(kv.split("=", 1) for kv in f["set-env-vars"].removeprefix("^|^").split("|"))
    assert env["GCS_BUCKET_NAME"] == "my-omi-audio"
    token = env["WEBHOOK_TOKEN"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", token)

    assert f"{RUN_URI}?token={token}" in result.stdout
    assert "Realtime audio bytes" in result.stdout
    assert "new token" in result.stdout
    assert token not in result.stderr  # the printed commands mask it


def test_every_deploy_flag_has_a_reason_comment():
    text = DEPLOY.read_text()
    for flag in ("allow-unauthenticated", "memory", "cpu", "concurrency", "max-instances", "timeout"):
        assert re.search(rf"^# --{flag}\b.*:", text, re.M), flag


def test_second_deploy_updates_in_place_and_keeps_the_token(stub):
    result, calls = deploy(
        stub,
        GCS_BUCKET_NAME="my-omi-audio",
        GOOGLE_CLOUD_PROJECT="proj-1",
        STUB_EXISTING="bucket,sa,role,function",
        STUB_TOKEN="Existing-Token_0123456789abcdef",
    )
    assert result.returncode == 0, result.stderr
    assert not find(calls, "storage", "buckets", "create")
    assert not find(calls, "iam", "service-accounts", "create")
    assert not find(calls, "iam", "roles", "create")
    assert len(find(calls, "iam", "roles", "update")) == 1
    (fn,) = find(calls, "functions", "deploy")
    assert "WEBHOOK_TOKEN=Existing-Token_0123456789abcdef" in flags(fn)["set-env-vars"]
    assert f"{RUN_URI}?token=Existing-Token_0123456789abcdef" in result.stdout
    assert "new token" not in result.stdout


def test_given_token_and_options_are_used(stub):
    result, calls = deploy(
        stub,
        GCS_BUCKET_NAME="b-1",
        WEBHOOK_TOKEN="My-Own-Token-1234567890",
        REGION="europe-west1",
        FUNCTION_NAME="audio",
        RETENTION_DAYS="30",
        ALLOWED_UIDS="uidA,uidB",
    )
    assert result.returncode == 0, result.stderr
    (fn,) = find(calls, "functions", "deploy")
    f = flags(fn)
    assert (fn[2], f["region"], f["project"]) == ("audio", "europe-west1", "config-project")
    env = dict(kv.split("=", 1) for kv in f["set-env-vars"].removeprefix("^|^").split("|"))
    assert env == {"GCS_BUCKET_NAME": "b-1", "WEBHOOK_TOKEN": "My-Own-Token-1234567890", "ALLOWED_UIDS": "uidA,uidB"}
    (update,) = find(calls, "storage", "buckets", "update")
    assert "lifecycle-file" in flags(update)


def test_retention_days_writes_a_delete_rule(stub):
    # The lifecycle file is removed when deploy.sh exits, so the stub copies it.
    gcloud = stub / "bin" / "gcloud"
    gcloud.write_text(
        gcloud.read_text()
        + "\nfor a in args:\n    if a.startswith('--lifecycle-file='):\n"
        + "        open(os.environ['STUB_LOG'] + '.lifecycle', 'w').write(open(a.split('=', 1)[1]).read())\n"
    )
    result, _ = deploy(stub, GCS_BUCKET_NAME="b-1", RETENTION_DAYS="90")
    assert result.returncode == 0, result.stderr
    rule = json.loads((stub / "calls.jsonl.lifecycle").read_text())
    assert rule == {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 90}}]}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "GCS_BUCKET_NAME"),
        ({"GCS_BUCKET_NAME": "Bad_Bucket!"}, "bucket name"),
        ({"GCS_BUCKET_NAME": "b-1", "STUB_PROJECT": ""}, "GOOGLE_CLOUD_PROJECT"),
        ({"GCS_BUCKET_NAME": "b-1", "WEBHOOK_TOKEN": "has,comma-123456789"}, "no comma"),
        ({"GCS_BUCKET_NAME": "b-1", "RETENTION_DAYS": "soon"}, "RETENTION_DAYS"),
    ],
)
def test_bad_settings_stop_before_changing_anything(stub, env, message):
    result, calls = deploy(stub, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert [c for c in calls if c[:2] != ["config", "get-value"]] == []


def test_dry_run_prints_the_commands_and_runs_none(stub):
    result, calls = deploy(stub, "--dry-run", GCS_BUCKET_NAME="b-1", WEBHOOK_TOKEN="Secret-Token-1234567890")
    assert result.returncode == 0, result.stderr
    assert [c for c in calls if c[:2] != ["config", "get-value"]] == []
    assert "+ gcloud functions deploy omi-audio" in result.stderr
    assert "+ gcloud storage buckets create gs://b-1" in result.stderr
    assert "Secret-Token-1234567890" not in result.stdout + result.stderr


@pytest.mark.skipif(REAL_GCLOUD is None, reason="the Google Cloud CLI is not installed")
def test_real_gcloud_accepts_every_flag_and_stops_at_credentials(stub, tmp_path):
    """Each recorded call, handed to the real gcloud offline with an empty config,
    must get past argument parsing and stop only for lack of credentials."""
    _, calls = deploy(stub, GCS_BUCKET_NAME="my-omi-audio", GOOGLE_CLOUD_PROJECT="proj-1", RETENTION_DAYS="30")
    lifecycle = tmp_path / "lifecycle.json"
    lifecycle.write_text('{"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}')
    config = tmp_path / "gcloud-config"
    config.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(config),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    changing = [c for c in calls if "describe" not in c and c[:2] != ["config", "get-value"]]
    assert len(changing) >= 7
    for call in changing:
        call = [f"--lifecycle-file={lifecycle}" if a.startswith("--lifecycle-file=") else a for a in call]
        result = subprocess.run([REAL_GCLOUD, *call], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert result.returncode != 0
        assert "unrecognized arguments" not in result.stderr and "argument" not in result.stderr.lower(), (
            call,
            result.stderr,
        )
        assert "active account" in result.stderr or "credentials" in result.stderr.lower(), (call, result.stderr)
