"""Hostile input, fuzzed with hypothesis through functions-framework's own app.

Whatever arrives, the answer is one the sender can act on (200, 400, 401, 403,
405, 413, 415, or 503 while storage fails), never a 500; and whatever is stored
sits under a valid ``uid/`` prefix with a name of the documented pattern, its
bytes exactly the ones received.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from urllib.parse import quote

import pytest
from conftest import objects
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_proxy import StorageProxy, is_any

import storage
import wav

TOKEN = "Fuzz-T0ken_secret-value"
ANSWERS = {200, 400, 401, 403, 405, 413, 415}
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
UID = "Xk2mQ9pL4sT7vW1yZ3aB5cD8eF0g"
ALLOWED = f"{UID}, webhook-device"
FORMS = (
    "token={token}&sample_rate={rate}&uid={uid}",  # merged
    "token={token}?sample_rate={rate}&uid={uid}",  # legacy
    "uid={uid}&sample_rate={rate}",  # app webhook-only mode
    "uid={uid}&sample_rate={rate}&token={token}",
)

# -- strategies -------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` three times in four, so that the fuzz gets past the earlier checks too."""
    return st.sampled_from([good, good, good, bad]).flatmap(lambda chosen: chosen)


huge = st.builds(lambda ch, n: ch * n, st.sampled_from("1a%?&=/.\u00e9"), st.integers(200, 20_000))
uids = mostly(
    st.one_of(st.just(UID), st.just("webhook-device"), st.from_regex(r"[A-Za-z0-9._-]{1,130}", fullmatch=True)),
    st.one_of(
        st.sampled_from(["", ".", "..", "../x", "a/b", "a\\b", "My Omi", "caf\u00e9", "\u202eevil", "a\x00b", "~root"]),
        any_text,
        huge,
    ),
)
rates = mostly(
    st.sampled_from(["16000", "8000", "48000", "44100"]),
    st.one_of(
        st.sampled_from(
            ["7999", "48001", "0", "-16000", "16000.0", "1e4", " 16000", "\uff11\uff16\uff10\uff10\uff10", ""]
        ),
        st.integers(-(10**30), 10**30).map(str),
        any_text,
        huge,
    ),
)
tokens = mostly(
    st.just(TOKEN), st.one_of(st.sampled_from([TOKEN + "x", "", TOKEN.upper(), TOKEN[:-1]]), any_text, huge)
)


def encode(value: str, how: str) -> str:
    if how == "raw":
        return value
    if how == "quote":
        return quote(value, safe="")
    return "".join(f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))  # every byte


@st.composite
def mangled_queries(draw) -> str:
    """One of Omi's three URL forms, then bent out of shape."""
    form = draw(st.sampled_from(FORMS))
    how = draw(st.sampled_from(["raw", "quote", "all"]))
    text = form.format(token=encode(draw(tokens), how), rate=encode(draw(rates), how), uid=encode(draw(uids), how))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["repeat", "swap", "insert", "cut", "junk", "double", "separators"]))
        if op == "repeat":  # a parameter again, same or different value
            # Each name with values of its own kind: the token is a secret only where it belongs.
            name, values = draw(st.sampled_from([("uid", uids), ("sample_rate", rates), ("token", tokens)]))
            value = draw(values)
            text += draw(st.sampled_from("&?")) + f"{name}={encode(value, how)}"
        elif op == "swap" and ("&" in text or "?" in text):
            text = text.replace("&", "\0").replace("?", "&").replace("\0", "?")
        elif op == "insert":
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at]
                + draw(st.sampled_from(["%", "%%", "%G1", "=", "==", "&", "?", "#", "+", "%00", "\xff"]))
                + text[at:]
            )
        elif op == "cut" and text:
            at = draw(st.integers(0, len(text) - 1))
            text = text[:at] + text[at + 1 :]
        elif op == "junk":
            text += "&" + draw(st.sampled_from(["x=1", "=", "&&", "sample_rate", "uid", "token=", "a=b=c"]))
        elif op == "double":
            text = quote(text, safe="=&?")
        elif op == "separators":
            text = text.replace("&", draw(st.sampled_from([";", "&&", "&amp;", "%26"])))
    return text


