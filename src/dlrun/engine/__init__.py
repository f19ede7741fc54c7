"""The loop and what it stands on: the Trainer, its options, checkpoints and resume, batches, data parallel,
signals."""
