"""The versioned JSON API (``/api/v1``), one router per section: account, data, settings,
users, alerts, notifications."""
