"""The API proxy: ``{METHOD} /v1/proxy/{grant_id}/{path}`` with the grant's token stamped.

``paths`` confines the caller's path under the API base URL (pure functions),
``forward`` filters headers and streams bodies, ``routes`` puts them together.
"""
