"""Diagnostics that teach: what the loss curves mean (course 2 §4.2) and checks before training."""
