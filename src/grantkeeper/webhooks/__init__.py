"""Webhooks: endpoints, Standard Webhooks signing, and the delivering worker."""
