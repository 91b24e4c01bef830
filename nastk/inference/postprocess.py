"""Post-processing: keep the largest connected component per class (nnU-Net style)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def largest_component(labels: np.ndarray, classes) -> np.ndarray:
    """For each class in ``classes``, keep only its largest 26-connected component (others -> 0)."""
    out = labels.copy()
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        ranked = sitk.GetArrayFromImage(sitk.RelabelComponent(cc, sortByObjectSize=True))
        out[mask & (ranked != 1)] = 0
    return out
