"""The token and ALLOWED_UIDS: who may store audio, and what is never given away."""

from __future__ import annotations

import hmac
import io
import uuid
from urllib.parse import quote

import pytest
from conftest import objects, pcm_tone
from storage_proxy import is_any

import main

TOKEN = "s3cret-Token_0123456789abcdef"
UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
OTHER = "Zz9yX8wV7uT6sR5qP4oN3mL2kJ1i"


class CountingBody(io.BytesIO):
    """A request body that records how many bytes were read from it, and how many of
    them the function read before it answered (functions-framework reads the rest after)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0
        self.consumed_when_answered: int | None = None

    def note_answer(self) -> None:
        self.consumed_when_answered = self.consumed

    def read(self, size: int | None = -1) -> bytes:
        piece = super().read(size)
        self.consumed += len(piece)
        return piece

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self.consumed += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.consumed += len(line)
        return line


def post(client, query: str, body: bytes | CountingBody = b"\x01\x00" * 800, **environ: object):
    stream = body if isinstance(body, CountingBody) else CountingBody(body)
    overrides = {"QUERY_STRING": query, "wsgi.input": stream, "CONTENT_LENGTH": str(len(stream.getvalue()))}
    return client.post("/", environ_overrides={**overrides, **environ})


# -- the token ----------------------------------------------------------------------------


def test_every_token_check_goes_through_hmac_compare_digest(client, local_dir, monkeypatch):
    """A plain == would stop early at the first differing byte; compare_digest does not."""
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    calls = []
    real = hmac.compare_digest

    def spy(given, expected):
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(main.hmac, "compare_digest", spy)
    queries = [
        f"token={TOKEN}&sample_rate=16000&uid={UID}",
        f"token={TOKEN[:-1]}X&sample_rate=16000&uid={UID}",
        f"token={TOKEN[:5]}&sample_rate=16000&uid={UID}",
        f"sample_rate=16000&uid={UID}",
    ]
    assert [post(client, q).status_code for q in queries] == [200, 401, 401, 401]
    assert [given for given, _ in calls] == [TOKEN.encode(), (TOKEN[:-1] + "X").encode(), TOKEN[:5].encode(), b""]
    assert all(expected == TOKEN.encode() for _, expected in calls)


@pytest.mark.parametrize(
    "token",
    ["caf%C3%A9", "%FF%FE", "%00", "\u00e9", "%ED%A0%80", TOKEN.upper(), f"{TOKEN}%00", " " + TOKEN, TOKEN * 100],
)
def test_token_of_any_bytes_or_length_is_401_never_a_500(client, local_dir, monkeypatch, capsys, token):
    """compare_digest refuses non-ASCII str; the comparison must be of bytes to never raise."""
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    response = post(client, f"token={token}&sample_rate=16000&uid={UID}".encode().decode("latin-1"))
    assert response.status_code == 401
    assert not local_dir.exists()
    assert TOKEN not in capsys.readouterr().out + response.get_data(as_text=True)


def test_non_ascii_configured_token_still_compares_without_error(client, local_dir, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", "caf\u00e9-token")
    assert post(client, f"token=caf%C3%A9-token&sample_rate=16000&uid={UID}").status_code == 200
    assert post(client, f"token=cafe-token&sample_rate=16000&uid={UID}").status_code == 401


@pytest.mark.parametrize("fault", ["503", "reset", "cut", "hang-after", "forward"])
def test_token_never_appears_in_logs_or_answers_when_storage_fails(client, bucket, proxy, monkeypatch, capsys, fault):
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "1")
    if fault != "forward":
        proxy.arm(fault, match=is_any)
    key = str(uuid.uuid4())
    answers = [
        post(client, f"token={TOKEN}&sample_rate=16000&uid={UID}", HTTP_IDEMPOTENCY_KEY=key),
        post(client, f"token={TOKEN}?sample_rate=16000&uid={UID}", HTTP_IDEMPOTENCY_KEY=key),
    ]
    assert {a.status_code for a in answers} <= {200, 503}
    logged = capsys.readouterr()
    seen = logged.out + logged.err + "".join(a.get_data(as_text=True) for a in answers)
    assert TOKEN not in seen
    assert all(TOKEN not in s.path for s in proxy.seen)  # nor is it sent on to storage


# -- ALLOWED_UIDS -------------------------------------------------------------------------


def test_uid_outside_allowed_uids_is_403_before_the_body_is_kept_or_storage_is_touched(
    client, served_main, bucket, proxy, monkeypatch
):
    monkeypatch.setenv("ALLOWED_UIDS", f"{UID},webhook-device")
    body = CountingBody(pcm_tone(1.0))
    key = str(uuid.uuid4())
    response = post(client, f"sample_rate=16000&uid={OTHER}", body, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 403
    assert OTHER in response.get_json()["error"]
    assert body.consumed_when_answered == len(pcm_tone(1.0))  # read to its end so the sender reads the 403...
    assert served_main.body.BUDGET.in_use == 0  # ...and dropped
    assert proxy.seen == []  # storage never heard of it
    assert objects(bucket) == {}
    assert (OTHER, key) not in served_main._recent
    assert served_main._store is None  # no storage client was even built


def test_allowed_uids_lets_the_listed_uids_through(client, bucket, monkeypatch):
    monkeypatch.setenv("ALLOWED_UIDS", f" {UID} , webhook-device,")
    assert post(client, f"sample_rate=16000&uid={UID}").status_code == 200
    assert post(client, "uid=webhook-device&sample_rate=16000").status_code == 200
    assert post(client, f"sample_rate=16000&uid={OTHER}").status_code == 403
    assert sorted(name.split("/")[0] for name in objects(bucket)) == sorted([UID, "webhook-device"])


def test_allowed_uids_take_device_names_as_the_phone_sends_them(client, bucket, monkeypatch):
    monkeypatch.setenv("ALLOWED_UIDS", "Omi DevKit 2, Zo\u00eb's Omi")
    assert post(client, "token=x?uid=Omi%20DevKit%202&sample_rate=16000").status_code == 200
    assert post(client, "uid=Zo%C3%AB's%20Omi&sample_rate=16000").status_code == 200
    assert post(client, "uid=Omi%20DevKit&sample_rate=16000").status_code == 403
    assert sorted(name.split("/")[0] for name in objects(bucket)) == ["Omi~20DevKit~202", "Zo~C3~AB~27s~20Omi"]


@pytest.mark.parametrize(
    "uid",
    [UID.lower(), UID + "x", UID[:-1], f" {UID}", "webhook-device ", f"{UID},webhook-device", "*"],
)
def test_allowed_uids_match_exactly(client, local_dir, monkeypatch, uid):
    monkeypatch.setenv("ALLOWED_UIDS", f"{UID},webhook-device")
    assert post(client, f"sample_rate=16000&uid={uid.replace(' ', '%20').replace(',', '%2C')}").status_code in (
        400,
        403,
    )
    assert not local_dir.exists()


def test_disallowed_uid_with_an_oversized_body_is_still_403(client, local_dir, monkeypatch):
    """The allow-list comes before the size check: an outsider learns nothing more."""
    monkeypatch.setenv("ALLOWED_UIDS", UID)
    monkeypatch.setenv("MAX_CHUNK_BYTES", "1000")
    response = post(client, f"sample_rate=16000&uid={OTHER}", b"\0" * 5000)
    assert response.status_code == 403


def test_wrong_token_is_401_before_allowed_uids_is_consulted(client, local_dir, monkeypatch):
    """Without the token, nobody learns which uids are allowed."""
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("ALLOWED_UIDS", UID)
    for uid in (UID, OTHER):
        response = post(client, f"token=wrong&sample_rate=16000&uid={uid}")
        assert response.status_code == 401
        assert uid not in response.get_data(as_text=True)


# -- what the function reads from the bucket ----------------------------------------------


@pytest.mark.parametrize("taken_status", [412, 403])
def test_the_function_reads_only_the_metadata_of_the_object_its_write_met(client, bucket, proxy, taken_status):
    """Its role's storage.objects.get could read any object's data (docs/security.md); the
    function reads only the metadata of the object holding the name its write met, to
    recognise its own earlier attempt whose answer was lost, and never lists the bucket."""
    bucket.blob("not-omi/private.txt").upload_from_string(b"someone else's")
    proxy.taken_status = taken_status  # Cloud Storage's answer to a taken name, as for our role
    proxy.arm("cut", times=1)  # the first upload lands but its answer is lost: the retry meets it
    response = post(client, f"sample_rate=16000&uid={UID}")
    assert response.status_code == 200, response.get_json()
    name = response.get_json()["object"].removeprefix(f"gs://{bucket.name}/")
    assert sorted(objects(bucket)) == sorted(["not-omi/private.txt", name])  # stored once
    reads = [seen.path for seen in proxy.seen if seen.method == "GET"]
    assert not [path for path in reads if path.startswith("/download/") or "alt=media" in path]  # no data
    # Object reads only: the storage library's own background look at the bucket's metadata
    # (GET /storage/v1/b/NAME, refused to the function's role, which it then does without) aside.
    object_reads = [path.split("?")[0] for path in reads if path.startswith(f"/storage/v1/b/{bucket.name}/o")]
    assert object_reads  # the check ran
    assert set(object_reads) == {f"/storage/v1/b/{bucket.name}/o/{quote(name, safe='')}"}  # no listing
