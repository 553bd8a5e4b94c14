pytest_plugins = ["tests.support.oidc", "tests.support.gk"]
