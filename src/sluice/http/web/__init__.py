"""The web page: dashboard, alert editor, reports, preferences (server-rendered, light JavaScript)."""
