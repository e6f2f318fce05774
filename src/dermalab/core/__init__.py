"""The small core every stage builds on: config, errors, the run directory, backbones, metrics,
calibration, plots, tracking and atomic writes. Imports nothing above it."""
