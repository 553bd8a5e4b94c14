"""``api_key``: a static key the user or app holds (Stripe, OpenAI, SendGrid ...).

Stored: ``api_key`` plus the extra fields the entry declares, sealed. Verified by the
entry's verification request. Stamped as a bearer, a named header, a query parameter or
HTTP Basic, as the entry (or the integration's ``stamp``) says. Revocation: none (API keys
are revoked in the provider's dashboard).
"""

from __future__ import annotations

from typing import Any, ClassVar

from grantkeeper.kinds.base import Credentials, Kind, KindConfig

__all__ = ["ApiKey"]


class ApiKey(Kind):
    mode: ClassVar[str] = "api_key"

    def credentials_view(self, cfg: KindConfig, creds: Credentials) -> dict[str, Any]:
        view = super().credentials_view(cfg, creds)
        view["api_key"] = creds.values["api_key"]
        return view
