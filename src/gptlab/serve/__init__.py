"""Serving a trained run over HTTP: the OpenAI-style completions API (and the page at /)."""
