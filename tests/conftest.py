pytest_plugins = ["tests.support.oidc"]
