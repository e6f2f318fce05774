"""Lesion segmentation stage: lesion masks turned into descriptive measurements (and, later,
the segmentation model)."""
