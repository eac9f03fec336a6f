"""deploy.sh, run against a stand-in gcloud that keeps the project's state between
runs and serves the deployed function for real (functions-framework on loopback,
storage in fake-gcs-server); every recorded call is then replayed through the real
gcloud, offline, which must accept it up to the credentials step."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from conftest import free_port

import storage

pytestmark = pytest.mark.slow  # each test runs deploy.sh: make test-slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
PROJECT = "proj-1"
SA = f"omi-audio-writer@{PROJECT}.iam.gserviceaccount.com"
SECRET = "omi-audio-webhook-token"
READ_ONLY = ("describe", "list", "get-value", "access")
# What every deploy gives the function besides its bucket (see bench/measure.py).
DEPLOYED_ENV = {"THREADS": "16", "MALLOC_MMAP_THRESHOLD_": "131072", "NO_PROXY": "storage.googleapis.com"}

# The daily compaction: its function, job, accounts and role (all made by default).
COMPACT_FN = "omi-audio-compact"
COMPACTOR = f"omi-audio-compactor@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER = f"omi-audio-scheduler@{PROJECT}.iam.gserviceaccount.com"
WRITER_ROLE = f"projects/{PROJECT}/roles/omiAudioWriter"
COMPACTOR_ROLE = f"projects/{PROJECT}/roles/omiAudioCompactor"
COMPACT_PERMISSIONS = [
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
]
COMPACTED_SUFFIXES = [".flac", ".wav", ".json.gz"]

# The stand-in gcloud (its own file: what it keeps, and where, is said there).
FAKE_GCLOUD = ROOT / "tests" / "fake_gcloud.py"

PYENV_SHIM = 'set -e\n[ -n "$PYENV_DEBUG" ] && set -x\n'

SLEEP = """#!/bin/sh
echo "$1" >> "$STUB_LOG.sleeps"
"""


class Cloud:
    """A stand-in project: run deploy.sh against it, inspect what it holds."""

    def __init__(self, tmp: Path, fake_gcs: str):
        self.tmp = tmp
        self.fake_gcs = fake_gcs
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "gcloud").write_text(f"#!{sys.executable} -S\n" + FAKE_GCLOUD.read_text())
        (self.bin / "sleep").write_text(SLEEP)
        # The other programs deploy.sh starts record the environment they inherit, as gcloud
        # does, and their command line. python3 starts through a bash shim that begins as
        # pyenv's do, so it stops ("unbound variable") under a nounset it inherits.
        for tool, shell, first in (("curl", "/bin/sh", ""), ("python3", "/usr/bin/env bash", PYENV_SHIM)):
            record = f'{{ echo "== {tool}"; env; }} >> "$STUB_LOG.env"\necho "{tool} $*" >> "$STUB_LOG.argv"'
            (self.bin / tool).write_text(f'#!{shell}\n{first}{record}\nexec {shutil.which(tool)} "$@"\n')
        for f in ("gcloud", "sleep", "curl", "python3"):
            (self.bin / f).chmod(0o755)
        self.state_path = tmp / "state.json"
        self.log = tmp / "calls.jsonl"
        self.all_calls: list[list[str]] = []
        self.save({"config_project": PROJECT})

    @property
    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def save(self, state: dict) -> None:
        self.state_path.write_text(json.dumps(state))

    def edit(self, **changes) -> None:
        self.save(self.state | changes)

    def deploy(
        self, *args: str, cwd: Path = ROOT, script: Path = DEPLOY, bash: tuple[str, ...] = (), **env: str
    ) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        self.log.unlink(missing_ok=True)
        environ = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "STUB_LOG": str(self.log),
            "STUB_STATE": str(self.state_path),
            "STORAGE_EMULATOR_HOST": self.fake_gcs,
            **env,
        }
        result = subprocess.run(
            ["bash", *bash, str(script), *args], capture_output=True, text=True, env=environ, cwd=cwd, timeout=180
        )
        calls = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        self.all_calls += calls
        return result, calls

    def inherited(self) -> str:
        """Every environment deploy.sh's children (gcloud, curl, python3) started with, as text."""
        path = self.tmp / "calls.jsonl.env"
        return path.read_text(errors="replace") if path.exists() else ""

    def environments(self) -> list[tuple[str, dict[str, str]]]:
        """Each environment a child of deploy.sh started with: (program, variables)."""
        found: list[tuple[str, dict[str, str]]] = []
        for line in self.inherited().splitlines():
            if line.startswith("== "):
                found.append((line[3:], {}))
            elif found[-1][0] == "gcloud":  # one line of JSON
                found[-1][1].update(json.loads(line))
            elif "=" in line:  # env's NAME=value (a value's later lines are left out)
                name, value = line.split("=", 1)
                found[-1][1][name] = value
        return found

    def command_lines(self) -> list[str]:
        """Every command line deploy.sh started gcloud, curl or python3 with."""
        path = self.tmp / "calls.jsonl.argv"
        others = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [" ".join(["gcloud", *call]) for call in self.all_calls] + others

    def uploaded(self) -> list[str]:
        """The files of the last upload, as Cloud Build would receive them (relative paths)."""
        return self.state["uploads"][-1]

    def function(self, region: str = "us-central1", name: str = "omi-audio") -> dict:
        return self.state["functions"][f"{region}/{name}"]

    def token(self, version: int) -> str:
        return self.state["secrets"][SECRET]["versions"][version - 1]["data"]

    def post(self, token: str, uid: str = "phone", region: str = "us-central1") -> int:
        url = self.function(region)["url"]
        body = b"\x01\x00" * 800  # 0.05 s
        params = {"token": token, "sample_rate": "16000", "uid": uid}
        return requests.post(url, params=params, data=body, timeout=30).status_code

    def stop(self) -> None:
        for pid in self.state.get("pids", []):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def cloud(tmp_path, fake_gcs):
    c = Cloud(tmp_path, fake_gcs)
    yield c
    c.stop()


def find(calls: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in calls if c[: len(prefix)] == list(prefix)]


def flags(call: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in call if a.startswith("--"))


def changing(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if not any(word in c[:4] for word in READ_ONLY)]


def env_of(fn: dict) -> dict[str, str]:
    return fn["serviceConfig"]["environmentVariables"]


def secrets_of(fn: dict) -> dict[str, str]:
    return {r["key"]: r["version"] for r in fn["serviceConfig"]["secretEnvironmentVariables"]}


def fresh(cloud: Cloud, **env: str) -> subprocess.CompletedProcess:
    result, _ = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio", **env)
    assert result.returncode == 0, result.stderr
    return result


def bucket_objects(cloud: Cloud, bucket: str = "my-omi-audio") -> list[str]:
    listing = requests.get(f"{cloud.fake_gcs}/storage/v1/b/{bucket}/o", timeout=10).json()
    return [o["name"] for o in listing.get("items", [])]


# --- lint and text -----------------------------------------------------------------


