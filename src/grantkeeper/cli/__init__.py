"""The ``grantkeeper`` command line."""
