#!/usr/bin/env bash
# Deploy receive_audio as a Cloud Function (gen2) that writes Omi audio into your
# own Cloud Storage bucket, prove the URL works, then print it for the Omi app.
# Run it again at any time: it keeps the token and every setting you do not change.

# Nothing this script sets may reach the programs it starts (gcloud, curl, python3)
# unless it exports it on purpose. allexport (bash -a, SHELLOPTS=allexport, set -a in
# a BASH_ENV file, which runs before this line) would export every token variable:
# off. A SHELLOPTS given in the environment stays exported and carries this shell's
# options (errexit, nounset, ...) into every bash child, /bin/sh on macOS included:
# unexported, so each child starts with its own defaults.
set +a
export -n SHELLOPTS
set -euo pipefail

# A trace (bash -x, SHELLOPTS=xtrace) would print the webhook token on the lines that
# handle it, so tracing stops here, before anything reads a token.
if [[ $- == *x* ]]; then
  set +x
  echo "deploy.sh: tracing is off for this run: it would print the webhook token. The commands that change something are printed anyway ('+ gcloud ...'); --dry-run prints them without running them." >&2
fi
# The token given for a first deploy or a rotation moves to a variable no child
# process (gcloud, curl, python3) inherits. Every variable that ever holds a token
# starts unset, so none carries an export from the caller's environment.
unset GIVEN_TOKEN ADD_TOKEN MIGRATED_TOKEN OUT
GIVEN_TOKEN="${WEBHOOK_TOKEN:-}"
unset WEBHOOK_TOKEN

usage() {
  cat <<'EOF'
Usage: GCS_BUCKET_NAME=my-omi-audio ./deploy.sh [option]

  (no option)         deploy, or update in place keeping the token and settings
  --dry-run           read what exists, print the commands that would change it
  --rotate-token      add a new token and print the new URL; the old one keeps
                      working until --finish-rotation
  --finish-rotation   stop accepting the old token (after pasting the new URL)
  --allow-any-uid     remove the ALLOWED_UIDS allow-list
  -h, --help          this text

Settings (environment variables; on a re-run, unset means "keep as deployed"):
  GCS_BUCKET_NAME       bucket for the audio; required on the first deploy
  GOOGLE_CLOUD_PROJECT  default: the gcloud config's project
  REGION                default: where the function runs, else us-central1
  FUNCTION_NAME         default: omi-audio
  SERVICE_ACCOUNT       default: the function's, else omi-audio-writer
  ALLOWED_UIDS          comma-separated uids (device names allowed); others get 403
  RETENTION_DAYS        delete the function's audio older than N days; 'forever'
                        removes that rule (in a bucket deploy.sh did not create,
                        it needs ALLOWED_UIDS: the rule covers their folders)
  REQUEST_LOG           'exclude' (first-deploy default): Cloud Run's request log,
                        which records each URL with its token, is not stored;
                        'keep': store it anyway
  WEBHOOK_TOKEN         the token for a first deploy or --rotate-token
                        (default: 32 random bytes)
  ALERT_EMAIL           mail this address (Cloud Monitoring, nothing on your
                        machine) when no audio chunk is stored for ALERT_AFTER,
                        or conversations are stored with no audio for an hour;
                        'none' removes that alert; unset leaves it as it is
  ALERT_AFTER           hours without a chunk before the mail, 1h to 25h
                        (e.g. 12h, 90m); default 24h, kept on a re-run
  COMPACT_AFTER_DAYS    each day, a second function folds every whole UTC day
                        older than N days into a few large objects (0-3650,
                        default 2); 0 turns that off and removes its schedule
EOF
}

die() {
  echo "deploy.sh: $*" >&2
  exit 1
}

DRY_RUN=0
ROTATE=0
FINISH=0
CLEAR_UIDS=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --rotate-token) ROTATE=1 ;;
    --finish-rotation) FINISH=1 ;;
    --allow-any-uid) CLEAR_UIDS=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "deploy.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
((ROTATE + FINISH < 2)) || die "--rotate-token and --finish-rotation are separate steps: paste the new URL into the app in between"

# The source is always this script's own folder, wherever it is run from.
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for f in main.py requirements.txt; do
  [[ -f "$SOURCE_DIR/$f" ]] || die "$SOURCE_DIR/$f is missing: run the deploy.sh that sits beside the function's code"
done
command -v gcloud >/dev/null || die "the Google Cloud CLI (gcloud) is not installed: https://cloud.google.com/sdk/docs/install"
command -v curl >/dev/null || die "curl is needed to test the deployed URL"

WORK="$(mktemp -d)"

