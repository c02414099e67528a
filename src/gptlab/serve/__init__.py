"""Serving a trained run over HTTP: the OpenAI-style API (app.py; completions.py and chat.py on the one
request layer, requests.py) and the exploration page at / (explore.py, trace_api.py, static/)."""
