"""``basic``: HTTP Basic credentials (RFC 7617), e.g. Twilio's SID and token, Jira's email and
API token.

Stored: ``username`` and ``password`` (and any extra field the entry declares), sealed.
Verified by the entry's verification request. Stamped as ``Authorization: Basic
base64(template)`` (template default ``{username}:{password}``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from grantkeeper.kinds.base import Credentials, Kind, KindConfig

__all__ = ["Basic"]


class Basic(Kind):
    mode: ClassVar[str] = "basic"

    def credentials_view(self, cfg: KindConfig, creds: Credentials) -> dict[str, Any]:
        view = super().credentials_view(cfg, creds)
        view.setdefault("username", creds.values.get("username", ""))
        view.setdefault("password", creds.values.get("password", ""))
        return view
