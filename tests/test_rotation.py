"""A token rotation as deploy.sh performs it, chunk by chunk, through the real
functions-framework wrapper: no chunk is refused at any step, and each request's
log line says which token matched without ever holding a token."""

from __future__ import annotations

import uuid

import pytest
from conftest import log_lines

OLD = "Old-Token-abcdefghijklmnopqrstuvwxyz012345"
NEW = "New-Token-ABCDEFGHIJKLMNOPQRSTUVWXYZ678901"
CHUNK = b"\x01\x00" * 16000  # 1 s at 16 kHz, as the Omi backend posts

# (what the function holds after the step, the token in the app's URL, the log's "token")
ROTATION = [
    ("deployed", {"WEBHOOK_TOKEN": OLD}, OLD, "current"),
    ("--rotate-token", {"WEBHOOK_TOKEN": NEW, "WEBHOOK_TOKEN_PREVIOUS": OLD}, OLD, "previous"),
    ("new URL pasted", {"WEBHOOK_TOKEN": NEW, "WEBHOOK_TOKEN_PREVIOUS": OLD}, NEW, "current"),
    ("--finish-rotation", {"WEBHOOK_TOKEN": NEW}, NEW, "current"),
]


def deploy(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Give the function the secret environment deploy.sh pins at this step."""
    for name in ("WEBHOOK_TOKEN", "WEBHOOK_TOKEN_PREVIOUS"):
        if name in env:
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)


def post(client, token: str):
    """One chunk as the backend sends it, each with a new Idempotency-Key: the instance
    remembers keys for the whole process, so a fixed one would be a retry the next time."""
    return client.post(
        f"/?token={token}&sample_rate=16000&uid=Omi%20DevKit%202",
        data=CHUNK,
        headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
    )


def test_chunks_streamed_across_a_whole_rotation_are_never_refused(client, local_dir, monkeypatch, capsys):
    n = 0
    for step, env, sent, which in ROTATION:
        deploy(monkeypatch, env)
        capsys.readouterr()
        for _ in range(5):
            n += 1
            response = post(client, sent)
            assert response.status_code == 200, (step, response.get_json())
        lines = log_lines(capsys, OLD, NEW)
        assert [line["token"] for line in lines] == [which] * 5, step
    assert len(list(local_dir.rglob("*.wav"))) == n


def test_after_the_rotation_the_old_token_is_refused(client, local_dir, monkeypatch, capsys):
    deploy(monkeypatch, ROTATION[-1][1])
    capsys.readouterr()
    assert post(client, OLD).status_code == 401
    (line,) = log_lines(capsys, OLD, NEW)
    assert line["token"] is None and line["status"] == 401
    assert not list(local_dir.rglob("*.wav"))


def test_the_previous_token_alone_is_not_enough(client, local_dir, monkeypatch):
    """WEBHOOK_TOKEN_PREVIOUS only ever widens WEBHOOK_TOKEN, as deploy.sh sets them."""
    deploy(monkeypatch, {"WEBHOOK_TOKEN": NEW, "WEBHOOK_TOKEN_PREVIOUS": OLD})
    assert post(client, "Some-Other-Token-0123456789").status_code == 401
    assert post(client, "").status_code == 401
