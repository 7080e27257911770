"""Alerts: definitions, the sliding-window engine on the ingest path, and alert records."""
