"""The provider catalog: data entries (``specs/*.toml``) plus named quirk hooks.

>>> from grantkeeper.providers import load_catalog
>>> load_catalog().get("google").token_url
'https://oauth2.googleapis.com/token'
"""

from grantkeeper.providers.catalog import (
    AccountIdSpec,
    Catalog,
    ProviderSpec,
    Quirk,
    RefreshSpec,
    ResolvedEndpoints,
    Setting,
    StampSpec,
    load_catalog,
)

__all__ = [
    "AccountIdSpec",
    "Catalog",
    "ProviderSpec",
    "Quirk",
    "RefreshSpec",
    "ResolvedEndpoints",
    "Setting",
    "StampSpec",
    "load_catalog",
]
