"""What each CLI subcommand does: load a run, pick the device, call an engine (inference/), print.

cli.py parses arguments and calls one function here; the engines never load runs or print.
"""
