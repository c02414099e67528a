"""Training: the loop, optimizers and schedule, checkpoints, metrics, distributed set-up."""
