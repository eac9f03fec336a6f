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

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
REAL_GCLOUD = shutil.which("gcloud")
PROJECT = "proj-1"
SA = f"omi-audio-writer@{PROJECT}.iam.gserviceaccount.com"
SECRET = "omi-audio-webhook-token"
READ_ONLY = ("describe", "list", "get-value", "access")
# What every deploy gives the function besides its bucket (see bench/measure.py).
DEPLOYED_ENV = {"THREADS": "16", "MALLOC_MMAP_THRESHOLD_": "131072", "NO_PROXY": "storage.googleapis.com"}

# The stand-in gcloud. State lives in STUB_STATE (JSON) so a second run sees what
# the first made; each call is appended to STUB_LOG; each formatted answer (resource,
# format, output) to STUB_LOG.formats so the real gcloud can check the format.
STUB = r'''#!PYTHON
import json, os, re, sys  # the rest only where needed: each call starts a new interpreter
from urllib.parse import quote

args = sys.argv[1:]
LOG = os.environ["STUB_LOG"]
with open(LOG, "a") as f:
    f.write(json.dumps(args) + "\n")
with open(LOG + ".env", "a") as f:  # what deploy.sh let its children inherit
    f.write("== gcloud\n" + json.dumps(dict(os.environ)) + "\n")
state_path = os.environ["STUB_STATE"]
S = json.load(open(state_path))
P = S.get("project_id", "proj-1")
flags = {a[2:].split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else "") for a in args if a.startswith("--")}
pos = [a for a in args if not a.startswith("--")]
joined = " ".join(args)


def save():
    with open(state_path, "w") as f:
        json.dump(S, f, indent=1)


def fail(message, code=1):
    save()
    print(f"ERROR: (gcloud.{'.'.join(pos[:3])}) {message}", file=sys.stderr)
    sys.exit(code)


def not_found(what):
    fail(f"NOT_FOUND: {what} was not found")


for rule in S.get("fail", []):  # injected failures: {"call": substring, "times": n, "message": ...}
    if rule["call"] in joined and rule.get("times", 1) > 0:
        rule["times"] = rule.get("times", 1) - 1
        fail(rule.get("message", "There was a problem refreshing your current auth tokens: network unreachable"))


def field(obj, path):
    for part in path.split("."):
        if part.endswith("[]"):
            return [x.get(part[:-2].split(".")[-1]) for x in obj] if isinstance(obj, list) else None
        if isinstance(obj, list):
            obj = [x.get(part) for x in obj]
        else:
            obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return obj


def render(value, sep=";"):
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return sep.join(render(v) for v in value)
    return str(value)


def value_of(obj, expr):
    if expr.endswith(".basename()"):
        return render(field(obj, expr[: -len(".basename()")])).rsplit("/", 1)[-1]
    if expr.endswith('.list(separator=",")'):
        return render(field(obj, expr[: -len('.list(separator=",")')]), ",")
    if "[]." in expr:
        head, tail = expr.split("[].", 1)
        items = field(obj, head) or []
        return ";".join(render(i.get(tail)) for i in items)
    return render(field(obj, expr))


def show(resources):
    """Print resources with --format (the subset deploy.sh uses), and record it."""
    fmt = flags.get("format", "")
    if "filter" in flags:
        key, want = flags["filter"].split("=", 1)
        resources = [r for r in resources if render(field(r, key)) == want]
    lines = []
    for r in resources:
        if fmt.startswith("json("):
            key = fmt[5:-1]
            lines.append(json.dumps({key: r[key]} if key in r else None))
        else:
            sep = "\t"
            if fmt.startswith('value[separator="|"]('):
                sep, fmt_body = "|", fmt[len('value[separator="|"]('):-1]
            else:
                fmt_body = fmt[len("value("):-1]
            exprs = [e for e in re.split(r',(?![^(]*\))', fmt_body)]
            lines.append(sep.join(value_of(r, e) for e in exprs))
    out = "\n".join(lines)
    with open(LOG + ".formats", "a") as f:
        f.write(json.dumps({"resources": resources, "args": args, "output": out}) + "\n")
    print(out)
    save()
    sys.exit(0)


def gcs(method, path, body=None):
    import urllib.error, urllib.request
    host = os.environ["STORAGE_EMULATOR_HOST"]
    req = urllib.request.Request(host + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            return json.loads(data) if data else {}
    except urllib.error.HTTPError as e:
        if e.code in (404, 409):  # missing; or a bucket an earlier test made (emptied below)
            return None
        raise


def function_key(name, region):
    return f"{region}/{name}"


def start_server(fn):
    """Serve the deployed configuration for real, as Cloud Run would."""
    import hashlib, subprocess, time, urllib.error, urllib.request
    config = {"env": fn["serviceConfig"].get("environmentVariables", {}), "break": S.get("break")}
    for ref in fn["serviceConfig"].get("secretEnvironmentVariables", []):
        versions = S["secrets"][ref["secret"]]["versions"]
        v = versions[int(ref["version"]) - 1]
        if v["state"] != "ENABLED":
            fail(f"Revision failed: secret {ref['secret']} version {ref['version']} is {v['state']}")
        config["env"] = {**config["env"], ref["key"]: v["data"]}
    for name in sorted(os.listdir(fn["source"])):
        with open(os.path.join(fn["source"], name), "rb") as f:
            config[name] = hashlib.sha256(f.read()).hexdigest()
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    old = fn.get("pid")
    if old:
        try:
            os.kill(old, 0)
            if fn.get("digest") == digest:  # the same function, configured the same: the server serves on
                return
            os.killpg(old, 15)  # a redeploy keeps the URL: the new server takes the old one's port
            while True:
                os.kill(old, 0)
                time.sleep(0.02)
        except ProcessLookupError:
            pass
    fn["digest"] = digest
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUB_", "WEBHOOK_", "ALLOWED_", "GCS_"))}
    env.update(config["env"])
    env["K_SERVICE"] = fn["name"].rsplit("/", 1)[-1]
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the upload stays as gcloud sent it
    if S.get("break") == "wrong-token":
        env["WEBHOOK_TOKEN"] = "someone-else-entirely-0123456789"
    if S.get("break") == "storage-down":
        env.update(STORAGE_EMULATOR_HOST="http://127.0.0.1:9", STORAGE_DEADLINE_SECONDS="1")
        env["NO_RETRY_DEADLINE_SECONDS"] = "1"
    import socket
    port = fn.get("port")
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    fn["port"] = port
    source = fn["source"]
    cli = os.path.join(os.path.dirname(sys.executable), "functions-framework")
    with open(LOG + ".server", "ab") as log:
        proc = subprocess.Popen([cli, f"--source={source}/main.py", "--target=receive_audio", "--host=127.0.0.1",
                                 f"--port={port}"], cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.05)
    fn["pid"] = proc.pid
    S.setdefault("pids", []).append(proc.pid)
    fn["url"] = "http://127.0.0.1:9" if S.get("break") == "no-server" else url


def apply_map(current, update, remove, delim=","):
    if remove:
        for key in remove.split(","):
            current.pop(key, None)
    if update:
        if update.startswith("^"):
            delim, update = update[1:].split("^", 1)
        for item in update.split(delim):
            k, v = item.split("=", 1)
            current[k] = v
    return current


cmd = pos[:3]
if pos[:3] == ["config", "get-value", "project"]:
    print(S.get("config_project", ""))
    sys.exit(0)
if pos[:2] == ["projects", "describe"]:
    if pos[2] != P:
        not_found(f"project {pos[2]}")
    show([{"projectId": P, "projectNumber": "123456789012"}])
if pos[:2] == ["services", "list"]:
    show([{"config": {"name": s}} for s in S.setdefault("services", [])])
if pos[:2] == ["services", "enable"]:
    S["services"] += [s for s in pos[2:] if s not in S["services"]]
elif pos[:2] == ["functions", "describe"]:
    fn = S.setdefault("functions", {}).get(function_key(pos[2], flags["region"]))
    if fn is None:
        not_found(f"Resource 'projects/{P}/locations/{flags['region']}/functions/{pos[2]}'")
    show([{k: v for k, v in fn.items() if k not in ("pid", "source", "port", "digest")}])
elif pos[:2] == ["functions", "list"]:
    show([{"name": fn["name"]} for fn in S.setdefault("functions", {}).values()])
elif pos[:2] == ["functions", "deploy"]:
    key = function_key(pos[2], flags["region"])
    fn = S.setdefault("functions", {}).setdefault(key, {
        "name": f"projects/{P}/locations/{flags['region']}/functions/{pos[2]}",
        "url": f"https://{flags['region']}-{P}.cloudfunctions.net/{pos[2]}",
        "serviceConfig": {}})
    sc = fn["serviceConfig"]
    sc["serviceAccountEmail"] = flags["service-account"]
    sc["environmentVariables"] = apply_map(sc.get("environmentVariables", {}), flags.get("update-env-vars"),
                                           flags.get("remove-env-vars"))
    secrets = {r["key"]: f"{r['secret']}:{r['version']}" for r in sc.get("secretEnvironmentVariables", [])}
    secrets = apply_map(secrets, flags.get("update-secrets"), flags.get("remove-secrets"))
    overlap = set(secrets) & set(sc["environmentVariables"])
    if overlap:
        fail(f"INVALID_ARGUMENT: {overlap} is both a plain and a secret environment variable")
    for k, ref in secrets.items():
        name = ref.split(":")[0]
        if f"serviceAccount:{sc['serviceAccountEmail']}" not in S["secrets"][name]["accessors"]:
            fail(f"Permission denied on secret {name} for Revision service account {sc['serviceAccountEmail']}")
    sc["secretEnvironmentVariables"] = [
        {"key": k, "projectId": P, "secret": r.split(":")[0], "version": r.split(":")[1]}
        for k, r in sorted(secrets.items())
    ]
    for f in ("memory", "cpu", "concurrency", "max-instances", "timeout"):
        sc[f] = flags[f]
    # Cloud Build gets what gcloud uploads: with ignore files off, the whole folder.
    import shutil
    uploads = S.setdefault("uploads", [])
    copy = os.path.join(os.path.dirname(state_path), "uploads", str(len(uploads)))
    shutil.copytree(flags["source"], copy, symlinks=True)
    uploads.append(sorted(os.path.relpath(os.path.join(d, f), copy) for d, _, fs in os.walk(copy) for f in fs))
    fn["source"] = copy
    start_server(fn)
elif pos[:2] == ["secrets", "describe"]:
    if pos[2] not in S.setdefault("secrets", {}):
        not_found(f"Secret [projects/{P}/secrets/{pos[2]}]")
    show([{"name": f"projects/{P}/secrets/{pos[2]}"}])
elif pos[:3] == ["secrets", "versions", "list"]:
    if pos[3] not in S.setdefault("secrets", {}):
        not_found(f"Secret [projects/{P}/secrets/{pos[3]}]")
    show([{"name": f"projects/{P}/secrets/{pos[3]}/versions/{i + 1}", "state": v["state"]}
          for i, v in enumerate(S["secrets"][pos[3]]["versions"])])
elif pos[:3] == ["secrets", "versions", "access"]:
    v = S["secrets"][flags["secret"]]["versions"][int(pos[3]) - 1]
    if v["state"] != "ENABLED":
        fail(f"FAILED_PRECONDITION: version {pos[3]} is {v['state']}")
    sys.stdout.write(v["data"])
    sys.exit(0)
elif pos[:2] == ["secrets", "create"]:
    assert flags["data-file"] == "-"
    S.setdefault("secrets", {})[pos[2]] = {"versions": [{"state": "ENABLED", "data": sys.stdin.read()}],
                                           "accessors": []}
elif pos[:3] == ["secrets", "versions", "add"]:
    assert flags["data-file"] == "-"
    S["secrets"][pos[3]]["versions"].append({"state": "ENABLED", "data": sys.stdin.read()})
elif pos[:3] == ["secrets", "versions", "disable"]:
    S["secrets"][flags["secret"]]["versions"][int(pos[3]) - 1]["state"] = "DISABLED"
elif pos[:2] == ["secrets", "add-iam-policy-binding"]:
    S["secrets"][pos[2]]["accessors"].append(flags["member"])
    assert flags["role"] == "roles/secretmanager.secretAccessor"
elif pos[:3] == ["storage", "buckets", "describe"]:
    b = S.setdefault("buckets", {}).get(pos[3][5:])
    if b is None:
        fail(f"{pos[3]} not found: 404.")
    show([{k: v for k, v in b.items() if k != "bindings"}])
elif pos[:3] == ["storage", "buckets", "create"]:
    S.setdefault("buckets", {})[pos[3][5:]] = {
        "location": flags["location"].upper(), "uniform_bucket_level_access": "uniform-bucket-level-access" in flags,
        "public_access_prevention": "enforced" if "public-access-prevention" in flags else "inherited"}
    gcs("POST", f"/storage/v1/b?project={P}", {"name": pos[3][5:]})
    for o in (gcs("GET", f"/storage/v1/b/{pos[3][5:]}/o") or {}).get("items", []):
        gcs("DELETE", f"/storage/v1/b/{pos[3][5:]}/o/{quote(o['name'], safe='')}")
elif pos[:3] == ["storage", "buckets", "update"]:
    b = S["buckets"][pos[3][5:]]
    if "uniform-bucket-level-access" in flags:
        b["uniform_bucket_level_access"] = True
    if "public-access-prevention" in flags:
        b["public_access_prevention"] = "enforced"
    if "update-labels" in flags:
        b.setdefault("labels", {}).update(kv.split("=", 1) for kv in flags["update-labels"].split(","))
    if "lifecycle-file" in flags:
        b["lifecycle_config"] = json.load(open(flags["lifecycle-file"]))
    if "clear-lifecycle" in flags:
        b.pop("lifecycle_config", None)
elif pos[:3] == ["storage", "buckets", "add-iam-policy-binding"]:
    S["buckets"][pos[3][5:]].setdefault("bindings", []).append([flags["member"], flags["role"]])
elif pos[:3] == ["storage", "objects", "describe"]:
    bucket, name = pos[3][5:].split("/", 1)
    meta = gcs("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
    if meta is None or S.get("break") == "object-missing":
        fail(f"{pos[3]} not found: 404.")
    show([{"name": name, "size": int(meta["size"]) - (1000 if S.get("break") == "object-cut" else 0)}])
elif pos[:2] == ["storage", "rm"]:
    bucket, name = pos[2][5:].split("/", 1)
    gcs("DELETE", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
elif pos[:3] == ["iam", "service-accounts", "describe"]:
    sa = S.setdefault("sas", {}).get(pos[3])
    if sa is None:
        not_found(f"Unknown service account {pos[3]}")
    show([{"email": pos[3], "disabled": sa["disabled"]}])
elif pos[:3] == ["iam", "service-accounts", "create"]:
    S.setdefault("sas", {})[f"{pos[3]}@{P}.iam.gserviceaccount.com"] = {"disabled": False}
elif pos[:3] == ["iam", "roles", "describe"]:
    role = S.setdefault("roles", {}).get(pos[3])
    if role is None:
        not_found(f"The role named projects/{P}/roles/{pos[3]}")
    show([{"name": f"projects/{P}/roles/{pos[3]}", **role}])
elif pos[:3] == ["iam", "roles", "create"] or pos[:3] == ["iam", "roles", "update"]:
    S.setdefault("roles", {})[pos[3]] = {"includedPermissions": sorted(flags["permissions"].split(","))}
elif pos[:3] == ["iam", "roles", "undelete"]:
    S["roles"][pos[3]].pop("deleted")
elif pos[:3] == ["logging", "sinks", "describe"]:
    show([{"name": "_Default", "exclusions": S.setdefault("exclusions", [])}])
elif pos[:3] == ["logging", "sinks", "update"]:
    if "add-exclusion" in flags:
        raw = flags["add-exclusion"]
        S.setdefault("exclusions", []).append(dict(kv.split("=", 1) for kv in raw.split(",")))
    if "remove-exclusions" in flags:
        S["exclusions"] = [e for e in S["exclusions"] if e["name"] != flags["remove-exclusions"]]
else:
    fail(f"stub: unexpected call {args}")
save()
'''

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
        (self.bin / "gcloud").write_text(STUB.replace("#!PYTHON", f"#!{sys.executable} -S", 1))
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
    for option in ("--dry-run", "--rotate-token", "--finish-rotation", "--allow-any-uid", "ALLOWED_UIDS"):
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
    assert bucket["bindings"] == [[f"serviceAccount:{SA}", f"projects/{PROJECT}/roles/omiAudioWriter"]]
    assert state["roles"]["omiAudioWriter"]["includedPermissions"] == ["storage.objects.create", "storage.objects.get"]
    assert not find(calls, "projects", "add-iam-policy-binding")

    fn = cloud.function()
    sc = fn["serviceConfig"]
    assert env_of(fn) == {"GCS_BUCKET_NAME": "my-omi-audio", **DEPLOYED_ENV}
    assert secrets_of(fn) == {"WEBHOOK_TOKEN": "1"}
    assert (sc["concurrency"], sc["memory"], sc["serviceAccountEmail"]) == ("16", "1Gi", SA)
    (deploy_call,) = find(calls, "functions", "deploy")
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
    made = [c[:3] for c in changing(calls)]
    assert made == [
        ["storage", "buckets", "add-iam-policy-binding"],  # idempotent grants
        ["secrets", "add-iam-policy-binding", SECRET],
        ["functions", "deploy", "omi-audio"],
        ["storage", "rm", made[-1][2]],  # the test chunk
    ]
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


