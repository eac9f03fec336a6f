"""omi-audio import: conversations read back from Omi's Developer API, stored once, read like the webhook's.

The API is the stand-in in omi_api.py (its documented shape, paging, rate-limit
headers, 429, 5xx, 401); storage is fake-gcs-server and a local directory; a
webhook delivery goes through functions-framework's app, as in test_conversations.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from omi_api import OmiApi, api_conversation
from test_export_conversations import parse_vtt, store_audio

import storage
from omi_audio import archive, cli, importer

UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
KEY = "omi_dev_" + "k3Y" * 10
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Short backoff and pages of 3, so that paging, retries and waits take little time."""
    monkeypatch.setattr(importer, "FIRST_BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(importer, "PAGE_SIZE", 3)


@pytest.fixture(params=["gcs", "local"])
def source(request, tmp_path):
    """(store, CLI source arguments) for each backend, configured for the function too."""
    if request.param == "gcs":
        bucket = request.getfixturevalue("bucket")
        return storage.GcsStore(bucket.name), ["--bucket", bucket.name]
    root = request.getfixturevalue("local_dir")
    root.mkdir(parents=True, exist_ok=True)
    return storage.LocalStore(root), ["--local-dir", str(root)]


def daily(days: int, first: datetime = T0) -> list[dict]:
    """One conversation a day, at 09:00 from `first`."""
    return [api_conversation(f"c-{n:02d}-{uuid.uuid4().hex[:8]}", first + timedelta(days=n)) for n in range(days)]


def run_import(capsys, api: OmiApi, source_args: list[str], *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main(["import", "--uid", UID, "--quiet", "--api-url", api.url, *source_args, *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def stored(store) -> dict[str, list[storage.ConversationInfo]]:
    """Every stored version, by conversation id."""
    found: dict[str, list[storage.ConversationInfo]] = {}
    for info in store.list_conversations(UID):
        found.setdefault(info.parts.conversation_id, []).append(info)
    return found


def test_every_listed_conversation_is_stored_as_the_api_sent_it(source, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    wanted = daily(7)
    with OmiApi(KEY, wanted) as api:
        code, out, err = run_import(capsys, api, args)
    assert code == 0, err
    assert "7 conversation(s) imported, 0 already stored" in out
    versions = stored(store)
    assert sorted(versions) == sorted(c["id"] for c in wanted)
    for body in wanted:
        (info,) = versions[body["id"]]
        assert store.read(info.name) == OmiApi.body_of(body)  # byte for byte
        assert info.parts.starts_at == datetime.fromisoformat(body["started_at"])
        assert info.metadata["source"] == "developer-api" and info.metadata["title"] == "Planning"
        assert info.metadata["started_at"] == body["started_at"]
    # Pages of 3 until a short one, each with the transcript, the key in the header.
    offsets = [int(r["query"]["offset"]) for r in api.requests]
    assert offsets == [0, 3, 6]
    assert all(r["query"]["include_transcript"] == "true" and r["query"]["limit"] == "3" for r in api.requests)
    assert {r["authorization"] for r in api.requests} == {f"Bearer {KEY}"}


def test_a_wrong_key_gets_one_line_naming_the_fix_and_exit_status_4_and_is_never_shown(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    wrong = "omi_dev_" + "WrOnG" * 6
    for how in ("env", "file"):
        if how == "env":
            monkeypatch.setenv("OMI_API_KEY", wrong)
            extra = []
        else:
            monkeypatch.delenv("OMI_API_KEY")
            (tmp_path / "key").write_text(wrong + "\n")
            extra = ["--api-key-file", str(tmp_path / "key")]
        with OmiApi(KEY, daily(2)) as api:
            code, out, err = run_import(capsys, api, ["--local-dir", str(root)], *extra)
        assert code == importer.EXIT_KEY_REFUSED == 4
        assert api.statuses() == [401]  # not retried
        assert err.count("\n") == 1 and "refused the key (401)" in err and "conversations:read" in err
        assert wrong not in out + err and "WrOnG" not in out + err
    assert not list(root.rglob("*.json"))


def test_no_key_is_a_usage_error_and_a_key_with_a_space_is_refused_without_showing_it(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    with OmiApi(KEY, []) as api:
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
        assert code == 2 and "OMI_API_KEY" in err and "--api-key-file" in err
        monkeypatch.setenv("OMI_API_KEY", "omi_dev_secret part")
        code, out, err = run_import(capsys, api, ["--local-dir", str(root)])
        assert code == 2 and "secret" not in out + err
        assert api.requests == []


def test_a_429_waits_for_the_reset_then_goes_on(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    # One request per 1.5 s window: after each answer X-RateLimit-Remaining is 0.
    with OmiApi(KEY, daily(5), per_window=1, window_seconds=1.5) as api:
        started = time.monotonic()
        code, out, err = run_import(capsys, api, ["--local-dir", str(root)])
        took = time.monotonic() - started
    assert code == 0, err
    assert "5 conversation(s) imported" in out
    assert 429 not in api.statuses()  # it never went past the limit
    assert took >= 1.0


def test_a_429_answer_is_waited_out_and_the_page_asked_again(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(5), window_seconds=1.0) as api:
        api.faults = [429]
        started = time.monotonic()
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
        took = time.monotonic() - started
    assert code == 0, err
    assert api.statuses() == [429, 200, 200]
    assert [r["query"]["offset"] for r in api.requests] == ["0", "0", "3"]
    assert "rate limit reached: waiting" in err and took >= 0.4
    assert len(stored(storage.LocalStore(root))) == 5


def test_a_daily_limit_far_off_stops_the_run_saying_when_to_run_again(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(5), per_window=1, window_seconds=6 * 3600) as api:
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
    assert code == 1
    assert "10,000 a day" in err and "run the import again after" in err
    assert api.statuses() == [200]  # the first page is stored, no request past the limit
    assert len(stored(storage.LocalStore(root))) == 3


def test_5xx_answers_and_a_dropped_connection_are_retried(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(4)) as api:
        api.faults = [503, "drop", 500]
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
    assert code == 0, err
    assert api.statuses() == [503, "drop", 500, 200, 200]
    assert err.count("retrying") == 3
    assert len(stored(storage.LocalStore(root))) == 4


def test_an_api_that_keeps_failing_stops_with_status_1_and_keeps_what_was_stored(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(4)) as api:
        code, _, _ = run_import(capsys, api, ["--local-dir", str(root)], "--until", "2026-11-03")
        assert code == 0
        api.faults = [502] * (importer.RETRIES + 1)
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
    assert code == 1 and "retries failed" in err and "run again later" in err
    assert len(stored(storage.LocalStore(root))) == 2


def test_two_runs_store_nothing_twice(source, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(5)) as api:
        assert run_import(capsys, api, args)[0] == 0
        before = {info.name for infos in stored(store).values() for info in infos}
        code, out, _ = run_import(capsys, api, args)
    assert code == 0 and "0 conversation(s) imported, 5 already stored" in out
    assert {info.name for infos in stored(store).values() for info in infos} == before


def webhook_body(api_body: dict) -> dict:
    """The same conversation as the webhook delivers it: +00:00 times, is_user, a fuller structured."""
    body = json.loads(json.dumps(api_body))
    for key in ("created_at", "started_at", "finished_at"):
        body[key] = body[key].replace("Z", "+00:00")
    body["structured"]["title"] = "Planning (webhook)"
    for segment in body["transcript_segments"]:
        segment["is_user"] = segment.pop("speaker_name") == "User"
        segment["speaker"] = f"SPEAKER_{segment['speaker_id']:02d}"
    body.update(discarded=False, photos=[], apps_results=[])
    return body


def deliver(client, body: dict) -> None:
    response = client.post(
        f"/?uid={UID}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def test_an_import_after_a_webhook_delivery_writes_nothing_for_that_id(source, client, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    wanted = daily(3)
    deliver(client, webhook_body(wanted[1]))
    (delivered,) = stored(store)[wanted[1]["id"]]
    with OmiApi(KEY, wanted) as api:
        code, out, _ = run_import(capsys, api, args)
    assert code == 0 and "2 conversation(s) imported, 1 already stored" in out
    assert stored(store)[wanted[1]["id"]] == [delivered]


def test_a_webhook_delivery_of_an_imported_conversation_is_the_version_read(source, client, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    (body,) = daily(1)
    with OmiApi(KEY, [body]) as api:
        assert run_import(capsys, api, args)[0] == 0
    deliver(client, webhook_body(body))
    assert len(stored(store)[body["id"]]) == 2
    (chosen,) = archive.preferred_versions(store.list_conversations(UID))
    assert chosen.metadata.get("source") is None  # the webhook's
    assert json.loads(store.read(chosen.name))["structured"]["title"] == "Planning (webhook)"


def test_the_webhooks_version_is_read_even_when_an_import_stored_its_copy_later(source):
    """An import that listed before the webhook delivered stores its copy after the webhook's."""
    store, _ = source
    (body,) = daily(1)
    at = datetime.fromisoformat(body["started_at"])
    webhook = json.dumps(webhook_body(body)).encode()
    store.put_conversation(UID, at, body["id"], webhook, {"received_at": "2026-11-02T10:00:00.000000Z"}, 10)
    imported = {"received_at": "2026-11-02T10:00:05.000000Z", "source": "developer-api"}
    store.put_conversation(UID, at, body["id"], OmiApi.body_of(body), imported, 10)
    (chosen,) = archive.preferred_versions(store.list_conversations(UID))
    assert store.read(chosen.name) == webhook
    # Two versions from the webhook: the one received last, as before.
    newer = json.dumps({**webhook_body(body), "language": "fr"}).encode()
    store.put_conversation(UID, at, body["id"], newer, {"received_at": "2026-11-02T11:00:00.000000Z"}, 10)
    (chosen,) = archive.preferred_versions(store.list_conversations(UID))
    assert store.read(chosen.name) == newer


def test_after_a_week_of_webhook_downtime_exactly_the_missing_ones_are_imported(source, client, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    monkeypatch.setattr(importer, "PAGE_SIZE", 25)
    held = daily(21)  # three weeks, one a day; the webhook was down in the second
    missing = held[7:14]
    for body in held[:7] + held[14:]:
        deliver(client, webhook_body(body))
    before = {info.name for infos in stored(store).values() for info in infos}
    with OmiApi(KEY, held) as api:
        code, out, _ = run_import(capsys, api, args)
    assert code == 0 and "7 conversation(s) imported, 14 already stored" in out
    after = {info.name: info for infos in stored(store).values() for info in infos}
    new = {after[name].parts.conversation_id for name in set(after) - before}
    assert new == {body["id"] for body in missing}
    assert before <= set(after)


def test_since_and_until_ask_for_conversations_processed_in_that_range(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    root.mkdir()
    monkeypatch.setenv("OMI_API_KEY", KEY)
    held = daily(10)
    with OmiApi(KEY, held) as api:
        code, _, _ = run_import(
            capsys, api, ["--local-dir", str(root)], "--since", "2026-11-04", "--until", "2026-11-06"
        )
    assert code == 0
    assert api.requests[0]["query"]["start_date"] == "2026-11-04T00:00:00.000000Z"
    assert api.requests[0]["query"]["end_date"] == "2026-11-06T23:59:59.999999Z"
    assert sorted(stored(storage.LocalStore(root))) == sorted(c["id"] for c in held[2:5])


def test_a_uid_the_store_does_not_hold_is_refused_when_it_holds_others(tmp_path, capsys, monkeypatch):
    root = tmp_path / "recordings"
    store = storage.LocalStore(root)
    store.put_conversation("someone-else", T0, "x", b"{}", {}, 10)
    monkeypatch.setenv("OMI_API_KEY", KEY)
    with OmiApi(KEY, daily(2)) as api:
        code, _, err = run_import(capsys, api, ["--local-dir", str(root)])
    assert code == 1 and "unknown uid" in err and "someone-else" in err
    assert api.requests == []


def test_an_imported_conversation_exports_with_you_names_and_cues(source, tmp_path, capsys, monkeypatch):
    store, args = source
    monkeypatch.setenv("OMI_API_KEY", KEY)
    started = T0
    segments = [
        {"id": "s1", "text": "Morning, Ann.", "speaker_id": 0, "speaker_name": "User", "start": 1.0, "end": 2.5},
        {"id": "s2", "text": "Morning!", "speaker_id": 3, "speaker_name": "Ann Lee", "start": 3.0, "end": 4.0},
        {"id": "s3", "text": "Who is that?", "speaker_id": 2, "speaker_name": "Speaker 2", "start": 5.0, "end": 7.0},
    ]
    body = api_conversation("c-api", started, seconds=10, title="Standup", segments=segments)
    store_audio(store, started - timedelta(seconds=30), 50)
    with OmiApi(KEY, [body]) as api:
        assert run_import(capsys, api, args)[0] == 0
    code = cli.main(["export", "--uid", UID, "--by", "conversation", "--quiet", "--out", str(tmp_path / "out"), *args])
    assert code == 0
    (vtt_file,) = (tmp_path / "out").glob("*.vtt")
    assert "Standup" in vtt_file.name
    cues = parse_vtt(vtt_file.read_text(encoding="utf-8"))
    pad = archive.CONVERSATION_PAD.total_seconds()
    assert [(round(start - pad, 3), round(end - pad, 3), who, text) for start, end, who, text in cues] == [
        (1.0, 2.5, "You", "Morning, Ann."),
        (3.0, 4.0, "Ann Lee", "Morning!"),
        (5.0, 7.0, "Speaker 2", "Who is that?"),
    ]
    document = json.loads(vtt_file.with_suffix(".json").read_text(encoding="utf-8"))
    assert document["structured"]["title"] == "Standup"


@pytest.mark.parametrize(
    "body",
    [b"[]", b" [ ] ", b'[{"id": "a]", "x": [1, {"y": "}"}]}]', '[\n {"id": "é\\"]"},\n\t{"id":"b"} ]'.encode()],
)
def test_a_page_splits_into_the_exact_bytes_of_each_object(body):
    parts = list(importer.split_array(body))
    assert [json.loads(part) for part in parts] == json.loads(body)
    for part in parts:
        assert part in body


@pytest.mark.parametrize("body", [b'{"id": "a"}', b"[1 2]", b"[1,]", b"[1] x", b"["])
def test_what_is_not_a_json_array_is_refused(body):
    with pytest.raises(ValueError):
        list(importer.split_array(body))


def test_the_key_crosses_no_network_in_clear():
    assert importer.api_url_arg("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert importer.api_url_arg("https://omi.example.org") == "https://omi.example.org"
    for url in ("http://omi.example.org", "ftp://x", "https://api.omi.me?k=1"):
        with pytest.raises(Exception, match=r"URL|query"):
            importer.api_url_arg(url)
