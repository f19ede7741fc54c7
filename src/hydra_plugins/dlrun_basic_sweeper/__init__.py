"""Hydra's basic sweeper as dl-run runs it: each kind of job composed once to check it, not every job twice."""
