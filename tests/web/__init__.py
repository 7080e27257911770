"""The web page in a real browser (Debian chromium through Playwright)."""
