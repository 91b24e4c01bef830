"""The plugin contract: every registered entry has the shape nastk.protocols declares for its group."""

import sys

import numpy as np
import pytest
import torch

from nastk import registry
from nastk.protocols import (
    GROUP_PROTOCOLS,
    Architecture,
    Discretizer,
    Drawable,
    RanksArchitectures,
    SearchSpace,
    Supernet,
)

from fakedist import make_dist


def nonconforming(group: str) -> list[str]:
    """Names registered in ``group`` whose object lacks part of the group's protocol."""
    protocol = GROUP_PROTOCOLS[group]
    return [e.name for e in registry.entries(group) if not isinstance(e.load(), protocol)]


def test_every_group_has_a_protocol():
    assert set(GROUP_PROTOCOLS) == set(registry.GROUPS)


@pytest.mark.parametrize("group", sorted(registry.GROUPS))
def test_every_registered_entry_keeps_its_groups_contract(group):
    assert registry.names(group), f"nothing registered in {registry.GROUPS[group]}"
    assert nonconforming(group) == []


def test_spaces_build_what_the_contract_says():
    """What a space returns is checked too: its supernet, and the architectures it reads back."""
    rng = np.random.default_rng(0)
    for name in registry.names("spaces"):
        space = registry.load("spaces", name)
        # the smallest of what each space reads (each takes only its own fields)
        tiny = {"layers": 2, "depths": 2, "filters": 4, "convs": 1}
        params = space.Params.model_validate(
            {k: v for k, v in tiny.items() if k in space.Params.model_fields}
        )
        ops = registry.load_ops(["skip", "conv3x3x3"])
        net = space.build_supernet(params, ops, 1, 2, (16, 16, 16))
        assert isinstance(net, Supernet)
        disc = registry.load("discretizers", name)
        arrays = {k: rng.normal(size=v.shape) for k, v in net.arch_parameters_numpy().items()}
        assert disc.check_arrays(arrays, ["skip", "conv3x3x3"]) is not None
        arch = disc(arrays, params.model_dump(), ["skip", "conv3x3x3"])
        assert isinstance(arch, Architecture) and isinstance(arch, Drawable)
        assert isinstance(space.load_arch_from_text(arch.to_json()), Architecture)
        network = space.build_network(arch, registry.load_ops(arch.op_names), 1, 2)
        assert network(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
        if isinstance(disc, RanksArchitectures):
            assert [
                a.to_json() for a in disc.top_k(arrays, params.model_dump(), ["skip", "conv3x3x3"], 1)
            ] == [arch.to_json()]


def test_more_than_one_space_is_checked_against_the_contract():
    """The contract is tested as a contract: the toolkit's spaces include one that is not DiNTS."""
    assert {"dints", "vnas"} <= set(registry.names("spaces"))
    assert set(registry.names("spaces")) <= set(registry.names("discretizers"))


def test_loss_factories_make_losses_of_the_contract():
    for name in registry.names("losses"):
        factory = registry.load("losses", name)
        assert isinstance(factory(), GROUP_PROTOCOLS["losses"]), name  # every params has a default


def test_load_ops_keeps_the_order_it_is_given():
    ops = registry.load_ops(["p3d_1x3x3", "skip"])
    assert list(ops) == ["p3d_1x3x3", "skip"] and ops["skip"] is registry.load("ops", "skip")


class SpaceWithoutCheckpoints:
    """A space that cannot rebuild a network from a retrained model: it lacks load_arch_from_text."""

    name = "partial"
    Params = dict

    def patch_divisor(self, params):
        return 1

    def build_supernet(self, params, ops, in_channels, num_classes, patch_size): ...

    def build_network(self, arch, ops, in_channels, num_classes, filter_multiplier=1.0): ...

    def load_arch(self, path): ...


class DiscretizerWithoutChecks:
    def __call__(self, arch_params, space_params, op_names): ...


def test_an_incomplete_plugin_is_not_taken_for_a_complete_one():
    assert not isinstance(SpaceWithoutCheckpoints(), SearchSpace)
    assert not isinstance(DiscretizerWithoutChecks(), Discretizer)


def test_an_incomplete_registered_plugin_is_reported(tmp_path, monkeypatch):
    source = "\n".join(
        [
            "class SpaceWithoutCheckpoints:",
            "    name = 'partial'",
            "    Params = dict",
            "    def patch_divisor(self, params): ...",
            "    def build_supernet(self, params, ops, in_channels, num_classes, patch_size): ...",
            "    def build_network(self, arch, ops, in_channels, num_classes, filter_multiplier=1.0): ...",
            "    def load_arch(self, path): ...",
            "SPACE = SpaceWithoutCheckpoints()",
        ]
    )
    make_dist(
        tmp_path,
        "nastk-partial",
        "0.1",
        {"nastk.spaces": {"partial": "nastk_testspace_partial:SPACE"}},
        {"nastk_testspace_partial.py": source + "\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    try:
        assert nonconforming("spaces") == ["partial"]
    finally:
        registry.refresh()
        sys.modules.pop("nastk_testspace_partial", None)
