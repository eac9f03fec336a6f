# The two commands: `make run` (serve locally into ./recordings) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
LOCAL_AUDIO_DIR ?= ./recordings

.PHONY: run test lint format clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.test: requirements.txt requirements-test.txt $(VENV)/.tools
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# Serve receive_audio on http://$(HOST):$(PORT); chunks go to $(LOCAL_AUDIO_DIR)
# unless GCS_BUCKET_NAME is set in the environment.  `make run PORT=9000` changes the
# port; `WEBHOOK_TOKEN=... make run` makes the server ask for ?token=... as deployed.
run: $(VENV)/.runtime
	@echo "Serving on http://$(HOST):$(PORT)/ into $${GCS_BUCKET_NAME:+gs://}$${GCS_BUCKET_NAME:-$(LOCAL_AUDIO_DIR)}$${WEBHOOK_TOKEN:+ (token required)}; Ctrl-C stops"
	LOCAL_AUDIO_DIR="$(LOCAL_AUDIO_DIR)" $(VENV)/bin/functions-framework \
		--source=main.py --target=receive_audio --host=$(HOST) --port=$(PORT)

# Much of the suite's time is waiting (storage outages, deadlines, servers starting),
# so four workers overlap those waits even on two cores; an idle worker takes tests
# queued for a busy one (worksteal), so a long test does not hold the end of the run.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal
test: $(VENV)/.test
	$(PYTEST)

# The tests make test leaves out (the `slow` marker): deploy.sh run against the
# stand-in project, every call it makes replayed through the real gcloud, and each
# benchmark run end to end.  CI runs them after make test.
.PHONY: test-slow
test-slow: $(VENV)/.test
	$(PYTEST) -m slow

# Both together, with the wall clock a year ahead (tests/clock_ahead/sitecustomize.py):
# a test that mixes a fixed date with today's fails here.
.PHONY: test-clock-ahead
test-clock-ahead: $(VENV)/.test
	PYTHONPATH=tests/clock_ahead $(PYTEST) -m 'not full_outage'

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache

# The full-size load run: 5,000 chunks through the functions-framework server
# (`make test` runs the same test with LOAD_CHUNKS=1200 by default).
.PHONY: soak
soak: $(VENV)/.test
	LOAD_CHUNKS=5000 $(PY) -m pytest -m load tests/test_load.py
	$(MAKE) --no-print-directory outages

# The storage outages at their real lengths (25 and 35 s, against the 20 s and 27 s
# deadlines); `make test` runs the same tests with the deadlines and outages scaled down.
.PHONY: outages
outages: $(VENV)/.test
	$(PY) -m pytest -n 3 -m full_outage tests/test_faults.py

# Every rejection status at every body size, 20 tries each, with httpx 0.27 (the Omi
# backend's client), requests, urllib and curl through the real server.
.PHONY: senders
senders: $(VENV)/.test
	SENDER_TRIES=20 $(PY) -m pytest -q -s tests/test_senders.py

# omi-audio export against a one-at-a-time download loop: 2,000 chunks in fake-gcs-server
# behind a proxy adding 20 ms per request; goal >= 8x.  Then one day exported from a
# 30-day archive against the same day alone; goal <= 1.2x.  Then what --by conversation
# lists and downloads for a day of an hour's audio and four conversations (exit 1 when any goal is missed).
.PHONY: bench-export
bench-export: $(VENV)/.test
	$(PY) bench/export_bench.py

# The tools' dependencies (progress bars, FLAC): requirements-tools.txt.
$(VENV)/.tools: requirements.txt requirements-tools.txt pyproject.toml $(VENV)/.runtime
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Join chunks into one file per session: make export ARGS='--uid UID --out exported [--since 2026-11-28]'
# (or one audio file, transcript and JSON per conversation: ARGS='--uid UID --by conversation --out exported')
.PHONY: export
export: $(VENV)/.tools
	$(VENV)/bin/omi-audio export $(ARGS)

# Is audio still arriving?  make status [ARGS='--uid "Omi DevKit 2" --days 30']; exit 3 when stale.
# Reads GCS_BUCKET_NAME, else LOCAL_AUDIO_DIR, from the environment, or --bucket / --local-dir in ARGS.
.PHONY: status
status: $(VENV)/.tools
	$(VENV)/bin/omi-audio status $(ARGS)

# The export's index.html for a year (2,000 conversations) in headless Chromium: first
# view goal < 1 s, search goal < 100 ms (needs chromium and chromium-driver; exit 1 when missed).
.PHONY: bench-page
bench-page: $(VENV)/.test
	$(PY) bench/page_bench.py

# omi-audio compact (needs espeak-ng, else a speech-like fallback signal, said so): speech
# as FLAC against WAV (goal <= 0.6) and objects a day (<= sessions + 2); a day of 28,800
# chunks through a 20 ms proxy (< 3 min, < 256 MiB peak RSS); 30 days exported compacted
# against in chunks; a year's cost.  Exit 1 when a goal is missed.  Quick: ARGS='--chunks 3000'.
.PHONY: bench-compact
bench-compact: $(VENV)/.test
	$(PY) bench/compact_bench.py $(ARGS)

# receive_audio against its floor (echo function + bare upload), side by side:
# latency, throughput, cold start, memory, each with its goal;
# then the export's, the page's and the compactor's benchmarks: all run, and make bench
# fails if any of those three does.
.PHONY: bench
bench: $(VENV)/.test
	$(PY) bench/measure.py
	status=0; \
	$(MAKE) --no-print-directory bench-export || status=1; \
	$(MAKE) --no-print-directory bench-page || status=1; \
	$(MAKE) --no-print-directory bench-compact || status=1; \
	exit $$status

# docs/page.png, the README's picture of index.html, from a small sample export
# (headless chromium; install fonts-noto-color-emoji too, or the emoji show as boxes).
.PHONY: screenshot
screenshot: $(VENV)/.test
	PYTHONPATH=. $(PY) tests/sample_page.py docs/page.png

# Where the worker's CPU goes on the request path (py-spy, under 16 senders).
.PHONY: profile
profile: $(VENV)/.test
	$(PY) bench/profile_request.py

# The locks: requirements*.in name what each use needs; `make lock` resolves them
# into requirements*.txt, every package pinned with its hashes, so pip installs
# exactly the files resolved here (Cloud Functions installs requirements.txt).
# Resolved for every platform and Python >= 3.11, so one lock serves this machine
# and the function's python312 alike. A pin already in a lock is kept while it still
# fits; `make lock LOCK_UPGRADE=--upgrade` moves everything to the newest that fits.
# `make check-lock` (run by CI) fails when a lock no longer matches its .in file.
LOCKS := requirements.txt requirements-test.txt requirements-tools.txt compactor/requirements.txt
LOCK_DIR ?= .
LOCK_UPGRADE ?=
.PHONY: lock check-lock
lock: $(VENV)/.test
	for lock in $(LOCKS); do \
		$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
			--custom-compile-command "make lock" $(LOCK_UPGRADE) "$${lock%.txt}.in" -o "$(LOCK_DIR)/$$lock" || exit 1; \
	done

check-lock: $(VENV)/.test
	tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
		for lock in $(LOCKS); do mkdir -p "$$tmp/$$(dirname "$$lock")" && cp "$$lock" "$$tmp/$$lock" || exit 1; done && \
		$(MAKE) --no-print-directory lock LOCK_DIR="$$tmp" && \
		for lock in $(LOCKS); do \
			diff -u "$$lock" "$$tmp/$$lock" >&2 || { echo "$$lock is stale: run make lock and commit it" >&2; exit 1; }; \
		done
