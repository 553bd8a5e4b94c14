"""Who may get a credential besides API keys: end users.

* ``issuers``: the app's own login systems (subject issuers) whose JWTs identify end users;
* ``jwks``: their key sets, fetched through the network guard and cached;
* ``endusertokens``: short-lived bearers minted by the app's backend for one end user;
* ``subjects``: turning a JWT or an end-user token into a verified ``Subject``;
* ``exchange``: RFC 8693 token exchange (``POST /oauth/token``);
* ``selfservice``: ``/v1/me/...``; ``cors``: the CORS rule for both; ``routes``: the HTTP side.

Modules are imported directly (``from grantkeeper.access.exchange import ...``); this
package exports only what the runtime wiring needs, so importing it has no side effects.
"""

from __future__ import annotations

from grantkeeper.access.jwks import JwksCache

__all__ = ["JwksCache"]
