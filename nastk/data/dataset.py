"""Dataset descriptions: MSD Decathlon and nnU-Net v2 ``dataset.json``, detected automatically.

Both become a list of ``Case`` (id, image files per channel or one 4D file, label file) plus the
declared labels and channel modalities. Every path is resolved inside the dataset root; one that
escapes it (``../``, absolute, or a link out) is an error, as is a listed file that is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nastk.errors import DataError
from nastk.io import read_json

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


@dataclass(frozen=True)
class Case:
    id: str
    images: tuple[Path, ...]  # one file per channel, or a single (possibly 4D) file
    label: Path | None = None


@dataclass
class DatasetInfo:
    root: Path
    format: str  # "msd" or "nnunet"
    name: str
    modalities: dict[int, str]  # channel -> modality name ("CT", "MRI", "T2", ...)
    labels: dict[int, str]  # value -> name, background included
    training: list[Case]
    test: list[Case] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.modalities)


def strip_suffix(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder``, sorted; macOS's ``._`` companions are not images."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith("._")
    )


def images_by_name(folder: Path) -> dict[str, Path]:
    """:func:`image_files` by name without its suffix (a case id for a folder of label maps)."""
    return {strip_suffix(p.name): p for p in image_files(folder)}


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` that must stay inside ``root`` (after resolving links) and exist."""
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{root / 'dataset.json'}: {what}: expected a relative file path, got {rel!r}")
    root_real = root.resolve()
    path = (root / rel).resolve()
    if Path(rel).is_absolute() or not path.is_relative_to(root_real):
        raise DataError(f"{root / 'dataset.json'}: {what}: path {rel!r} escapes the dataset root {root}")
    if not path.is_file():
        raise DataError(f"{root / 'dataset.json'}: {what}: listed file {rel!r} is missing")
    return path


def _int_keyed(mapping: Any, where: str, file: Path) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{file}: {where!r} must be a non-empty mapping")
    try:
        return {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise DataError(f'{file}: {where!r} keys must be integers as strings, e.g. "0"') from None


def _read_msd(root: Path, data: dict, file: Path) -> DatasetInfo:
    modalities = _int_keyed(data.get("modality"), "modality", file)
    labels = _int_keyed(data.get("labels"), "labels", file)
    training = []
    if not isinstance(data.get("training"), list):
        raise DataError(f"{file}: 'training' must be a list of {{image, label}} pairs")
    for i, item in enumerate(data["training"]):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DataError(f"{file}: training[{i}] must have 'image' and 'label'")
        image = resolve_inside(root, item["image"], f"training[{i}].image")
        label = resolve_inside(root, item["label"], f"training[{i}].label")
        training.append(Case(strip_suffix(image.name), (image,), label))
    test = []
    for i, item in enumerate(data.get("test", []) or []):
        rel = item["image"] if isinstance(item, dict) else item
        image = resolve_inside(root, rel, f"test[{i}]")
        test.append(Case(strip_suffix(image.name), (image,)))
    return DatasetInfo(root, "msd", str(data.get("name", root.name)), modalities, labels, training, test)


def _nnunet_cases(root: Path, folder: str, ending: str, n_channels: int, with_labels: bool) -> list[Case]:
    images_dir = root / folder
    if not images_dir.is_dir():
        return []
    ids = sorted(
        p.name[: -len(ending) - 5]
        for p in images_dir.iterdir()
        if p.name.endswith(f"_0000{ending}") and not p.name.startswith("._")
    )
    cases = []
    for case_id in ids:
        images = tuple(
            resolve_inside(root, f"{folder}/{case_id}_{c:04d}{ending}", f"case {case_id} channel {c}")
            for c in range(n_channels)
        )
        label = None
        if with_labels:
            label = resolve_inside(root, f"labelsTr/{case_id}{ending}", f"case {case_id} label")
        cases.append(Case(case_id, images, label))
    return cases


def _read_nnunet(root: Path, data: dict, file: Path) -> DatasetInfo:
    modalities = _int_keyed(data.get("channel_names"), "channel_names", file)
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{file}: 'labels' must map names to integers")
    labels: dict[int, str] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise DataError(f"{file}: labels[{name!r}]: region-based labels are not supported")
        try:
            labels[int(value)] = str(name)
        except (TypeError, ValueError):
            raise DataError(f"{file}: labels[{name!r}] must be an integer, got {value!r}") from None
    ending = data.get("file_ending")
    if ending not in IMAGE_SUFFIXES:
        raise DataError(f"{file}: 'file_ending' must be one of {', '.join(IMAGE_SUFFIXES)}, got {ending!r}")
    training = _nnunet_cases(root, "imagesTr", ending, len(modalities), True)
    expected = data.get("numTraining")
    if expected is not None and expected != len(training):
        raise DataError(f"{file}: 'numTraining' is {expected} but imagesTr has {len(training)} cases")
    test = _nnunet_cases(root, "imagesTs", ending, len(modalities), False)
    return DatasetInfo(root, "nnunet", str(data.get("name", root.name)), modalities, labels, training, test)


def read_dataset(root: str | Path, format: str = "auto") -> DatasetInfo:
    """Read ``root/dataset.json`` in MSD or nnU-Net v2 format."""
    root = Path(root)
    file = root / "dataset.json"
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    data = read_json(file, missing="missing (expected an MSD or nnU-Net v2 dataset.json)")
    if format == "auto":
        if "channel_names" in data:
            format = "nnunet"
        elif "modality" in data:
            format = "msd"
        else:
            raise DataError(f"{file}: neither MSD ('modality') nor nnU-Net v2 ('channel_names') format")
    info = _read_msd(root, data, file) if format == "msd" else _read_nnunet(root, data, file)
    if 0 not in info.labels:
        raise DataError(f"{file}: 'labels' must declare 0 (background)")
    if not info.training:
        raise DataError(f"{file}: no training cases")
    seen: set[str] = set()
    for case in info.training:
        if case.id in seen:
            raise DataError(f"{file}: case id {case.id!r} appears twice")
        seen.add(case.id)
    return info