# The upload is a staged copy holding exactly the function's files: the Python files
# at the root of this folder (main.py and the modules it imports) and
# requirements.txt. Nothing else (the tools in omi_audio/, recordings, exports, keys,
# .venv, .git) can leave the machine, whatever gcloud's ignore settings say.
STAGE="$WORK/source"
mkdir "$STAGE"
cp "$SOURCE_DIR"/*.py "$SOURCE_DIR/requirements.txt" "$STAGE/"
DONE=() # what is in place (found or made by this run), for the message if it stops midway

on_exit() {
  local status=$?
  rm -rf "$WORK"
  if ((status != 0 && ${#DONE[@]} > 0)); then
    echo >&2
    echo "deploy.sh stopped. In place so far (kept as it is):" >&2
    printf '  - %s\n' "${DONE[@]}" >&2
    echo "Fix the cause above and run the same command again: it resumes from there, creating nothing twice." >&2
  fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------
# 1. Check every setting before touching anything.
# ---------------------------------------------------------------------------

# Whitespace trimmed from both ends, as the function does with ALLOWED_UIDS.
trim() {
  local s="$1"
  s="${s#"${s%%[![:space:]]*}"}"
  printf '%s' "${s%"${s##*[![:space:]]}"}"
}

# The function compares each comma-separated entry, stripped, with the uid it
# receives: printable text of 1-128 bytes of UTF-8 (a phone sends its device name).
check_uids() {
  local LC_ALL=C rest="$1," entry
  while [[ -n "$rest" ]]; do
    entry="$(trim "${rest%%,*}")"
    rest="${rest#*,}"
    [[ -n "$entry" ]] || die "ALLOWED_UIDS has an empty entry ('$1'): list uids separated by single commas, or use --allow-any-uid to remove the allow-list"
    ((${#entry} <= 128)) || die "ALLOWED_UIDS entry '$entry' is longer than 128 bytes, so no uid can match it"
    if [[ "$entry" == *[[:cntrl:]]* || "$entry" == *$'\xc2'[$'\x80'-$'\x9f']* ]]; then
      die "ALLOWED_UIDS entry $(printf '%q' "$entry") has a control character, so no uid can match it"
    fi
    if command -v iconv >/dev/null && ! printf '%s' "$entry" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1; then
      die "ALLOWED_UIDS entry $(printf '%q' "$entry") is not valid UTF-8"
    fi
  done
}

FUNCTION_NAME="${FUNCTION_NAME:-omi-audio}"
[[ "$FUNCTION_NAME" =~ ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
  die "FUNCTION_NAME '$FUNCTION_NAME' must be 1-63 of a-z 0-9 -, starting with a letter"
BUCKET="${GCS_BUCKET_NAME:-}"
if [[ -n "$BUCKET" && ! "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]]; then
  die "'$BUCKET' is not a valid bucket name (3-63 of a-z 0-9 . _ -)"
fi
REGION_SET="${REGION:-}"
if [[ -n "$REGION_SET" && ! "$REGION_SET" =~ ^[a-z]+-[a-z]+[0-9]+$ ]]; then
  die "REGION '$REGION_SET' is not a region name such as us-central1 or europe-west1"
fi
SA_NAME="${SERVICE_ACCOUNT:-}"
if [[ -n "$SA_NAME" && ! "$SA_NAME" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
  die "SERVICE_ACCOUNT '$SA_NAME' must be 6-30 of a-z 0-9 -, starting with a letter"
fi
RETENTION_DAYS="${RETENTION_DAYS:-}"
if [[ -n "$RETENTION_DAYS" && ! "$RETENTION_DAYS" =~ ^([1-9][0-9]{0,4}|forever)$ ]]; then
  die "RETENTION_DAYS must be a whole number of days (1-99999), or 'forever' to remove the rule"
fi
if [[ -n "$RETENTION_DAYS" ]] && ! command -v python3 >/dev/null; then
  die "RETENTION_DAYS needs python3 (to merge the rule into the bucket's other lifecycle rules)"
fi
COMPACT_AFTER_DAYS="${COMPACT_AFTER_DAYS:-}"
if [[ -n "$COMPACT_AFTER_DAYS" ]] &&
  { [[ ! "$COMPACT_AFTER_DAYS" =~ ^(0|[1-9][0-9]{0,3})$ ]] || ((COMPACT_AFTER_DAYS > 3650)); }; then
  die "COMPACT_AFTER_DAYS must be a whole number of days from 0 to 3650 (0 turns the daily compaction off)"
fi
# The compaction function is named after the receiving one, and its upload is the
# compactor's main.py and lock, the root's modules and the tools' package.
COMPACT_FUNCTION="${FUNCTION_NAME}-compact"
if [[ "$COMPACT_AFTER_DAYS" != 0 ]]; then
  ((${#COMPACT_FUNCTION} <= 63)) ||
    die "FUNCTION_NAME '$FUNCTION_NAME' is too long to name its daily compaction '$COMPACT_FUNCTION' (63 characters at most): use a FUNCTION_NAME of 55 characters or fewer, or COMPACT_AFTER_DAYS=0"
  for f in compactor/main.py compactor/requirements.txt omi_audio/__init__.py; do
    [[ -f "$SOURCE_DIR/$f" ]] || die "$SOURCE_DIR/$f is missing: the daily compaction needs it (or set COMPACT_AFTER_DAYS=0 to deploy without it)"
  done
fi
REQUEST_LOG="${REQUEST_LOG:-}"
[[ "$REQUEST_LOG" =~ ^(|exclude|keep)$ ]] || die "REQUEST_LOG must be 'exclude' or 'keep'"
if [[ -n "${ALLOWED_UIDS+set}" ]]; then
  ((CLEAR_UIDS == 0)) || die "ALLOWED_UIDS and --allow-any-uid contradict each other: use one"
  [[ -n "$(trim "$ALLOWED_UIDS")" ]] ||
    die "ALLOWED_UIDS is set but blank, which would allow every uid: unset it to keep the deployed list, or use --allow-any-uid"
  check_uids "$ALLOWED_UIDS"
fi
# ALLOWED_UIDS goes to gcloud with a delimiter that appears in no value.
DELIM=""
for d in '|' ';' '@' '#' '~' '!' '%' '&' '*' '+' ':'; do
  if [[ "${ALLOWED_UIDS:-}" != *"$d"* ]]; then DELIM="$d"; break; fi
done
[[ -n "$DELIM" ]] || die "ALLOWED_UIDS uses every one of | ; @ # ~ ! % & * + : so deploy.sh cannot pass it to gcloud; drop one of them"
# The token travels in the URL, so it must be URL-safe, and the Omi app splits
# its setting on the first comma, so it must have none.
TOKEN_RE='^[A-Za-z0-9._~-]{16,}$'
if [[ -n "$GIVEN_TOKEN" && ! "$GIVEN_TOKEN" =~ $TOKEN_RE ]]; then
  die "WEBHOOK_TOKEN must be at least 16 characters of A-Z a-z 0-9 . _ ~ - (no comma)"
fi
# The alert: ALERT_EMAIL sets it up or changes its address, ALERT_AFTER its wait;
# ALERT_EMAIL=none removes it; neither leaves it (and Cloud Monitoring) alone.
ALERT_EMAIL="${ALERT_EMAIL:-}"
ALERT_AFTER="${ALERT_AFTER:-}"
ALERT_MODE="" # "" (leave it), "set" (create or update), "remove"
if [[ "$ALERT_EMAIL" == none ]]; then
  [[ -z "$ALERT_AFTER" ]] || die "ALERT_AFTER and ALERT_EMAIL=none contradict each other: ALERT_EMAIL=none removes the alert"
  ALERT_MODE="remove"
elif [[ -n "$ALERT_EMAIL$ALERT_AFTER" ]]; then
  ALERT_MODE="set"
fi
# The address goes to gcloud as --channel-labels=email_address=..., a list split on
# commas, and is read back split on '|'.
if [[ "$ALERT_MODE" == set && -n "$ALERT_EMAIL" && ! "$ALERT_EMAIL" =~ ^[^@[:space:],=|]+@[^@[:space:],=|]+\.[^@[:space:],=|]+$ ]]; then
  die "ALERT_EMAIL '$ALERT_EMAIL' is not an email address (or 'none', to remove the alert)"
fi
# ALERT_AFTER in seconds: the alert's look-back window. Cloud Monitoring aligns an
# alerting condition's data over at most 25 hours; under an hour, every break (the
# device charging, a quiet hour) would mail.
ALERT_AFTER_S=""
if [[ -n "$ALERT_AFTER" ]]; then
  if [[ "$ALERT_AFTER" =~ ^([1-9][0-9]{0,4})(m|h|d)?$ ]]; then
    case "${BASH_REMATCH[2]}" in
      m) ALERT_AFTER_S=$((BASH_REMATCH[1] * 60)) ;;
      d) ALERT_AFTER_S=$((BASH_REMATCH[1] * 86400)) ;;
      *) ALERT_AFTER_S=$((BASH_REMATCH[1] * 3600)) ;;
    esac
  fi
  ((${ALERT_AFTER_S:-0} >= 3600 && ${ALERT_AFTER_S:-0} <= 90000)) ||
    die "ALERT_AFTER must be 1h to 25h (e.g. 12h, 90m, 1d): Cloud Monitoring looks back at most 25 hours. For longer gaps, run omi-audio status on a schedule (docs/operations.md)."
fi

PROJECT="${GOOGLE_CLOUD_PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
[[ -n "$PROJECT" ]] || die "no project: set GOOGLE_CLOUD_PROJECT or run 'gcloud config set project PROJECT_ID'"
[[ "$PROJECT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "'$PROJECT' is not a project ID"

# ---------------------------------------------------------------------------
# 2. Read what exists. Only a NOT_FOUND answer means "missing"; any other
#    failure (login, network, permission) stops here, before anything changes.
# ---------------------------------------------------------------------------

# Run a read-only gcloud command, its output in $OUT. Returns 0 if found, 1 if
# the answer was NOT_FOUND; stops the script on any other failure.
probe() {
  local status=0
  "$@" >"$WORK/out" 2>"$WORK/err" || status=$?
  OUT="$(<"$WORK/out")"
  ((status == 0)) && return 0
  if grep -Eq 'NOT_FOUND|[Nn]ot found|404' "$WORK/err"; then return 1; fi
  cat "$WORK/err" >&2
  die "could not read '${*:1:4}' (the error above is not 'not found'). Nothing was changed. Check 'gcloud auth login', your network and your permissions on project $PROJECT, then run deploy.sh again."
}

# Print a command; run it unless --dry-run. Standard input passes through.
run() {
  echo "+ $(printf '%q ' "$@")" >&2
  if ((DRY_RUN == 0)); then "$@"; fi
}

# Run a command until it succeeds, waiting longer each time: a new service
# account takes a while to become visible to IAM everywhere.
retry() {
  local delay=2 attempt
  for attempt in 1 2 3 4 5 6; do
    if run "$@"; then return 0; fi
    ((attempt < 6)) || break
    echo "deploy.sh: that failed (IAM may still be propagating); trying again in ${delay}s" >&2
    sleep "$delay"
    delay=$((delay * 2))
  done
  die "gave up after 6 attempts (about 1 minute): see the error above"
}

probe gcloud projects describe "$PROJECT" --format='value(projectNumber)' ||
  die "project '$PROJECT' does not exist or you cannot see it: check GOOGLE_CLOUD_PROJECT and 'gcloud auth list'"
PROJECT_NUMBER="$OUT"

SERVICES=(cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com storage.googleapis.com iam.googleapis.com
  secretmanager.googleapis.com logging.googleapis.com)
# Cloud Monitoring holds the alert's email channel and policy, so it is enabled only
# by ALERT_EMAIL (logging.googleapis.com, above, holds the alert's log-based metric).
[[ "$ALERT_MODE" != set || -z "$ALERT_EMAIL" ]] || SERVICES+=(monitoring.googleapis.com)
probe gcloud services list --enabled --project="$PROJECT" --format='value(config.name)' || true
ENABLED_SERVICES="$OUT"
# Cloud Scheduler starts the daily compaction, so it is enabled only with compaction
# on: here when that is certain already (given, or a first deploy, which defaults to
# on); else once the deployed setting is read (below).
if [[ "$COMPACT_AFTER_DAYS" == [1-9]* ]] ||
  { [[ -z "$COMPACT_AFTER_DAYS" ]] && ! grep -qxF cloudfunctions.googleapis.com <<<"$ENABLED_SERVICES"; }; then
  SERVICES+=(cloudscheduler.googleapis.com)
fi
MISSING_SERVICES=()
for s in "${SERVICES[@]}"; do
  grep -qxF "$s" <<<"$OUT" || MISSING_SERVICES+=("$s")
done
if ((${#MISSING_SERVICES[@]} > 0)); then
  if [[ -z "$BUCKET" && " ${MISSING_SERVICES[*]} " == *" cloudfunctions.googleapis.com "* ]]; then
    die "set GCS_BUCKET_NAME to the bucket that will hold the audio, e.g. GCS_BUCKET_NAME=my-omi-audio ./deploy.sh"
  fi
  run gcloud services enable "${MISSING_SERVICES[@]}" --project="$PROJECT"
  DONE+=("enabled APIs: ${MISSING_SERVICES[*]}")
fi
# True if the API's resources can be read: always after a real enable; in a dry
# run an API still off holds nothing yet.
api_on() {
  ((DRY_RUN == 0)) || [[ " ${MISSING_SERVICES[*]:-} " != *" $1.googleapis.com "* ]]
}

describe_function() { # $1: the fields to print
  probe gcloud functions describe "$FUNCTION_NAME" --gen2 --project="$PROJECT" --region="$REGION" --format="$1"
}
# The label omi_audio_compact_after_days records COMPACT_AFTER_DAYS on the receiving
# function, so a re-run keeps it, 0 included (when nothing else of compaction exists).
FUNCTION_FIELDS='value[separator="|"](url,serviceConfig.serviceAccountEmail,serviceConfig.environmentVariables.GCS_BUCKET_NAME,labels.omi_audio_compact_after_days)'

# The region: as given, else where the function already runs, else us-central1.
REGION="${REGION_SET:-us-central1}"
FUNCTION_EXISTS=0
if api_on cloudfunctions; then
  if describe_function "$FUNCTION_FIELDS"; then
    FUNCTION_EXISTS=1
  elif [[ -z "$REGION_SET" ]]; then
    probe gcloud functions list --project="$PROJECT" --format='value(name)' || true
    while read -r name; do
      if [[ "$name" == */functions/"$FUNCTION_NAME" ]]; then
        REGION="${name#*/locations/}"
        REGION="${REGION%%/*}"
        echo "Found $FUNCTION_NAME in region $REGION; updating it there (set REGION to choose)." >&2
        describe_function "$FUNCTION_FIELDS" &&
          FUNCTION_EXISTS=1
        break
      fi
    done <<<"$OUT"
  fi
fi
FUNCTION_URL="https://${REGION}-${PROJECT}.cloudfunctions.net/${FUNCTION_NAME}"
DEPLOYED_SA=""
DEPLOYED_BUCKET=""
DEPLOYED_UIDS=""
DEPLOYED_COMPACT=""
if ((FUNCTION_EXISTS)); then
  IFS='|' read -r FUNCTION_URL DEPLOYED_SA DEPLOYED_BUCKET DEPLOYED_COMPACT <<<"$OUT"
  describe_function 'value(serviceConfig.environmentVariables.ALLOWED_UIDS)'
  DEPLOYED_UIDS="$OUT"
fi

BUCKET="${BUCKET:-$DEPLOYED_BUCKET}"
[[ -n "$BUCKET" ]] || die "set GCS_BUCKET_NAME to the bucket that will hold the audio, e.g. GCS_BUCKET_NAME=my-omi-audio ./deploy.sh"
if [[ -n "$DEPLOYED_BUCKET" && "$BUCKET" != "$DEPLOYED_BUCKET" ]]; then
  echo "Note: the function wrote to gs://$DEPLOYED_BUCKET until now; from this deploy on it writes to gs://$BUCKET." >&2
