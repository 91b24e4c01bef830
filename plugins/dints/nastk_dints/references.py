"""The DiNTS paper's Tables 1 and 2, published as ``nastk.references`` entry ``paper`` (``nastk report
--reference paper``): Pancreas architectures with 5-fold cross-validation Dice (Table 1),
and MSD test-set results of six methods on all ten tasks (Table 2).

The numbers are the Medical Segmentation Decathlon live-leaderboard values that the paper
prints, transcribed here by hand. They are percentages (DSC and NSD x 100) kept exactly as
printed, including the three-decimal values of "Kim et al" (83.605, 65.485, 80.825).

Column names follow the leaderboard layout of ``nastk report`` (``nastk.report.leaderboard``):

* ``DSC1`` .. ``DSCk`` and ``NSD1`` .. ``NSDk``: per-class scores, classes in label order;
* ``DSC avg`` / ``NSD avg``: the mean over the task's classes (the paper's "Avg." columns).
  Single-class tasks (Heart, Lung, Spleen, Colon) print no "Avg." column, so they have none.
* Task ``"Overall"``: ``DSC avg`` / ``NSD avg`` are the paper's last two columns ("DSC", "NSD"),
  the mean over the ten tasks of each task's average (``DSC avg``, or ``DSC1`` for a
  single-class task). Recomputing that mean from the other blocks reproduces the printed value
  to within rounding for every method.

Reading the extracted text: the task headers were garbled ("He eart", "/ver", "Lu ng",
"Spl een n Prosta ate", "Co lon"), so each block was assigned by its column structure. The last
block is headed only "Overall" but holds two blocks side by side: Pancreas (DSC1, DSC2, Avg.,
NSD1, NSD2, Avg.; its header is missing in the text) and Overall (DSC, NSD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOURCE = (
    "He, Yang, Roth, Zhao, Xu: 'DiNTS: Differentiable Neural Network Topology Search for 3D "
    "Medical Image Segmentation', CVPR 2021, Table 2 (MSD test set, DSC and NSD in %). The "
    "numbers are the MSD challenge live-leaderboard values as printed in the paper, transcribed "
    "by hand."
)

METHODS: tuple[str, ...] = ("CerebriuDIKU", "NVDLMED", "Kim et al", "nnUNet", "C2FNAS", "DiNTS")

# MSD task order of the paper; "Overall" last.
TASKS: tuple[str, ...] = (
    "Brain",
    "Heart",
    "Liver",
    "Lung",
    "Hippocampus",
    "Spleen",
    "Prostate",
    "Colon",
    "Hepatic Vessels",
    "Pancreas",
    "Overall",
)

# Foreground labels of each MSD task (dataset.json of the Decathlon, not from the paper), in the
# label order that DSC1, DSC2, ... follow. Handy as ``class_names`` for a report.
MSD_CLASSES: dict[str, dict[int, str]] = {
    "Brain": {1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    "Heart": {1: "left atrium"},
    "Liver": {1: "liver", 2: "cancer"},
    "Lung": {1: "cancer"},
    "Hippocampus": {1: "anterior", 2: "posterior"},
    "Spleen": {1: "spleen"},
    "Prostate": {1: "peripheral zone", 2: "transition zone"},
    "Colon": {1: "colon cancer primaries"},
    "Hepatic Vessels": {1: "vessel", 2: "tumour"},
    "Pancreas": {1: "pancreas", 2: "cancer"},
}

_C1 = ("DSC1", "NSD1")
_C2 = ("DSC1", "DSC2", "DSC avg", "NSD1", "NSD2", "NSD avg")
_C3 = ("DSC1", "DSC2", "DSC3", "DSC avg", "NSD1", "NSD2", "NSD3", "NSD avg")

# task -> (columns, rows in METHODS order), typed from the paper one row at a time.
_BLOCKS: dict[str, tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]] = {
    "Brain": (
        _C3,
        (
            (69.52, 43.11, 66.74, 59.79, 88.25, 68.98, 88.90, 82.04),
            (67.52, 45.00, 68.01, 60.18, 86.99, 69.77, 89.82, 82.19),
            (67.40, 45.75, 68.26, 60.47, 86.65, 72.03, 90.28, 82.99),
            (68.04, 46.81, 68.46, 61.10, 87.51, 72.47, 90.78, 83.59),
            (67.62, 48.60, 69.72, 61.98, 87.61, 72.87, 91.16, 83.88),
            (69.28, 48.65, 69.75, 62.56, 89.33, 73.16, 91.69, 84.73),
        ),
    ),
    "Heart": (
        _C1,
        (
            (89.47, 90.63),
            (92.46, 95.57),
            (93.11, 96.44),
            (93.30, 96.74),
            (92.49, 95.81),
            (92.99, 96.35),
        ),
    ),
    "Liver": (
        _C2,
        (
            (94.27, 57.25, 75.76, 96.68, 72.60, 84.64),
            (95.06, 71.40, 83.23, 98.26, 87.16, 92.71),
            (94.25, 72.96, 83.605, 96.76, 88.58, 92.67),
            (95.75, 75.97, 85.86, 98.55, 90.65, 94.60),
            (94.98, 72.89, 83.94, 98.38, 89.15, 93.77),
            (95.35, 74.62, 84.99, 98.69, 91.02, 94.86),
        ),
    ),
    "Lung": (
        _C1,
        (
            (58.71, 56.10),
            (52.15, 50.23),
            (63.10, 62.51),
            (73.97, 76.02),
            (70.44, 72.22),
            (74.75, 77.02),
        ),
    ),
    "Hippocampus": (
        _C2,
        (
            (89.68, 88.31, 89.00, 97.42, 97.42, 97.42),
            (87.97, 86.71, 87.34, 96.07, 96.59, 96.33),
            (90.11, 88.72, 89.42, 97.77, 97.73, 97.75),
            (90.23, 88.69, 89.46, 97.79, 97.53, 97.66),
            (89.37, 87.96, 88.67, 97.27, 97.35, 97.31),
            (89.91, 88.41, 89.16, 97.76, 97.56, 97.66),
        ),
    ),
    "Spleen": (
        _C1,
        (
            (95.00, 98.00),
            (96.01, 99.72),
            (91.92, 94.83),
            (97.43, 99.89),
            (96.28, 97.66),
            (96.98, 99.83),
        ),
    ),
    "Prostate": (
        _C2,
        (
            (69.11, 86.34, 77.73, 94.72, 97.90, 96.31),
            (69.36, 86.66, 78.01, 92.96, 97.45, 95.21),
            (72.64, 89.02, 80.83, 95.05, 98.03, 96.54),
            (76.59, 89.62, 83.11, 96.27, 98.85, 97.56),
            (74.88, 88.75, 81.82, 98.79, 95.12, 96.96),
            (75.37, 89.25, 82.31, 95.96, 98.82, 97.39),
        ),
    ),
    "Colon": (
        _C1,
        (
            (28.00, 43.00),
            (55.63, 66.47),
            (49.32, 62.21),
            (58.33, 68.43),
            (58.90, 72.56),
            (59.21, 70.34),
        ),
    ),
    "Hepatic Vessels": (
        _C2,
        (
            (59.00, 38.00, 48.50, 79.00, 44.00, 61.50),
            (61.74, 61.37, 61.56, 81.61, 68.82, 75.22),
            (62.34, 68.63, 65.485, 83.22, 78.43, 80.825),
            (66.46, 71.78, 69.12, 84.43, 80.72, 82.58),
            (64.30, 71.00, 67.65, 83.78, 80.66, 82.22),
            (64.50, 71.76, 68.13, 83.98, 81.03, 82.51),
        ),
    ),
    "Pancreas": (
        _C2,
        (
            (71.23, 24.98, 48.11, 91.57, 46.43, 69.00),
            (77.97, 44.49, 61.23, 94.43, 63.45, 78.94),
            (80.61, 51.75, 66.18, 95.83, 73.09, 84.46),
            (81.64, 52.78, 67.21, 96.14, 71.47, 83.81),
            (80.76, 54.41, 67.59, 96.16, 75.58, 85.87),
            (81.02, 55.35, 68.19, 96.26, 75.90, 86.08),
        ),
    ),
    "Overall": (
        ("DSC avg", "NSD avg"),
        (
            (67.01, 77.86),
            (72.78, 83.26),
            (74.34, 85.12),
            (77.89, 88.09),
            (76.97, 87.83),
            (77.93, 88.68),
        ),
    ),
}


# Accepted spellings besides the paper's (any case, with or without spaces/underscores, and a
# "TaskNN_" prefix is dropped by the report): MSD folder names ("Task08_HepaticVessel", "Task01_BrainTumour").
_ALIASES: dict[str, str] = {
    "braintumour": "Brain",
    "braintumor": "Brain",
    "hepaticvessel": "Hepatic Vessels",
    "hepaticvessels": "Hepatic Vessels",
}

_TABLE1_SOURCE = (
    "He, Yang, Roth, Zhao, Xu: 'DiNTS: Differentiable Neural Network Topology Search for 3D Medical Image "
    "Segmentation', CVPR 2021, Table 1 (Pancreas: FLOPs, parameters, retraining GPU memory and 5-fold "
    "cross-validation DSC in %), transcribed by hand. Its FLOPs are multiply-accumulates (the published "
    "sigma = 0.8 architecture counts 333.6 G MACs at 96^3; the table prints 334)."
)
_TABLE1_LABEL = "paper Table 1"
_TABLE1_TASK = "Pancreas"

# (model, FLOPs in G, parameters in M, retraining memory in MB, DSC1, DSC2, Avg.); "-" in the paper is None.
_TABLE1: tuple[tuple, ...] = (
    ("3D UNet (nn-UNet)", 658, 18, 9176, None, None, None),
    ("Attention UNet", 1163, 104, 13465, None, None, None),
    ("C2FNAS", 151, 17, 5730, None, None, None),
    ("DiNTS (σ=0.2)", 146, 163, 5787, 77.94, 48.07, 63.00),
    ("DiNTS (σ=0.5)", 308, 147, 10110, 80.20, 52.25, 66.23),
    ("DiNTS (σ=0.8)", 334, 152, 13018, 80.06, 52.53, 66.29),
)


@dataclass(frozen=True)
class PaperTables:
    """The shape of ``nastk.protocols.ReferenceTables``: data only, the report lays it out."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    test: dict[str, tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]]
    test_label: str
    test_title: str
    test_source: str
    task_aliases: dict[str, str]
    class_names: dict[str, dict[int, str]]
    cv_task: str
    cv_columns: tuple[str, ...]
    cv: tuple[tuple[Any, ...], ...]
    cv_label: str
    cv_title: str
    cv_source: str


PAPER = PaperTables(
    tasks=TASKS,
    methods=METHODS,
    test=_BLOCKS,
    test_label="paper Table 2",
    test_title="the paper's Table 2",
    test_source=SOURCE,
    task_aliases=_ALIASES,
    class_names=MSD_CLASSES,
    cv_task=_TABLE1_TASK,
    cv_columns=("method", "GMACs", "params_M", "est_train_MB", "DSC1", "DSC2", "DSC avg"),
    cv=_TABLE1,
    cv_label=_TABLE1_LABEL,
    cv_title="Table 1",
    cv_source=_TABLE1_SOURCE,
)
