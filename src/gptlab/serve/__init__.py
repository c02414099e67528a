"""Serving a run over HTTP: the app (app.py) and the exploration page (explore.py, static/)."""
