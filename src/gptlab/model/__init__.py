"""Model: the GPT network, named presets, parameter and FLOP accounting."""
