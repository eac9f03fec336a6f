#!/usr/bin/env bash
# Deploy receive_audio as a Cloud Function (gen2) that writes Omi audio into your
# own Cloud Storage bucket, then print the URL to paste into the Omi app.
#
#   GCS_BUCKET_NAME=my-omi-audio ./deploy.sh            # deploy or update in place
#   GCS_BUCKET_NAME=my-omi-audio ./deploy.sh --dry-run  # print the commands only
#
# Settings (environment variables):
#   GCS_BUCKET_NAME  required; created if missing (private, uniform access)
#   GOOGLE_CLOUD_PROJECT  default: the gcloud config's project
#   REGION           default: us-central1
#   FUNCTION_NAME    default: omi-audio
#   WEBHOOK_TOKEN    default: the deployed function's token, else a new random one
#   RETENTION_DAYS   optional: delete audio older than this many days
#   ALLOWED_UIDS     optional: comma-separated Omi uids; others get 403
#   SERVICE_ACCOUNT  default: omi-audio-writer (created if missing)
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "deploy.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "deploy.sh: $*" >&2; exit 1; }

BUCKET="${GCS_BUCKET_NAME:-}"
[[ -n "$BUCKET" ]] || die "set GCS_BUCKET_NAME to the bucket that will hold the audio, e.g. GCS_BUCKET_NAME=my-omi-audio ./deploy.sh"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "'$BUCKET' is not a valid bucket name (3-63 of a-z 0-9 . _ -)"
PROJECT="${GOOGLE_CLOUD_PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
[[ -n "$PROJECT" ]] || die "no project: set GOOGLE_CLOUD_PROJECT or run 'gcloud config set project PROJECT_ID'"
REGION="${REGION:-us-central1}"
FUNCTION_NAME="${FUNCTION_NAME:-omi-audio}"
RETENTION_DAYS="${RETENTION_DAYS:-}"
[[ -z "$RETENTION_DAYS" || "$RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] || die "RETENTION_DAYS must be a whole number of days"
ALLOWED_UIDS="${ALLOWED_UIDS:-}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-omi-audio-writer}"
SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT}.iam.gserviceaccount.com"
# A custom role with exactly what the function does: create objects, and read one
# back when a retried upload meets a 412 (to tell its own earlier write from
# another writer's). No list, no delete, no overwrite.
ROLE_ID="omiAudioWriter"
ROLE_PERMISSIONS="storage.objects.create,storage.objects.get"

# Print a command with the token masked; run it unless --dry-run.
run() {
  local shown
  shown="$(printf '%q ' "$@")"
  [[ -n "${TOKEN:-}" ]] && shown="${shown//$TOKEN/****}"
  echo "+ ${shown% }" >&2
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

# True if a read-only probe succeeds; in --dry-run nothing is probed (assume missing).
exists() {
  [[ "$DRY_RUN" == 0 ]] && "$@" >/dev/null 2>&1
}

# The token travels in the URL, so it must be URL-safe, and the Omi app splits
# its setting on the first comma, so it must have none.
TOKEN="${WEBHOOK_TOKEN:-}"
if [[ -z "$TOKEN" && "$DRY_RUN" == 0 ]]; then
  # Re-running must not change the URL already pasted into the app.
  TOKEN="$(gcloud functions describe "$FUNCTION_NAME" --gen2 --project="$PROJECT" --region="$REGION" \
    --format='value(serviceConfig.environmentVariables.WEBHOOK_TOKEN)' 2>/dev/null || true)"
fi
NEW_TOKEN=0
if [[ -z "$TOKEN" ]]; then
  TOKEN="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  NEW_TOKEN=1
fi
[[ "$TOKEN" =~ ^[A-Za-z0-9._~-]{16,}$ ]] || die "WEBHOOK_TOKEN must be at least 16 characters of A-Z a-z 0-9 . _ ~ - (no comma)"

run gcloud services enable cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com \
  artifactregistry.googleapis.com storage.googleapis.com iam.googleapis.com --project="$PROJECT"

# The bucket: private by construction. Uniform bucket-level access means IAM
# alone decides who reads it; public access prevention refuses any public grant.
if exists gcloud storage buckets describe "gs://$BUCKET" --project="$PROJECT"; then
  echo "Using existing bucket gs://$BUCKET" >&2
else
  run gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
fi
if [[ -n "$RETENTION_DAYS" ]]; then
  LIFECYCLE="$(mktemp)"
  trap 'rm -f "$LIFECYCLE"' EXIT
  printf '{"rule": [{"action": {"type": "Delete"}, "condition": {"age": %d}}]}\n' "$RETENTION_DAYS" >"$LIFECYCLE"
  run gcloud storage buckets update "gs://$BUCKET" --project="$PROJECT" --lifecycle-file="$LIFECYCLE"
fi

# The identity the function runs as, holding the custom role on this bucket only.
if ! exists gcloud iam service-accounts describe "$SA_EMAIL" --project="$PROJECT"; then
  run gcloud iam service-accounts create "$SERVICE_ACCOUNT" --project="$PROJECT" \
    --display-name="Omi audio webhook (writes to gs://$BUCKET)"
fi
if exists gcloud iam roles describe "$ROLE_ID" --project="$PROJECT"; then
  run gcloud iam roles update "$ROLE_ID" --project="$PROJECT" --permissions="$ROLE_PERMISSIONS" --quiet
else
  run gcloud iam roles create "$ROLE_ID" --project="$PROJECT" --title="Omi audio writer" \
    --description="Create audio objects and read one back to reconcile a retried upload" \
    --permissions="$ROLE_PERMISSIONS" --stage=GA
fi
run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project="$PROJECT" \
  --member="serviceAccount:$SA_EMAIL" --role="projects/$PROJECT/roles/$ROLE_ID"

# '^|^' makes '|' the separator, so a comma-separated ALLOWED_UIDS stays whole.
ENV_VARS="^|^GCS_BUCKET_NAME=$BUCKET|WEBHOOK_TOKEN=$TOKEN"
[[ -n "$ALLOWED_UIDS" ]] && ENV_VARS="$ENV_VARS|ALLOWED_UIDS=$ALLOWED_UIDS"

# --allow-unauthenticated: the Omi backend cannot send Google auth headers (it
#   posts to a plain URL), so IAM would reject every chunk; the token in the URL
#   is the guard instead, checked before anything is read or written.
# --memory=512Mi: a 1-second chunk is 32 KB; this leaves room for 16 concurrent
#   requests even at the 8 MiB body cap (an older sender's 120 s batch is 3.84 MB).
# --cpu=1: gen2 needs a whole CPU to serve more than one request at a time.
# --concurrency=16: each request mostly waits on Cloud Storage, so one instance
#   serves many users' chunks at once instead of starting (and billing) more.
# --max-instances=5: a ceiling on cost if the URL leaks; 5 x 16 concurrent
#   1-second uploads is far beyond one household's devices.
# --timeout=60s: the function answers within its 20 s storage deadline; 60 s is
#   only a backstop, past Omi's own 30 s timeout.
run gcloud functions deploy "$FUNCTION_NAME" \
  --gen2 \
  --project="$PROJECT" \
  --region="$REGION" \
  --runtime=python312 \
  --source=. \
  --entry-point=receive_audio \
  --trigger-http \
  --allow-unauthenticated \
  --service-account="$SA_EMAIL" \
  --set-env-vars="$ENV_VARS" \
  --memory=512Mi \
  --cpu=1 \
  --concurrency=16 \
  --max-instances=5 \
  --timeout=60s \
  --quiet

if [[ "$DRY_RUN" == 1 ]]; then
  URL="https://${REGION}-${PROJECT}.cloudfunctions.net/${FUNCTION_NAME}"
  SHOWN_TOKEN="****"
  HEADLINE="Dry run: nothing was changed. After a real run, paste this URL (token masked here) into the Omi app:"
else
  URL="$(gcloud functions describe "$FUNCTION_NAME" --gen2 --project="$PROJECT" --region="$REGION" \
    --format='value(serviceConfig.uri)')"
  SHOWN_TOKEN="$TOKEN"
  HEADLINE="Deployed. Paste this URL into the Omi app:"
fi

cat <<EOF

${HEADLINE}

    ${URL}?token=${SHOWN_TOKEN}

In the Omi app: Settings -> Developer Mode -> Realtime audio bytes:
  1. Endpoint URL: the line above (keep the ?token=... part).
  2. Every x seconds: 5 (any interval works; shorter means less audio lost if
     the phone goes offline mid-batch).
Audio then lands in gs://${BUCKET}/<your uid>/<UTC time>.wav, one WAV per chunk.
EOF
if [[ "$NEW_TOKEN" == 1 && "$DRY_RUN" == 0 ]]; then
  echo
  echo "A new token was generated. Keep the URL above private: anyone holding it can"
  echo "write audio into your bucket. Re-running deploy.sh keeps the same token."
fi
