"""Experiments over many runs: hyperparameter search (Optuna) and backbone comparison."""
