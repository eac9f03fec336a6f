"""Query parsing: the three URL forms Omi produces, and values that must be refused."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

import main

uids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(lambda u: u not in (".", ".."))
tokens = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
rates = st.integers(8000, 48000)


def parse(query: str) -> tuple[int, str, str | None]:
    params = main.parse_query(query.encode())
    return (
        main.validate_sample_rate(params.get("sample_rate")),
        main.validate_uid(params.get("uid")),
        params.get("token"),
    )


@given(uid=uids, token=tokens, rate=rates)
def test_merged_form_urlencoded_by_the_current_backend(uid, token, rate):
    assert parse(urlencode({"token": token, "sample_rate": rate, "uid": uid})) == (rate, uid, token)


@given(uid=uids, token=tokens, rate=rates)
def test_legacy_form_recovers_sample_rate_from_inside_the_token(uid, token, rate):
    assert parse(f"token={token}?sample_rate={rate}&uid={uid}") == (rate, uid, token)


@given(uid=uids, rate=rates)
def test_app_mode_form_with_uid_first(uid, rate):
    assert parse(f"uid={uid}&sample_rate={rate}") == (rate, uid, None)


@given(uid=uids, rate=rates, extra=st.dictionaries(st.sampled_from(["a", "b", "x_y"]), st.text(max_size=20)))
def test_unrelated_parameters_are_ignored(uid, rate, extra):
    assert parse(urlencode({**extra, "sample_rate": rate, "uid": uid}))[:2] == (rate, uid)


@given(value=st.text(max_size=30))
def test_sample_rate_is_accepted_only_as_a_plain_integer_in_range(value):
    valid = value.isascii() and value.isdigit() and not value.startswith("0") and 8000 <= int(value) <= 48000
    if valid:
        assert main.validate_sample_rate(value) == int(value)
    else:
        with pytest.raises(main.QueryError):
            main.validate_sample_rate(value)


@given(value=st.text(max_size=200))
def test_an_accepted_uid_can_never_leave_its_prefix(value):
    try:
        uid = main.validate_uid(value)
    except main.QueryError:
        return
    assert "/" not in uid and "\\" not in uid and uid not in (".", "..") and 1 <= len(uid) <= 128
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in uid)


@given(raw=st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(raw):
    try:
        params = main.parse_query(raw)
    except main.QueryError:
        return
    assert set(params) <= {"sample_rate", "uid", "token"}


def test_percent_encoded_values_are_decoded():
    assert parse("sample_rate=%31%36%30%30%30&uid=ab%2Dc") == (16000, "ab-c", None)


def test_same_value_repeated_is_fine_and_different_values_are_refused():
    assert parse("sample_rate=16000&uid=a&sample_rate=16000")[0] == 16000
    with pytest.raises(main.QueryError, match="twice"):
        main.parse_query(b"uid=a&uid=b&sample_rate=16000")
