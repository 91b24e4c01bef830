"""An embedded synthetic segmentation task in Medical Segmentation Decathlon (MSD) format.

``write_synthetic_task`` writes a small task folder (``dataset.json``, ``imagesTr``, ``labelsTr``,
``imagesTs`` and, as a held-out reference not listed in ``dataset.json``, ``labelsTs``) that the
quickstart and the tests use instead of real data. It is built to exercise a real pipeline:

* geometry: anisotropic spacing (about 0.8 x 0.8 x 1.5 mm, varying per case), an affine with the first
  axis flipped and a non-zero origin, non-cubic shapes that vary per case, qform and sform codes 1;
* content: a body (outside of which the image is exactly 0) with a subcutaneous fat shell and textured
  tissue; class 1 an "organ" (a lobulated, rotated ellipsoid); class 2 a "lesion" strictly inside it
  (slightly brighter, overlapping intensities); classes 3.. curved tubes; organ-like distractor blobs;
  a smooth multiplicative bias field, partial-volume blur and Rician noise, in arbitrary units.

Structures are drawn in millimetres, so they are round in space, not in voxels. A global intensity
threshold cannot solve the task (``threshold_baseline`` measures the best one with an oracle); shape and
context can. Each case comes from its own stream ``np.random.default_rng([seed, case_id])``, so a case's
arrays depend only on ``(seed, case_id, size, classes)``, and the files are byte-for-byte reproducible.
"""

from __future__ import annotations

from nastk.data.synthetic.head import EXTRACTION_LABELS, HEAD_LABELS, write_extraction_task, write_head_task
from nastk.data.synthetic.oracle import threshold_baseline, threshold_baseline_dice
from nastk.data.synthetic.organ import LABEL_NAMES, write_synthetic_task

__all__ = [
    "EXTRACTION_LABELS",
    "HEAD_LABELS",
    "LABEL_NAMES",
    "threshold_baseline",
    "threshold_baseline_dice",
    "write_extraction_task",
    "write_head_task",
    "write_synthetic_task",
]
