"""Training engine: optimisers and schedules, the epoch loops, checkpoints and ``fit()``."""
