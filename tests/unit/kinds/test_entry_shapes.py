"""What a catalog entry changes in the token requests of the minting kinds: the scope
separator of ``client_credentials`` (Adobe IMS takes a comma-separated list) and the
``jwt_bearer`` assertion's audience, lifetime and fixed claims (Salesforce, DocuSign, Box)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from grantkeeper.errors import CatalogError
from grantkeeper.kinds.base import Credentials, KindConfig
from grantkeeper.kinds.client_credentials import ClientCredentialsKind
from grantkeeper.kinds.jwt_bearer import assertion
from grantkeeper.oauth.tokens import ClientCredentials
from grantkeeper.providers import ProviderSpec, load_catalog
from grantkeeper.providers.catalog import StampSpec, load_catalog_from
from grantkeeper.store.records import IntegrationRecord

KEY = RSAKey.generate_key(2048, private=True)
PEM = KEY.as_pem(private=True).decode()


def _config(spec: ProviderSpec, settings: dict[str, str] | None = None) -> KindConfig:
    record = IntegrationRecord(
        environment_id="e",
        id="i",
        provider=spec.name,
        display_name=None,
        client_id="cid",
        client_secret_ct=None,
        scopes=(),
        return_urls=(),
        authorization_params={},
        issuer=None,
        endpoints={},
        settings=settings or {},
        api_base_url=None,
        token_export="never",
        connect_page=False,
        created_at=0.0,
        updated_at=0.0,
    )
    return KindConfig(
        record=record,
        spec=spec,
        mode=spec.auth_mode,
        fields=spec.fields(),
        stamp=StampSpec(),
        verify_request=None,
        api_base_url=None,
        token_url="https://token.example.com/token",
        authorization_url=None,
        request_token_url=None,
        access_token_url=None,
        revocation_url=None,
        client=ClientCredentials("cid", "secret", spec.token_endpoint_auth_method),
        scopes=(),
    )


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, RSAKey.import_key(KEY.as_pem(private=False))).claims)


def test_client_credentials_scopes_joined_with_the_entry_separator() -> None:
    adobe = load_catalog().get("adobe-server-to-server")
    assert adobe.scope_separator == ","
    creds = ClientCredentialsKind().parse(_config(adobe), {"scopes": ["openid", "AdobeID"]})
    assert creds.values["scope"] == "openid,AdobeID"
    generic = load_catalog().get("client_credentials")
    creds = ClientCredentialsKind().parse(_config(generic), {"scopes": ["a", "b"]})
    assert creds.values["scope"] == "a b"


def test_assertion_defaults_to_the_token_url_and_an_hour() -> None:
    now = time.time()
    c = _claims(assertion(Credentials({"private_key": PEM, "issuer": "me"}), "https://t.example/token", now))
    assert c["aud"] == "https://t.example/token" and c["exp"] - c["iat"] == 3600
    assert c["sub"] == "me" and c["jti"]


def test_assertion_lifetime_and_fixed_claims() -> None:
    now = time.time()
    creds = Credentials({"private_key": PEM, "issuer": "client-id", "subject": "1234567"})
    c = _claims(assertion(creds, "aud-x", now, lifetime=45, extra_claims={"box_sub_type": "enterprise"}))
    assert c["exp"] - c["iat"] == 45 and c["box_sub_type"] == "enterprise" and c["aud"] == "aud-x"
    # a fixed claim never replaces one the vault sets, and no lifetime beyond the hour
    c = _claims(assertion(creds, "aud-x", now, lifetime=7200, extra_claims={"sub": "other"}))
    assert c["sub"] == "1234567" and c["exp"] - c["iat"] == 3600


@pytest.mark.parametrize(
    ("name", "settings", "audience"),
    [
        ("salesforce-jwt-bearer", {}, "https://login.salesforce.com"),
        ("salesforce-jwt-bearer", {"login_host": "test.salesforce.com"}, "https://test.salesforce.com"),
        ("docusign-jwt", {}, "account-d.docusign.com"),
        ("docusign-jwt", {"host": "account.docusign.com"}, "account.docusign.com"),
        ("box-jwt", {}, "https://api.box.com/oauth2/token"),
        ("google-service-account", {}, None),
    ],
)
def test_catalog_entries_name_their_documented_audience(
    name: str, settings: dict[str, str], audience: str | None
) -> None:
    assert load_catalog().get(name).assertion_audience(settings) == audience


ENTRY = """
name = "acme"
display_name = "Acme"
auth_mode = "{mode}"
categories = ["other"]
docs_url = "https://acme.example.com/docs"
token_url = "https://acme.example.com/token"
sources = ["https://acme.example.com/docs"]
{extra}
"""


@pytest.mark.parametrize(
    ("mode", "extra", "message"),
    [
        ("client_credentials", '[assertion]\naudience = "x"', "requires auth_mode 'jwt_bearer'"),
        ("jwt_bearer", '[assertion]\naudience = "https://{region}.acme.example.com"', "not declared"),
        ("jwt_bearer", '[assertion]\nclaims = { aud = "x" }', "set by the vault"),
        ("jwt_bearer", '[assertion]\nclaims = { "bad claim" = "x" }', "invalid claim name"),
        ("jwt_bearer", "[assertion]\nlifetime = 7200", "lifetime"),
    ],
)
def test_bad_assertion_shapes_are_refused(tmp_path: Path, mode: str, extra: str, message: str) -> None:
    (tmp_path / "acme.toml").write_text(ENTRY.format(mode=mode, extra=extra), encoding="utf-8")
    with pytest.raises(CatalogError, match=message):
        load_catalog_from(tmp_path)
