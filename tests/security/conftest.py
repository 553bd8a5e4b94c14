from tests.security.fake_as import fake_as

__all__ = ["fake_as"]