def raw_queries() -> st.SearchStrategy[str]:
    """A query string as a server hands it over: any bytes, decoded as latin-1."""
    return mostly(
        mangled_queries().map(lambda q: q.encode("utf-8", "surrogatepass").decode("latin-1")),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    )


bodies = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda n: b"\x01\x80" * n, st.integers(0, 4000)),  # past MAX_CHUNK_BYTES when set to 4096
    st.just(b""),
)
idempotency_keys = st.one_of(
    st.none(),
    st.uuids().map(str),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=300),
    st.builds(lambda ch, n: ch * n, st.sampled_from("k\x00\xff "), st.integers(100, 20_000)),
)
methods = st.sampled_from(["POST"] * 24 + ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW"])


# -- checks -----------------------------------------------------------------------------


def request(client, *, query: str, body: bytes, method: str = "POST", **environ: object):
    """Send exactly these WSGI variables: CONTENT_LENGTH is the body's unless given (None: absent)."""
    overrides = {"QUERY_STRING": query, "REQUEST_METHOD": method, "wsgi.input": io.BytesIO(body)}
    overrides |= {"CONTENT_LENGTH": str(len(body)), **environ}
    return client.open("/", environ_overrides=overrides)


def stored_name(response, bucket_name: str) -> str | None:
    """The object a 200 names, checked against the documented pattern."""
    if response.status_code != 200 or response.request.method == "HEAD":
        return None
    body = response.get_json()
    if body.get("object") is None or body.get("duplicate"):  # a retry of a chunk already checked
        return None
    location = body["object"]
    assert location.startswith(f"gs://{bucket_name}/")
    name = location.removeprefix(f"gs://{bucket_name}/")
    assert storage.parse_object_name(name), name
    return name


def assert_everything_stored_is_valid_and_reported(bucket, reported: dict[str, bytes]) -> None:
    stored = objects(bucket)
    for name in stored:
        parsed = storage.parse_object_name(name)
        assert parsed and storage.is_valid_uid(parsed.uid)
        prefix = name.split("/")[0]
        assert prefix not in (".", "..") and name.count("/") == 1 and prefix.isprintable()
    assert set(stored) == set(reported)  # nothing unreported, nothing lost
    for name, pcm in reported.items():
        data = stored[name]
        assert wav.parse_header(data[: wav.HEADER_SIZE])[1] == len(pcm)
        assert data[wav.HEADER_SIZE : wav.HEADER_SIZE + len(pcm)] == pcm


def report(capsys, what: str, statuses: dict[int, int]) -> None:
    """Print how many inputs were tried and what they got (for the figures in docs/reliability.md)."""
    with capsys.disabled():
        print(f"\nhostile {what}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")


# -- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("allowed", [None, ALLOWED])
def test_mangled_query_strings_never_get_a_500_or_store_outside_a_uid_prefix(
    client, bucket, monkeypatch, capsys, allowed
):
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    if allowed:
        monkeypatch.setenv("ALLOWED_UIDS", allowed)
    reported: dict[str, bytes] = {}
    statuses: dict[int, int] = {}

    @FUZZ
    @given(query=raw_queries(), body=bodies)
    def one(query, body):
        response = request(client, query=query, body=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in ANSWERS, (query, response.get_data()[:300])
        assert TOKEN not in response.get_data(as_text=True)
        if (name := stored_name(response, bucket.name)) is not None:
            reported[name] = body

    one()
    assert_everything_stored_is_valid_and_reported(bucket, reported)
    assert TOKEN not in capsys.readouterr().out
    report(capsys, f"queries (ALLOWED_UIDS={allowed})", statuses)
    if allowed:
        assert {storage.parse_object_name(name).uid for name in reported} <= set(allowed.split(", "))
    assert {200, 400, 401, 403 if allowed else 200} <= statuses.keys()  # the fuzz reached every branch


def test_lying_lengths_chunked_bodies_and_absurd_headers_never_get_a_500(client, bucket, monkeypatch, capsys):
    monkeypatch.setenv("MAX_CHUNK_BYTES", "4096")
    reported: dict[str, bytes] = {}
    statuses: dict[int, int] = {}

    @FUZZ
    @given(
        method=methods,
        body=bodies,
        length=st.one_of(
            st.just("true"),  # tell the truth
            st.none(),  # no length and not chunked
            st.integers(0, 10**12).map(str),
            st.sampled_from(["-1", "abc", "", " 10", "1e3", "0x10", "\u0661\u0660"]),
        ),
        chunked=st.booleans(),
        key=idempotency_keys,
        content_type=st.one_of(
            st.just("application/octet-stream"),
            st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data"]),
            any_text.filter(lambda t: t.isprintable()),
        ),
        query=mostly(st.just(f"sample_rate=16000&uid={UID}"), raw_queries()),
    )
    def one(method, body, length, chunked, key, content_type, query):
        environ: dict[str, object] = {"CONTENT_TYPE": content_type.encode("utf-8").decode("latin-1")}
        if chunked:
            environ |= {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True, "CONTENT_LENGTH": None}
        else:
            environ["CONTENT_LENGTH"] = str(len(body)) if length == "true" else length
        if key is not None:
            environ["HTTP_IDEMPOTENCY_KEY"] = key
        response = request(client, query=query, body=body, method=method, **environ)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in ANSWERS, response.get_data()[:300]
        if (name := stored_name(response, bucket.name)) is not None:
            received = response.get_json()["bytes"]
            if not chunked and length not in ("true", None) and length.isdecimal():
                assert received == min(int(length), len(body))  # the stated length, never more
            reported[name] = body[:received]

    one()
    assert_everything_stored_is_valid_and_reported(bucket, reported)
    assert {200, 400, 405, 413} <= statuses.keys()
    report(capsys, "headers and bodies", statuses)


def test_hostile_requests_while_storage_fails_get_503_never_500(client, bucket, fake_gcs, monkeypatch, capsys):
    """Storage refuses or drops every write: each request that would store gets 503, quickly."""
    monkeypatch.setenv("STORAGE_DEADLINE_SECONDS", "1")
    monkeypatch.setenv("NO_RETRY_DEADLINE_SECONDS", "1")
    statuses: dict[int, int] = {}
    with StorageProxy(fake_gcs) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)

        @settings(FUZZ, max_examples=max(20, EXAMPLES // 10))
        @given(query=raw_queries(), body=bodies, fault=st.sampled_from(["503", "reset"]))
        def one(query, body, fault):
            proxy.clear()
            proxy.arm(fault, match=is_any)
            started = time.monotonic()
            response = request(client, query=query, body=body, HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in ANSWERS | {503}
            assert time.monotonic() - started < 5
            if response.status_code == 200:
                assert response.get_json() == {"stored": None}  # nothing was stored, so nothing claimed

        @settings(FUZZ, max_examples=5)
        @given(body=bodies.filter(bool))
        def storable(body):
            proxy.clear()
            proxy.arm("503", match=is_any)
            response = request(client, query=f"sample_rate=16000&uid={UID}", body=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code == 503
            assert "storage" in response.get_json()["error"]

        one()
        storable()
    assert objects(bucket) == {}
    assert 503 in statuses
    report(capsys, "requests while storage fails", statuses)


@pytest.mark.parametrize("raw", [b"\xff\xfe" * 5000, b"%" * 10_000, b"uid=" + b"a" * 1_000_000, b"&" * 100_000])
def test_pathological_query_strings_are_answered_quickly(client, bucket, raw):
    started = time.monotonic()
    response = request(client, query=raw.decode("latin-1"), body=b"\0\0")
    assert response.status_code == 400
    assert time.monotonic() - started < 2
    assert json.loads(response.get_data())["error"]