def deleted_by(lifecycle: dict, name: str, age_days: int) -> bool:
    """Whether Cloud Storage's lifecycle deletes `name` at `age_days`: a rule applies when
    all its conditions hold (a prefix list and a suffix list each hold when any entry does)."""
    for rule in lifecycle.get("rule", []):
        if rule["action"]["type"] != "Delete":
            continue
        condition = rule["condition"]
        assert set(condition) <= {"age", "matchesPrefix", "matchesSuffix"}, condition  # all this evaluates
        if condition.get("age", 0) > age_days:
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
    (rule,) = lifecycle["rule"]
    assert rule["condition"]["age"] == 30 and "matchesPrefix" not in rule["condition"]
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
    assert [r["condition"]["age"] for r in lifecycle["rule"]] == [7, 60]
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
    (rule,) = lifecycle_of(cloud)["rule"]
    assert rule["condition"]["age"] == 30 and rule["condition"]["matchesPrefix"] == ["phone/"]
    assert all(deleted_by(lifecycle_of(cloud), name, 30) for name in audio_names(["phone"]))
    assert not deleted_by(lifecycle_of(cloud), "music/Track 2Z.wav", 30)


def test_the_rule_escapes_uid_folders_exactly_as_the_function_does(cloud):
    """Each allowed uid's folder in the rule is storage.uid_prefix's, byte for byte."""
    existing_bucket(cloud, [])
    uids = ["Zoë", "a b", "~7E", "..", "ÿ", "名前", "naïve café", "emoji 🎙", "-_-", "A.Z"]
    fresh(cloud, RETENTION_DAYS="9", ALLOWED_UIDS=",".join(uids))
    (rule,) = lifecycle_of(cloud)["rule"]
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
    assert not [c for c in calls if "create" in c[:3]]
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
    for name in ("deploy.sh", *function_files()):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    for junk in (
        "recordings/phone/20261201T000000.000000Z.wav",
        "exports/session.wav",
        ".venv/bin/python",
        ".git/HEAD",
        "service-account-key.json",
        "omi_audio/export.py",
        "omi_audio/page.html",
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
    assert cloud.post(cloud.token(1)) == 200  # the staged copy is the whole function
    if REAL_GCLOUD:  # the real gcloud uploads the same from the staged copy, ignore files on or off
        staged = Path(cloud.function()["source"])
        assert files_for_upload(staged, tmp_path) == function_files()
        assert files_for_upload(staged, tmp_path, CLOUDSDK_GCLOUDIGNORE_ENABLED="false") == function_files()


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
    """Both checks read the same recorded run of every branch, which takes a minute
    of CPU to make: one test makes it once, whichever worker runs it."""
    need_gcloud()
    real_gcloud_accepts_every_call(branches, tmp_path)
    real_gcloud_formats_each_answer_as_the_stand_in_did(branches, tmp_path)


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
