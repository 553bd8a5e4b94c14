"""Lifecycle signals: know before a grant breaks, and hear at once when a provider says so.

- ``expiry``: refresh-token lifetimes, keep-alive refreshes, ``grant.expiring`` warnings;
- ``schemes``: providers' notification schemes (Slack, GitHub, Security Event Tokens);
- ``provider_events``: the receiver that verifies a notification and revokes grants;
- ``probe``: health probes for providers that send nothing;
- ``revoked``: the one transition to ``invalid`` / ``revoked_at_provider``.

The submodules are imported where used (the grant model imports ``expiry``; importing
the others here would import the grant model back).
"""

__all__: list[str] = []
