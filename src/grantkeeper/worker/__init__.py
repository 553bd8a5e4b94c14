"""The background worker: proactive refresh, webhook delivery, housekeeping."""
