"""Fold ensembles: majority voting over labels (the paper) or averaging softmax."""

from __future__ import annotations

import torch


def vote(label_maps: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Per voxel, the label most folds chose; ties go to the lower label (deterministic)."""
    counts = torch.zeros((num_classes, *label_maps[0].shape), dtype=torch.int16, device=label_maps[0].device)
    for labels in label_maps:
        counts.scatter_add_(0, labels[None].long(), torch.ones_like(labels[None], dtype=torch.int16))
    return counts.argmax(0).to(torch.uint8)


def mean_probabilities(prob_maps: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(prob_maps).mean(0).argmax(0).to(torch.uint8)
