"""Query parsing: the three URL forms Omi produces, the uids senders send, and values that must be refused."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

import main
import storage

# Today's Omi uids, which must keep exactly the prefix they always had.
plain_uids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(lambda u: u not in (".", ".."))
# Whatever a phone calls itself: spaces, apostrophes, slashes, dots, non-ASCII.
device_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
    storage.is_valid_uid
)
uids = plain_uids | device_names | st.sampled_from(["Omi DevKit 2", "webhook-device", ".", "..", "a/b", "Zoë's Omi"])
tokens = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
rates = st.integers(8000, 48000)


def parse(query: str) -> tuple[int, str, str | None]:
    params = main.parse_query(query.encode())
    return (
        main.validate_sample_rate(params.get("sample_rate")),
        main.validate_uid(params.get("uid")),
        params.get("token"),
    )


def as_dart_sends(uid: str) -> str:
    """The app appends `uid` as text and Dart's Uri.parse escapes what a query may not hold."""
    return quote(uid, safe="!$'()*,;:@/?~-._")


@given(uid=uids, token=tokens, rate=rates)
def test_merged_form_urlencoded_by_the_current_backend(uid, token, rate):
    assert parse(urlencode({"token": token, "sample_rate": rate, "uid": uid})) == (rate, uid, token)


@given(uid=uids, token=tokens, rate=rates)
def test_legacy_form_recovers_sample_rate_from_inside_the_token(uid, token, rate):
    assert parse(f"token={token}?sample_rate={rate}&uid={quote(uid, safe='')}") == (rate, uid, token)


@given(uid=uids, token=tokens, rate=rates)
def test_phone_form_with_a_device_name_appended_after_the_token(uid, token, rate):
    sent = as_dart_sends(uid)
    if any(c in sent for c in "&?+"):  # a name holding these is cut or changed by the app's own URL
        return
    assert parse(f"token={token}?uid={sent}&sample_rate={rate}") == (rate, uid, token)


@given(uid=uids, rate=rates, extra=st.dictionaries(st.sampled_from(["a", "b", "x_y"]), st.text(max_size=20)))
def test_unrelated_parameters_are_ignored(uid, rate, extra):
    assert parse(urlencode({**extra, "sample_rate": rate, "uid": uid}))[:2] == (rate, uid)


# Sample rates as senders (or mistakes) write them: around both bounds, with signs,
# spaces, exponents, decimals and leading zeros.
around_bounds = st.sampled_from([0, 1, 7999, 8000, 8001, 16000, 44100, 47999, 48000, 48001, 99999, 100000])
rate_texts = st.one_of(
    rates.map(str),
    st.integers(-100_000, 200_000).map(str),
    st.builds(
        lambda sign, zeros, n, tail, pad: f"{pad}{sign}{'0' * zeros}{n}{tail}{pad}",
        st.sampled_from(["", "+", "-"]),
        st.integers(0, 2),
        around_bounds | st.integers(7000, 49000),
        st.sampled_from(["", "", ".0", "e0", "e3", "E1", ".5", "_0"]),
        st.sampled_from(["", "", " ", "\t"]),
    ),
    st.text(max_size=12),
)


@given(value=rate_texts)
def test_sample_rate_is_accepted_only_as_a_plain_integer_in_range(value):
    valid = value.isascii() and value.isdigit() and not value.startswith("0") and 8000 <= int(value) <= 48000
    if valid:
        assert main.validate_sample_rate(value) == int(value)
    else:
        with pytest.raises(main.QueryError):
            main.validate_sample_rate(value)


def test_sample_rate_strategy_reaches_both_outcomes():
    """Guards the property above: its draws include accepted and refused values."""
    seen = set()

    @given(value=rate_texts)
    def record(value):
        try:
            main.validate_sample_rate(value)
            seen.add(True)
        except main.QueryError:
            seen.add(False)

    record()
    assert seen == {True, False}


@given(value=st.text(max_size=200) | uids)
def test_an_accepted_uid_maps_to_a_prefix_that_stays_in_its_folder_and_reads_back(value):
    try:
        uid = main.validate_uid(value)
    except main.QueryError:
        assert not value or not value.isprintable() or len(value.encode("utf-8", "surrogatepass")) > 128
        return
    prefix = storage.uid_prefix(uid)
    assert "/" not in prefix and "\\" not in prefix and prefix not in (".", "..")
    assert prefix.isascii() and prefix.isprintable() and len(prefix.encode()) <= 384
    assert storage.uid_from_prefix(prefix) == uid  # reversible, hence no two uids share a prefix


@given(uid=plain_uids)
def test_todays_uids_keep_exactly_their_prefix(uid):
    assert storage.uid_prefix(uid) == uid


@given(prefix=st.text(st.sampled_from("aZ09._-~/ 2EF7"), max_size=12))
def test_only_prefixes_the_mapping_makes_are_read_as_uids(prefix):
    uid = storage.uid_from_prefix(prefix)
    assert uid is None or storage.uid_prefix(uid) == prefix


# A query built from known parts, in any order, with either separator, around the
# parameters we read: parsing must find exactly those values.
other_params = st.tuples(st.sampled_from(["a", "x_y", "tok", "uidx", ""]), st.text(max_size=10))


@given(
    params=st.fixed_dictionaries({}, optional={"uid": uids, "token": tokens, "sample_rate": rate_texts}),
    others=st.lists(other_params, max_size=4),
    separators=st.lists(st.sampled_from("&?"), min_size=8, max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_each_parameter_is_found_whatever_the_order_separators_and_neighbours(params, others, separators, order):
    parts = [f"{name}={quote(value, safe='')}" for name, value in [*params.items(), *others]]
    order.shuffle(parts)
    query = "".join(sep + part for sep, part in zip(separators, parts, strict=False)).lstrip("&?")
    assert main.parse_query(query.encode()) == params


@given(raw=st.binary(max_size=300))
def test_any_bytes_parse_to_strings_or_fail_with_a_query_error(raw):
    try:
        params = main.parse_query(raw)
    except main.QueryError:
        return
    assert set(params) <= {"sample_rate", "uid", "token"} and all(isinstance(v, str) for v in params.values())


def test_percent_encoded_values_are_decoded():
    assert parse("sample_rate=%31%36%30%30%30&uid=ab%2Dc") == (16000, "ab-c", None)


def test_same_value_repeated_is_fine_and_different_values_are_refused():
    assert parse("sample_rate=16000&uid=a&sample_rate=16000")[0] == 16000
    with pytest.raises(main.QueryError, match="twice"):
        main.parse_query(b"uid=a&uid=b&sample_rate=16000")
