"""Inference helpers: window planning for full-coverage evaluation and sliding-window prediction."""