def test_deploy_sh_is_shellcheck_clean():
    if not shutil.which("shellcheck"):
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is not installed (.ci/run installs it)")
        pytest.skip("shellcheck not installed (CI installs it)")
    result = subprocess.run(["shellcheck", str(DEPLOY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_prints_usage_and_no_code():
    result = subprocess.run(["bash", str(DEPLOY), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage:")
    options = ("--dry-run", "--rotate-token", "--finish-rotation", "--allow-any-uid", "ALLOWED_UIDS", "ALERT_EMAIL")
    for option in options:
        assert option in result.stdout
    assert not re.search(r"^\s*(set -|usage\(\)|\w+=\"?\$)", result.stdout, re.M), result.stdout


def test_every_deploy_flag_has_a_reason_comment():
    text = DEPLOY.read_text()
    for flag in ("allow-unauthenticated", "memory", "cpu", "concurrency", "max-instances", "timeout"):
        assert re.search(rf"^# --{flag}\b.*:", text, re.M), flag


# --- first deploy ------------------------------------------------------------------


def test_first_deploy_creates_everything_and_proves_the_url(cloud, tmp_path):
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio", cwd=tmp_path)  # run from elsewhere
    assert result.returncode == 0, result.stderr
    state = cloud.state

    # The token: one secret version, written from stdin, readable by the function's account only.
    secret = state["secrets"][SECRET]
    assert len(secret["versions"]) == 1
    token = cloud.token(1)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert secret["accessors"] == [f"serviceAccount:{SA}"]
    assert flags(find(calls, "secrets", "create")[0])["data-file"] == "-"
    assert not any(token in arg for call in calls for arg in call), "the token reached a command line"
    assert token not in result.stderr

    bucket = state["buckets"]["my-omi-audio"]
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert bucket["labels"] == {"omi_audio_only": "true"}  # made for the function alone (see retention)
    assert bucket["bindings"] == [
        [f"serviceAccount:{SA}", WRITER_ROLE],
        [f"serviceAccount:{COMPACTOR}", COMPACTOR_ROLE],
    ]
    assert state["roles"]["omiAudioWriter"]["includedPermissions"] == ["storage.objects.create", "storage.objects.get"]
    assert not find(calls, "projects", "add-iam-policy-binding")

    fn = cloud.function()
    sc = fn["serviceConfig"]
    assert env_of(fn) == {"GCS_BUCKET_NAME": "my-omi-audio", **DEPLOYED_ENV}
    assert secrets_of(fn) == {"WEBHOOK_TOKEN": "1"}
    assert (sc["concurrency"], sc["memory"], sc["serviceAccountEmail"]) == ("16", "1Gi", SA)
    (deploy_call,) = find(calls, "functions", "deploy", "omi-audio")
    f = flags(deploy_call)
    # A staged copy of the script's folder (not the caller's): the function's files alone.
    assert f["source"] != str(ROOT)
    assert cloud.uploaded() == sorted(function_files())
    assert {"gen2", "trigger-http", "allow-unauthenticated", "quiet"} <= f.keys()
    assert f["entry-point"] == "receive_audio" and re.fullmatch(r"python3\d+", f["runtime"])

    # Cloud Run's request log (URLs with the token) is excluded for this service only.
    (exclusion,) = state["exclusions"]
    assert exclusion["name"] == "omi-audio-request-urls"
    assert exclusion["filter"] == (
        'resource.type="cloud_run_revision" AND resource.labels.service_name="omi-audio" '
        'AND log_id("run.googleapis.com/requests")'
    )

    # The URL was proven: a test chunk stored (3244 bytes), checked, removed; then printed.
    (check,) = find(calls, "storage", "objects", "describe")
    assert re.fullmatch(r"gs://my-omi-audio/deploy-check/\d{8}T\d{6}\.\d{6}Z\.wav", check[3])
    assert find(calls, "storage", "rm")[0][2] == check[3]
    assert bucket_objects(cloud) == []
    assert f"{fn['url']}?token={token}" in result.stdout
    assert "Deployed and tested" in result.stdout and "Realtime audio bytes" in result.stdout
    assert "Developer Mode -> Conversation events: the same URL" in result.stdout
    assert "new token" in result.stdout
    assert cloud.post(token) == 200
    assert cloud.post("wrong-token-0123456789") == 401


def test_first_deploy_uses_a_given_token_and_settings(cloud):
    result, calls = cloud.deploy(
        GCS_BUCKET_NAME="b-1",
        WEBHOOK_TOKEN="My-Own-Token-1234567890",
        REGION="europe-west1",
        FUNCTION_NAME="audio",
        SERVICE_ACCOUNT="audio-sa-1",
        GOOGLE_CLOUD_PROJECT=PROJECT,
    )
    assert result.returncode == 0, result.stderr
    fn = cloud.function("europe-west1", "audio")
    assert fn["serviceConfig"]["serviceAccountEmail"] == f"audio-sa-1@{PROJECT}.iam.gserviceaccount.com"
    assert cloud.state["secrets"]["audio-webhook-token"]["versions"][0]["data"] == "My-Own-Token-1234567890"
    assert cloud.state["buckets"]["b-1"]["location"] == "EUROPE-WEST1"
    assert "My-Own-Token-1234567890" not in result.stderr + json.dumps(calls)


# --- re-runs -------------------------------------------------------------------------


def test_rerun_months_later_changes_nothing_and_keeps_every_setting(cloud, tmp_path):
    uids = "Omi DevKit 2, Ana's phone,Zoë|x"
    fresh(cloud, ALLOWED_UIDS=uids, RETENTION_DAYS="30", REGION="europe-west1", SERVICE_ACCOUNT="my-writer")
    before = cloud.state
    token = cloud.token(1)

    # Months later, from another folder, with none of the settings given.
    result, calls = cloud.deploy(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Found omi-audio in region europe-west1" in result.stderr
    after = cloud.state
    fn = cloud.function("europe-west1")
    assert env_of(fn) == {"GCS_BUCKET_NAME": "my-omi-audio", **DEPLOYED_ENV, "ALLOWED_UIDS": uids}
    assert secrets_of(fn) == {"WEBHOOK_TOKEN": "1"}
    assert fn["serviceConfig"]["serviceAccountEmail"] == f"my-writer@{PROJECT}.iam.gserviceaccount.com"
    assert after["buckets"]["my-omi-audio"]["lifecycle_config"] == before["buckets"]["my-omi-audio"]["lifecycle_config"]
    assert after["exclusions"] == before["exclusions"] and after["roles"] == before["roles"]
    assert after["scheduler_jobs"] == before["scheduler_jobs"]
    assert after["functions"][f"europe-west1/{COMPACT_FN}"] == before["functions"][f"europe-west1/{COMPACT_FN}"]
    assert after["buckets"]["my-omi-audio"] == before["buckets"]["my-omi-audio"]  # Autoclass, bindings included
    made = [c[:3] for c in changing(calls)]
    assert made == [
        ["storage", "buckets", "add-iam-policy-binding"],  # idempotent grants: the webhook's,
        ["storage", "buckets", "add-iam-policy-binding"],  # the compaction's,
        ["secrets", "add-iam-policy-binding", SECRET],
        ["functions", "deploy", "omi-audio"],
        ["functions", "add-invoker-policy-binding", COMPACT_FN],  # and the scheduler's
        ["storage", "rm", made[-1][2]],  # the test chunk
    ]
    assert "Compaction: every day at 03:17 UTC" in result.stdout
    assert f"?token={token}" in result.stdout and "new token" not in result.stdout
    # The proof chunk went in under the first allowed uid (the only one the function accepts).
    (check,) = find(calls, "storage", "objects", "describe")
    assert "/deploy-check/" not in check[3] and check[3].startswith("gs://my-omi-audio/Omi")
    assert cloud.post(token, uid="Ana's phone", region="europe-west1") == 200
    assert cloud.post(token, uid="stranger", region="europe-west1") == 403


def test_allow_list_is_replaced_when_given_and_removed_only_on_request(cloud):
    fresh(cloud, ALLOWED_UIDS="a1,b2")
    result, _ = cloud.deploy(ALLOWED_UIDS=" c3 ")
    assert result.returncode == 0, result.stderr
    assert env_of(cloud.function())["ALLOWED_UIDS"] == " c3 "
    result, calls = cloud.deploy("--allow-any-uid")
    assert result.returncode == 0, result.stderr
    assert "ALLOWED_UIDS" not in env_of(cloud.function())
    assert "ALLOWED_UIDS" in flags(find(calls, "functions", "deploy")[0])["remove-env-vars"]
    assert cloud.post(cloud.token(1), uid="anyone") == 200


def test_uids_with_every_delimiter_candidate_but_one_reach_the_function_intact(cloud):
    uids = "a|b;c@d#e~f!g%h&i*j+k=v"  # all but ':' of deploy.sh's delimiter candidates
    fresh(cloud, ALLOWED_UIDS=uids)
    assert env_of(cloud.function())["ALLOWED_UIDS"] == uids
    assert flags(find(cloud.all_calls, "functions", "deploy")[0])["update-env-vars"].startswith("^:^")


# --- settings checked before any change ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "GCS_BUCKET_NAME"),
        ((), {"GCS_BUCKET_NAME": "Bad_Bucket!"}, "bucket name"),
        ((), {"GCS_BUCKET_NAME": "b-1", "config_project": ""}, "GOOGLE_CLOUD_PROJECT"),
        ((), {"GCS_BUCKET_NAME": "b-1", "WEBHOOK_TOKEN": "has,comma-123456789"}, "no comma"),
        ((), {"GCS_BUCKET_NAME": "b-1", "RETENTION_DAYS": "soon"}, "RETENTION_DAYS"),
        ((), {"GCS_BUCKET_NAME": "b-1", "REQUEST_LOG": "maybe"}, "REQUEST_LOG"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "  "}, "blank"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "a,,b"}, "empty entry"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "a,"}, "empty entry"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "a,b\tc"}, "control character"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "x" * 129}, "128 bytes"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "é" * 65}, "128 bytes"),
        ((), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "|;@#~!%&*+:"}, "every one of"),
        (("--allow-any-uid",), {"GCS_BUCKET_NAME": "b-1", "ALLOWED_UIDS": "a"}, "contradict"),
        (("--rotate-token", "--finish-rotation"), {"GCS_BUCKET_NAME": "b-1"}, "separate steps"),
        (("--bogus",), {"GCS_BUCKET_NAME": "b-1"}, "unknown argument"),
        ((), {"GCS_BUCKET_NAME": "b-1", "FUNCTION_NAME": "Omi_Audio"}, "FUNCTION_NAME"),
        ((), {"GCS_BUCKET_NAME": "b-1", "REGION": "mars"}, "REGION"),
    ],
)
def test_bad_settings_stop_before_changing_anything(cloud, args, env, message):
    if "config_project" in env:
        cloud.edit(config_project=env.pop("config_project"))
    result, calls = cloud.deploy(*args, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert changing(calls) == []


def test_a_token_given_on_a_plain_rerun_is_refused_not_silently_ignored(cloud):
    fresh(cloud)
    result, calls = cloud.deploy(WEBHOOK_TOKEN="Another-Token-1234567890")
    assert result.returncode != 0 and "--rotate-token" in result.stderr
    assert changing(calls) == []


# --- lookups: only NOT_FOUND means missing ----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "projects describe",
        "services list",
        "functions describe",
        "secrets describe",
        "secrets versions list",
        "storage buckets describe",
        "iam service-accounts describe",
        "iam roles describe",
        "logging sinks describe",
        "scheduler jobs describe",
    ],
)
def test_a_failed_lookup_stops_before_anything_changes(cloud, call):
    fresh(cloud)
    before = cloud.state
    cloud.edit(fail=[{"call": call, "times": 1, "message": "There was a problem refreshing your auth tokens"}])
    result, calls = cloud.deploy()
    assert result.returncode != 0
    assert "problem refreshing" in result.stderr and "Nothing was changed" in result.stderr
    assert changing(calls) == []
    after = cloud.state
    assert after["secrets"] == before["secrets"] and after["functions"] == before["functions"]


def test_a_failed_token_lookup_on_a_new_project_does_not_count_as_a_first_deploy(cloud):
    cloud.edit(fail=[{"call": "secrets describe", "times": 1, "message": "PERMISSION_DENIED: caller lacks access"}])
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0 and "PERMISSION_DENIED" in result.stderr
    assert [c[:2] for c in changing(calls)] == [["services", "enable"]]  # nothing else, no token made
    assert "secrets" not in cloud.state or SECRET not in cloud.state["secrets"]


# --- existing resources -----------------------------------------------------------------


