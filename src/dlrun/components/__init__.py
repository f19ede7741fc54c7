"""Components a config group builds: losses, optimizers and schedules, initialisations, augmentations,
activations."""
