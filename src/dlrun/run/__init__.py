"""One experiment: built (experiment), trained (training), in its run directory (run_directory); sweeps,
pretraining for transfer, and the checks before Hydra starts (preflight)."""
