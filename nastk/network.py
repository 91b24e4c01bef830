"""Networks from a spec: the supernet a search trains, and the discrete network of an architecture,
built fresh for retraining or rebuilt from a saved model for prediction.

It sits below the engine and inference, so both build networks the same way and neither imports the
other for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nastk import registry
from nastk.checkpoint import load as load_checkpoint
from nastk.checkpoint import restore, save, spec_hash
from nastk.errors import DataError, one_line
from nastk.protocols import ChecksSpaceParams, SearchSpace
from nastk.spec import Spec

MODEL_KEYS = ("model", "arch", "space", "in_channels", "num_classes", "filter_multiplier")


def build_supernet(spec: Spec):
    """The space's supernet with the spec's ops, channels, classes and search patch."""
    space = registry.load("spaces", spec.space.name)
    ops = registry.load_ops(spec.ops)
    params = space.Params.model_validate(spec.space.params)
    return space.build_supernet(
        params, ops, spec.dataset.in_channels, spec.dataset.num_classes, tuple(spec.search.patch_size)
    )


def load_architecture(spec: Spec, arch_path: Path):
    """The spec's space and the architecture in ``arch_path``, checked against the spec and installed ops."""
    space = registry.load("spaces", spec.space.name)
    if not Path(arch_path).is_file():
        raise DataError(
            f"{arch_path}: architecture file not found (run `nastk search` or `nastk decode` first)"
        )
    arch = space.load_arch(arch_path)
    problem = arch.spec_mismatch(spec.space.params) if isinstance(arch, ChecksSpaceParams) else None
    if problem:
        raise DataError(f"{arch_path}: {problem}")
    missing = [o for o in arch.op_names if o not in registry.names("ops")]
    if missing:
        raise DataError(f"{arch_path}: uses ops that are not installed: {', '.join(missing)}")
    return space, arch


def build_network(spec: Spec, space, arch, filter_multiplier: float):
    """The discrete network of ``arch`` for the spec's channels and classes."""
    ops = registry.load_ops(arch.op_names)
    return space.build_network(
        arch, ops, spec.dataset.in_channels, spec.dataset.num_classes, filter_multiplier=filter_multiplier
    )


def save_model(path: Path, net, arch, spec: Spec, fold: int, iteration: int, metric: float | None) -> None:
    """A retrained model with what rebuilds it without the spec: architecture, space, filters, channels."""
    save(
        path,
        {
            "model": net.state_dict(),
            "arch": arch.to_json(),
            "space": spec.space.name,
            "filter_multiplier": spec.retrain.filter_multiplier,
            "in_channels": spec.dataset.in_channels,
            "num_classes": spec.dataset.num_classes,
            "fold": fold,
            "iteration": iteration,
            "val_dice": -1.0 if metric is None else metric,
            "spec_hash": spec_hash(spec),
            "provenance": _fold_provenance(Path(path).parent),
        },
    )


def _fold_provenance(folder: Path) -> str:
    """The fold's provenance record (nastk.provenance) as text, "" where none was written."""
    try:
        return (folder / "provenance.json").read_text()
    except OSError:
        return ""


def architecture_from_model(path: Path, space, state: dict | None = None):
    """The architecture a retrained model file was trained with (its ``arch`` text), read with its
    space; ``state``: the file's contents when the caller has loaded them already."""
    if not isinstance(space, SearchSpace):
        raise DataError(f"{path}: this space cannot rebuild an architecture from a checkpoint")
    if state is None:
        state = load_checkpoint(path, required=("arch",))
    try:
        return space.load_arch_from_text(state["arch"])
    except (DataError, ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        detail = one_line(exc).removeprefix("<checkpoint>: ")
        raise DataError(f"{path}: 'arch' is not a valid architecture ({detail})") from None


def network_from_model(path: Path, spec_io: tuple[int, int], device: torch.device) -> torch.nn.Module:
    """The network of a retrained model file (see :func:`save_model`) in eval mode, every failure one line
    naming the file. ``spec_io``: the (channels, classes) the caller's spec expects."""
    state = load_checkpoint(path, required=MODEL_KEYS)
    space = registry.load("spaces", str(state["space"]))
    arch = architecture_from_model(path, space, state)
    io = (state["in_channels"], state["num_classes"])
    if io != spec_io:
        raise DataError(
            f"{path}: the model takes {io[0]} channel(s) and predicts {io[1]} classes, the spec "
            f"{spec_io[0]} and {spec_io[1]}"
        )
    ops = registry.load_ops(arch.op_names)
    try:
        net = space.build_network(
            arch, ops, int(io[0]), int(io[1]), filter_multiplier=float(state["filter_multiplier"])
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: cannot build its network ({one_line(exc)})") from None
    restore(path, state, {"model": net})
    return net.to(device).eval()
