"""Notifications: the outbox, per-channel delivery (e-mail, syslog, webhook) and the dashboard stream."""
