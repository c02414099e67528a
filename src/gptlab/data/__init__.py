"""Data: corpora (where text comes from), prepare (text -> token files), loader (batches)."""