# Uids as senders send them: an Omi uid, device names (escaped in their folder), and
# uids that are one another's prefix or look like a folder name.
RETENTION_UIDS = ["phone", "Omi DevKit 2", "Zoë's Omi", "日本語のデバイス", ".", "a.b", "x~y_z-1", "ph"]
# Every name suffix the function gives: none, then -1 up to its last (-10 and up included).
SEQS = range(storage.MAX_NAME_SUFFIX + 1)
# Receipt times across the years the stamp can hold (zero-padded before year 1000).
STAMPS = [
    datetime(2026, 11, 28, 20, 12, 11, 123456, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 0, tzinfo=UTC),
    datetime(2026, 12, 1, 0, 0, 0, 10, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def audio_names(uids: list[str]) -> list[str]:
    return [storage.object_name(uid, at, seq) for uid in uids for at in STAMPS for seq in SEQS]


def conversation_names(uids: list[str]) -> list[str]:
    """Conversation events, named as the shared design lays them out (never audio)."""
    stamp = storage.name_stamp(STAMPS[0])
    return [f"{storage.uid_prefix(uid)}/conversations/{stamp}_conv~5Fid_{'0' * 32}.json" for uid in uids]


def deleted_by(lifecycle: dict, name: str, age_days: int, custom_days: int | None = None) -> bool:
    """Whether Cloud Storage's lifecycle deletes `name` at `age_days` after its creation and
    `custom_days` after its customTime (None: it has none, as a chunk): a rule applies when
    all its conditions hold (a prefix list and a suffix list each hold when any entry does;
    daysSinceCustomTime never holds for an object without a customTime)."""
    for rule in lifecycle.get("rule", []):
        if rule["action"]["type"] != "Delete":
            continue
        condition = rule["condition"]
        assert set(condition) <= {"age", "daysSinceCustomTime", "matchesPrefix", "matchesSuffix"}, condition
        if condition.get("age", 0) > age_days:
            continue
        if "daysSinceCustomTime" in condition and (
            custom_days is None or condition["daysSinceCustomTime"] > custom_days
        ):
            continue
        if "matchesPrefix" in condition and not any(name.startswith(p) for p in condition["matchesPrefix"]):
            continue
        if "matchesSuffix" in condition and not any(name.endswith(x) for x in condition["matchesSuffix"]):
            continue
        return True
    return False


def lifecycle_of(cloud: Cloud, bucket: str = "my-omi-audio") -> dict:
    return cloud.state["buckets"][bucket].get("lifecycle_config", {})


def existing_bucket(cloud: Cloud, rules: list[dict], **extra) -> None:
    """A bucket deploy.sh did not create (no label), already holding `rules`."""
    bucket = {"location": "US-CENTRAL1", "uniform_bucket_level_access": True, "public_access_prevention": "enforced"}
    cloud.edit(buckets={"my-omi-audio": {**bucket, "lifecycle_config": {"rule": rules}, **extra}})
    requests.post(f"{cloud.fake_gcs}/storage/v1/b?project={PROJECT}", json={"name": "my-omi-audio"}, timeout=10)


def test_retention_in_a_bucket_deploy_sh_made_deletes_every_audio_name_and_no_conversation(cloud):
    fresh(cloud, RETENTION_DAYS="30")
    lifecycle = lifecycle_of(cloud)
    rule, compacted = lifecycle["rule"]
    assert rule["condition"]["age"] == 30 and "matchesPrefix" not in rule["condition"]
    assert compacted["condition"] == {"daysSinceCustomTime": 30, "matchesSuffix": COMPACTED_SUFFIXES}
    ours = audio_names([*RETENTION_UIDS, "deploy-check", "stranger"])  # any uid may write here
    assert len(ours) == 10 * len(STAMPS) * len(SEQS)
    assert all(deleted_by(lifecycle, name, 30) for name in ours)
    assert not any(deleted_by(lifecycle, name, 29) for name in ours)  # not before its age
    kept = [*conversation_names(RETENTION_UIDS), "phone/notes.txt", "phone/a.wav.json", "readme", "x.wav", "Track.WAV"]
    assert not any(deleted_by(lifecycle, name, 10_000) for name in kept)
    # What docs/deploy.md says it matches here: names ending in Z.wav, or in a digit and .wav.
    for name in ours + kept + ["music/Track 2Z.wav", "music/Track 2.wav"]:
        assert deleted_by(lifecycle, name, 30) == bool(re.search(r"(Z|\d)\.wav$", name)), name


def test_retention_in_a_bucket_deploy_sh_did_not_make_deletes_only_the_allowed_uids_audio(cloud):
    other = {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"}, "condition": {"age": 7}}
    existing_bucket(cloud, [other])
    allowed = [uid for uid in RETENTION_UIDS if uid != "ph"]
    result = fresh(cloud, RETENTION_DAYS="30", ALLOWED_UIDS=" , ".join(allowed))
    assert "in the folders" in result.stderr
    lifecycle = lifecycle_of(cloud)
    assert lifecycle["rule"][0] == other
    ours = audio_names(allowed)
    assert all(deleted_by(lifecycle, name, 30) for name in ours)
    assert not any(deleted_by(lifecycle, name, 29) for name in ours)
    stamp = storage.name_stamp(STAMPS[0])
    foreign = [
        "music/Track 2Z.wav",  # matched by suffix alone before
        "music/Track 10.wav",
        f"{stamp}.wav",  # no folder
        f"Omi DevKit 2/{stamp}Z.wav",  # the uid unescaped: not the function's folder
        f"Omi~20DevKit~202-old/{stamp}.wav",
        f"phones/{stamp}.wav",
        f"backup/phone/{stamp}.wav",
        *audio_names(["ph", "stranger", "deploy-check"]),  # uids not allowed ("ph" is a prefix of "phone")
        *conversation_names(allowed),
        "phone/notes.txt",
    ]
    assert not any(deleted_by(lifecycle, name, 10_000) for name in foreign), [
        n for n in foreign if deleted_by(lifecycle, n, 10_000)
    ]

    result, calls = cloud.deploy(RETENTION_DAYS="60", ALLOWED_UIDS="ph")  # replaces only its own rule
    assert result.returncode == 0, result.stderr
    lifecycle = lifecycle_of(cloud)
    assert [r["condition"].get("age", r["condition"].get("daysSinceCustomTime")) for r in lifecycle["rule"]] == [
        7,
        60,
        60,
    ]
    # A uid taken off the list keeps its old audio in the rule; the new one is added.
    assert all(deleted_by(lifecycle, name, 60) for name in audio_names([*allowed, "ph"]))
    assert not any(deleted_by(lifecycle, name, 59) for name in audio_names([*allowed, "ph"]))
    assert not find(calls, "storage", "buckets", "create")

    result, calls = cloud.deploy(ALLOWED_UIDS="ph,Ana")  # the rule follows a new allow-list
    assert result.returncode == 0, result.stderr
    assert all(deleted_by(lifecycle_of(cloud), name, 60) for name in audio_names(["Ana"]))
    result, calls = cloud.deploy()  # and a plain re-run leaves it
    assert result.returncode == 0, result.stderr
    assert not find(calls, "storage", "buckets", "update")

    result, _ = cloud.deploy(RETENTION_DAYS="forever")
    assert result.returncode == 0, result.stderr
    assert lifecycle_of(cloud)["rule"] == [other]


@pytest.mark.parametrize("args", [(), ("--allow-any-uid",)])
def test_retention_without_an_allow_list_in_a_bucket_deploy_sh_did_not_make_is_refused(cloud, args):
    existing_bucket(cloud, [])
    if args:  # a rule for the allowed uids exists; the allow-list is then removed
        fresh(cloud, RETENTION_DAYS="30", ALLOWED_UIDS="phone")
        env = {}
    else:
        env = {"GCS_BUCKET_NAME": "my-omi-audio", "RETENTION_DAYS": "30"}
    before = cloud.state
    result, calls = cloud.deploy(*args, **env)
    assert result.returncode != 0
    assert "retention needs ALLOWED_UIDS" in result.stderr and "--update-labels=omi_audio_only=true" in result.stderr
    assert [c[:2] for c in changing(calls)] in ([], [["services", "enable"]])  # nothing else changed
    assert cloud.state["buckets"] == before["buckets"]
    assert (cloud.state.get("functions") or {}) == (before.get("functions") or {})

    # The owner says the bucket holds only the function's objects: the broad rule is allowed.
    result, calls = cloud.deploy(*args, GCS_BUCKET_NAME="my-omi-audio", RETENTION_DAYS="30")
    assert result.returncode != 0
    state = cloud.state
    state["buckets"]["my-omi-audio"]["labels"] = {"omi_audio_only": "true"}
    cloud.save(state)
    result, calls = cloud.deploy(*args, GCS_BUCKET_NAME="my-omi-audio", RETENTION_DAYS="30")
    assert result.returncode == 0, result.stderr
    assert "matchesPrefix" not in lifecycle_of(cloud)["rule"][0]["condition"]
    assert all(deleted_by(lifecycle_of(cloud), name, 30) for name in audio_names(["stranger"]))


EARLIER_RULE = {
    "action": {"type": "Delete"},
    "condition": {"age": 30, "matchesSuffix": [f"{d}Z.wav" for d in range(10)] + [f"Z-{n}.wav" for n in range(1, 10)]},
}


def test_an_earlier_deploy_sh_retention_rule_is_pointed_out_then_replaced(cloud):
    existing_bucket(cloud, [EARLIER_RULE])
    result = fresh(cloud)  # no allow-list: kept as it is, and said what it does
    assert "ANYWHERE in the bucket" in result.stderr and "misses" in result.stderr
    assert lifecycle_of(cloud)["rule"] == [EARLIER_RULE]
    result, _ = cloud.deploy(ALLOWED_UIDS="phone")
    assert result.returncode == 0, result.stderr
    rule, compacted = lifecycle_of(cloud)["rule"]
    assert rule["condition"]["age"] == 30 and rule["condition"]["matchesPrefix"] == ["phone/"]
    assert compacted["condition"]["daysSinceCustomTime"] == 30 and compacted["condition"]["matchesPrefix"] == ["phone/"]
    assert all(deleted_by(lifecycle_of(cloud), name, 30) for name in audio_names(["phone"]))
    assert not deleted_by(lifecycle_of(cloud), "music/Track 2Z.wav", 30)


def test_the_rule_escapes_uid_folders_exactly_as_the_function_does(cloud):
    """Each allowed uid's folder in the rule is storage.uid_prefix's, byte for byte."""
    existing_bucket(cloud, [])
    uids = ["Zoë", "a b", "~7E", "..", "ÿ", "名前", "naïve café", "emoji 🎙", "-_-", "A.Z"]
    fresh(cloud, RETENTION_DAYS="9", ALLOWED_UIDS=",".join(uids))
    for rule in lifecycle_of(cloud)["rule"]:  # the chunks' rule and the compacted days'
        assert rule["condition"]["matchesPrefix"] == sorted(storage.uid_prefix(u) + "/" for u in uids)


def test_retention_forever_clears_a_lifecycle_holding_only_its_rule(cloud):
    fresh(cloud, RETENTION_DAYS="5")
    result, calls = cloud.deploy(RETENTION_DAYS="forever")
    assert result.returncode == 0, result.stderr
    assert "clear-lifecycle" in flags(find(calls, "storage", "buckets", "update")[0])
    assert "lifecycle_config" not in cloud.state["buckets"]["my-omi-audio"]


def test_an_old_catch_all_delete_rule_is_kept_and_pointed_out(cloud):
    old = {"action": {"type": "Delete"}, "condition": {"age": 90}}
    fresh(cloud)
    state = cloud.state
    state["buckets"]["my-omi-audio"]["lifecycle_config"] = {"rule": [old]}
    cloud.save(state)
    result, _ = cloud.deploy(RETENTION_DAYS="30")
    assert result.returncode == 0, result.stderr
    assert "EVERY object older than 90 days" in result.stderr
    assert cloud.state["buckets"]["my-omi-audio"]["lifecycle_config"]["rule"][0] == old


def test_a_deleted_role_is_restored_and_wrong_permissions_reset(cloud):
    fresh(cloud)
    state = cloud.state
    state["roles"]["omiAudioWriter"] = {"deleted": True, "includedPermissions": ["storage.objects.delete"]}
    cloud.save(state)
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert "was deleted; restoring it" in result.stderr
    assert find(calls, "iam", "roles", "undelete") and find(calls, "iam", "roles", "update")
    assert cloud.state["roles"]["omiAudioWriter"] == {
        "includedPermissions": ["storage.objects.create", "storage.objects.get"]
    }


def test_a_disabled_service_account_is_reported_before_any_change(cloud):
    fresh(cloud)
    state = cloud.state
    state["sas"][SA]["disabled"] = True
    cloud.save(state)
    result, calls = cloud.deploy()
    assert result.returncode != 0
    assert f"service account {SA} is disabled" in result.stderr and "service-accounts enable" in result.stderr
    assert changing(calls) == []


def test_iam_propagation_is_retried_with_backoff(cloud):
    cloud.edit(fail=[{"call": "buckets add-iam-policy-binding", "times": 3, "message": "INVALID_ARGUMENT: no such SA"}])
    result = fresh(cloud)
    assert (cloud.tmp / "calls.jsonl.sleeps").read_text().split() == ["2", "4", "8"]
    assert "IAM may still be propagating" in result.stderr


def test_iam_propagation_gives_up_with_a_message(cloud):
    cloud.edit(fail=[{"call": "buckets add-iam-policy-binding", "times": 99, "message": "INVALID_ARGUMENT: nope"}])
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0 and "gave up after 6 attempts" in result.stderr
    assert len(find(calls, "storage", "buckets", "add-iam-policy-binding")) == 6


def legacy_deployment(cloud: Cloud, token: str) -> None:
    """What an earlier deploy.sh left: the token in a plain variable, no Secret Manager."""
    port = free_port()
    cloud.edit(
        services=[f"{api}.googleapis.com" for api in ("cloudfunctions", "run", "cloudbuild", "storage", "iam")],
        functions={
            "us-central1/omi-audio": {
                "name": f"projects/{PROJECT}/locations/us-central1/functions/omi-audio",
                "url": f"http://127.0.0.1:{port}",
                "port": port,
                "serviceConfig": {
                    "serviceAccountEmail": SA,
                    "environmentVariables": {"GCS_BUCKET_NAME": "my-omi-audio", "WEBHOOK_TOKEN": token},
                },
            }
        },
    )


def test_a_token_kept_by_an_earlier_deploy_sh_in_plain_text_is_carried_over(cloud):
    old_token = "Old-Plain-Token-0123456789abcdef"
    legacy_deployment(cloud, old_token)
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert cloud.token(1) == old_token
    fn = cloud.function()
    assert "WEBHOOK_TOKEN" not in env_of(fn) and secrets_of(fn) == {"WEBHOOK_TOKEN": "1"}
    assert f"?token={old_token}" in result.stdout and "--rotate-token" in result.stdout
    assert not any(old_token in a for c in calls for a in c)
    assert len(cloud.state["exclusions"]) == 1  # an upgrade gets the request-log exclusion too


def test_an_unusable_plain_text_token_must_be_replaced_to_upgrade(cloud):
    legacy_deployment(cloud, "short,token")
    result, calls = cloud.deploy()
    assert result.returncode != 0 and "not URL-safe" in result.stderr
    assert [c[:2] for c in changing(calls)] == [["services", "enable"]]
    result, _ = cloud.deploy(WEBHOOK_TOKEN="Fresh-Token-0123456789abcdef")
    assert result.returncode == 0, result.stderr
    assert cloud.token(1) == "Fresh-Token-0123456789abcdef"


# --- the request log ----------------------------------------------------------------


def test_request_log_choice_is_kept_until_changed(cloud):
    fresh(cloud, REQUEST_LOG="keep")
    assert cloud.state.get("exclusions", []) == []
    result, calls = cloud.deploy()  # a re-run keeps the choice
    assert result.returncode == 0, result.stderr
    assert cloud.state["exclusions"] == [] and not find(calls, "logging", "sinks", "update")
    cloud.deploy(REQUEST_LOG="exclude")
    assert [e["name"] for e in cloud.state["exclusions"]] == ["omi-audio-request-urls"]
    result, calls = cloud.deploy()
    assert not find(calls, "logging", "sinks", "update")
    result, calls = cloud.deploy(REQUEST_LOG="keep")
    assert cloud.state["exclusions"] == [] and "token included" in result.stderr


# --- the alert ---------------------------------------------------------------------------

METRIC = "omi-audio-stored"
NOT_VISIBLE_YET = (
    'NOT_FOUND: Cannot find metric(s) that match type = "logging.googleapis.com/user/omi-audio-stored". '
    "If a metric was created recently, it could take up to 10 minutes to become available. Please try again soon."
)


def alert_of(cloud: Cloud) -> tuple[dict | None, list[dict], list[dict]]:
    """The project's log-based metric, email channels and alerting policies."""
    state = cloud.state
    return state.get("log_metrics", {}).get(METRIC), state.get("channels", []), state.get("policies", [])


def alert_calls(calls: list[list[str]]) -> list[list[str]]:
    """The calls that read or change the alert."""
    return [c for c in calls if "monitoring" in c[:2] or c[:2] == ["logging", "metrics"]]


def window_of(condition: dict) -> str:
    return condition["conditionThreshold"]["aggregations"][0]["alignmentPeriod"]


def test_alert_email_makes_one_metric_channel_and_policy_that_watch_this_function(cloud):
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio", ALERT_EMAIL="you@example.com")
    assert result.returncode == 0, result.stderr
    assert "monitoring.googleapis.com" in cloud.state["services"]
    metric, channels, policies = alert_of(cloud)
    assert 'resource.labels.service_name="omi-audio"' in metric["filter"]
    assert metric["metricDescriptor"]["labels"][0]["key"] == "kind"
    (channel,) = channels
    assert (channel["type"], channel["labels"]) == ("email", {"email_address": "you@example.com"})
    (policy,) = policies
    assert policy["notificationChannels"] == [channel["name"]] and policy["combiner"] == "OR"
    no_audio, no_audio_beside_conversations = policy["conditions"]
    assert window_of(no_audio) == "86400s"  # ALERT_AFTER's default, 24 h
    assert no_audio["conditionThreshold"]["evaluationMissingData"] == "EVALUATION_MISSING_DATA_ACTIVE"
    assert window_of(no_audio_beside_conversations) == "3600s"
    assert "denominatorFilter" in no_audio_beside_conversations["conditionThreshold"]
    assert "mails you@example.com when no audio chunk is stored for 24 h" in result.stdout
    # The metric is there before the function's test chunk, which it counts; the policy
    # comes after that chunk, so it starts with data.
    order = [" ".join(c[:3]) for c in changing(calls)]
    assert order.index("logging metrics create") < order.index("functions deploy omi-audio")
    assert order.index("storage rm " + find(calls, "storage", "rm")[0][2]) < order.index("alpha monitoring policies")


def test_an_alert_is_kept_on_a_rerun_and_changed_only_when_a_setting_changes(cloud):
    fresh(cloud, ALERT_EMAIL="you@example.com")
    metric, (channel,), (policy,) = alert_of(cloud)

    for env in ({}, {"ALERT_EMAIL": "you@example.com"}):  # with or without the setting: nothing changes
        result, calls = cloud.deploy(**env)
        assert result.returncode == 0, result.stderr
        assert [c for c in alert_calls(calls) if c in changing(calls)] == []
        assert alert_of(cloud) == (metric, [channel], [policy])
    assert alert_calls(calls) and not alert_calls(cloud.deploy()[1])  # without it, not even read

    result, calls = cloud.deploy(ALERT_AFTER="12h")  # the address is kept
    assert result.returncode == 0, result.stderr
    _, channels, (updated,) = alert_of(cloud)
    assert channels == [channel] and updated["name"] == policy["name"]
    assert window_of(updated["conditions"][0]) == "43200s" and "for 12 h" in result.stdout

    result, calls = cloud.deploy(ALERT_EMAIL="new@example.com")  # the wait is kept
    assert result.returncode == 0, result.stderr
    _, (moved,), (kept,) = alert_of(cloud)
    assert moved["name"] == channel["name"] and moved["labels"]["email_address"] == "new@example.com"
    assert kept == updated and not find(calls, "alpha", "monitoring", "policies", "update")


def test_without_alert_email_no_alert_is_made_and_cloud_monitoring_stays_off(cloud):
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode == 0, result.stderr
    assert alert_calls(calls) == [] and "monitoring.googleapis.com" not in cloud.state["services"]
    assert alert_of(cloud) == (None, [], [])
    assert "Alert:" not in result.stdout


def test_an_alert_is_removed_only_when_asked(cloud):
    fresh(cloud, ALERT_EMAIL="you@example.com")
    made = alert_of(cloud)
    fresh(cloud)
    assert alert_of(cloud) == made

    result, calls = cloud.deploy(ALERT_EMAIL="none")
    assert result.returncode == 0, result.stderr
    assert alert_of(cloud) == (None, [], [])
    assert [c[:4] for c in alert_calls(changing(calls))] == [
        ["alpha", "monitoring", "policies", "delete"],  # first: it is what mails
        ["beta", "monitoring", "channels", "delete"],
        ["logging", "metrics", "delete", METRIC],
    ]
    assert "Alert: none" in result.stdout
    result, calls = cloud.deploy(ALERT_EMAIL="none")
    assert result.returncode == 0 and "no alert for omi-audio to remove" in result.stderr
    assert alert_calls(changing(calls)) == []


def test_a_dry_run_lists_the_alert_and_changes_nothing(cloud):
    fresh(cloud)
    result, calls = cloud.deploy("--dry-run", ALERT_EMAIL="you@example.com", ALERT_AFTER="6h")
    assert result.returncode == 0, result.stderr
    assert changing(calls) == []
    for line in (
        "+ gcloud services enable monitoring.googleapis.com",
        f"+ gcloud logging metrics create {METRIC}",
        "+ gcloud beta monitoring channels create",
        "+ gcloud alpha monitoring policies create",
    ):
        assert line in result.stderr, line
    assert "mails you@example.com when no audio chunk is stored for 6 h" in result.stdout

    fresh(cloud, ALERT_EMAIL="you@example.com")
    (policy,) = alert_of(cloud)[2]
    result, calls = cloud.deploy("--dry-run", ALERT_AFTER="90m")
    assert result.returncode == 0 and changing(calls) == []
    assert f"+ gcloud alpha monitoring policies update {policy['name']}" in result.stderr
    assert "channels create" not in result.stderr and "channels update" not in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALERT_EMAIL": "you"}, "not an email address"),
        ({"ALERT_EMAIL": "a@example.com,b@example.com"}, "not an email address"),
        ({"ALERT_EMAIL": "you@example.com", "ALERT_AFTER": "30m"}, "1h to 25h"),
        ({"ALERT_EMAIL": "you@example.com", "ALERT_AFTER": "26h"}, "at most 25 hours"),
        ({"ALERT_EMAIL": "you@example.com", "ALERT_AFTER": "soon"}, "1h to 25h"),
        ({"ALERT_EMAIL": "none", "ALERT_AFTER": "2h"}, "contradict"),
        ({"ALERT_AFTER": "12h"}, "set ALERT_EMAIL"),  # no alert yet to change
    ],
)
def test_bad_alert_settings_stop_before_changing_anything(cloud, env, message):
    fresh(cloud)
    result, calls = cloud.deploy(**env)
    assert result.returncode != 0 and message in result.stderr
    assert changing(calls) == []


@pytest.mark.parametrize("call", ["logging metrics describe", "monitoring channels list", "monitoring policies list"])
def test_a_failed_alert_lookup_stops_before_anything_changes(cloud, call):
    fresh(cloud, ALERT_EMAIL="you@example.com")
    made = alert_of(cloud)
    cloud.edit(fail=[{"call": call, "times": 1, "message": "There was a problem refreshing your auth tokens"}])
    result, calls = cloud.deploy(ALERT_EMAIL="new@example.com", ALERT_AFTER="2h")
    assert result.returncode != 0 and "Nothing was changed" in result.stderr
    assert changing(calls) == [] and alert_of(cloud) == made


def test_a_metric_cloud_monitoring_does_not_see_yet_is_waited_for(cloud):
    cloud.edit(fail=[{"call": "monitoring policies create", "times": 2, "message": NOT_VISIBLE_YET}])
    result, _ = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio", ALERT_EMAIL="you@example.com")
    assert result.returncode == 0, result.stderr
    assert (cloud.tmp / "calls.jsonl.sleeps").read_text().split() == ["60", "60"]
    assert len(alert_of(cloud)[2]) == 1 and "up to 10 minutes" in result.stderr


def test_a_policy_that_fails_keeps_the_url_back_and_a_rerun_finishes_the_alert(cloud):
    cloud.edit(fail=[{"call": "monitoring policies create", "times": 1, "message": "PERMISSION_DENIED: no"}])
    result, _ = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio", ALERT_EMAIL="you@example.com")
    assert result.returncode != 0 and "run deploy.sh again to finish the alert" in result.stderr
    assert "alert email channel for you@example.com" in result.stderr  # in place so far
    assert "?token=" not in result.stdout
    result, calls = cloud.deploy(ALERT_EMAIL="you@example.com")
    assert result.returncode == 0, result.stderr
    metric, channels, policies = alert_of(cloud)
    assert metric and len(channels) == 1 and len(policies) == 1
    assert [c[:4] for c in alert_calls(changing(calls))] == [["alpha", "monitoring", "policies", "create"]]


def test_a_second_channel_or_policy_for_the_function_is_removed(cloud):
    """Two of each (say, a create whose answer was lost, then a re-run): one is kept."""
    fresh(cloud, ALERT_EMAIL="you@example.com")
    state = cloud.state
    state["channels"].append({**state["channels"][0], "name": f"projects/{PROJECT}/notificationChannels/7"})
    state["policies"].append({**state["policies"][0], "name": f"projects/{PROJECT}/alertPolicies/8"})
    state["policies"][1]["notificationChannels"] = [f"projects/{PROJECT}/notificationChannels/7"]
    cloud.save(state)
    result, _ = cloud.deploy(ALERT_EMAIL="you@example.com")
    assert result.returncode == 0, result.stderr
    _, (channel,), (policy,) = alert_of(cloud)
    assert policy["name"] != f"projects/{PROJECT}/alertPolicies/8"
    assert policy["notificationChannels"] == [channel["name"]] != [f"projects/{PROJECT}/notificationChannels/7"]


def logging_filter_matches(query: str, entry: dict) -> bool:
    """Cloud Logging's query language, the part the alert's metric uses: comparisons
    joined by AND, each `field="text"` (case-insensitive), `field=number` or
    `field=~"RE2 regular expression"` (a search, anchored only by ^ and $)."""
    for term in query.split(" AND "):
        match = re.fullmatch(r'([\w.]+)(=~|=)("(?:[^"\\]|\\.)*"|\d+)', term)
        assert match, f"not evaluated here: {term}"
        path, op, literal = match.groups()
        found: object = entry
        for part in path.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if not literal.startswith('"'):
            if type(found) not in (int, float) or found != int(literal):
                return False
        elif not isinstance(found, str):
            return False
        elif op == "=~" and not re.search(json.loads(literal), found):
            return False
        elif op == "=" and found.lower() != json.loads(literal).lower():
            return False
    return True


def extracted_label(extractor: str, entry: dict) -> str | None:
    """A log-based metric's REGEXP_EXTRACT(field, "re") label: the first group, or none."""
    match = re.fullmatch(r'REGEXP_EXTRACT\(jsonPayload\.(\w+), ("(?:[^"\\]|\\.)*")\)', extractor)
    assert match, extractor
    found = re.search(json.loads(match.group(2)), entry["jsonPayload"].get(match.group(1), ""))
    return found.group(1) if found else None


def test_the_alert_counts_exactly_the_lines_main_writes_for_stored_chunks_and_conversations(
    cloud, client, local_dir, monkeypatch, capsys
):
    """The metric's filter and label, evaluated on the log lines the function writes:
    each chunk stored counts as "stored", each conversation event stored (or stored
    before) as "conversation", and nothing else counts; the policy's conditions ask
    for exactly those labels."""
    fresh(cloud, ALERT_EMAIL="you@example.com")
    metric, _, (policy,) = alert_of(cloud)
    monkeypatch.setenv("WEBHOOK_TOKEN", "Local-Token-0123456789")
    monkeypatch.setenv("ALLOWED_UIDS", "phone")
    audio = {"content_type": "application/octet-stream", "data": b"\x01\x00" * 1600}
    conversation = json.dumps(
        {
            "id": "conv-1",
            "started_at": "2026-11-30T14:00:00+00:00",
            "finished_at": "2026-11-30T14:05:00+00:00",
            "structured": {"title": "A talk", "overview": "About things"},
            "transcript_segments": [{"text": "hello", "speaker": "SPEAKER_00", "start": 0.0, "end": 1.0}],
        }
    )
    posts = [
        ("stored", "?token=Local-Token-0123456789&sample_rate=16000&uid=phone", audio, {"Idempotency-Key": "k-1"}),
        (None, "?token=Local-Token-0123456789&sample_rate=16000&uid=phone", audio, {"Idempotency-Key": "k-1"}),
        ("conversation", "?token=Local-Token-0123456789&uid=phone", {"json": json.loads(conversation)}, {}),
        ("conversation", "?token=Local-Token-0123456789&uid=phone", {"json": json.loads(conversation)}, {}),
        (None, "?token=Local-Token-0123456789&uid=phone", {"json": {"segments": [], "session_id": "s"}}, {}),
        (None, "?token=Local-Token-0123456789&sample_rate=16000&uid=phone", {"data": b""}, {}),
        (None, "?token=wrong-token-0123456789&sample_rate=16000&uid=phone", audio, {}),
        (None, "?token=Local-Token-0123456789&sample_rate=16000&uid=stranger", audio, {}),
        (None, "?token=Local-Token-0123456789&sample_rate=1&uid=phone", audio, {}),
    ]
    expected, lines = [], []
    for kind, query, body, headers in posts:
        capsys.readouterr()
        client.post("/" + query, headers=headers, **body)
        (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
        lines.append(line)
        expected.append(kind)
    # A write that finds its own earlier attempt's object logs this instead of "stored".
    lines.append({**lines[0], "message": "stored (found from an earlier attempt)"})
    expected.append("stored")

    counted = []
    for line in lines:
        resource = {"type": "cloud_run_revision", "labels": {"service_name": "omi-audio"}}
        entry = {"resource": resource, "jsonPayload": line}
        matched = logging_filter_matches(metric["filter"], entry)
        # A line the filter matches counts, under its label ("" if the extractor finds none).
        counted.append((extracted_label(metric["labelExtractors"]["kind"], entry) or "") if matched else None)
        other_function = {"resource": {**resource, "labels": {"service_name": "other"}}, "jsonPayload": line}
        assert not logging_filter_matches(metric["filter"], other_function)
    assert counted == expected, [line["message"] for line in lines]
    wanted = {
        re.search(r'metric\.label\.kind="(\w+)"', c["conditionThreshold"]["filter"]).group(1)
        for c in policy["conditions"]
    }
    assert wanted == {"stored", "conversation"}


# --- rotation -----------------------------------------------------------------------------


def test_rotation_never_refuses_the_url_the_app_holds(cloud):
    """Chunks flow through every step of a rotation; the app switches URL midway."""
    fresh(cloud)
    old = cloud.token(1)
    app_token = old
    statuses = [cloud.post(app_token)]

    result, calls = cloud.deploy("--rotate-token")
    assert result.returncode == 0, result.stderr
    new = cloud.token(2)
    assert new != old and f"?token={new}" in result.stdout and "--finish-rotation" in result.stdout
    assert secrets_of(cloud.function()) == {"WEBHOOK_TOKEN": "2", "WEBHOOK_TOKEN_PREVIOUS": "1"}
    assert len(find(calls, "storage", "objects", "describe")) == 2  # both tokens proven
    assert not any(new in a for c in calls for a in c)
    statuses += [cloud.post(app_token), cloud.post(app_token)]  # the app still has the old URL

    result, calls = cloud.deploy()  # a plain re-run mid-rotation keeps both
    assert result.returncode == 0, result.stderr
    assert secrets_of(cloud.function()) == {"WEBHOOK_TOKEN": "2", "WEBHOOK_TOKEN_PREVIOUS": "1"}
    assert "rotation is in progress" in result.stdout and not find(calls, "secrets", "versions", "add")
    statuses.append(cloud.post(app_token))

    result, calls = cloud.deploy("--rotate-token")  # again: completes, adds nothing
    assert result.returncode == 0, result.stderr
    assert len(cloud.state["secrets"][SECRET]["versions"]) == 2 and "already in progress" in result.stderr

    app_token = new  # the user pastes the new URL
    statuses += [cloud.post(app_token), cloud.post(app_token)]

    result, calls = cloud.deploy("--finish-rotation")
    assert result.returncode == 0, result.stderr
    assert secrets_of(cloud.function()) == {"WEBHOOK_TOKEN": "2"}
    assert [v["state"] for v in cloud.state["secrets"][SECRET]["versions"]] == ["DISABLED", "ENABLED"]
    assert "Rotation finished" in result.stdout and f"?token={new}" in result.stdout
    statuses += [cloud.post(app_token), cloud.post(app_token)]

    assert statuses == [200] * len(statuses)
    assert cloud.post(old) == 401  # the old URL is dead now

    result, calls = cloud.deploy("--finish-rotation")  # nothing left to finish: harmless
    assert result.returncode == 0 and "No rotation in progress" in result.stderr


def test_an_interrupted_rotation_resumes_with_both_tokens(cloud):
    fresh(cloud)
    cloud.edit(fail=[{"call": "functions deploy", "times": 1, "message": "UNAVAILABLE: try again"}])
    result, _ = cloud.deploy("--rotate-token")
    assert result.returncode != 0
    assert f"token: secret {SECRET} version 2" in result.stderr
    assert secrets_of(cloud.function()) == {"WEBHOOK_TOKEN": "1"}
    result, _ = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert secrets_of(cloud.function()) == {"WEBHOOK_TOKEN": "2", "WEBHOOK_TOKEN_PREVIOUS": "1"}
    assert cloud.post(cloud.token(1)) == 200 and cloud.post(cloud.token(2)) == 200


# --- failures midway, and the proof ------------------------------------------------------


def test_a_failure_midway_says_what_exists_and_a_rerun_resumes(cloud):
    cloud.edit(fail=[{"call": "functions deploy", "times": 1, "message": "FAILED_PRECONDITION: build failed"}])
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0
    err = result.stderr
    assert "In place so far" in err
    for made in ("bucket gs://my-omi-audio", f"service account {SA}", f"secret {SECRET} version 1", "custom role"):
        assert made in err, made
    assert "run the same command again" in err
    assert "roles/cloudbuild.builds.builder" in err and "123456789012-compute@developer" in err
    assert "?token=" not in result.stdout
    token = cloud.token(1)

    result, calls = cloud.deploy()  # GCS_BUCKET_NAME not even needed? it is: the function never existed
    assert result.returncode != 0 and "GCS_BUCKET_NAME" in result.stderr
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode == 0, result.stderr
    # Nothing made twice (the compaction's job comes after the function, so first now).
    assert not [c for c in calls if "create" in c[:3] and c[:2] != ["scheduler", "jobs"]]
    assert cloud.token(1) == token and f"?token={token}" in result.stdout


@pytest.mark.parametrize(
    ("broken", "status", "cause", "waits"),
    [
        ("no-server", "HTTP 000", "does not answer", ["5", "15", "45"]),  # may be starting: retried
        ("wrong-token", "HTTP 401", "does not hold token", []),  # retrying cannot help
    ],
)
def test_a_url_that_fails_its_test_chunk_is_not_printed(cloud, broken, status, cause, waits):
    cloud.edit(**{"break": broken})
    result, _ = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0
    assert status in result.stderr and cause in result.stderr
    assert "Paste this URL" not in result.stdout
    assert cloud.token(1) not in result.stdout + result.stderr
    assert "run deploy.sh again" in result.stderr
    sleeps = cloud.tmp / "calls.jsonl.sleeps"
    assert (sleeps.read_text().split() if sleeps.exists() else []) == waits


def test_a_5xx_from_the_test_chunk_names_iam_propagation(cloud):
    cloud.edit(**{"break": "storage-down"})  # as when the bucket grant has not reached storage yet
    result, _ = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0
    assert "HTTP 5" in result.stderr and "IAM still propagating" in result.stderr
    assert len((cloud.tmp / "calls.jsonl.sleeps").read_text().split()) == 3  # retried before giving up


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("object-missing", "is not in the bucket"),  # answered 200, but nothing stored
        ("object-cut", "not the 3244 of the test chunk"),  # stored, but not all of it
    ],
)
def test_a_test_chunk_missing_from_the_bucket_or_cut_short_keeps_the_url_back(cloud, broken, message):
    cloud.edit(**{"break": broken})
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Paste this URL" not in result.stdout and "?token=" not in result.stdout
    assert cloud.token(1) not in result.stdout + result.stderr
    assert find(calls, "storage", "objects", "describe") and not find(calls, "storage", "rm")


