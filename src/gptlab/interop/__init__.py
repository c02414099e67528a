"""Interop: the ways in and out of gptlab (Hugging Face formats); every name map lives here."""
