"""Data layer: sources -> samples -> leak-free splits -> cached, transformed tensors."""