# --- secrets under tracing, and in child processes ----------------------------------------


# How a caller's shell can trace every line (xtrace) or export every variable (allexport).
CALLERS = {
    "plain": ((), {}),
    "bash -x": (("-x",), {}),
    "bash -a": (("-a",), {}),
    "SHELLOPTS=xtrace": ((), {"SHELLOPTS": "xtrace"}),
    "SHELLOPTS=allexport": ((), {"SHELLOPTS": "allexport"}),
    "SHELLOPTS=allexport:xtrace": ((), {"SHELLOPTS": "allexport:xtrace"}),
    "BASH_ENV with set -a": ((), {"BASH_ENV": "set -a\n"}),  # the file's text; it runs before deploy.sh
}
DEPLOY_SH_OPTIONS = {"errexit", "nounset", "pipefail", "allexport"}


@pytest.mark.parametrize("caller", CALLERS)
def test_no_token_reaches_a_child_a_trace_or_a_command_line_however_the_shell_is_set(cloud, tmp_path, caller):
    """Every token deploy.sh handles (carried over from plain text, given, each read back to
    prove the URL) stays out of every child's environment and command line and out of
    stderr, and deploy.sh's own options reach no child, whatever options the caller set.
    Variables the caller exported under the names deploy.sh uses for tokens are not passed on."""
    bash, shell = CALLERS[caller]
    if "BASH_ENV" in shell:
        (tmp_path / "bash_env").write_text(shell["BASH_ENV"])
        shell = {"BASH_ENV": str(tmp_path / "bash_env")}
    traced = caller in ("bash -x", "SHELLOPTS=xtrace", "SHELLOPTS=allexport:xtrace")
    legacy, given = "Old-Plain-Token-0123456789abcdef", "Given-Token-0123456789abcdef"
    exported = {"OUT": "x", "ADD_TOKEN": "x", "MIGRATED_TOKEN": "x", "GIVEN_TOKEN": "x"}
    legacy_deployment(cloud, legacy)
    runs = [
        ((), {"RETENTION_DAYS": "3"}),  # moves the plain-text token into Secret Manager
        (("--rotate-token",), {"WEBHOOK_TOKEN": given, "RETENTION_DAYS": "4"}),  # proves both tokens
        (("--dry-run", "--finish-rotation"), {}),
    ]
    for args, settings in runs:
        result, _ = cloud.deploy(*args, bash=bash, **shell, **exported, **settings)
        assert result.returncode == 0, result.stderr
        assert ("tracing is off" in result.stderr) == traced
        for token in (legacy, given):
            assert token not in result.stderr
            # Only the URL the run prints for the app holds it.
            assert all(line.strip().endswith(f"?token={token}") for line in result.stdout.splitlines() if token in line)
    assert [cloud.token(1), cloud.token(2)] == [legacy, given]
    assert result.stdout.count("?token=") == 1  # the dry run's ****
    assert cloud.post(legacy) == 200 and cloud.post(given) == 200

    environments = cloud.environments()
    for tool in ("gcloud", "curl", "python3"):  # each was started and recorded what it inherited
        assert sum(program == tool for program, _ in environments) >= 2, tool
    inherited, command_lines = cloud.inherited(), cloud.command_lines()
    for token in (legacy, given):
        assert not {(program, name) for program, environ in environments for name in environ if token in environ[name]}
        assert token not in inherited  # nor in a line that reading by name left out
        assert not [line for line in command_lines if token in line]
    for program, environ in environments:
        assert not set(environ.get("SHELLOPTS", "").split(":")) & DEPLOY_SH_OPTIONS, (program, environ["SHELLOPTS"])
        assert not [name for name in environ if name.startswith("BASH_FUNC_")], program  # nor its functions


