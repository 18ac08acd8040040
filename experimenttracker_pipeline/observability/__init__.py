"""Watching the tracker without Dagster: Prometheus metrics read from the store, the health check, and the small
HTTP server behind `experimenttracker serve`."""
