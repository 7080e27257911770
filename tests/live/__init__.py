"""A running server: the sluice command, the HTTP API, alerts and notifications end to end
with real SMTP and syslog daemons."""
