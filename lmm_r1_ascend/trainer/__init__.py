"""The controller loop and its run outputs (checkpoints, metrics)."""
