"""Telemetry: the request log (one redacted row per request, SQLite or PostgreSQL) and its CLI; the rolling
window of recent requests, with the alerts and the dashboard data it feeds."""
