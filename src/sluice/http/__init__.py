"""Everything HTTP on port 9640: authentication, the JSON API, the web page, /metrics."""
