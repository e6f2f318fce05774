"""Training stage: losses, optimisers and schedules, the epoch loops and ``fit()``."""
