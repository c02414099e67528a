"""Serving a trained run over HTTP: the OpenAI-style completions API (app.py, openai.py) and the
exploration page at / (explore.py, static/)."""
