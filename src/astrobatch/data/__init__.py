"""Datasets, samplers, scalers and datamodules shared by studies."""
