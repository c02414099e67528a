"""gptlab: pretrain GPT-style language models from raw text, and put them to use."""

__version__ = "0.1.0"