# --- the daily compaction ---------------------------------------------------------------


def compactor_files() -> set[str]:
    """What the compaction's upload holds: its main.py and lock, the root's modules but
    the webhook's main.py, and the tools' package without byte code."""
    package = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "omi_audio").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    return (function_files() - {"main.py"}) | package | {"main.py", "requirements.txt"}


def compaction_of(cloud: Cloud, region: str = "us-central1") -> tuple[dict | None, dict | None]:
    """The compaction function and its scheduler job, or None where there is none."""
    state = cloud.state
    fn = state.get("functions", {}).get(f"{region}/{COMPACT_FN}")
    return fn, state.get("scheduler_jobs", {}).get(f"{region}/{COMPACT_FN}-daily")


def put_object(cloud: Cloud, name: str, bucket: str = "my-omi-audio") -> None:
    url = f"{cloud.fake_gcs}/upload/storage/v1/b/{bucket}/o"
    requests.post(url, params={"uploadType": "media", "name": name}, data=b"audio", timeout=10).raise_for_status()


def test_first_deploy_sets_up_a_private_daily_compaction_with_its_own_narrow_access(cloud):
    result = fresh(cloud)
    state = cloud.state
    fn, job = compaction_of(cloud)
    sc = fn["serviceConfig"]
    assert fn["entryPoint"] == "compact_daily"
    assert env_of(fn) == {"GCS_BUCKET_NAME": "my-omi-audio", "COMPACT_AFTER_DAYS": "2"}
    assert sc["secretEnvironmentVariables"] == []  # it never sees the token
    assert sc["serviceAccountEmail"] == COMPACTOR
    assert (sc["timeout"], sc["memory"], sc["max-instances"], sc["concurrency"]) == ("3600s", "2Gi", "1", "1")
    # Private: only the scheduler's account may call it; the webhook stays public.
    assert fn["invokers"] == [f"serviceAccount:{SCHEDULER}"]
    assert cloud.function()["invokers"] == ["allUsers"]
    upload = Path(fn["source"])
    assert set(state["other_uploads"][COMPACT_FN][-1]) == compactor_files()
    assert (upload / "main.py").read_bytes() == (ROOT / "compactor" / "main.py").read_bytes()
    assert (upload / "requirements.txt").read_bytes() == (ROOT / "compactor" / "requirements.txt").read_bytes()

    # Its role: list, read, create, delete, bound on this bucket only; the webhook's unchanged.
    assert state["roles"]["omiAudioCompactor"]["includedPermissions"] == COMPACT_PERMISSIONS
    assert state["roles"]["omiAudioWriter"]["includedPermissions"] == ["storage.objects.create", "storage.objects.get"]
    assert [f"serviceAccount:{COMPACTOR}", COMPACTOR_ROLE] in state["buckets"]["my-omi-audio"]["bindings"]
    grants = [c for c in cloud.all_calls if "add-iam-policy-binding" in c[:3] or "add-invoker-policy-binding" in c[:2]]
    assert {(c[0], flags(c)["member"], flags(c).get("role")) for c in grants} == {
        ("storage", f"serviceAccount:{SA}", WRITER_ROLE),
        ("storage", f"serviceAccount:{COMPACTOR}", COMPACTOR_ROLE),
        ("secrets", f"serviceAccount:{SA}", "roles/secretmanager.secretAccessor"),
        ("functions", f"serviceAccount:{SCHEDULER}", None),
    }

    # Started once a day, in the function's region, with an OIDC token for its own URL.
    assert "cloudscheduler.googleapis.com" in state["services"]
    assert (job["schedule"], job["timeZone"]) == ("17 3 * * *", "Etc/UTC")
    target = job["httpTarget"]
    assert target["uri"] == sc["uri"] and target["httpMethod"] == "POST"
    assert target["oidcToken"] == {"serviceAccountEmail": SCHEDULER, "audience": sc["uri"]}
    assert state["buckets"]["my-omi-audio"]["autoclass"] == {"enabled": True, "terminalStorageClass": "ARCHIVE"}
    assert cloud.function()["labels"] == {"omi_audio_compact_after_days": "2"}
    assert "Compaction: every day at 03:17 UTC" in result.stdout and "older than 2 days" in result.stdout


