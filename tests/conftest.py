import pytest

pytest_plugins = ["tests.support.oidc", "tests.support.gk", "tests.support.subjects", "tests.support.credapi", "tests.support.tokenapi", "tests.support.roots", "tests.support.oauth1api"]

# The longest files start first: `--dist loadfile` hands files out in collection order, so
# a long file collected last ran alone at the end (the CI rehearsal's last ~5 minutes).
_SLOW_FIRST = (
    "tests/security/test_audit_chain.py",
    "tests/integration/test_root_keys.py",
    "tests/integration/test_cli.py",
    # 180 s alone under load (381 s before its probes shared a server; it was not listed)
    "tests/security/test_adversarial_http.py",
    "tests/integration/test_rotation_and_startup.py",
    "tests/integration/test_refresh.py",
    "tests/integration/test_refresh_shutdown.py",
    "tests/integration/test_proxy.py",
    "tests/integration/test_refresh_fence.py",
    "tests/integration/test_refresh_slow_answers.py",
    # ~60 s now that its 1,000-request burst no longer spends ~35 s in the client
    "tests/security/test_reliability.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
