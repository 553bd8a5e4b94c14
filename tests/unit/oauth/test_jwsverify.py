"""The one JWT-against-JWKS check shared by ID tokens, SETs and subject tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from grantkeeper.oauth.jwsverify import JwsFailure, verify_jwt

ALGS = ("RS256", "ES256")
RSA = RSAKey.generate_key(2048, parameters={"kid": "r1"})
RSA_NEW = RSAKey.generate_key(2048, parameters={"kid": "r2"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def public(*keys: Any, **extra: Any) -> dict[str, Any]:
    return {"keys": [{**k.as_dict(private=False), **extra} for k in keys]}


def token(key: Any, alg: str, **header: Any) -> str:
    return jwt.encode({"alg": alg, **header}, {"sub": "u1"}, key)


def unsigned(header: dict[str, Any]) -> str:
    """A token joserfc would not produce; the header is refused before any signature work."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part({'sub': 'u1'})}.c2ln"


class Source:
    """A key set that changes after the first fetch, counting fetches and forced ones."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        self.docs = list(docs)
        self.calls: list[bool] = []

    async def __call__(self, force: bool) -> dict[str, Any]:
        self.calls.append(force)
        return self.docs[min(len(self.calls) - 1, len(self.docs) - 1)]


def verify(raw: str, source: Source, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        return await verify_jwt(raw, source, algorithms=ALGS, **kw)

    return anyio.run(go)


def test_a_good_token_verifies_with_its_kid() -> None:
    src = Source(public(EC, RSA))
    assert verify(token(RSA, "RS256", kid="r1"), src)["sub"] == "u1"
    assert src.calls == [False]


def test_rotated_keys_are_fetched_once_more() -> None:
    src = Source(public(RSA), public(RSA, RSA_NEW))
    assert verify(token(RSA_NEW, "RS256", kid="r2"), src)["sub"] == "u1"
    assert src.calls == [False, True]


def test_no_refetch_when_the_source_refreshes_itself() -> None:
    src = Source(public(RSA), public(RSA_NEW))
    with pytest.raises(JwsFailure, match="does not verify"):
        verify(token(RSA_NEW, "RS256", kid="r2"), src, refetch=False)
    assert src.calls == [False]


def test_a_key_declaring_another_alg_is_not_used() -> None:
    # RFC 8725 3.1: the key says RS384, the token says RS256
    src = Source(public(RSA, alg="RS384"))
    with pytest.raises(JwsFailure, match="does not verify"):
        verify(token(RSA, "RS256", kid="r1"), src)


def test_an_encryption_key_is_not_used_to_verify() -> None:
    with pytest.raises(JwsFailure):
        verify(token(RSA, "RS256", kid="r1"), Source(public(RSA, use="enc")))


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512", 7])
def test_algorithms_outside_the_list_are_refused(alg: Any) -> None:
    # an HMAC "signed" with the public key as secret proves nothing
    raw = token(OctKey.generate_key(256), alg) if alg == "HS256" else unsigned({"alg": alg})
    with pytest.raises(JwsFailure) as err:
        verify(raw, Source(public(RSA)))
    assert err.value.algorithm and not err.value.malformed


def test_critical_headers_are_refused() -> None:
    raw = unsigned({"alg": "RS256", "kid": "r1", "crit": ["exp"], "exp": 1})
    with pytest.raises(JwsFailure, match="critical"):
        verify(raw, Source(public(RSA)))


@pytest.mark.parametrize("raw", ["", "abc", "a.b", "\u00e9.b.c", "a.b.c"])
def test_garbage_is_malformed(raw: str) -> None:
    with pytest.raises(JwsFailure) as err:
        verify(raw, Source(public(RSA)))
    assert err.value.malformed


def test_a_non_string_kid_is_malformed() -> None:
    raw = unsigned({"alg": "RS256", "kid": 5})
    with pytest.raises(JwsFailure) as err:
        verify(raw, Source(public(RSA)))
    assert err.value.malformed


def test_a_broken_key_set_is_not_an_error() -> None:
    for doc in ({}, {"keys": "x"}, {"keys": [1, "a", {"kty": "nope", "kid": "r1"}]}):
        with pytest.raises(JwsFailure, match="does not verify"):
            verify(token(RSA, "RS256", kid="r1"), Source(doc))