fi
if [[ -z "$SA_NAME" && "$DEPLOYED_SA" == *@"$PROJECT".iam.gserviceaccount.com ]]; then
  SA_NAME="${DEPLOYED_SA%@*}"
fi
SA_NAME="${SA_NAME:-omi-audio-writer}"
SA_EMAIL="${SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
# A custom role with exactly what the function does: create objects, and read one
# back when a write meets a name already taken (to tell its own earlier write from
# another writer's). storage.objects.get reads an object's data too: no permission
# reads metadata alone. No list, no delete, no overwrite.
ROLE_ID="omiAudioWriter"
ROLE_PERMISSIONS="storage.objects.create,storage.objects.get"
SECRET="${FUNCTION_NAME}-webhook-token"
EXCLUSION="${FUNCTION_NAME}-request-urls"
EXCLUSION_FILTER="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${FUNCTION_NAME}\" AND log_id(\"run.googleapis.com/requests\")"

# The token: versions of one secret. The newest enabled version is the current
# token; a second enabled version is the previous one, accepted until the
# rotation is finished.
SECRET_EXISTS=0
VERSIONS=()
if api_on secretmanager && probe gcloud secrets describe "$SECRET" --project="$PROJECT" --format='value(name)'; then
  SECRET_EXISTS=1
  probe gcloud secrets versions list "$SECRET" --project="$PROJECT" --filter='state=ENABLED' \
    --format='value(name.basename())' || die "secret $SECRET vanished while being read; run deploy.sh again"
  while read -r v; do VERSIONS+=("$v"); done < <(grep -E '^[0-9]+$' <<<"$OUT" | sort -rn)
