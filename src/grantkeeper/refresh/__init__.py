"""Keeping access tokens fresh: the single-flight engine and the proactive scheduler."""
