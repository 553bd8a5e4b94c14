pytest_plugins = ["tests.support.oidc", "tests.support.gk", "tests.support.subjects", "tests.support.credapi", "tests.support.tokenapi", "tests.support.roots", "tests.support.oauth1api"]
