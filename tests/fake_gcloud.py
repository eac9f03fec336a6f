"""A stand-in for the gcloud CLI that deploy.sh runs against in tests/test_deploy.py.

tests/test_deploy.py installs this file as `gcloud` on deploy.sh's PATH (run by the
test's own Python, with -S: the standard library only). The project's state lives in
the JSON file STUB_STATE, so a second run of deploy.sh sees what the first made; each
call is appended to STUB_LOG, each environment it started with to STUB_LOG.env, and
each formatted answer (resources, arguments, output) to STUB_LOG.formats, so that the
real gcloud can check its format. `functions deploy` serves the uploaded function for
real (functions-framework on loopback, storage in fake-gcs-server). Only the commands
and --format forms deploy.sh uses are answered; anything else fails loudly.
"""

import json
import os
import re
import sys  # the rest only where needed: each call starts a new interpreter
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
                sep, fmt_body = "|", fmt[len('value[separator="|"](') : -1]
            else:
                fmt_body = fmt[len("value(") : -1]
            exprs = [e for e in re.split(r",(?![^(]*\))", fmt_body)]
            lines.append(sep.join(value_of(r, e) for e in exprs))
    out = "\n".join(lines)
    with open(LOG + ".formats", "a") as f:
        f.write(json.dumps({"resources": resources, "args": args, "output": out}) + "\n")
    print(out)
    save()
    sys.exit(0)


def read_file(flag):
    """The JSON file a --*-from-file flag names; each one read is kept, for the real gcloud's check."""
    with open(flags[flag]) as f:
        content = json.load(f)
    S.setdefault("files_read", []).append({"command": pos[:3], "flag": flag, "content": content})
    return json.loads(json.dumps(content))


