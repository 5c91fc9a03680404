"""Metrics, baselines, plots and experiment comparison shared by studies."""
