"""Evaluation stage: metrics of a trained run, calibration and analysis, Grad-CAM, the report."""
