"""Inference utilities: sliding-window prediction over whole volumes."""

from nastk.inference.sliding_window import (
    gaussian_weights,
    predict_labels,
    sliding_window_predict,
    window_starts,
)

__all__ = ["gaussian_weights", "predict_labels", "sliding_window_predict", "window_starts"]