def test_compaction_off_removes_its_schedule_and_function_and_keeps_the_audio(cloud):
    fresh(cloud)
    audio = ["phone/20261128T101500.000000Z.wav", "phone/compacted/2026-11-28/20261128T101500.000000Z.flac"]
    for name in audio:
        put_object(cloud, name)

    result, calls = cloud.deploy(COMPACT_AFTER_DAYS="0")
    assert result.returncode == 0, result.stderr
    assert compaction_of(cloud) == (None, None)
    assert find(calls, "scheduler", "jobs", "delete") and find(calls, "functions", "delete")
    assert "the daily compaction is off; its schedule and function are removed" in result.stderr
    assert "Compaction: off" in result.stdout
    assert sorted(bucket_objects(cloud)) == sorted(audio)  # no audio touched
    # Its access to the bucket goes with it; the webhook's stays.
    assert cloud.state["buckets"]["my-omi-audio"]["bindings"] == [[f"serviceAccount:{SA}", WRITER_ROLE]]
    assert cloud.function()["labels"] == {"omi_audio_compact_after_days": "0"}

    result, calls = cloud.deploy()  # a plain re-run keeps it off
    assert result.returncode == 0, result.stderr
    assert compaction_of(cloud) == (None, None)
    assert not [c for c in changing(calls) if "scheduler" in c or COMPACT_FN in c or "remove-iam-policy-binding" in c]
    assert "Compaction: off" in result.stdout and "removed" not in result.stderr

    result, _ = cloud.deploy(COMPACT_AFTER_DAYS="5")  # and on again
    assert result.returncode == 0, result.stderr
    fn, job = compaction_of(cloud)
    assert env_of(fn)["COMPACT_AFTER_DAYS"] == "5" and job["httpTarget"]["uri"] == fn["serviceConfig"]["uri"]


def test_a_first_deploy_with_compaction_off_leaves_cloud_scheduler_off(cloud):
    result = fresh(cloud, COMPACT_AFTER_DAYS="0")
    state = cloud.state
    assert "cloudscheduler.googleapis.com" not in state["services"]
    assert compaction_of(cloud) == (None, None)
    assert "omiAudioCompactor" not in state["roles"] and COMPACTOR not in state["sas"]
    assert "autoclass" not in state["buckets"]["my-omi-audio"]
    assert "Compaction: off" in result.stdout


def test_a_changed_compaction_setting_redeploys_it_and_moves_nothing_else(cloud):
    fresh(cloud)
    result, calls = cloud.deploy(COMPACT_AFTER_DAYS="30")
    assert result.returncode == 0, result.stderr
    assert env_of(compaction_of(cloud)[0])["COMPACT_AFTER_DAYS"] == "30"
    assert len(find(calls, "functions", "deploy", COMPACT_FN)) == 1
    assert not find(calls, "scheduler", "jobs", "update")  # same URL, same schedule
    # A job changed by hand is put back; a paused one is left paused, and said so.
    state = cloud.state
    state["scheduler_jobs"][f"us-central1/{COMPACT_FN}-daily"].update(schedule="0 12 * * *", state="PAUSED")
    cloud.save(state)
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert find(calls, "scheduler", "jobs", "update") and not find(calls, "functions", "deploy", COMPACT_FN)
    assert compaction_of(cloud)[1]["schedule"] == "17 3 * * *"
    assert "is paused" in result.stderr and compaction_of(cloud)[1]["state"] == "PAUSED"