def gcs(method, path, body=None):
    import urllib.error
    import urllib.request

    host = os.environ["STORAGE_EMULATOR_HOST"]
    req = urllib.request.Request(
        host + path,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
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
    import hashlib
    import subprocess
    import time
    import urllib.error
    import urllib.request

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
        proc = subprocess.Popen(
            [cli, f"--source={source}/main.py", "--target=receive_audio", "--host=127.0.0.1", f"--port={port}"],
            cwd=source,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
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
    show([{k: v for k, v in fn.items() if k not in ("pid", "source", "port", "digest", "invokers")}])
elif pos[:2] == ["functions", "list"]:
    show([{"name": fn["name"]} for fn in S.setdefault("functions", {}).values()])
elif pos[:2] == ["functions", "deploy"]:
    key = function_key(pos[2], flags["region"])
    fn = S.setdefault("functions", {}).setdefault(
        key,
        {
            "name": f"projects/{P}/locations/{flags['region']}/functions/{pos[2]}",
            "url": f"https://{flags['region']}-{P}.cloudfunctions.net/{pos[2]}",
            "serviceConfig": {},
        },
    )
    sc = fn["serviceConfig"]
    sc["serviceAccountEmail"] = flags["service-account"]
    sc["environmentVariables"] = apply_map(
        sc.get("environmentVariables", {}), flags.get("update-env-vars"), flags.get("remove-env-vars")
    )
    secrets = {r["key"]: f"{r['secret']}:{r['version']}" for r in sc.get("secretEnvironmentVariables", [])}
    secrets = apply_map(secrets, flags.get("update-secrets"), flags.get("remove-secrets"))
    overlap = set(secrets) & set(sc["environmentVariables"])
    if overlap:
        fail(f"INVALID_ARGUMENT: {overlap} is both a plain and a secret environment variable")
    for ref in secrets.values():
        name = ref.split(":")[0]
        if f"serviceAccount:{sc['serviceAccountEmail']}" not in S["secrets"][name]["accessors"]:
            fail(f"Permission denied on secret {name} for Revision service account {sc['serviceAccountEmail']}")
    sc["secretEnvironmentVariables"] = [
        {"key": k, "projectId": P, "secret": r.split(":")[0], "version": r.split(":")[1]}
        for k, r in sorted(secrets.items())
    ]
    for f in ("memory", "cpu", "concurrency", "max-instances", "timeout"):
        sc[f] = flags.get(f)
    fn["labels"] = apply_map(fn.get("labels", {}), flags.get("update-labels"), None)
    fn["entryPoint"] = flags["entry-point"]
    # Who may call it (IAM on its Cloud Run service, not part of what describe prints).
    if "allow-unauthenticated" in flags:
        fn["invokers"] = ["allUsers"]
    elif "no-allow-unauthenticated" in flags:
        fn["invokers"] = [m for m in fn.get("invokers", []) if m != "allUsers"]
    # Cloud Build gets what gcloud uploads: with ignore files off, the whole folder.
    # The webhook's uploads are "uploads"; any other function's go under its name.
    import shutil

    if flags["entry-point"] == "receive_audio":
        uploads = S.setdefault("uploads", [])
        copy = os.path.join(os.path.dirname(state_path), "uploads", str(len(uploads)))
    else:
        uploads = S.setdefault("other_uploads", {}).setdefault(pos[2], [])
        copy = os.path.join(os.path.dirname(state_path), "uploads", f"{pos[2]}-{len(uploads)}")
    shutil.copytree(flags["source"], copy, symlinks=True)
    uploads.append(sorted(os.path.relpath(os.path.join(d, f), copy) for d, _, fs in os.walk(copy) for f in fs))
    fn["source"] = copy
    if flags["entry-point"] == "receive_audio":
        start_server(fn)
    else:  # served by Cloud Run only: its own run.app address, which IAM guards
        sc["uri"] = f"https://{pos[2]}-a1b2c3d4e5-uc.a.run.app"
elif pos[:2] == ["functions", "delete"]:
    key = function_key(pos[2], flags["region"])
    fn = S.setdefault("functions", {}).pop(key, None)
    if fn is None:
        not_found(f"Resource 'projects/{P}/locations/{flags['region']}/functions/{pos[2]}'")
    if fn.get("pid"):
        try:
            os.killpg(fn["pid"], 15)
        except ProcessLookupError:
            pass
elif pos[:2] == ["functions", "add-invoker-policy-binding"]:
    fn = S.setdefault("functions", {}).get(function_key(pos[2], flags["region"]))
    if fn is None:
        not_found(f"Resource 'projects/{P}/locations/{flags['region']}/functions/{pos[2]}'")
    if flags["member"] not in fn.setdefault("invokers", []):
        fn["invokers"].append(flags["member"])
elif pos[:2] == ["scheduler", "jobs"]:
    if "cloudscheduler.googleapis.com" not in S.setdefault("services", []):
        fail(f"PERMISSION_DENIED: Cloud Scheduler API has not been used in project {P} before or it is disabled.")
    verb = pos[2]
    name = pos[4] if verb in ("create", "update") else pos[3]
    jobs = S.setdefault("scheduler_jobs", {})
    key = f"{flags['location']}/{name}"
    if verb == "describe":
        if key not in jobs:
            not_found(f"Job projects/{P}/locations/{flags['location']}/jobs/{name}")
        show([jobs[key]])
    elif verb in ("create", "update"):
        assert pos[3] == "http", args
        if (verb == "create") == (key in jobs):
            fail(f"ALREADY_EXISTS: Job {name} already exists" if key in jobs else f"NOT_FOUND: Job {name}")
        job = jobs.get(key) or {"name": f"projects/{P}/locations/{flags['location']}/jobs/{name}", "state": "ENABLED"}
        job.update(schedule=flags["schedule"], timeZone=flags["time-zone"], attemptDeadline=flags["attempt-deadline"])
        job["httpTarget"] = {
            "uri": flags["uri"],
            "httpMethod": flags["http-method"],
            "oidcToken": {
                "serviceAccountEmail": flags["oidc-service-account-email"],
                "audience": flags["oidc-token-audience"],
            },
        }
        jobs[key] = job
    elif verb == "delete":
        if jobs.pop(key, None) is None:
            not_found(f"Job projects/{P}/locations/{flags['location']}/jobs/{name}")
    else:
        fail(f"stub: unexpected call {args}")
elif pos[:2] == ["secrets", "describe"]:
    if pos[2] not in S.setdefault("secrets", {}):
        not_found(f"Secret [projects/{P}/secrets/{pos[2]}]")
    show([{"name": f"projects/{P}/secrets/{pos[2]}"}])
elif pos[:3] == ["secrets", "versions", "list"]:
    if pos[3] not in S.setdefault("secrets", {}):
        not_found(f"Secret [projects/{P}/secrets/{pos[3]}]")
    show(
        [
            {"name": f"projects/{P}/secrets/{pos[3]}/versions/{i + 1}", "state": v["state"]}
            for i, v in enumerate(S["secrets"][pos[3]]["versions"])
        ]
    )
elif pos[:3] == ["secrets", "versions", "access"]:
    v = S["secrets"][flags["secret"]]["versions"][int(pos[3]) - 1]
    if v["state"] != "ENABLED":
        fail(f"FAILED_PRECONDITION: version {pos[3]} is {v['state']}")
    sys.stdout.write(v["data"])
    sys.exit(0)
elif pos[:2] == ["secrets", "create"]:
    assert flags["data-file"] == "-"
    S.setdefault("secrets", {})[pos[2]] = {
        "versions": [{"state": "ENABLED", "data": sys.stdin.read()}],
        "accessors": [],
    }
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
        "location": flags["location"].upper(),
        "uniform_bucket_level_access": "uniform-bucket-level-access" in flags,
        "public_access_prevention": "enforced" if "public-access-prevention" in flags else "inherited",
    }
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
    if "enable-autoclass" in flags:
        if any(r["action"]["type"] == "SetStorageClass" for r in b.get("lifecycle_config", {}).get("rule", [])):
            fail("INVALID_ARGUMENT: SetStorageClass lifecycle actions are not allowed with Autoclass")
        terminal = flags.get("autoclass-terminal-storage-class") or "NEARLINE"
        b["autoclass"] = {"enabled": True, "terminalStorageClass": terminal}
elif pos[:3] == ["storage", "buckets", "add-iam-policy-binding"]:  # a binding already there is kept once
    bindings = S["buckets"][pos[3][5:]].setdefault("bindings", [])
    if [flags["member"], flags["role"]] not in bindings:
        bindings.append([flags["member"], flags["role"]])
elif pos[:3] == ["storage", "buckets", "remove-iam-policy-binding"]:
    bindings = S["buckets"][pos[3][5:]].setdefault("bindings", [])
    if [flags["member"], flags["role"]] not in bindings:
        fail("Policy binding with the specified principal, role, and condition not found!")
    bindings.remove([flags["member"], flags["role"]])
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
elif pos[:2] == ["logging", "metrics"]:
    metrics = S.setdefault("log_metrics", {})
    name = pos[3]
    if pos[2] == "describe":
        if name not in metrics:
            not_found(f"Metric {name} does not exist")
        show([{"name": name, **metrics[name]}])
    elif pos[2] in ("create", "update"):
        if (pos[2] == "create") == (name in metrics):
            fail(f"ALREADY_EXISTS: Metric {name} already exists" if name in metrics else f"NOT_FOUND: Metric {name}")
        metrics[name] = read_file("config-from-file")
    elif pos[2] == "delete":
        if metrics.pop(name, None) is None:
            not_found(f"Metric {name} does not exist")
    else:
        fail(f"stub: unexpected call {args}")
elif pos[:3] in (["beta", "monitoring", "channels"], ["alpha", "monitoring", "policies"]):
    if "monitoring.googleapis.com" not in S.setdefault("services", []):
        fail(f"PERMISSION_DENIED: Cloud Monitoring API has not been used in project {P} before or it is disabled.")
    kind, verb = pos[2], pos[3]
    items = S.setdefault(kind, [])
    found = [i for i in items if len(pos) > 4 and i["name"] == pos[4]]
    if verb in ("update", "delete") and not found:
        not_found(f"{kind[:-1]} {pos[4]}")
    if verb == "list":
        show(items)
    elif kind == "channels" and verb == "create":
        S["next_id"] = S.get("next_id", 100) + 1
        channel = {
            "name": f"projects/{P}/notificationChannels/{S['next_id']}",
            "type": flags["type"],
            "displayName": flags["display-name"],
            "labels": dict(kv.split("=", 1) for kv in flags["channel-labels"].split(",")),
            "userLabels": dict(kv.split("=", 1) for kv in flags["user-labels"].split(",")),
            "enabled": True,
        }
        items.append(channel)
        show([channel])
    elif kind == "channels" and verb == "update":
        found[0]["labels"].update(kv.split("=", 1) for kv in flags["update-channel-labels"].split(","))
    elif kind == "channels" and verb == "delete":
        users = [p for p in S.get("policies", []) if pos[4] in p.get("notificationChannels", [])]
        if users and "force" not in flags:
            fail(f"FAILED_PRECONDITION: channel {pos[4]} is used by {len(users)} alerting policies; use --force")
        for policy in users:
            policy["notificationChannels"].remove(pos[4])
        items.remove(found[0])
    elif kind == "policies" and verb in ("create", "update"):
        policy = read_file("policy-from-file")
        for channel in policy.get("notificationChannels", []):
            if channel not in [c["name"] for c in S.get("channels", [])]:
                fail(f"NOT_FOUND: notification channel {channel} does not exist")
        for condition in policy["conditions"]:
            threshold = condition["conditionThreshold"]
            for text in (threshold["filter"], threshold.get("denominatorFilter", "")):
                for metric in re.findall(r'metric\.type="logging\.googleapis\.com/user/([^"]+)"', text):
                    if metric not in S.get("log_metrics", {}):
                        metric_type = f"logging.googleapis.com/user/{metric}"
                        fail(f'NOT_FOUND: Cannot find metric(s) that match type = "{metric_type}".')
        if verb == "create":
            S["next_id"] = S.get("next_id", 100) + 1
            policy["name"] = f"projects/{P}/alertPolicies/{S['next_id']}"
            items.append(policy)
        else:
            policy["name"] = pos[4]
            items[items.index(found[0])] = policy
    elif kind == "policies" and verb == "delete":
        items.remove(found[0])
    else:
        fail(f"stub: unexpected call {args}")
else:
    fail(f"stub: unexpected call {args}")
save()
