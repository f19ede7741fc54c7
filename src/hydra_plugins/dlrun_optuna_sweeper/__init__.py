"""dl-run's Hydra sweeper over Optuna (4 or later): `dl-run -m hparams_search=optuna`, or `hydra/sweeper=optuna`.

Its configs are dl-run's own (configs/hydra/sweeper/optuna.yaml and sampler/*.yaml), which Hydra reads before any
plugin's stored config, so this sweeper is the one that runs even where hydra-optuna-sweeper is installed too.
"""
