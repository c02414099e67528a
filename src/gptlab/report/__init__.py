"""Looking back at a run: what it recorded (history), its loss plot (plot) and its report (html)."""
