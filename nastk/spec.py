"""Spec files: pydantic v2 models read from YAML. Every default is the paper's value (DiNTS, Sec. 4.1).

A spec never executes code: it is parsed with a ``yaml.SafeLoader`` that also refuses aliases and
duplicate keys, and only names registered plugins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nastk import registry
from nastk.errors import PluginError, SpecError
from nastk.protocols import ChecksSpec, ForSpaces, HasDefaultLosses, HasDefaultOps
from nastk.spec_reference import markdown_reference as markdown_reference
from nastk.spec_yaml import parse_yaml as parse_yaml
from nastk.spec_yaml import read_spec_text as read_spec_text

Triple = tuple[int, int, int]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _paper_augmentation() -> list[dict[str, Any]]:
    # Sec. 4.1: rotation by 90/180/270 degrees in the x-y plane and flips on all three axes.
    return [{"name": "rot90_xy"}, {"name": "flip"}]


class AutoNormalization(_Section):
    stripped_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A case whose image is exactly 0 over at least this share of its voxels has a stripped "
        "(zero) outside.",
    )
    foreground_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="0 outside (zscore_nonzero) only while the foreground is at most this share of every "
        "case's nonzero region (and every case has a zero outside).",
    )


class DatasetSpec(_Section):
    root: str | None = Field(
        None,
        description="MSD task folder (e.g. Task07_Pancreas/) or nnU-Net v2 dataset. A relative path is read "
        "from the working directory when it exists there (as before), else from the spec file's folder.",
    )
    format: Literal["auto", "msd", "nnunet"] = Field(
        "auto", description="dataset.json flavour; auto-detected."
    )
    cache_dir: str | None = Field(
        None,
        description="Preprocessed cache; default $NASTK_CACHE/<root's folder name> when that environment "
        "variable is set, else <root>/.nastk-cache.",
    )
    num_workers: int = Field(2, ge=0, description="Processes for preprocessing and patch loading.")
    crop_nonzero: bool = Field(True, description="Crop each case to its nonzero region.")
    normalization: (
        Literal["auto"] | list[Literal["auto", "ct", "zscore_nonzero", "zscore_nonzero_keep", "zscore"]]
    ) = Field(
        "auto",
        description="Intensity normalisation per channel (docs/data.md): ct, zscore_nonzero (z-score over "
        "the nonzero region, 0 outside), zscore_nonzero_keep (the same statistics, the outside keeps its "
        "value), zscore (all voxels), or auto: chosen from the data by nastk plan's rule (CT: ct; else 0 "
        "outside only where every case has a zero outside and the foreground is a small part of the "
        "nonzero region; zscore where no case has one; else zscore_nonzero_keep; docs/planning.md). "
        "`nastk validate` "
        "prints what auto resolves to. One value for every channel, or a list with one per channel.",
    )
    auto_normalization: AutoNormalization = Field(
        default_factory=lambda: AutoNormalization(),
        description="The thresholds of the auto normalisation rule (docs/planning.md).",
    )
    fg_fraction: float = Field(
        0.33,
        ge=0,
        le=1,
        description="Share of patches centred on foreground (the paper does not say; nnU-Net: 1/3).",
    )
    nsd_tolerance: dict[int, float] = Field(
        default_factory=dict,
        description="NSD tolerance in mm per class (MSD challenge values per task); 1.0 mm where not given.",
    )
    augment: list[dict[str, Any]] = Field(
        default_factory=_paper_augmentation,
        description="Named batch augmentations with params (paper search/Pancreas: rot90_xy, flip; "
        "the other nine tasks add rotate_xy, scale, gamma).",
    )
    spacing: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Target voxel spacing in mm (paper: 1.0 mm isotropic, Sec. 4)."
    )
    in_channels: int = Field(1, ge=1, description="Image channels (modalities).")
    num_classes: int = Field(3, ge=2, description="Output classes including background (Pancreas: 3).")
    fold: int = Field(0, ge=0, description="Cross-validation fold used by search (paper: C2FNAS split).")
    num_folds: int = Field(5, ge=2, description="Number of cross-validation folds (paper: 5).")
    splits_file: str | None = Field(
        None,
        description="Folds from a file instead of nastk's seeded split: nnU-Net's splits_final.json (a "
        'list of {"train": [...], "val": [...]}, one per fold), to compare fold for fold with nnU-Net. '
        "Relative paths as for root. The run directory keeps a copy (RUN/splits.json).",
    )

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(s) and s > 0 for s in value):
            raise ValueError(f"every spacing must be a positive number of mm, got {list(value)}")
        return value

    @field_validator("normalization", mode="before")
    @classmethod
    def _null_is_auto(cls, value: Any) -> Any:
        return "auto" if value is None else value  # specs written before auto said null for "by modality"

    @model_validator(mode="after")
    def _one_scheme_per_channel(self) -> DatasetSpec:
        if not isinstance(self.normalization, str) and len(self.normalization) != self.in_channels:
            raise ValueError(
                f"normalization names {len(self.normalization)} scheme(s) for {self.in_channels} channel(s)"
            )
        return self

    @field_validator("nsd_tolerance")
    @classmethod
    def _tolerances(cls, value: dict[int, float]) -> dict[int, float]:
        bad = {c: t for c, t in value.items() if not (math.isfinite(t) and t >= 0)}
        if bad:
            raise ValueError(f"tolerances must be finite and >= 0 mm, got {bad}")
        return value


def _installed_space(name: str) -> Any:
    """The space object, or None when it does not load (the spec's check of space.name says why)."""
    try:
        return registry.load("spaces", name)
    except PluginError:
        return None


class SpaceSpec(_Section):
    name: str = Field(
        "",
        validate_default=True,
        description="Registered search space (nastk.spaces); empty: the one the installation declares "
        "(entry point `space` of nastk.defaults; nastk ships its reference plugin's).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Validated by the space's own model.")

    @field_validator("name")
    @classmethod
    def _installed_default(cls, name: str) -> str:
        if name:
            return name
        try:  # a spec means what the installation says, so nastk's code names no space
            return registry.default_space()
        except PluginError as exc:
            raise ValueError(str(exc)) from None


class LossSpec(_Section):
    name: str = Field(description="Registered loss (nastk.losses).")
    weight: float = Field(1.0, ge=0, description="Multiplier in L_arch (Eq. 11).")
    params: dict[str, Any] = Field(default_factory=dict)


class DiscretizerSpec(_Section):
    name: str = Field(
        "", description="Registered discretizer (nastk.discretizers); empty: the one named like the space."
    )
    params: dict[str, Any] = Field(default_factory=dict)


class SGDSpec(_Section):
    lr_start: float = Field(0.025, gt=0, description="LR at the start of warm-up (paper: 0.025).")
    lr: float = Field(0.2, gt=0, description="LR reached at the end of warm-up (paper: 0.2).")
    momentum: float = Field(0.9, ge=0, description="Paper: 0.9.")
    weight_decay: float = Field(4e-5, ge=0, description="Paper: 4e-5.")
    gamma: float = Field(0.5, gt=0, description="LR decay factor at each milestone (paper: 0.5).")


class AdamSpec(_Section):
    lr: float = Field(0.008, gt=0, description="Architecture optimiser LR (paper: 0.008).")
    weight_decay: float = Field(0.0, ge=0, description="Paper: 0.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam defaults; the paper does not say.")


class SearchSpec(_Section):
    patch_size: Triple = Field((96, 96, 96), description="Training patch (paper: 96^3).")
    batch_size: int = Field(8, ge=1, description="Global batch (paper: 8 GPUs x 1 patch).")
    warmup_iters: int = Field(1000, ge=0, description="Linear LR warm-up (paper: 1k).")
    weight_iters: int = Field(10000, ge=0, description="Weights-only iterations after warm-up (paper: 10k).")
    joint_iters: int = Field(10000, ge=0, description="Joint weight/arch iterations (paper: 10k).")
    milestones: list[int] = Field([8000, 16000], description="LR x gamma after warm-up (paper: [8k, 16k]).")
    weights: SGDSpec = Field(default_factory=SGDSpec)
    arch: AdamSpec = Field(default_factory=AdamSpec)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    checkpoint_minutes: float | None = Field(
        None,
        gt=0,
        description="Also checkpoint when this many minutes passed since the last checkpoint (rank 0's "
        "clock, agreed by every rank); unset: by `checkpoint_every` only.",
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="Mixed precision of the search (paper: off); `nastk search --amp` overrides it."
    )
    recompute: Literal["none", "all", "auto"] = Field(
        "none",
        description="Cells recomputed in backward to save memory: none, all, or auto (the cells that fit "
        "search.memory_target_gb at the least measured time). Results do not change, only memory and time.",
    )
    memory_target_gb: float | None = Field(
        None,
        gt=0,
        validate_default=True,
        allow_inf_nan=False,
        description="GB per GPU a search step may hold (activations saved for backward plus weights, "
        "gradients and optimiser state) for search.recompute: auto; nastk plan writes it from --gpu-memory.",
    )

    @field_validator("memory_target_gb")
    @classmethod
    def _auto_needs_target(cls, value: float | None, info) -> float | None:
        if value is None and info.data.get("recompute") == "auto":
            raise ValueError("needed with search.recompute: auto (GB per GPU a search step may hold)")
        return value


class RetrainSpec(_Section):
    patch_size: Triple = Field((96, 96, 96), description="Paper: 96^3; Prostate 96x96x32; Hippocampus 32^3.")
    filter_multiplier: float = Field(2.0, gt=0, description="Filters x this vs search (paper: x2).")
    batch_multiplier: int = Field(2, ge=1, description="Batch x this vs search (paper: x2).")
    gpus: int = Field(
        8,
        ge=1,
        description="GPUs the retraining batch is split over (paper: 8, so 2 patches per GPU); "
        "memory budgets and estimates are per GPU.",
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off",
        description="Mixed precision of retraining (paper: off); `nastk retrain --amp` overrides it. "
        "Memory budgets and estimates assume this.",
    )
    warmup_iters: int = Field(1000, ge=0, description="Paper: 1k.")
    iters: int = Field(40000, ge=1, description="Iterations after warm-up (paper: 40k).")
    milestones: list[int] = Field([8000, 16000, 24000, 32000], description="Paper: [8k, 16k, 24k, 32k].")
    weights: SGDSpec = Field(default_factory=SGDSpec)
    val_every: int = Field(1000, ge=1)
    log_every: int | None = Field(
        None,
        ge=1,
        description="Iterations between log rows; unset: `search.log_every`, as before it existed.",
    )
    checkpoint_every: int = Field(500, ge=1)
    checkpoint_minutes: float | None = Field(
        None,
        gt=0,
        description="Also checkpoint when this many minutes passed since the last checkpoint (rank 0's "
        "clock, agreed by every rank); unset: by `checkpoint_every` only.",
    )


class InferenceSpec(_Section):
    patch_size: Triple = Field((96, 96, 96), description="Sliding-window patch (paper: as retraining).")
    stride: Triple = Field(
        (16, 16, 16), description="Window stride (paper: 16^3; Prostate 16x16x4; Hippocampus 4^3)."
    )
    blend: Literal["gaussian", "constant"] = Field("gaussian")
    ensemble: Literal["vote", "mean"] = Field("vote", description="Fold ensemble (paper: majority voting).")
    largest_component: Literal["auto"] | bool | list[int] = Field(
        "auto",
        description="Keep only the largest connected component of a class in `predict`: `auto` (the "
        "classes cross-validation chose, RUN/postprocessing.json; none without it), true (every class), "
        "false (none), or a list of classes. Paper: nnU-Net's post-processing, i.e. auto.",
    )
    flip_tta: bool = Field(False, description="Flip test-time augmentation (paper: no).")
    amp: bool = Field(True, description="Mixed precision on GPU.")
    batch_size: int = Field(4, ge=1, description="Windows per forward pass.")


class Spec(_Section):
    name: str | None = Field(None, description="Run name; defaults to the file name.")
    synth: dict[str, Any] | None = Field(
        None, description="Quickstart only: arguments of the synthetic task (cases, size, classes, seed)."
    )
    seed: int = Field(0, description="Seeds python, numpy and torch.")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    space: SpaceSpec = Field(default_factory=dict, validate_default=True)
    ops: list[str] | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description="Registered cell ops (nastk.ops). Default: the space's own (the paper's five of Sec. 3.2 "
        "for the reference space).",
    )
    losses: list[LossSpec] | None = Field(
        None,
        validate_default=True,
        description="Registered losses with weight and params: one segmentation loss and the architecture "
        "regularisers of Eq. 11. Default: the space's own (the paper's five, lambda = 0.001 for the "
        "topology loss and sigma = 0.8 for memory, for the reference space), else dice_ce alone.",
    )
    discretizer: DiscretizerSpec = Field(default_factory=DiscretizerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    # (field, message) pairs that do not make the spec invalid but that a user should see.
    _warnings: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[tuple[str, str]]:
        return self._warnings

    # What a spec leaves out of ops and losses is its space's (the space is validated first; when it failed,
    # its error is the one reported).
    @field_validator("ops")
    @classmethod
    def _ops_of_the_space(cls, ops: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if ops is None:
            if "space" not in info.data:
                return None
            space = _installed_space(info.data["space"].name)
            if space is None:  # an unknown space: validate() names it, and there are no ops to check
                return []
            if not isinstance(space, HasDefaultOps):
                raise ValueError(f"space {info.data['space'].name!r} declares no default cell ops; list them")
            ops = list(space.default_ops)
        dupes = sorted({o for o in ops if ops.count(o) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return ops

    @field_validator("losses")
    @classmethod
    def _losses_of_the_space(
        cls, losses: list[LossSpec] | None, info: ValidationInfo
    ) -> list[LossSpec] | None:
        if losses is None and "space" in info.data:
            space = _installed_space(info.data["space"].name)
            found = space.default_losses if isinstance(space, HasDefaultLosses) else ({"name": "dice_ce"},)
            losses = [LossSpec.model_validate(item) for item in found]
        return losses

    @model_validator(mode="after")
    def _discretizer_of_the_space(self) -> Spec:
        if not self.discretizer.name:  # a space's own discretizer is registered under the space's name
            self.discretizer.name = self.space.name
        return self


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plugin_problems(spec: Spec) -> list[tuple[str, str]]:
    """Check registered names without importing anything."""
    problems: list[tuple[str, str]] = []

    def check(group: str, name: str, field: str) -> None:
        try:
            registry.entry(group, name)
        except PluginError as exc:
            problems.append((field, str(exc)))

    check("spaces", spec.space.name, "space.name")
    for i, op in enumerate(spec.ops):
        check("ops", op, f"ops[{i}]")
    for i, loss in enumerate(spec.losses):
        check("losses", loss.name, f"losses[{i}].name")
    check("discretizers", spec.discretizer.name, "discretizer.name")
    return problems


def _inference_problems(spec: Spec) -> list[tuple[str, str]]:
    chosen = spec.inference.largest_component
    if not isinstance(chosen, list):
        return []
    bad = [c for c in chosen if not 1 <= c < spec.dataset.num_classes]
    if not bad:
        return []
    n = spec.dataset.num_classes
    return [("inference.largest_component", f"{bad} are not foreground classes 1..{n - 1} (num_classes {n})")]


def _augment_problems(spec: Spec) -> list[tuple[str, str]]:
    from nastk.data import augment

    problems = []
    for i, item in enumerate(spec.dataset.augment):
        try:
            augment.build([item])
        except ValueError as exc:
            problems.append((f"dataset.augment[{i}]", str(exc)))
    return problems


def _space_problems(spec: Spec) -> list[tuple[str, str]]:
    """Validate space params with the space's own model, then every patch against its divisor."""
    try:
        space = registry.load("spaces", spec.space.name)
    except PluginError as exc:
        return [("space.name", str(exc))]
    try:
        params = space.Params.model_validate(spec.space.params)
    except ValidationError as exc:
        return [(_loc(("space", "params", *e["loc"])), e["msg"]) for e in exc.errors()]
    spec.space.params = params.model_dump(mode="json")
    div = space.patch_divisor(params)
    problems = []
    for section in ("search", "retrain", "inference"):
        patch = getattr(spec, section).patch_size
        if any(p % div for p in patch):
            problems.append(
                (
                    f"{section}.patch_size",
                    f"{list(patch)} is not divisible by {div} (= 2^(depths+1)) on every side",
                )
            )
    stride = spec.inference.stride
    if any(s < 1 or s > p for s, p in zip(stride, spec.inference.patch_size)):
        problems.append(
            ("inference.stride", f"{list(stride)} must be between 1 and the patch size on every side")
        )
    return problems


def _loss_problems(spec: Spec, cross_check: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Build each loss once with its params, and require exactly one segmentation loss.

    A loss factory with a pydantic ``Params`` model gets its params checked field by field; a built
    loss with ``check_spec(spec) -> (errors, warnings)`` checks itself against the rest of the spec.
    Returns (problems, warnings).
    """
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    n_seg = 0
    for i, item in enumerate(spec.losses):
        where = f"losses[{i}].params"
        try:
            factory = registry.load("losses", item.name)
        except PluginError as exc:
            problems.append((f"losses[{i}].name", str(exc)))
            continue
        params_model = getattr(factory, "Params", None)
        if isinstance(params_model, type) and issubclass(params_model, BaseModel):
            try:
                params_model.model_validate(item.params)
            except ValidationError as exc:
                problems += [
                    (_loc((where, *e["loc"])), e["msg"].removeprefix("Value error, ")) for e in exc.errors()
                ]
                continue
        try:
            loss = factory(**item.params)
        except (TypeError, ValueError) as exc:
            problems.append((where, f"{item.name}: {exc}"))
            continue
        n_seg += getattr(loss, "kind", None) == "segmentation"
        if isinstance(loss, ForSpaces) and spec.space.name not in loss.spaces:
            problems.append(
                (
                    f"losses[{i}].name",
                    f"{item.name!r} regularises the supernet of space {', '.join(map(repr, loss.spaces))}, "
                    f"not of space {spec.space.name!r}: list this space's losses "
                    "(e.g. losses: [{name: dice_ce}])",
                )
            )
            continue
        if cross_check and isinstance(loss, ChecksSpec):
            errors, notes = loss.check_spec(spec)
            problems += [(_field(where, f), m) for f, m in errors]
            warnings += [(_field(where, f), m) for f, m in notes]
    if not problems and n_seg != 1:
        problems.append(("losses", f"needs exactly one segmentation loss (e.g. dice_ce), found {n_seg}"))
    return problems, warnings


def _field(params_path: str, field: str) -> str:
    """A loss's own field (relative to its params) or a spec field given in full (``retrain.gpus``)."""
    if not field:
        return params_path
    return field if "." in field else f"{params_path}.{field}"


def validate(data: Any, file: str = "<spec>") -> Spec:
    """Validate a parsed spec. Raises SpecError listing every problem with its dotted field path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(file, [("", f"top level must be a mapping, got {type(data).__name__}")])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            file, [(_loc(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        ) from None
    problems = _plugin_problems(spec) + _augment_problems(spec) + _inference_problems(spec)
    if not any(f == "space.name" for f, _ in problems):
        problems += _space_problems(spec)
    warnings: list[tuple[str, str]] = []
    if not any(f.startswith("losses") for f, _ in problems):
        # A loss checks itself against the spec only once the rest of the spec is sound.
        loss_problems, warnings = _loss_problems(spec, cross_check=not problems)
        problems += loss_problems
    if problems:
        raise SpecError(file, problems)
    spec._warnings = warnings
    if spec.name is None:
        spec.name = Path(file).stem if file != "<spec>" else "run"
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """The validated spec of a file, with ``--set key.path=value`` overrides applied and validated again."""
    path = Path(path)
    data = parse_yaml(read_spec_text(path), str(path))
    if data is None:
        raise SpecError(str(path), [("", "the file is empty; a spec is a YAML mapping (see nastk validate)")])
    spec = validate(data, str(path))
    spec.dataset.root = root_beside_spec(spec.dataset.root, path)
    spec.dataset.splits_file = root_beside_spec(spec.dataset.splits_file, path)
    return with_overrides(spec, overrides, str(path)) if overrides else spec


def root_beside_spec(root: str | None, spec_file: Path) -> str | None:
    """A relative path of the spec (``dataset.root``, ``dataset.splits_file``) that exists from the working
    directory stays as written (as before, and as the quickstart writes it); one that does not, but does
    from the spec file's folder, is taken from there, as an absolute path so that RUN/spec.yaml works from
    anywhere."""
    if not root or Path(root).is_absolute() or Path(root).exists():
        return root
    beside = spec_file.parent / root
    return str(beside.resolve()) if beside.exists() else root


def with_overrides(spec: Spec, overrides: list[str] | tuple[str, ...], file: str) -> Spec:
    from nastk.spec_overrides import apply_override, parse_override

    data = json.loads(spec.model_dump_json())  # every default written out, as RUN/spec.yaml has it
    for text in overrides:
        apply_override(data, *parse_override(text, file), file)
    return validate(data, f"{file} with --set")  # the table then says the value came from the command line


def dump_spec(spec: Spec) -> str:
    return yaml.safe_dump(json.loads(spec.model_dump_json()), sort_keys=False)


def json_schema() -> dict[str, Any]:
    return Spec.model_json_schema()
