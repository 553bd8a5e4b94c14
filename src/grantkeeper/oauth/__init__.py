"""OAuth 2.0 / OpenID Connect client protocol: I/O-free helpers plus the aiohttp calls."""
