"""Helpers for testing assetbox without GPUs or downloaded weights (tiny random models)."""
