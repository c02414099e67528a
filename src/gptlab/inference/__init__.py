"""Inference: sampling strategies and token-by-token generation."""
