"""The parts of end-user access that need no server: form parsing, origins, end-user token format."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grantkeeper.access.endusertokens import _parse
from grantkeeper.access.exchange import GRANT_TYPE, parse_request
from grantkeeper.access.issuers import normalise_origin
from grantkeeper.errors import TokenExchangeError

FORM = "application/x-www-form-urlencoded"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def body(**overrides: str) -> bytes:
    form = {"grant_type": GRANT_TYPE, "subject_token": "t", "subject_token_type": JWT, "audience": "acme"}
    form.update(overrides)
    return urlencode({k: v for k, v in form.items() if v != "<drop>"}).encode()


def error_of(raw: bytes, ctype: str = FORM) -> str:
    with pytest.raises(TokenExchangeError) as info:
        parse_request(raw, ctype)
    return info.value.error


def test_a_good_request_parses() -> None:
    req = parse_request(body(scope="a b a", login_hint="alice"), FORM + "; charset=utf-8")
    assert (req.audience, req.scope, req.login_hint) == ("acme", ("a", "b"), "alice")
    assert repr(req) == "ExchangeRequest(audience='acme', scope=('a', 'b'))"  # no subject token


@pytest.mark.parametrize(
    ("raw", "ctype", "error"),
    [
        (body(), "application/json", "invalid_request"),
        (body(grant_type="<drop>"), FORM, "invalid_request"),
        (body(grant_type="refresh_token"), FORM, "unsupported_grant_type"),
        (body(subject_token=""), FORM, "invalid_request"),
        (body(subject_token_type="urn:x"), FORM, "invalid_request"),
        (body(audience="<drop>"), FORM, "invalid_request"),
        (body(audience="../x"), FORM, "invalid_target"),
        (body(resource="https://x"), FORM, "invalid_target"),
        (body(requested_token_type="urn:ietf:params:oauth:token-type:refresh_token"), FORM, "invalid_request"),
        (body(actor_token="x"), FORM, "invalid_request"),
        (body(scope="a\\b"), FORM, "invalid_scope"),
        (body(scope=""), FORM, "invalid_scope"),
        (body(login_hint="a\x00b"), FORM, "invalid_request"),
        (body(whatever="1"), FORM, "invalid_request"),
        (body() + b"&audience=other", FORM, "invalid_request"),
        (b"\xff\xfe", FORM, "invalid_request"),
    ],
)
def test_bad_requests_get_the_rfc_error(raw: bytes, ctype: str, error: str) -> None:
    assert error_of(raw, ctype) == error


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(raw: bytes) -> None:
    try:
        parse_request(raw, FORM)
    except TokenExchangeError as exc:
        assert exc.http_status == 400 and exc.error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
        ("http://[::1]:3000", "http://[::1]:3000"),
    ],
)
def test_origins_are_normalised(value: str, expected: str) -> None:
    assert normalise_origin(value) == expected


@pytest.mark.parametrize(
    "value", ["*", "null", "https://*.example.com", "https://a.test/path", "ftp://a.test", "https://u@a.test", "a.test", "https://a.test?x"]
)
def test_not_origins_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        normalise_origin(value)


def test_end_user_token_format() -> None:
    assert _parse("gkut_abc_def") == ("abc", "def")
    for bad in ("gk_abc_def", "gkut_abc", "gkut__x", "gkut_" + "a" * 300):
        assert _parse(bad) is None