fi
((${#VERSIONS[@]} <= 2)) ||
  die "secret $SECRET has ${#VERSIONS[@]} enabled versions; deploy.sh keeps at most two (current and previous). Disable the ones no URL uses: gcloud secrets versions disable VERSION --secret=$SECRET --project=$PROJECT"

# An earlier deploy.sh kept the token as a plain environment variable: carry it
# over so the URL in the app stays valid (unless WEBHOOK_TOKEN names a new one).
MIGRATED_TOKEN=""
if ((FUNCTION_EXISTS && ${#VERSIONS[@]} == 0)) && [[ -z "$GIVEN_TOKEN" ]]; then
  describe_function 'value(serviceConfig.environmentVariables.WEBHOOK_TOKEN)'
  MIGRATED_TOKEN="$OUT"
  : >"$WORK/out"
  if [[ -n "$MIGRATED_TOKEN" && ! "$MIGRATED_TOKEN" =~ $TOKEN_RE ]]; then
    die "the deployed WEBHOOK_TOKEN is not URL-safe; set a new one with WEBHOOK_TOKEN=... ./deploy.sh and paste the new URL"
  fi
fi

BUCKET_EXISTS=0
BUCKET_LABEL=""
AUTOCLASS=""
AUTOCLASS_TERMINAL=""
echo '{}' >"$WORK/lifecycle-now.json"
if api_on storage && probe gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT" \
  --format='value[separator="|"](uniform_bucket_level_access,public_access_prevention,location,labels.omi_audio_only,autoclass.enabled,autoclass.terminalStorageClass)'; then
  BUCKET_EXISTS=1
  IFS='|' read -r UBLA PAP LOCATION BUCKET_LABEL AUTOCLASS AUTOCLASS_TERMINAL <<<"$OUT"
  probe gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT" --format='json(lifecycle_config)' ||
    die "bucket gs://$BUCKET vanished while being read; run deploy.sh again"
  printf '%s' "$OUT" >"$WORK/lifecycle-now.json"
fi

SA_EXISTS=0
if api_on iam && probe gcloud iam service-accounts describe "$SA_EMAIL" --project="$PROJECT" --format='value(disabled)'; then
  SA_EXISTS=1
  [[ "$OUT" != True ]] ||
    die "service account $SA_EMAIL is disabled, so the function could not reach the bucket. If that was not deliberate: gcloud iam service-accounts enable $SA_EMAIL --project=$PROJECT, then run deploy.sh again."
fi

ROLE_STATE="missing"
if api_on iam && probe gcloud iam roles describe "$ROLE_ID" --project="$PROJECT" \
  --format='value[separator="|"](deleted,includedPermissions.list(separator=","))'; then
  ROLE_STATE="$OUT"
fi

# The daily compaction: a second, private function that folds each finished UTC day
# of chunks into a few large objects (omi-audio compact), started once a day by a
# Cloud Scheduler job. It runs as its own service account, holding a custom role with
# list, read, create and delete on this bucket only; the job calls it with an OIDC
# token of another account, which may invoke that function and nothing else.
# COMPACT_AFTER_DAYS unset keeps what the receiving function's label records, else 2.
if [[ -z "$COMPACT_AFTER_DAYS" ]]; then
  COMPACT_AFTER_DAYS=2
  if [[ "$DEPLOYED_COMPACT" =~ ^(0|[1-9][0-9]{0,3})$ ]] && ((DEPLOYED_COMPACT <= 3650)); then
    COMPACT_AFTER_DAYS="$DEPLOYED_COMPACT"
  fi
fi
COMPACT_JOB="${FUNCTION_NAME}-compact-daily"
COMPACT_SA_EMAIL="omi-audio-compactor@${PROJECT}.iam.gserviceaccount.com"
INVOKER_SA_EMAIL="omi-audio-scheduler@${PROJECT}.iam.gserviceaccount.com"
COMPACT_ROLE_ID="omiAudioCompactor"
COMPACT_ROLE_PERMISSIONS="storage.objects.create,storage.objects.delete,storage.objects.get,storage.objects.list"
# 03:17 UTC: after the day's last late batches (the phone retries for hours), off the
# hour that every other schedule picks.
COMPACT_SCHEDULE="17 3 * * *"
COMPACT_TIME_ZONE="Etc/UTC"
# A job waits at most 30 minutes for an HTTP answer (Cloud Scheduler's limit); the
# function runs on to its own timeout, and the next day's run resumes what is left.
COMPACT_DEADLINE="1800s"
SCHEDULER_ON=0
grep -qxF cloudscheduler.googleapis.com <<<"$ENABLED_SERVICES" && SCHEDULER_ON=1
if ((COMPACT_AFTER_DAYS > 0 && !SCHEDULER_ON)) && [[ " ${SERVICES[*]} " != *" cloudscheduler.googleapis.com "* ]]; then
  run gcloud services enable cloudscheduler.googleapis.com --project="$PROJECT"
  MISSING_SERVICES+=(cloudscheduler.googleapis.com)
  DONE+=("enabled API: cloudscheduler.googleapis.com")
fi
COMPACT_EXISTS=0
COMPACT_URI=""
COMPACT_CONFIG_NOW=""
if api_on cloudfunctions && probe gcloud functions describe "$COMPACT_FUNCTION" --gen2 --project="$PROJECT" --region="$REGION" \
  --format='value[separator="|"](serviceConfig.uri,labels.omi_audio_config)'; then
  COMPACT_EXISTS=1
  IFS='|' read -r COMPACT_URI COMPACT_CONFIG_NOW <<<"$OUT"
fi
JOB_EXISTS=0
JOB_NOW=""
if ((SCHEDULER_ON)) && probe gcloud scheduler jobs describe "$COMPACT_JOB" --project="$PROJECT" --location="$REGION" \
  --format='value[separator="|"](schedule,timeZone,httpTarget.uri,httpTarget.oidcToken.serviceAccountEmail,httpTarget.oidcToken.audience,attemptDeadline,state)'; then
  JOB_EXISTS=1
  JOB_NOW="$OUT"
fi
# Whether an account exists (stops here if it is disabled).
account_exists() { # $1: email, $2: what it could not do, disabled
  api_on iam && probe gcloud iam service-accounts describe "$1" --project="$PROJECT" --format='value(disabled)' || return 1
  [[ "$OUT" != True ]] ||
    die "service account $1 is disabled, so $2. If that was not deliberate: gcloud iam service-accounts enable $1 --project=$PROJECT, then run deploy.sh again (or set COMPACT_AFTER_DAYS=0)."
}
COMPACT_SA_EXISTS=0
INVOKER_SA_EXISTS=0
COMPACT_ROLE_STATE="missing"
if ((COMPACT_AFTER_DAYS > 0)); then
  account_exists "$COMPACT_SA_EMAIL" "the daily compaction could not reach the bucket" && COMPACT_SA_EXISTS=1
  account_exists "$INVOKER_SA_EMAIL" "Cloud Scheduler could not start the daily compaction" && INVOKER_SA_EXISTS=1
  if api_on iam && probe gcloud iam roles describe "$COMPACT_ROLE_ID" --project="$PROJECT" \
    --format='value[separator="|"](deleted,includedPermissions.list(separator=","))'; then
    COMPACT_ROLE_STATE="$OUT"
  fi
fi

EXCLUDED=0
if api_on logging && probe gcloud logging sinks describe _Default --project="$PROJECT" --format='value(exclusions[].name)'; then
  [[ ";$OUT;" == *";$EXCLUSION;"* ]] && EXCLUDED=1
fi

# The alert is three resources, nothing running on a schedule: a log-based metric
# counting the function's own log lines for each audio chunk stored (kind "stored")
# and each conversation stored (kind "conversation"); an email notification channel;
# and an alerting policy on that metric. The channel and the policy carry the user
# label omi_audio_alert=FUNCTION_NAME, by which a re-run finds them. Read only when
# ALERT_EMAIL or ALERT_AFTER is given.
ALERT_METRIC="${FUNCTION_NAME}-stored"
ALERT_LABEL="omi_audio_alert"
# The second condition's window: conversations stored in the last hour while no audio
# was. A conversation event comes minutes after its last words (the conversation ends
# after a silence, is processed, then posted, with retries of at most 36 s), and
# while anyone speaks the audio webhook posts every few seconds (the phone's own
# mode: every minute). So a working audio webhook always stored chunks in the hour
# before a conversation event, and an owner whose audio webhook alone died (Omi
# issue 7519) hears within about an hour of its last chunk, at the first conversation.
CONVERSATION_WINDOW_S=3600
METRIC_EXISTS=0
METRIC_NOW=""
CHANNELS=() # "name|email" of each channel labelled for this function
POLICIES=() # "name|config|after" of each policy labelled for this function
if [[ -n "$ALERT_MODE" ]]; then
  if api_on logging && probe gcloud logging metrics describe "$ALERT_METRIC" --project="$PROJECT" --format='value(description)'; then
    METRIC_EXISTS=1
    METRIC_NOW="$OUT"
  fi
  # Cloud Monitoring off (and not enabled by this run) holds no channel or policy.
  if grep -qxF monitoring.googleapis.com <<<"$ENABLED_SERVICES" ||
    { [[ " ${SERVICES[*]} " == *" monitoring.googleapis.com "* ]] && api_on monitoring; }; then
    probe gcloud beta monitoring channels list --project="$PROJECT" \
      --format="value[separator=\"|\"](name,userLabels.$ALERT_LABEL,labels.email_address)" || true
    while IFS='|' read -r name label email; do
      [[ "$label" != "$FUNCTION_NAME" ]] || CHANNELS+=("$name|$email")
    done <<<"$OUT"
    probe gcloud alpha monitoring policies list --project="$PROJECT" \
      --format="value[separator=\"|\"](name,userLabels.$ALERT_LABEL,userLabels.omi_audio_config,userLabels.omi_audio_after)" || true
    while IFS='|' read -r name label config after; do
      [[ "$label" != "$FUNCTION_NAME" ]] || POLICIES+=("$name|$config|$after")
    done <<<"$OUT"
  fi
fi

((!FUNCTION_EXISTS)) || DONE+=("function $FUNCTION_NAME in $REGION (already there)")
((!SECRET_EXISTS)) || DONE+=("token: secret $SECRET (already there)")
((!BUCKET_EXISTS)) || DONE+=("bucket gs://$BUCKET (already there)")
((!SA_EXISTS)) || DONE+=("service account $SA_EMAIL (already there)")

# ---------------------------------------------------------------------------
# 3. Decide the token versions this deploy pins.
# ---------------------------------------------------------------------------
CURRENT="${VERSIONS[0]:-}"
PREVIOUS="${VERSIONS[1]:-}"
ADD_TOKEN=""     # a new token value to add as a version (never on a command line)
NEW_TOKEN_KIND="" # what to tell the user about it
if [[ -z "$CURRENT" ]]; then
  if [[ -n "$MIGRATED_TOKEN" ]]; then
    ADD_TOKEN="$MIGRATED_TOKEN"
    NEW_TOKEN_KIND="migrated"
  else
    ADD_TOKEN="${GIVEN_TOKEN:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}"
    NEW_TOKEN_KIND="new"
  fi
elif ((ROTATE)); then
  if [[ -n "$PREVIOUS" ]]; then
    echo "A rotation is already in progress (token version $CURRENT is the new one); completing it rather than adding another." >&2
  else
    ADD_TOKEN="${GIVEN_TOKEN:-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}"
    NEW_TOKEN_KIND="rotated"
  fi
elif [[ -n "$GIVEN_TOKEN" ]]; then
  die "WEBHOOK_TOKEN is only used by a first deploy or --rotate-token; to change the token without losing audio, run: ./deploy.sh --rotate-token"
fi
if ((FINISH)) && [[ -z "$PREVIOUS" ]]; then
  echo "No rotation in progress: nothing to finish; checking the rest of the deployment." >&2
fi
[[ "$ADD_TOKEN" =~ $TOKEN_RE ]] || [[ -z "$ADD_TOKEN" ]] || die "internal: generated token is not URL-safe"

# REQUEST_LOG: unset keeps what an earlier run of this script chose (the
# exclusion is made before the secret, so a secret means a choice was made).
if [[ -z "$REQUEST_LOG" ]]; then
  if ((SECRET_EXISTS && !EXCLUDED)); then REQUEST_LOG=keep; else REQUEST_LOG=exclude; fi
fi

# The allow-list the function will hold (for the test chunk's uid).
if [[ -n "${ALLOWED_UIDS+set}" ]]; then
  UIDS_FOR_FUNCTION="$ALLOWED_UIDS"
elif ((CLEAR_UIDS)); then
  UIDS_FOR_FUNCTION=""
else
  UIDS_FOR_FUNCTION="$DEPLOYED_UIDS"
fi

# Retention: one Delete rule for the function's audio, decided here (before any
# change) and applied in step 4; the bucket's other lifecycle rules are kept as they
# are. Cloud Storage can match a name only by prefixes and suffixes, so:
#   - a bucket deploy.sh created (labelled omi_audio_only=true) holds only the
#     function's objects: the rule matches every audio name anywhere in it;
#   - in any other bucket it matches only inside the folders of the ALLOWED_UIDS, the
#     function's own; with no allow-list there is no such rule, and RETENTION_DAYS is
#     refused rather than guessed.
# A folder once in the rule stays in it, so a uid taken off the list still has its old
# audio deleted. Conversations (.json) are never matched.
DEDICATED=0
if ((!BUCKET_EXISTS)) || [[ "$BUCKET_LABEL" == true ]]; then DEDICATED=1; fi
LIFECYCLE_CHANGE="" # "update" (to $WORK/lifecycle.json) or "clear"
if [[ -n "$RETENTION_DAYS" ]] || grep -q '\.wav"' "$WORK/lifecycle-now.json"; then
  command -v python3 >/dev/null ||
    die "RETENTION_DAYS and the bucket's retention rule need python3 (to merge the rule into the bucket's other lifecycle rules)"
  printf '%s' "$UIDS_FOR_FUNCTION" >"$WORK/uids"
  status=0
  PYTHONPATH="$SOURCE_DIR" python3 - "$WORK/lifecycle-now.json" "$WORK/uids" "$RETENTION_DAYS" "$DEDICATED" "$BUCKET" "$WORK/retention" \
    >"$WORK/lifecycle.json" <<'PY' || status=$?
import json, re, sys

now_path, uids_path, days_given, dedicated, bucket, summary_path = sys.argv[1:]
rules = ((json.load(open(now_path)) or {}).get("lifecycle_config") or {}).get("rule") or []
# Every audio name the function writes ends in "Z.wav", or in "Z-N.wav" after a name
# clash (N up to storage.MAX_NAME_SUFFIX), which ends in a digit and ".wav".
SUFFIXES = ["Z.wav", *(f"{d}.wav" for d in range(10))]
EARLIER = sorted([f"{d}Z.wav" for d in range(10)] + [f"Z-{n}.wav" for n in range(1, 10)])  # an earlier deploy.sh's


# A compacted day's objects ("<uid folder>/compacted/<YYYY-MM-DD>/...", written by
# omi-audio compact) end in one of these and carry a customTime at the end of the UTC
# day they hold: the second rule deletes them that many days after that day, as the
# first deletes a chunk that many days after it was received.
COMPACTED = [".flac", ".wav", ".json.gz"]


def is_ours(rule):
    condition = rule.get("condition", {})
    suffixes = sorted(condition.get("matchesSuffix") or [])
    if rule.get("action", {}).get("type") != "Delete":
        return False
    if "daysSinceCustomTime" in condition:
        return suffixes == sorted(COMPACTED) and set(condition) <= {"daysSinceCustomTime", "matchesSuffix", "matchesPrefix"}
    return suffixes in (sorted(SUFFIXES), EARLIER)


# The uid's folder, as the function names it: names.py beside this script (standard library only).
from names import uid_prefix as folder  # noqa: E402


def say(message):
    print(message, file=sys.stderr)


ours = [r for r in rules if is_ours(r)]
kept = [r for r in rules if not is_ours(r)]
if days_given:
    for r in kept:
        if r.get("action", {}).get("type") == "Delete" and set(r.get("condition", {})) == {"age"}:
            say(f"Note: the bucket also has a rule deleting EVERY object older than {r['condition']['age']} days "
                "(an earlier deploy.sh wrote such a rule); it is kept. Remove it in the console if unwanted.")
found = [r["condition"].get("age", r["condition"].get("daysSinceCustomTime")) for r in ours]
days = None if days_given == "forever" else int(days_given) if days_given else (found[0] if found else None)
allowed = open(uids_path, "rb").read().decode().strip()  # the function's own reading of ALLOWED_UIDS
uids = sorted({u.strip() for u in allowed.split(",")}) if allowed else []
want = list(kept)
if days is not None:
    condition = {"age": days, "matchesSuffix": SUFFIXES}
    where = "anywhere in the bucket (deploy.sh created it for the function's objects alone)"
    if dedicated != "1":
        earlier_prefixes = {p for r in ours for p in r["condition"].get("matchesPrefix") or []}
        if not uids and (days_given or earlier_prefixes):
            say(f"deploy.sh: retention needs ALLOWED_UIDS here. gs://{bucket} was not created by deploy.sh, so it may "
                "hold other objects, and a lifecycle rule can tell the function's audio from them only by folder: the "
                "folders of the allowed uids. With no allow-list (any uid may write) no rule can cover all of the "
                "function's audio and nothing else. Either set ALLOWED_UIDS to your uid(s); or, if the bucket holds "
                f"only this function's objects, say so with: gcloud storage buckets update gs://{bucket} "
                "--update-labels=omi_audio_only=true; or set RETENTION_DAYS=forever to remove the rule. Nothing "
                "was changed by this step; run deploy.sh again after.")
            sys.exit(1)
        if not uids:
            say(f"Note: gs://{bucket} has the retention rule an earlier deploy.sh wrote. It deletes objects older than "
                f"{days} days whose names end in <digit>Z.wav or Z-1.wav to Z-9.wav ANYWHERE in the bucket, not only "
                "the function's audio, and misses the function's names ending -10.wav and up. It is kept as it is: to "
                "replace it, set ALLOWED_UIDS, or label the bucket (gcloud storage buckets update "
                f"gs://{bucket} --update-labels=omi_audio_only=true) if it holds only this function's objects, "
                "or set RETENTION_DAYS=forever to remove it.")
            sys.exit(0)
        condition["matchesPrefix"] = sorted(earlier_prefixes | {folder(u) + "/" for u in uids})
        where = "in the folders " + ", ".join(condition["matchesPrefix"])
    want.append({"action": {"type": "Delete"}, "condition": condition})
    compacted = {"daysSinceCustomTime": days, "matchesSuffix": COMPACTED}
    if "matchesPrefix" in condition:
        compacted["matchesPrefix"] = condition["matchesPrefix"]
    want.append({"action": {"type": "Delete"}, "condition": compacted})


def canonical(rs):
    return sorted(json.dumps(r, sort_keys=True) for r in rs)


if canonical(want) == canonical(rules):
    sys.exit(0)
with open(summary_path, "w") as summary:  # said when the change is made
    if days is None:
        print("Retention: rule removed; the function's audio is kept until you delete it.", file=summary)
    else:
        print(f"Retention: audio older than {days} days is deleted: objects whose names end in Z.wav or in a "
              f"digit and .wav, and compacted days' objects (.flac, .wav, .json.gz) {days} days after the end of "
              f"the UTC day they hold, {where}. Conversations (.json) are kept.", file=summary)
json.dump({"rule": want}, sys.stdout)
sys.exit(3 if want else 4)
PY
  case "$status" in
    0) ;;
    3) LIFECYCLE_CHANGE=update ;;
    4) LIFECYCLE_CHANGE=clear ;;
    *) exit 1 ;;
  esac
fi

# The alert: which channel and policy to keep (the first found; any other labelled
# for this function is a duplicate, removed), the address, the wait, and the two
# files gcloud reads. Each file's checksum goes into the resource (the metric's
# description, the policy's label omi_audio_config), so a re-run changes a resource
# only when what deploy.sh would write differs from what it wrote last time.
json_str() { # $1 as a JSON string
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "${s//$'\n'/\\n}"
}
duration_text() { # seconds as "24 h", "1 h 30 min"
  local h=$(($1 / 3600)) m=$(($1 % 3600 / 60))
  if ((m == 0)); then echo "$h h"; else echo "$h h $m min"; fi
}
# Every line main.py writes for a chunk stored ("stored", "stored (found from an
# earlier attempt)") or a conversation stored ("conversation stored", "conversation
# already stored"), from this function only (gen2 functions run on Cloud Run).
LOG_FILTER="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$FUNCTION_NAME\" AND jsonPayload.status=200 AND jsonPayload.message=~\"^(stored|conversation stored|conversation already stored)\""
metric_description() { # $1: the config checksum
  echo "Audio chunks (kind stored) and conversations (kind conversation) that the function $FUNCTION_NAME stored, counted from its log lines for the alert deploy.sh set up. Config $1."
}
metric_json() { # $1: the config checksum
  cat <<EOF
{
  "description": $(json_str "$(metric_description "$1")"),
  "filter": $(json_str "$LOG_FILTER"),
  "labelExtractors": {"kind": $(json_str 'REGEXP_EXTRACT(jsonPayload.message, "^(stored|conversation)")')},
  "metricDescriptor": {
    "metricKind": "DELTA",
    "valueType": "INT64",
    "unit": "1",
    "labels": [{"key": "kind", "valueType": "STRING", "description": "stored: an audio chunk; conversation: a conversation event"}]
  }
}
EOF
}
# Two conditions, either of which mails. Each sums the metric over a window that
# slides with every evaluation, across all of the function's revisions (each deploy
# makes a new one, and with it new time series):
#   1. fewer than 1 chunk stored in the last ALERT_AFTER. No data at all counts as a
#      breach (evaluationMissingData), as a log-based metric writes no points while
#      nothing matches. A metric-absence condition would say the same, but it
#      cannot wait longer than 23.5 hours; a window can be up to 25 hours.
#   2. of the chunks and conversations stored in the last hour, all were
#      conversations (more than 0.999 of them, so 1 chunk beside 1,000 conversations
#      would not count): conversations arrive, audio does not. No data is no breach.
policy_json() { # $1: the channel's name, $2: the config checksum
  local metric after window doc
  metric="metric.type=\"logging.googleapis.com/user/$ALERT_METRIC\" AND resource.type=\"cloud_run_revision\""
  after="$(duration_text "$ALERT_AFTER_S")"
  window="$(duration_text "$CONVERSATION_WINDOW_S")"
  doc="Audio from the Omi webhook function **$FUNCTION_NAME** (project $PROJECT, bucket gs://$BUCKET) has stopped arriving.

- *No audio chunk stored for $after*: nothing reached the bucket for that long. In the Omi app, look at Settings > Developer Mode > Realtime audio bytes (Omi turns a webhook off after 100 failed requests, and says so only on the phone), and check that the phone is online with the app running.
- *Conversations stored with no audio for $window*: Omi still posts conversation events but no audio: the Realtime audio bytes webhook alone has stopped. Paste the URL deploy.sh printed under Realtime audio bytes again.

The omi-audio status command tells when the last chunk arrived. Another mail comes when audio arrives again. To change or remove this alert, see docs/operations.md in the omi-audio-gcs folder."
  cat <<EOF
{
  "displayName": $(json_str "Omi audio stopped ($FUNCTION_NAME)"),
  "userLabels": {"$ALERT_LABEL": "$FUNCTION_NAME", "omi_audio_after": "$ALERT_AFTER_S", "omi_audio_config": "$2"},
  "documentation": {"mimeType": "text/markdown", "content": $(json_str "$doc")},
  "combiner": "OR",
  "enabled": true,
  "notificationChannels": [$(json_str "$1")],
  "conditions": [
    {
      "displayName": $(json_str "No audio chunk stored for $after"),
      "conditionThreshold": {
        "filter": $(json_str "$metric AND metric.label.kind=\"stored\""),
        "aggregations": [{"alignmentPeriod": "${ALERT_AFTER_S}s", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}],
        "comparison": "COMPARISON_LT",
        "thresholdValue": 1,
        "duration": "60s",
        "evaluationMissingData": "EVALUATION_MISSING_DATA_ACTIVE",
        "trigger": {"count": 1}
      }
    },
    {
      "displayName": $(json_str "Conversations stored with no audio for $window"),
      "conditionThreshold": {
        "filter": $(json_str "$metric AND metric.label.kind=\"conversation\""),
        "aggregations": [{"alignmentPeriod": "${CONVERSATION_WINDOW_S}s", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}],
        "denominatorFilter": $(json_str "$metric"),
        "denominatorAggregations": [{"alignmentPeriod": "${CONVERSATION_WINDOW_S}s", "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}],
        "comparison": "COMPARISON_GT",
        "thresholdValue": 0.999,
        "duration": "60s",
        "evaluationMissingData": "EVALUATION_MISSING_DATA_INACTIVE",
        "trigger": {"count": 1}
      }
    }
  ]
}
EOF
}
CHANNEL=""
CHANNEL_EMAIL=""
POLICY=""
POLICY_CONFIG=""
POLICY_AFTER=""
METRIC_CHANGE="" # "create" or "update"
if [[ "$ALERT_MODE" == set ]]; then
  ((${#CHANNELS[@]} == 0)) || IFS='|' read -r CHANNEL CHANNEL_EMAIL <<<"${CHANNELS[0]}"
  ((${#POLICIES[@]} == 0)) || IFS='|' read -r POLICY POLICY_CONFIG POLICY_AFTER <<<"${POLICIES[0]}"
  ALERT_TO="${ALERT_EMAIL:-$CHANNEL_EMAIL}"
  [[ -n "$ALERT_TO" ]] || die "ALERT_AFTER changes the alert, and there is none yet: set ALERT_EMAIL to the address to mail too"
  if [[ -z "$ALERT_AFTER_S" ]]; then # kept as deployed, else 24 hours
    ALERT_AFTER_S=86400
    if [[ "$POLICY_AFTER" =~ ^[0-9]{4,5}$ ]] && ((POLICY_AFTER >= 3600 && POLICY_AFTER <= 90000)); then
      ALERT_AFTER_S="$POLICY_AFTER"
    fi
  fi
  metric_json "" >"$WORK/alert-metric.json"
  METRIC_CONFIG="c$(cksum <"$WORK/alert-metric.json" | cut -d' ' -f1)"
  metric_json "$METRIC_CONFIG" >"$WORK/alert-metric.json"
  if ((!METRIC_EXISTS)); then
    METRIC_CHANGE="create"
  elif [[ "$METRIC_NOW" != "$(metric_description "$METRIC_CONFIG")" ]]; then
    METRIC_CHANGE="update"
  fi
  ((!METRIC_EXISTS)) || DONE+=("log-based metric $ALERT_METRIC (already there)")
  [[ -z "$CHANNEL" ]] || DONE+=("alert email channel for $CHANNEL_EMAIL (already there)")
  [[ -z "$POLICY" ]] || DONE+=("alerting policy $POLICY (already there)")
fi

# ---------------------------------------------------------------------------
# 4. Make the changes, each only if needed.
# ---------------------------------------------------------------------------

# Cloud Run's request log records every request URL, token included. Excluding
# this service's request log from the _Default sink keeps it out of storage;
# the function's own log line (which never holds the token) still lands.
if [[ "$REQUEST_LOG" == exclude && "$EXCLUDED" == 0 ]]; then
  run gcloud logging sinks update _Default --project="$PROJECT" \
    --add-exclusion="name=$EXCLUSION,description=Cloud Run request URLs of $FUNCTION_NAME carry its webhook token,filter=$EXCLUSION_FILTER"
  DONE+=("_Default log sink: exclusion $EXCLUSION (request URLs are not stored)")
elif [[ "$REQUEST_LOG" == keep && "$EXCLUDED" == 1 ]]; then
  run gcloud logging sinks update _Default --project="$PROJECT" --remove-exclusions="$EXCLUSION"
  echo "REQUEST_LOG=keep: Cloud Run's request log will store each URL, token included." >&2
  DONE+=("_Default log sink: exclusion $EXCLUSION removed")
fi

# The alert's metric and channel come before the function, so that the metric counts
# the test chunk of step 5; the policy comes after that chunk (alert_policy, below).
# What gcloud prints goes to stderr: standard output is for the URL.
case "$ALERT_MODE" in
  set)
    if [[ -n "$METRIC_CHANGE" ]]; then
      run gcloud logging metrics "$METRIC_CHANGE" "$ALERT_METRIC" --project="$PROJECT" \
        --config-from-file="$WORK/alert-metric.json" >&2
      DONE+=("log-based metric $ALERT_METRIC (${METRIC_CHANGE}d)")
    fi
    for ((i = 1; i < ${#POLICIES[@]}; i++)); do # (index loops: bash 3.2 calls an empty "${a[@]}" unbound)
      echo "Removing a second alerting policy for $FUNCTION_NAME (one is enough): ${POLICIES[i]%%|*}" >&2
      run gcloud alpha monitoring policies delete "${POLICIES[i]%%|*}" --project="$PROJECT" --quiet >&2
    done
    if [[ -z "$CHANNEL" ]]; then
      CHANNEL="$(run gcloud beta monitoring channels create --project="$PROJECT" --type=email \
        --display-name="Omi audio alert ($FUNCTION_NAME)" --channel-labels="email_address=$ALERT_TO" \
        --user-labels="$ALERT_LABEL=$FUNCTION_NAME" --format='value(name)')"
      CHANNEL="${CHANNEL:-projects/$PROJECT/notificationChannels/NEW}" # a dry run creates nothing
      DONE+=("alert email channel for $ALERT_TO")
    elif [[ "$CHANNEL_EMAIL" != "$ALERT_TO" ]]; then
      run gcloud beta monitoring channels update "$CHANNEL" --project="$PROJECT" \
        --update-channel-labels="email_address=$ALERT_TO" >&2
      DONE+=("alert email channel: now to $ALERT_TO")
    fi
    for ((i = 1; i < ${#CHANNELS[@]}; i++)); do
      echo "Removing a second alert email channel for $FUNCTION_NAME (one is enough): ${CHANNELS[i]%%|*}" >&2
      run gcloud beta monitoring channels delete "${CHANNELS[i]%%|*}" --project="$PROJECT" --force --quiet >&2
    done
    ;;
  remove)
    # The policy first: it refers to the channel, and it is what mails.
    for ((i = 0; i < ${#POLICIES[@]}; i++)); do
      run gcloud alpha monitoring policies delete "${POLICIES[i]%%|*}" --project="$PROJECT" --quiet >&2
      DONE+=("alerting policy ${POLICIES[i]%%|*} removed")
    done
    for ((i = 0; i < ${#CHANNELS[@]}; i++)); do
      run gcloud beta monitoring channels delete "${CHANNELS[i]%%|*}" --project="$PROJECT" --force --quiet >&2
      DONE+=("alert email channel ${CHANNELS[i]%%|*} removed")
    done
    if ((METRIC_EXISTS)); then
      run gcloud logging metrics delete "$ALERT_METRIC" --project="$PROJECT" --quiet >&2
      DONE+=("log-based metric $ALERT_METRIC removed")
    fi
    if ((${#POLICIES[@]} + ${#CHANNELS[@]} + METRIC_EXISTS == 0)); then
      echo "ALERT_EMAIL=none: there is no alert for $FUNCTION_NAME to remove." >&2
    fi
    ;;
esac

# The alerting policy, created or changed only when what it would be differs from
# what is there. A log-based metric made moments ago can take up to 10 minutes to
# become visible to Cloud Monitoring, which until then refuses a policy that names it.
alert_policy() {
  local config attempt verb
  policy_json "$CHANNEL" "" >"$WORK/alert-policy.json"
  config="c$(cksum <"$WORK/alert-policy.json" | cut -d' ' -f1)"
  [[ "$config" != "$POLICY_CONFIG" ]] || return 0
  policy_json "$CHANNEL" "$config" >"$WORK/alert-policy.json"
  if [[ -n "$POLICY" ]]; then verb=(update "$POLICY"); else verb=(create); fi
  for attempt in 1 2 3 4 5 6 7 8 9 10 11; do
    if run gcloud alpha monitoring policies "${verb[@]}" --project="$PROJECT" \
      --policy-from-file="$WORK/alert-policy.json" >&2 2>"$WORK/err"; then
      cat "$WORK/err" >&2
      DONE+=("alerting policy (${verb[0]}d): mail to $ALERT_TO after $(duration_text "$ALERT_AFTER_S") without audio")
      return 0
    fi
    cat "$WORK/err" >&2
    if ((attempt == 11)) || ! grep -Eq 'Cannot find metric|metric referenced by the provided filter is unknown' "$WORK/err"; then
      die "the alerting policy was not ${verb[0]}d (see the error above). The function works; run deploy.sh again to finish the alert."
    fi
    echo "deploy.sh: Cloud Monitoring does not see the log-based metric $ALERT_METRIC yet (a new one can take up to 10 minutes); trying again in 60s" >&2
    sleep 60
  done
}

# The token is written from standard input, never a command line. It comes from a
# process substitution, not a pipe: a dry run's `run` reads nothing, and a printf
# writing into a pipe nobody reads dies of SIGPIPE, which pipefail made the run's end.
if [[ -n "$ADD_TOKEN" ]]; then
  if ((SECRET_EXISTS)); then
    run gcloud secrets versions add "$SECRET" --project="$PROJECT" --data-file=- < <(printf '%s' "$ADD_TOKEN")
  else
    run gcloud secrets create "$SECRET" --project="$PROJECT" \
      --replication-policy=automatic --data-file=- < <(printf '%s' "$ADD_TOKEN")
  fi
  if ((DRY_RUN == 0)); then
    probe gcloud secrets versions list "$SECRET" --project="$PROJECT" --filter='state=ENABLED' \
      --format='value(name.basename())' || die "secret $SECRET vanished just after being written; run deploy.sh again"
    NEWEST="$(grep -E '^[0-9]+$' <<<"$OUT" | sort -rn | head -n 1)"
  else
    NEWEST="$((${CURRENT:-0} + 1))"
  fi
  [[ -z "$CURRENT" ]] || PREVIOUS="$CURRENT"
  CURRENT="$NEWEST"
  DONE+=("token: secret $SECRET version $CURRENT")
fi
ADD_TOKEN=""
if ((FINISH)); then PREVIOUS=""; fi

# The bucket: private by construction. Uniform bucket-level access means IAM
# alone decides who reads it; public access prevention refuses any public grant.
if ((BUCKET_EXISTS)); then
  if [[ "$UBLA" != True || "$PAP" != enforced ]]; then
    echo "Existing bucket gs://$BUCKET: turning on uniform bucket-level access and public access prevention (object ACLs stop applying; IAM alone decides access)." >&2
    run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" \
      --uniform-bucket-level-access --public-access-prevention
    DONE+=("bucket gs://$BUCKET: uniform access and public access prevention on")
  fi
  LOCATION="$(tr '[:upper:]' '[:lower:]' <<<"$LOCATION")"
  if [[ -n "$LOCATION" && "$LOCATION" != "$REGION" ]]; then
    echo "Note: bucket gs://$BUCKET is in $LOCATION, the function in $REGION (works; traffic crosses regions)." >&2
  fi
else
  run gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
  # The label records that deploy.sh made this bucket for the function's objects
  # alone, so retention may match the function's names anywhere in it.
  run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" --update-labels=omi_audio_only=true
  DONE+=("bucket gs://$BUCKET")
fi

[[ -z "$LIFECYCLE_CHANGE" ]] || cat "$WORK/retention" >&2
case "$LIFECYCLE_CHANGE" in
  update)
    run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" --lifecycle-file="$WORK/lifecycle.json"
    DONE+=("bucket gs://$BUCKET: retention rule set")
    ;;
  clear)
    run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" --clear-lifecycle
    DONE+=("bucket gs://$BUCKET: retention rule removed")
    ;;
esac

# The storage class, with compaction on: Autoclass moves each object by its own reads,
# down to Archive while a compacted day lies unread and back to Standard when it is
# read (a chunk, under 128 KiB, stays in Standard). Only in a bucket deploy.sh made:
# in any other, the owner's other objects would move too.
if ((COMPACT_AFTER_DAYS > 0)) && [[ "$AUTOCLASS" != True || "$AUTOCLASS_TERMINAL" != ARCHIVE ]]; then
  if ((!DEDICATED)); then
    echo "Storage class: gs://$BUCKET is left as it is (deploy.sh did not create it, so Autoclass would move your other objects too); if that suits them, let compacted days move to Archive by themselves: gcloud storage buckets update gs://$BUCKET --enable-autoclass --autoclass-terminal-storage-class=ARCHIVE" >&2
  elif grep -q '"SetStorageClass"' "$WORK/lifecycle-now.json"; then
    echo "Storage class: gs://$BUCKET has a lifecycle rule that changes storage classes, which Autoclass does not allow beside it; the class is left as it is. Remove that rule and run deploy.sh again to turn Autoclass on." >&2
  else
    run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" \
      --enable-autoclass --autoclass-terminal-storage-class=ARCHIVE
    DONE+=("bucket gs://$BUCKET: Autoclass on, down to Archive")
  fi
fi

# The identity the function runs as, holding the custom role on this bucket only.
if ((!SA_EXISTS)); then
  run gcloud iam service-accounts create "$SA_NAME" --project="$PROJECT" \
    --display-name="Omi audio webhook (writes to gs://$BUCKET)"
  DONE+=("service account $SA_EMAIL")
fi
# A custom role as wanted: created, restored if it was deleted, its permissions set.
ensure_role() { # $1: id, $2: title, $3: description, $4: permissions, $5: "missing" or "deleted|permissions"
  local deleted has
  IFS='|' read -r deleted has <<<"$5"
  if [[ "$5" == missing ]]; then
    run gcloud iam roles create "$1" --project="$PROJECT" --title="$2" --description="$3" --permissions="$4" --stage=GA
    DONE+=("custom role $1")
    return
  fi
  if [[ "$deleted" == True ]]; then
    echo "Custom role $1 was deleted; restoring it." >&2
    run gcloud iam roles undelete "$1" --project="$PROJECT"
    DONE+=("custom role $1 restored")
  fi
  if [[ "$has" != "$4" ]]; then
    run gcloud iam roles update "$1" --project="$PROJECT" --permissions="$4" --quiet
    DONE+=("custom role $1: permissions set")
  fi
}
ensure_role "$ROLE_ID" "Omi audio writer" "Create audio objects and read one back to reconcile a retried upload" \
  "$ROLE_PERMISSIONS" "$ROLE_STATE"
retry gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
  --member="serviceAccount:$SA_EMAIL" --role="projects/$PROJECT/roles/$ROLE_ID"
# The compaction's identity: its own account, holding a custom role with exactly what
# omi-audio compact does (list a day's chunks, read them, write the compacted objects,
# delete the chunks they replace) on this bucket only; and the account Cloud Scheduler
# signs its daily call with, allowed to invoke the compaction function alone (below).
if ((COMPACT_AFTER_DAYS > 0)); then
  if ((!COMPACT_SA_EXISTS)); then
    run gcloud iam service-accounts create "${COMPACT_SA_EMAIL%@*}" --project="$PROJECT" \
      --display-name="Omi audio compaction (compacts gs://$BUCKET daily)"
    DONE+=("service account $COMPACT_SA_EMAIL")
  fi
  if ((!INVOKER_SA_EXISTS)); then
    run gcloud iam service-accounts create "${INVOKER_SA_EMAIL%@*}" --project="$PROJECT" \
      --display-name="Omi audio scheduler (starts $COMPACT_FUNCTION daily)"
    DONE+=("service account $INVOKER_SA_EMAIL")
  fi
  ensure_role "$COMPACT_ROLE_ID" "Omi audio compactor" \
    "List, read, write and delete audio objects to compact finished days" \
    "$COMPACT_ROLE_PERMISSIONS" "$COMPACT_ROLE_STATE"
  retry gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
    --member="serviceAccount:$COMPACT_SA_EMAIL" --role="projects/$PROJECT/roles/$COMPACT_ROLE_ID" >&2
  DONE+=("access: $COMPACT_SA_EMAIL may list, read, write and delete in gs://$BUCKET")
fi

# Only the function's identity may read the token (besides project owners).
retry gcloud secrets add-iam-policy-binding "$SECRET" --project="$PROJECT" \
  --member="serviceAccount:$SA_EMAIL" --role=roles/secretmanager.secretAccessor
DONE+=("access: $SA_EMAIL may write to gs://$BUCKET and read secret $SECRET")

# Removals apply before updates, so WEBHOOK_TOKEN_PREVIOUS is dropped unless a
# rotation is in progress.
SECRETS="WEBHOOK_TOKEN=$SECRET:$CURRENT"
[[ -z "$PREVIOUS" ]] || SECRETS="$SECRETS,WEBHOOK_TOKEN_PREVIOUS=$SECRET:$PREVIOUS"
# THREADS: as many server threads as --concurrency (below). MALLOC_MMAP_THRESHOLD_:
# glibc maps every buffer over 128 KiB on its own and returns it when freed, so
# large bodies do not linger in per-thread arenas. NO_PROXY: requests skips its
# proxy lookup for Cloud Storage on every call. (bench/measure.py measures this.)
ENV_VARS="^$DELIM^GCS_BUCKET_NAME=$BUCKET${DELIM}THREADS=16${DELIM}MALLOC_MMAP_THRESHOLD_=131072"
ENV_VARS="$ENV_VARS${DELIM}NO_PROXY=storage.googleapis.com"
[[ -z "${ALLOWED_UIDS+set}" ]] || ENV_VARS="$ENV_VARS${DELIM}ALLOWED_UIDS=$ALLOWED_UIDS"
REMOVE_VARS=WEBHOOK_TOKEN # where an earlier deploy.sh kept the token in plain text
((CLEAR_UIDS == 0)) || REMOVE_VARS="$REMOVE_VARS,ALLOWED_UIDS"

# --allow-unauthenticated: the Omi backend cannot send Google auth headers (it
#   posts to a plain URL), so IAM would reject every chunk; the token in the URL
#   is the guard instead, checked before anything is read or written.
# --memory=1Gi: 16 concurrent 11.5 MB batches (the phone's largest) peaked at
#   210-232 MiB (make bench); the function admits at most 256 MiB of bodies at once,
#   each held about twice, so about 570 MiB at worst.
# --cpu=1: gen2 needs a whole CPU to serve more than one request at a time.
# --concurrency=16: each request mostly waits on Cloud Storage, so one instance
#   serves many users' chunks at once instead of starting (and billing) more;
#   THREADS=16 gives the server as many threads, as Google recommends.
# --max-instances=5: a ceiling on cost if the URL leaks; 5 x 16 concurrent
#   1-second uploads is far beyond one household's devices.
# --timeout=60s: the function answers within its storage deadlines (20 s for the
#   backend, 27 s for the phone); 60 s is only a backstop, past their 30 s timeout.
# --update-*/--remove-*: only the settings named here change; anything else
#   already on the function (ALLOWED_UIDS when not given) stays as it is. The label
#   records COMPACT_AFTER_DAYS for the next run (the function does not read it).
echo "The upload: $(cd "$STAGE" && echo *) (copied from $SOURCE_DIR, nothing else)" >&2
if ! run gcloud functions deploy "$FUNCTION_NAME" \
  --gen2 \
  --project="$PROJECT" \
  --region="$REGION" \
  --runtime=python312 \
  --source="$STAGE" \
  --entry-point=receive_audio \
  --trigger-http \
  --allow-unauthenticated \
  --service-account="$SA_EMAIL" \
  --remove-env-vars="$REMOVE_VARS" \
  --update-env-vars="$ENV_VARS" \
  --remove-secrets=WEBHOOK_TOKEN_PREVIOUS \
  --update-secrets="$SECRETS" \
  --update-labels="omi_audio_compact_after_days=$COMPACT_AFTER_DAYS" \
  --memory=1Gi \
  --cpu=1 \
  --concurrency=16 \
  --max-instances=5 \
  --timeout=60s \
  --quiet; then
  cat >&2 <<EOF

deploy.sh: the function did not deploy. Likely causes, most common first:
  - A first deploy on a new project: Cloud Build's service account may lack the
    role to build. Grant it, then run deploy.sh again:
      gcloud projects add-iam-policy-binding $PROJECT \\
        --member=serviceAccount:${PROJECT_NUMBER}-compute@developer.gserviceaccount.com \\
        --role=roles/cloudbuild.builds.builder
  - APIs enabled moments ago are still starting: wait a minute and run it again.
  - An organisation policy forbids public functions (allUsers): see docs/operations.md, Troubleshooting.
EOF
  exit 1
fi
DONE+=("function $FUNCTION_NAME in $REGION (token version $CURRENT${PREVIOUS:+, previous $PREVIOUS})")

# The daily compaction (COMPACT_AFTER_DAYS above 0): the function, who may start it,
# and the job that starts it. Its upload is a staged copy too: the compactor's main.py
# and requirements.txt, the root's modules but main.py, and the tools' package.
# Its flags, each for a reason:
#   --no-allow-unauthenticated: only the scheduler's account may start it.
#   --timeout=3600s: the longest an HTTP function may run; a backlog of days is
#     compacted in several runs, each resuming where the last stopped.
#   --memory=2Gi, --cpu=1: the function's /tmp is memory. omi-audio compact writes one
#     session's FLAC there at a time (an 8-hour session of speech is about 450 MB at
#     the measured 0.49 of its WAV bytes) and, when a late chunk reopens a compacted
#     day, the day's earlier object beside it; the process itself peaks at 233 MiB
#     for a day of 28,800 chunks. The FLAC encoding and its check are CPU work.
#   --max-instances=1, --concurrency=1: one run at a time, never two on one day.
# The label omi_audio_config is a checksum of the upload and these flags: a re-run
# deploys it again only when one of them changed.
compaction_summary() {
  if ((COMPACT_AFTER_DAYS > 0)); then
    echo "Compaction: every day at 03:17 UTC, $COMPACT_FUNCTION folds each uid's chunks of every whole UTC day older than $COMPACT_AFTER_DAYS days into a few large objects (<uid>/compacted/<day>/), then removes those chunks; the tools read both. COMPACT_AFTER_DAYS=0 turns it off."
  else
    echo "Compaction: off (COMPACT_AFTER_DAYS=0): every chunk stays one object."
  fi
}
if ((COMPACT_AFTER_DAYS > 0)); then
  COMPACT_STAGE="$WORK/compactor"
  mkdir "$COMPACT_STAGE"
  for f in "$SOURCE_DIR"/*.py; do
    [[ "$f" == */main.py ]] || cp "$f" "$COMPACT_STAGE/"
  done
  cp "$SOURCE_DIR/compactor/main.py" "$SOURCE_DIR/compactor/requirements.txt" "$COMPACT_STAGE/"
  cp -R "$SOURCE_DIR/omi_audio" "$COMPACT_STAGE/omi_audio"
  find "$COMPACT_STAGE" -name __pycache__ -prune -exec rm -rf {} +
  COMPACT_FLAGS=(--gen2 --project="$PROJECT" --region="$REGION" --runtime=python312
    --entry-point=compact_daily --trigger-http --no-allow-unauthenticated
    --service-account="$COMPACT_SA_EMAIL"
    --update-env-vars="GCS_BUCKET_NAME=$BUCKET,COMPACT_AFTER_DAYS=$COMPACT_AFTER_DAYS"
    --memory=2Gi --cpu=1 --concurrency=1 --max-instances=1 --timeout=3600s)
  COMPACT_CONFIG="c$( (
    cd "$COMPACT_STAGE" && find . -type f | LC_ALL=C sort | while read -r f; do printf '%s %s\n' "$f" "$(cksum <"$f")"; done
    printf '%s\n' "${COMPACT_FLAGS[@]}"
  ) | cksum | cut -d' ' -f1)"
  if ((!COMPACT_EXISTS)) || [[ "$COMPACT_CONFIG_NOW" != "$COMPACT_CONFIG" ]]; then
    echo "The compaction's upload: $(cd "$COMPACT_STAGE" && echo *) (copied from $SOURCE_DIR)" >&2
    run gcloud functions deploy "$COMPACT_FUNCTION" "${COMPACT_FLAGS[@]}" --source="$COMPACT_STAGE" \
      --update-labels="omi_audio_config=$COMPACT_CONFIG" --quiet >&2
    DONE+=("function $COMPACT_FUNCTION in $REGION")
    if ((DRY_RUN == 0)); then
      probe gcloud functions describe "$COMPACT_FUNCTION" --gen2 --project="$PROJECT" --region="$REGION" \
        --format='value(serviceConfig.uri)' || die "$COMPACT_FUNCTION was deployed but cannot be read back; run deploy.sh again"
      COMPACT_URI="$OUT"
    fi
  else
    DONE+=("function $COMPACT_FUNCTION in $REGION (already there)")
  fi
  COMPACT_URI="${COMPACT_URI:-https://$COMPACT_FUNCTION-PROJECT_HASH.a.run.app}" # a dry run deploys nothing
  retry gcloud functions add-invoker-policy-binding "$COMPACT_FUNCTION" --project="$PROJECT" --region="$REGION" \
    --member="serviceAccount:$INVOKER_SA_EMAIL" >&2
  # The job calls the function's own URL with an OIDC token for that URL, signed as
  # the scheduler's account; it is changed only when one of these differs.
  JOB_FLAGS=(--project="$PROJECT" --location="$REGION" --schedule="$COMPACT_SCHEDULE" --time-zone="$COMPACT_TIME_ZONE"
    --uri="$COMPACT_URI" --http-method=POST --oidc-service-account-email="$INVOKER_SA_EMAIL"
    --oidc-token-audience="$COMPACT_URI" --attempt-deadline="$COMPACT_DEADLINE")
  JOB_WANT="$COMPACT_SCHEDULE|$COMPACT_TIME_ZONE|$COMPACT_URI|$INVOKER_SA_EMAIL|$COMPACT_URI|$COMPACT_DEADLINE"
  if ((!JOB_EXISTS)); then
    run gcloud scheduler jobs create http "$COMPACT_JOB" "${JOB_FLAGS[@]}" >&2
    DONE+=("scheduler job $COMPACT_JOB")
  elif [[ "${JOB_NOW%|*}" != "$JOB_WANT" ]]; then
    run gcloud scheduler jobs update http "$COMPACT_JOB" "${JOB_FLAGS[@]}" >&2
    DONE+=("scheduler job $COMPACT_JOB (updated)")
  fi
  if [[ "${JOB_NOW##*|}" == PAUSED ]]; then
    echo "Note: the scheduler job $COMPACT_JOB is paused, so no compaction runs; it is left paused. To resume it: gcloud scheduler jobs resume $COMPACT_JOB --location=$REGION --project=$PROJECT" >&2
  fi
else
  # Off: the job first (nothing starts the function again), then the compactor's access
  # to the bucket, then the function. The audio stays as it is.
  if ((JOB_EXISTS)); then
    run gcloud scheduler jobs delete "$COMPACT_JOB" --project="$PROJECT" --location="$REGION" --quiet >&2
    DONE+=("scheduler job $COMPACT_JOB removed")
  fi
  if ((COMPACT_EXISTS)); then
    run gcloud storage buckets remove-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
      --member="serviceAccount:$COMPACT_SA_EMAIL" --role="projects/$PROJECT/roles/$COMPACT_ROLE_ID" >&2 ||
      echo "Note: the compaction account's access to gs://$BUCKET was not there to remove (see above)." >&2
    run gcloud functions delete "$COMPACT_FUNCTION" --gen2 --project="$PROJECT" --region="$REGION" --quiet >&2
    DONE+=("function $COMPACT_FUNCTION removed")
  fi
  if ((JOB_EXISTS || COMPACT_EXISTS)); then
    echo "COMPACT_AFTER_DAYS=0: the daily compaction is off; its schedule and function are removed. No audio was touched: compacted days stay compacted (the tools read them as before) and new chunks stay one object each." >&2
  fi
fi

if ((FINISH)) && ((${#VERSIONS[@]} == 2)); then
  run gcloud secrets versions disable "${VERSIONS[1]}" --secret="$SECRET" --project="$PROJECT"
  DONE+=("old token (secret version ${VERSIONS[1]}) disabled")
fi

# ---------------------------------------------------------------------------
# 5. Prove the URL: post 0.1 s of silence with the token, expect 200 and the
#    object in the bucket, then remove it. Only then print the URL.
# ---------------------------------------------------------------------------
alert_summary() {
  case "$ALERT_MODE" in
    set) echo "Alert: Cloud Monitoring mails $ALERT_TO when no audio chunk is stored for $(duration_text "$ALERT_AFTER_S"), or when conversations are stored with no audio for $(duration_text "$CONVERSATION_WINDOW_S")." ;;
    remove) echo "Alert: none (ALERT_EMAIL=none). omi-audio status still tells when audio last arrived." ;;
  esac
}
if ((DRY_RUN)); then
  [[ "$ALERT_MODE" != set ]] || alert_policy # made after the test chunk in a real run
  cat <<EOF

Dry run: nothing was changed. A real run would then post a 0.1 s test chunk to
    ${FUNCTION_URL}?token=****
check the answer and the object in gs://${BUCKET}, and print that URL with the token.
EOF
  alert_summary
  compaction_summary
  exit 0
fi

if ((!FUNCTION_EXISTS)); then
  describe_function 'value(url)' || die "the function was deployed but cannot be read back; run deploy.sh again"
  FUNCTION_URL="$OUT"
fi
CHECK_UID="deploy-check"
if [[ -n "$UIDS_FOR_FUNCTION" ]]; then CHECK_UID="$(trim "${UIDS_FOR_FUNCTION%%,*}")"; fi

urlencode() {
  local LC_ALL=C s="$1" i c out=""
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) printf -v c '%%%02X' "'$c"; out+="${c: -3}" ;;
    esac
  done
  printf '%s' "$out"
}

read_token() { # $1: version; the value goes to $OUT, never to a command line
  probe gcloud secrets versions access "$1" --secret="$SECRET" --project="$PROJECT" ||
    die "cannot read token version $1 of secret $SECRET"
  : >"$WORK/out" # not even the private scratch folder keeps it
}

head -c 3200 /dev/zero >"$WORK/chunk.pcm"
RUN_ID="$(date +%s)-$$"
# POST the test chunk with one token version; the HTTP status goes to $STATUS.
post_chunk() {
  read_token "$1"
  # curl reads the URL from standard input, so the token is on no command line.
  # One Idempotency-Key per token: a retry whose first answer was lost names the
  # object already stored instead of writing a second.
  STATUS="$(printf 'url = "%s?token=%s&sample_rate=16000&uid=%s"\n' "$FUNCTION_URL" "$OUT" "$(urlencode "$CHECK_UID")" |
    curl -sS -K - -X POST --data-binary @"$WORK/chunk.pcm" -H 'Content-Type: application/octet-stream' \
      -H "Idempotency-Key: deploy-check-$RUN_ID-$1" \
      --max-time 45 -o "$WORK/answer" -w '%{http_code}' 2>"$WORK/curl-err")" || true
  OUT=""
  STATUS="${STATUS:-000}"
}

prove() { # $1: token version, $2: which token, for messages
  local status attempt delay=5 object size
  for attempt in 1 2 3 4; do
    post_chunk "$1"
    status="$STATUS"
    [[ "$status" == 200 || "$status" == 401 || "$status" == 400 ]] && break
    ((attempt < 4)) || break
    echo "Test chunk with the $2 token: HTTP $status; the new revision may still be starting, trying again in ${delay}s" >&2
    sleep "$delay"
    delay=$((delay * 3))
  done
  if [[ "$status" != 200 ]]; then
    echo >&2
    echo "deploy.sh: the test chunk with the $2 token got HTTP $status from $FUNCTION_URL" >&2
    [[ -s "$WORK/answer" ]] && echo "  answer: $(head -c 300 "$WORK/answer")" >&2
    [[ -s "$WORK/curl-err" ]] && echo "  curl: $(head -c 300 "$WORK/curl-err")" >&2
    case "$status" in
      000) echo "  Likely cause: the URL does not answer (wrong REGION, or the function is still starting). Run deploy.sh again in a minute." >&2 ;;
      401) echo "  Likely cause: the function does not hold token version $1 (another deploy ran meanwhile). Run deploy.sh again." >&2 ;;
      403) echo "  Likely cause: the uid '$CHECK_UID' is not in ALLOWED_UIDS, or an organisation policy blocks public access (allUsers) to the function." >&2 ;;
      404) echo "  Likely cause: wrong REGION or FUNCTION_NAME, or the function is still rolling out. Run deploy.sh again in a minute." >&2 ;;
      5*) echo "  Likely cause: IAM still propagating the new service account's access to the bucket or the secret (wait 1-2 minutes and run deploy.sh again), or the role binding is missing. The function's log says which: see docs/operations.md, Troubleshooting." >&2 ;;
    esac
    die "the URL was not printed because it does not work yet. Nothing is lost: run deploy.sh again (it resumes)."
  fi
  object="$(grep -o '"object": *"gs://[^"]*"' "$WORK/answer" | sed 's/.*"\(gs:[^"]*\)"/\1/')" || true
  [[ "$object" == "gs://$BUCKET/"* ]] || die "the function answered 200 but not with an object in gs://$BUCKET: $(head -c 300 "$WORK/answer")"
  probe gcloud storage objects describe "$object" --project="$PROJECT" --format='value(size)' ||
    die "the function answered 200 but $object is not in the bucket"
  size="$OUT"
  [[ "$size" == 3244 ]] || die "$object holds $size bytes, not the 3244 of the test chunk (44-byte header + 3200 bytes)"
  echo "Test chunk with the $2 token: stored as $object ($size bytes); removing it." >&2
  run gcloud storage rm "$object" --project="$PROJECT" --quiet >/dev/null 2>&1 ||
    echo "Note: could not remove the test object $object; delete it if it bothers you." >&2
}

prove "$CURRENT" current
if [[ -n "$PREVIOUS" ]]; then prove "$PREVIOUS" previous; fi
# Now that the metric has counted the test chunk, the policy starts with data.
[[ "$ALERT_MODE" != set ]] || alert_policy

read_token "$CURRENT"
cat <<EOF

Deployed and tested. Paste this URL into the Omi app:

    ${FUNCTION_URL}?token=${OUT}

In the Omi app: Settings -> Developer Mode -> Realtime audio bytes:
  1. Endpoint URL: the line above (keep the ?token=... part).
  2. Every x seconds: 5 (any interval works; shorter means less audio lost if
     the phone goes offline mid-batch).
And under Developer Mode -> Conversation events: the same URL, so that each
conversation's title and transcript is kept beside the audio.
Audio then lands in gs://${BUCKET}/<your uid>/<UTC time>.wav, one WAV per chunk,
and conversations in gs://${BUCKET}/<your uid>/conversations/, one JSON per version.
Keep the URL private: anyone holding it can write audio into your bucket.
EOF
OUT=""
case "$NEW_TOKEN_KIND" in
  new) echo "This is a new token. Re-running deploy.sh keeps it." ;;
  migrated) echo "The token is the one already in the app, now kept in Secret Manager. It was stored in plain text by an earlier deploy.sh: consider ./deploy.sh --rotate-token." ;;
  rotated) echo "This is the NEW token. The old URL keeps working until you paste this one and run: ./deploy.sh --finish-rotation" ;;
esac
if [[ -n "$PREVIOUS" && "$NEW_TOKEN_KIND" != rotated ]]; then
  echo "A token rotation is in progress: once the app has the URL above, run ./deploy.sh --finish-rotation"
fi
if ((FINISH)) && ((${#VERSIONS[@]} == 2)); then
  echo "Rotation finished: only the token in the URL above is accepted now."
fi
alert_summary
compaction_summary
