"""What a decoded architecture costs at the retraining setting: GMACs, parameters, memory.

Table 1's columns. The network is built on the ``meta`` device, so nothing is allocated however
large it is; multiply-accumulates are counted by ``torch.utils.flop_counter`` for one patch.
"""

from __future__ import annotations

from nastk import registry
from nastk.protocols import EstimatesMemory
from nastk.setting import MemoryBudget, retrain_setting


def complexity(spec, arch) -> dict[str, float]:
    """{"GMACs", "params_M"} of the network at the spec's retraining patch and filters."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    space = registry.load("spaces", spec.space.name)
    ops = registry.load_ops(arch.op_names)
    r, d = spec.retrain, spec.dataset
    with torch.device("meta"):
        net = space.build_network(
            arch, ops, d.in_channels, d.num_classes, filter_multiplier=r.filter_multiplier
        )
        x = torch.zeros(1, d.in_channels, *r.patch_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return {
        "GMACs": counter.get_total_flops() / 2e9,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
    }


def training_memory(spec, arch, batch_size: int | None = None) -> dict[str, float] | None:
    """Bytes per part one GPU holds to retrain ``arch`` (the space's ``estimate_memory``), or None
    where the space cannot estimate."""
    space = registry.load("spaces", spec.space.name)
    if not isinstance(space, EstimatesMemory):
        return None
    s = retrain_setting(spec, batch_size)
    ops = registry.load_ops(arch.op_names)
    return space.estimate_memory(
        arch,
        ops,
        patch_size=s.patch_size,
        batch_size=s.batch_size,
        filter_multiplier=s.filter_multiplier,
        in_channels=s.in_channels,
        num_classes=s.num_classes,
        amp=s.amp,
        state_bytes_per_param=s.state_bytes_per_param,
    )


def architecture_stats(spec, arch, budget: MemoryBudget | None = None) -> dict[str, float]:
    """One row of an architectures table: path cost, estimated training memory (MB, and the GB it
    needs with the budget's margin and reserve), GMACs and parameters."""
    budget = budget or MemoryBudget(0.0, retrain_setting(spec))
    cost = getattr(arch, "path_cost", None)  # optional: how unlikely the discretizer found it
    row: dict[str, float] = {"path_cost": cost if cost is not None else float("nan")}
    mem = training_memory(spec, arch, budget.setting.batch_size)
    if mem is not None:
        row["est_train_MB"] = mem["total"] / 2**20
        row["needs_GB"] = budget.required_gb(mem["total"])
    row.update(complexity(spec, arch))
    return row