@pytest.mark.parametrize("value", ["-1", "3651", "99999", "two", "2d", "1.5", "02"])
def test_a_bad_compact_after_days_is_refused_and_nothing_changes(cloud, value):
    fresh(cloud)
    before = cloud.state
    result, calls = cloud.deploy(COMPACT_AFTER_DAYS=value)
    assert result.returncode != 0
    assert "COMPACT_AFTER_DAYS must be a whole number of days from 0 to 3650" in result.stderr
    assert calls == [] and cloud.state == before


def test_a_function_name_too_long_for_its_compaction_is_refused_unless_compaction_is_off(cloud):
    name = "a" * 56
    result, calls = cloud.deploy(GCS_BUCKET_NAME="b-1", FUNCTION_NAME=name)
    assert result.returncode != 0 and "too long" in result.stderr and calls == []
    result, _ = cloud.deploy(GCS_BUCKET_NAME="b-1", FUNCTION_NAME=name, COMPACT_AFTER_DAYS="0")
    assert result.returncode == 0, result.stderr


def test_autoclass_is_turned_on_only_in_a_bucket_deploy_sh_made(cloud):
    existing_bucket(cloud, [])
    result, calls = cloud.deploy(GCS_BUCKET_NAME="my-omi-audio")
    assert result.returncode == 0, result.stderr
    assert "autoclass" not in cloud.state["buckets"]["my-omi-audio"]
    assert not [c for c in calls if "--enable-autoclass" in c]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Storage class:")]
    assert "deploy.sh did not create it" in line
    assert "gcloud storage buckets update gs://my-omi-audio --enable-autoclass" in line

    # Labelled as the function's alone (the owner's word): turned on, once.
    state = cloud.state
    state["buckets"]["my-omi-audio"]["labels"] = {"omi_audio_only": "true"}
    state["buckets"]["my-omi-audio"]["autoclass"] = {"enabled": True, "terminalStorageClass": "NEARLINE"}
    cloud.save(state)
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert cloud.state["buckets"]["my-omi-audio"]["autoclass"] == {"enabled": True, "terminalStorageClass": "ARCHIVE"}
    assert len([c for c in calls if "--enable-autoclass" in c]) == 1
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    assert not find(calls, "storage", "buckets", "update") and "Storage class:" not in result.stderr


COMPACTED_DAY = "2026-11-28"


def compacted_names(uids: list[str]) -> list[str]:
    """A compacted day's objects for each uid (sessions in FLAC or WAV, and the index)."""
    return [
        f"{storage.uid_prefix(uid)}/compacted/{COMPACTED_DAY}/{name}"
        for uid in uids
        for name in ("20261128T101500.123456Z.flac", "20261128T120000.000000Z-3.wav", "index.json.gz")
    ]


@pytest.mark.parametrize("dedicated", [True, False])
def test_retention_deletes_a_compacted_day_that_many_days_after_the_day_it_holds(cloud, dedicated):
    """A compacted object is written days after its audio arrived, with a customTime at
    the end of the day it holds: the second rule counts from there."""
    if dedicated:
        fresh(cloud, RETENTION_DAYS="30")
        ours, foreign = ["phone", "stranger", "Omi DevKit 2"], []
    else:
        existing_bucket(cloud, [])
        fresh(cloud, RETENTION_DAYS="30", ALLOWED_UIDS="phone,Omi DevKit 2")
        ours, foreign = ["phone", "Omi DevKit 2"], ["stranger", "ph"]
    lifecycle = lifecycle_of(cloud)
    names = compacted_names(ours)
    # Compacted two days after the day: its age is 2 days less than the day's.
    assert all(deleted_by(lifecycle, name, age_days=28, custom_days=30) for name in names)
    assert not any(deleted_by(lifecycle, name, age_days=29, custom_days=29) for name in names)
    assert not any(deleted_by(lifecycle, name, 10_000, custom_days=10_000) for name in compacted_names(foreign))
    never = [*conversation_names(ours), f"phone/compacted/{COMPACTED_DAY}/notes.txt", "phone/compacted.json"]
    assert not any(deleted_by(lifecycle, name, 10_000, custom_days=10_000) for name in never)

    result, _ = cloud.deploy(RETENTION_DAYS="forever")  # removes both rules
    assert result.returncode == 0, result.stderr
    assert lifecycle_of(cloud).get("rule", []) == []


def test_an_earlier_retention_rule_gains_the_compacted_days_rule_on_a_plain_rerun(cloud):
    fresh(cloud, RETENTION_DAYS="30")
    state = cloud.state
    state["buckets"]["my-omi-audio"]["lifecycle_config"]["rule"].pop()  # as a deploy.sh without compaction left it
    cloud.save(state)
    result, calls = cloud.deploy()
    assert result.returncode == 0, result.stderr
    rule, compacted = lifecycle_of(cloud)["rule"]
    assert rule["condition"]["age"] == 30 and compacted["condition"]["daysSinceCustomTime"] == 30
    assert "compacted days' objects (.flac, .wav, .json.gz) 30 days after the end" in result.stderr
    result, calls = cloud.deploy()
    assert not find(calls, "storage", "buckets", "update")


def test_a_dry_run_lists_the_compaction_and_changes_nothing(cloud):
    result, calls = cloud.deploy("--dry-run", GCS_BUCKET_NAME="b-1")
    assert result.returncode == 0, result.stderr
    assert changing(calls) == []
    (enable,) = [line for line in result.stderr.splitlines() if line.startswith("+ gcloud services enable")]
    assert "cloudscheduler.googleapis.com" in enable.split()
    for line in (
        "+ gcloud iam roles create omiAudioCompactor",
        "--enable-autoclass --autoclass-terminal-storage-class=ARCHIVE",
        f"+ gcloud functions deploy {COMPACT_FN}",
        f"+ gcloud functions add-invoker-policy-binding {COMPACT_FN}",
        f"+ gcloud scheduler jobs create http {COMPACT_FN}-daily",
    ):
        assert line in result.stderr, line
    assert "Compaction: every day at 03:17 UTC" in result.stdout

    fresh(cloud)
    result, calls = cloud.deploy("--dry-run", COMPACT_AFTER_DAYS="0")
    assert result.returncode == 0, result.stderr
    assert changing(calls) == []
    assert f"+ gcloud scheduler jobs delete {COMPACT_FN}-daily" in result.stderr
    assert f"+ gcloud functions delete {COMPACT_FN}" in result.stderr
    assert compaction_of(cloud)[0] is not None


# --- dry run -----------------------------------------------------------------------------


def test_dry_run_reads_but_changes_nothing_and_shows_the_same_url_form(cloud):
    result, calls = cloud.deploy("--dry-run", GCS_BUCKET_NAME="b-1", WEBHOOK_TOKEN="Secret-Token-1234567890")
    assert result.returncode == 0, result.stderr
    assert changing(calls) == []
    assert "+ gcloud functions deploy omi-audio" in result.stderr
    assert "+ gcloud secrets create omi-audio-webhook-token" in result.stderr
    assert "Secret-Token-1234567890" not in result.stdout + result.stderr
    # The real run prints the function's `url` field, which has this same form.
    assert f"https://us-central1-{PROJECT}.cloudfunctions.net/omi-audio?token=****" in result.stdout

    fresh(cloud)
    result, calls = cloud.deploy("--dry-run")
    assert result.returncode == 0, result.stderr
    assert changing(calls) == []
    assert f"{cloud.function()['url']}?token=****" in result.stdout
    assert cloud.token(1) not in result.stdout + result.stderr


# --- the upload, and the real gcloud ------------------------------------------------------


def need_gcloud():
    if REAL_GCLOUD is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the Google Cloud CLI (gcloud) is required in CI: this test must not be skipped")
        pytest.skip("the Google Cloud CLI is not installed (CI requires it)")


def gcloud_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "gcloud-config"
    config.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(config),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }


def files_for_upload(folder: Path, tmp_path: Path, **env: str) -> set[str]:
    """What the real gcloud would upload from `folder`."""
    result = subprocess.run(
        [REAL_GCLOUD, "meta", "list-files-for-upload", str(folder)],
        capture_output=True,
        text=True,
        env=gcloud_env(tmp_path) | env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def function_files() -> set[str]:
    """What deploys, by the rule the root shows: its Python files and requirements.txt."""
    return {path.name for path in ROOT.glob("*.py")} | {"requirements.txt"}


def test_the_upload_is_a_staged_copy_of_the_function_files_alone(cloud, tmp_path):
    """Whatever else lies in the folder, and with gcloud's ignore files switched off, the
    upload holds the Python files at the root and requirements.txt, and the function
    runs from it."""
    checkout = tmp_path / "checkout"
    for name in ("deploy.sh", *function_files(), "compactor/main.py", "compactor/requirements.txt"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    for junk in (
        "recordings/phone/20261201T000000.000000Z.wav",
        "exports/session.wav",
        ".venv/bin/python",
        ".git/HEAD",
        "service-account-key.json",
        "omi_audio/__init__.py",  # the tools' package: only the compaction uploads it
        "omi_audio/page.html",
        "omi_audio/__pycache__/export.cpython-312.pyc",
        "compactor/requirements.in",
        "compactor/notes.txt",
        "tests/test_main.py",
        "pyproject.toml",
    ):
        (checkout / junk).parent.mkdir(parents=True, exist_ok=True)
        (checkout / junk).write_text("not the function's\n")
    (checkout / ".gcloudignore").write_text("# ignores nothing\n")

    result, calls = cloud.deploy(
        GCS_BUCKET_NAME="my-omi-audio", script=checkout / "deploy.sh", CLOUDSDK_GCLOUDIGNORE_ENABLED="false"
    )
    assert result.returncode == 0, result.stderr
    assert set(cloud.uploaded()) == function_files()
    assert flags(find(calls, "functions", "deploy")[0])["source"] != str(checkout)
    # The compaction's: its main.py and lock, the root's modules but main.py, the package.
    compaction = {*function_files(), "omi_audio/__init__.py", "omi_audio/page.html"}
    assert set(cloud.state["other_uploads"][COMPACT_FN][-1]) == compaction
    assert cloud.post(cloud.token(1)) == 200  # the staged copy is the whole function
    if REAL_GCLOUD:  # the real gcloud uploads the same from the staged copy, ignore files on or off
        staged = Path(cloud.function()["source"])
        assert files_for_upload(staged, tmp_path) == function_files()
        assert files_for_upload(staged, tmp_path, CLOUDSDK_GCLOUDIGNORE_ENABLED="false") == function_files()
        staged = Path(compaction_of(cloud)[0]["source"])
        assert files_for_upload(staged, tmp_path) == compaction


def test_the_function_imports_nothing_outside_the_root_but_its_requirements():
    """The root's Python files are the whole function: main.py runs in a folder holding
    only them (the tools' package is not there), as it does once deployed."""
    with tempfile.TemporaryDirectory() as folder:
        for name in function_files():
            shutil.copy2(ROOT / name, folder)
        probe = "import main, sys; print(sorted(m for m in sys.modules if m in {'omi_audio', 'tests'}))"
        result = subprocess.run([sys.executable, "-c", probe], cwd=folder, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gcloudignore_lets_a_deploy_by_hand_upload_only_the_function(tmp_path):
    """deploy.sh uploads a staged copy; .gcloudignore guards a `gcloud functions deploy
    --source=.` run by hand from this folder."""
    need_gcloud()
    assert files_for_upload(ROOT, tmp_path) == function_files()


def all_branches(cloud: Cloud, tmp: Path) -> None:
    """Drive deploy.sh through every branch; every call is kept in cloud.all_calls."""
    old = {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"}, "condition": {"age": 7}}
    legacy_deployment(cloud, "Old-Token-0123456789")
    cloud.edit(
        buckets={
            "my-omi-audio": {
                "location": "US",
                "uniform_bucket_level_access": False,
                "public_access_prevention": "inherited",
                "lifecycle_config": {"rule": [old]},
            }
        },
        roles={"omiAudioWriter": {"deleted": True, "includedPermissions": ["storage.objects.create"]}},
    )
    requests.post(f"{cloud.fake_gcs}/storage/v1/b?project={PROJECT}", json={"name": "my-omi-audio"}, timeout=10)
    runs = [
        ("--dry-run",),
        (),  # migrate: existing bucket, deleted role, plain token
        ("--rotate-token",),
        ("--finish-rotation",),
        ("--allow-any-uid",),
    ]
    for args in runs:
        # A bucket deploy.sh did not make: retention by the allowed uids' folders, until any uid may write.
        any_uid = args == ("--allow-any-uid",)
        env = {"REQUEST_LOG": "keep", "RETENTION_DAYS": "forever"} if any_uid else {"ALLOWED_UIDS": "phone"}
        result, _ = cloud.deploy(*args, **({"RETENTION_DAYS": "30"} | env))
        assert result.returncode == 0, (args, result.stderr)
    cloud.deploy(RETENTION_DAYS="30")  # refused: no allow-list
    cloud.deploy(RETENTION_DAYS="forever", ALLOWED_UIDS="Omi DevKit 2")
    cloud.deploy(REQUEST_LOG="exclude")
    # A first deploy in another region, found again without REGION.
    cloud.deploy(GCS_BUCKET_NAME="b-2", FUNCTION_NAME="second", REGION="europe-west1")
    result, _ = cloud.deploy(FUNCTION_NAME="second")
    assert result.returncode == 0, result.stderr
    cloud.deploy(GCS_BUCKET_NAME="b-3", FUNCTION_NAME="third", RETENTION_DAYS="forever")
    state = cloud.state  # the role gone for good (deleted long ago): made again
    del state["roles"]["omiAudioWriter"]
    cloud.save(state)
    result, _ = cloud.deploy()
    assert result.returncode == 0, result.stderr
    # The alert: made (waiting once for its new metric); then its metric written by
    # another version, a second channel and policy, and every setting changed; then removed.
    cloud.edit(fail=[{"call": "monitoring policies create", "times": 1, "message": NOT_VISIBLE_YET}])
    result, _ = cloud.deploy(ALERT_EMAIL="you@example.com", ALERT_AFTER="12h")
    assert result.returncode == 0, result.stderr
    state = cloud.state
    state["log_metrics"][METRIC]["description"] = "written by another version of deploy.sh"
    state["channels"].append({**state["channels"][0], "name": f"projects/{PROJECT}/notificationChannels/7"})
    state["policies"].append({**state["policies"][0], "name": f"projects/{PROJECT}/alertPolicies/8"})
    cloud.save(state)
    for settings in ({"ALERT_EMAIL": "new@example.com", "ALERT_AFTER": "90m"}, {"ALERT_EMAIL": "none"}):
        result, _ = cloud.deploy(**settings)
        assert result.returncode == 0, result.stderr
    # The compaction: turned off (its job, access and function removed), on again with
    # another setting, then its job and role changed by hand and put back.
    for settings in ({"COMPACT_AFTER_DAYS": "0"}, {"COMPACT_AFTER_DAYS": "7"}):
        result, _ = cloud.deploy(**settings)
        assert result.returncode == 0, result.stderr
    state = cloud.state
    state["scheduler_jobs"][f"us-central1/{COMPACT_FN}-daily"]["schedule"] = "0 12 * * *"
    state["roles"]["omiAudioCompactor"] = {"deleted": True, "includedPermissions": ["storage.objects.list"]}
    cloud.save(state)
    result, _ = cloud.deploy()
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def branches(tmp_path_factory, fake_gcs):
    """One stand-in project driven through every branch, shared by the real-gcloud checks."""
    need_gcloud()
    cloud = Cloud(tmp_path_factory.mktemp("branches"), fake_gcs)
    try:
        all_branches(cloud, cloud.tmp)
        yield cloud
    finally:
        cloud.stop()


def test_real_gcloud_accepts_every_call_and_formats_every_answer_as_the_stand_in_did(branches, tmp_path):
    """The three checks read the same recorded run of every branch, which takes a minute
    of CPU to make: one test makes it once, whichever worker runs it."""
    need_gcloud()
    real_gcloud_accepts_every_call(branches, tmp_path)
    real_gcloud_formats_each_answer_as_the_stand_in_did(branches, tmp_path)
    real_gcloud_reads_every_file_as_its_api_message(branches, tmp_path)


def real_gcloud_accepts_every_call(cloud: Cloud, tmp_path: Path) -> None:
    """Each call deploy.sh made, in every branch, handed to the real gcloud offline
    with an empty config, must get past argument parsing and stop only for lack of
    credentials; every gcloud command in deploy.sh must have been among them."""
    env = gcloud_env(tmp_path)
    lifecycle = tmp_path / "lifecycle.json"
    lifecycle.write_text('{"rule": []}')
    shapes = {tuple(w for w in c[:3] if not w.startswith(("-", "gs://")) and w != SECRET) for c in cloud.all_calls}
    calls = [c for c in cloud.all_calls if c[:2] != ["config", "get-value"]]  # local: it just answers

    text = DEPLOY.read_text()
    # Commands the script runs (not the ones its messages suggest to the user).
    in_script = set(re.findall(r"(?:\brun|\bretry|\bprobe|\$\()\s*gcloud ((?:[a-z-]+ ){1,3})", text))
    assert len(in_script) >= 20
    for words in in_script:
        words = tuple(w for w in words.split() if not w.startswith("-"))
        assert any(s[: len(words)] == words for s in shapes), f"never exercised: gcloud {' '.join(words)}"

    # Temporary paths (each run's lifecycle file and staged upload) are the same argument each
    # time, and so is the test chunk's object whatever its stamp.
    same = {"--lifecycle-file=": f"--lifecycle-file={lifecycle}", "--source=": f"--source={ROOT}"}
    for read in cloud.state["files_read"]:  # the alert's metric and policy, as deploy.sh wrote them
        path = tmp_path / f"{read['flag']}.json"
        path.write_text(json.dumps(read["content"]))
        same[f"--{read['flag']}="] = f"--{read['flag']}={path}"

    def shape(arg: str) -> str:
        arg = next((v for k, v in same.items() if arg.startswith(k)), arg)
        return re.sub(r"\d{8}T\d{6}\.\d{6}Z", "20261201T000000.000000Z", arg) if arg.startswith("gs://") else arg

    unique = {json.dumps([shape(a) for a in call]) for call in calls}

    def replay(key: str) -> tuple[list[str], subprocess.CompletedProcess]:
        call = json.loads(key)
        return call, subprocess.run(
            [REAL_GCLOUD, *call], input="x", capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )

    with ThreadPoolExecutor(2) as pool:
        for call, result in pool.map(replay, sorted(unique)):
            assert result.returncode != 0
            err = result.stderr
            assert "unrecognized arguments" not in err and "argument" not in err.lower(), (call, err)
            assert "active account" in err or "credentials" in err.lower(), (call, err)
    assert len(unique) >= 30


def real_gcloud_formats_each_answer_as_the_stand_in_did(cloud: Cloud, tmp_path: Path) -> None:
    """The stand-in answers describe/list calls with a small formatter; the real
    gcloud's formatter, given the same resource, must print the same."""
    env = gcloud_env(tmp_path)
    answers = [json.loads(line) for line in (cloud.tmp / "calls.jsonl.formats").read_text().splitlines()]
    checked: dict[str, dict] = {}
    for answer in answers:
        f = flags(answer["args"])
        checked.setdefault(json.dumps([answer["resources"], f.get("format"), f.get("filter")]), answer)

    def real_output(i: int, answer: dict) -> tuple[dict, subprocess.CompletedProcess]:
        f = flags(answer["args"])
        resource = tmp_path / f"resource-{i}.json"
        describe = "describe" in answer["args"]  # one resource, as gcloud's describe gives it
        resource.write_text(json.dumps(answer["resources"][0] if describe else answer["resources"]))
        cmd = [REAL_GCLOUD, "meta", "list-from-json", str(resource), f"--format={f['format']}"]
        if "filter" in f:
            cmd.append(f"--filter={f['filter']}")
        return answer, subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        for answer, result in pool.map(real_output, range(len(checked)), checked.values()):
            assert result.returncode == 0, result.stderr
            if flags(answer["args"])["format"].startswith("json("):
                assert json.loads(result.stdout) == json.loads(answer["output"]), answer
            else:
                assert result.stdout.rstrip("\n") == answer["output"], answer
    assert len(checked) >= 10


# Run by the Python gcloud runs on: the API messages gcloud itself builds from these files.
READ_AS_MESSAGES = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/third_party"]
from apitools.base.protorpclite import messages
from apitools.base.py import encoding
from googlecloudsdk.generated_clients.apis.logging.v2 import logging_v2_messages as logging
from googlecloudsdk.generated_clients.apis.monitoring.v3 import monitoring_v3_messages as monitoring

KINDS = {"config-from-file": logging.LogMetric, "policy-from-file": monitoring.AlertPolicy}

def unknown(message, path):
    found = [path + "." + name for name in message.all_unrecognized_fields()]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, messages.Message):
                found += unknown(item, path + "." + field.name)
    return found

problems = []
for read in json.load(open(sys.argv[2])):
    kind = KINDS[read["flag"]]
    problems += unknown(encoding.DictToMessage(read["content"], kind), kind.__name__)
print(json.dumps(problems))
"""


def real_gcloud_reads_every_file_as_its_api_message(cloud: Cloud, tmp_path: Path) -> None:
    """Each file deploy.sh handed gcloud (the alert's --config-from-file and
    --policy-from-file), read into the API message the real gcloud sends (LogMetric,
    AlertPolicy): no field, and no enum value, that the API does not know."""
    sdk = Path(REAL_GCLOUD).resolve().parent.parent
    bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = os.environ.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.exists() else shutil.which("python3"))
    files = cloud.state["files_read"]
    assert {read["flag"] for read in files} == {"config-from-file", "policy-from-file"}
    (tmp_path / "files.json").write_text(json.dumps(files))
    result = subprocess.run(
        [python, "-c", READ_AS_MESSAGES, str(sdk / "lib"), str(tmp_path / "files.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
