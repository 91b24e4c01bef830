"""Entry-point registry: lazy lookup, helpful errors, third-party plugins."""

import os
import sys

import pytest
import torch

from nastk import registry
from nastk.errors import PluginError, SpecError
from nastk.spec import validate
from nastk_dints.space import SPACE

from conftest import cli_in_process, run_cli
from fakedist import make_dist

DWCONV = '''
from torch import nn

def dwconv(channels):
    """Depthwise-separable 3x3x3 conv: ReLU, depthwise 3x3x3, pointwise 1x1x1, InstanceNorm."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv3d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv3d(channels, channels, 1, bias=False),
        nn.InstanceNorm3d(channels, affine=True),
    )
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """Make tmp_path an import location and forget cached metadata before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield tmp_path
    registry.refresh()
    for mod in [m for m in sys.modules if m.startswith("nastk_testop")]:
        del sys.modules[mod]


def test_builtin_names_are_registered():
    assert {"skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"} <= set(registry.names("ops"))
    assert "dints" in registry.names("spaces") and "dints" in registry.names("discretizers")
    assert {"dice_ce", "entropy_alpha", "entropy_eta", "topology", "memory"} <= set(registry.names("losses"))
    assert registry.load("spaces", "dints") is SPACE
    assert registry.entry("ops", "skip").distribution == "nastk"


def test_unknown_name_lists_group_and_available():
    with pytest.raises(PluginError) as exc:
        registry.entry("ops", "conv9x9x9")
    msg = str(exc.value)
    assert "nastk.ops" in msg and "conv9x9x9" in msg and "p3d_1x3x3" in msg and "skip" in msg


def test_plugin_is_loaded_lazily(plugin_path):
    make_dist(
        plugin_path,
        "nastk-lazy",
        "0.1",
        {"nastk.ops": {"lazy.op": "nastk_testop_lazy:op"}},
        {"nastk_testop_lazy.py": "import builtins\nbuiltins._NASTK_LAZY_IMPORTED = True\nop = None\n"},
    )
    import builtins

    assert "lazy.op" in registry.names("ops")
    registry.entry("ops", "lazy.op")
    assert not hasattr(builtins, "_NASTK_LAZY_IMPORTED")
    registry.load("ops", "lazy.op")
    assert builtins._NASTK_LAZY_IMPORTED
    del builtins._NASTK_LAZY_IMPORTED


def test_broken_plugin_names_entry_point_and_distribution(plugin_path):
    make_dist(
        plugin_path,
        "nastk-broken",
        "2.3",
        {"nastk.ops": {"broken.op": "nastk_testop_broken:op"}},
        {"nastk_testop_broken.py": "raise RuntimeError('boom at import')\n"},
    )
    with pytest.raises(PluginError) as exc:
        registry.load("ops", "broken.op")
    msg = str(exc.value)
    assert "broken.op" in msg and "nastk_testop_broken:op" in msg and "nastk-broken" in msg and "boom" in msg


def test_same_name_from_two_distributions_is_an_error(plugin_path):
    make_dist(plugin_path / "a", "nastk-one", "1.0", {"nastk.ops": {"dup.op": "one:op"}})
    make_dist(plugin_path / "b", "nastk-two", "1.0", {"nastk.ops": {"dup.op": "two:op"}})
    sys.path[:0] = [str(plugin_path / "a"), str(plugin_path / "b")]
    try:
        registry.refresh()
        with pytest.raises(PluginError) as exc:
            registry.load("ops", "dup.op")
        assert "nastk-one" in str(exc.value) and "nastk-two" in str(exc.value)
        with pytest.raises(PluginError):  # a builtin op shadowed by a plugin is ambiguous too
            registry.entry("ops", "dup.op")
    finally:
        sys.path.remove(str(plugin_path / "a"))
        sys.path.remove(str(plugin_path / "b"))


def test_third_party_op_from_spec_in_forward_pass(plugin_path):
    make_dist(
        plugin_path,
        "nastk-testop",
        "0.3",
        {"nastk.ops": {"testop.dwconv3": "nastk_testop.ops:dwconv"}},
        {"nastk_testop/__init__.py": "", "nastk_testop/ops.py": DWCONV},
    )
    spec = validate(
        {
            "space": {"params": {"layers": 2, "depths": 2, "filters": 4}},
            "ops": ["skip", "testop.dwconv3"],
            "search": {"patch_size": [16, 16, 16]},
            "retrain": {"patch_size": [16, 16, 16]},
            "inference": {"patch_size": [16, 16, 16], "stride": [8, 8, 8]},
        },
        "plugin.yaml",
    )
    ops = {name: registry.load("ops", name) for name in spec.ops}
    space = registry.load("spaces", spec.space.name)
    net = space.build_supernet(space.Params(**spec.space.params), ops, 1, 2, spec.search.patch_size)
    assert "cells.l01_0to0.ops.testop__dwconv3" in {n for n, _ in net.named_modules()}
    net(torch.randn(1, 1, 16, 16, 16)).sum().backward()
    assert net.op_logits.shape[-1] == 2 and net.op_logits.grad.abs().sum() > 0
    # its memory cost was measured, not declared
    _, op_cost = net.memory_costs()
    assert (op_cost[:, 1] > 0).all() and (op_cost[:, 0] == 0).all()


def test_plugins_command_lists_third_party(plugin_path):
    make_dist(plugin_path, "nastk-listed", "4.5.6", {"nastk.ops": {"listed.op": "nowhere:op"}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    import subprocess

    res = subprocess.run([sys.executable, "-m", "nastk", "plugins"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "listed.op" in res.stdout and "nastk-listed" in res.stdout and "4.5.6" in res.stdout
    assert "conv3x3x3" in res.stdout and "nastk.discretizers" in res.stdout


def test_cli_help_runs():
    res = run_cli("--help")
    assert res.returncode == 0 and "decode" in res.stdout


def test_a_spec_without_a_space_gets_the_space_the_installation_declares(plugin_path, capfd):
    """nastk's code names no space: the default is the nastk.defaults entry of the installed metadata."""
    declared = registry.entry("defaults", "space")
    assert declared.distribution == "nastk" and registry.default_space() == "dints"
    assert validate({}).space.name == "dints" and validate({"space": {"params": {}}}).space.name == "dints"
    # A second distribution that declares its own default makes a spec without a space ambiguous ...
    make_dist(plugin_path, "nastk-other", "1.0", {"nastk.defaults": {"space": "nastk_vnas.space:SPACE"}})
    registry.refresh()
    with pytest.raises(PluginError, match="nastk-other"):
        registry.default_space()
    spec = plugin_path / "nospace.yaml"
    spec.write_text("seed: 1\n")
    code, out, err = cli_in_process(capfd, "validate", spec)
    assert code == 2 and "nospace.yaml" in err and "space.name" in err and "nastk-other" in err, err
    assert "Traceback" not in err and "Value error" not in err
    # ... and one that names its space is unaffected.
    assert validate({"space": {"name": "dints"}}).space.name == "dints"


def test_without_a_declaration_the_only_installed_space_is_the_default(monkeypatch):
    scan = registry._scan

    def only(names):
        def fake(group):
            unique, conflicts = scan(group)
            if group == "defaults":
                return {}, {}
            if group == "spaces":
                return {n: e for n, e in unique.items() if n in names}, {}
            return unique, conflicts

        return fake

    monkeypatch.setattr(registry, "_scan", only({"vnas"}))
    assert registry.default_space() == "vnas"
    assert validate({"ops": ["skip", "conv3x3x3"]}).space.name == "vnas"
    monkeypatch.setattr(registry, "_scan", only({"vnas", "dints"}))
    with pytest.raises(PluginError, match="name one: dints, vnas"):
        registry.default_space()


def test_a_space_without_default_ops_needs_them_listed(plugin_path):
    make_dist(
        plugin_path,
        "nastk-bare",
        "0.1",
        {"nastk.spaces": {"bare": "nastk_testop_bare:SPACE"}},
        {"nastk_testop_bare.py": "class Bare:\n    name = 'bare'\n\nSPACE = Bare()\n"},
    )
    with pytest.raises(SpecError) as exc:
        validate({"space": {"name": "bare"}})
    assert "ops: space 'bare' declares no default cell ops; list them" in str(exc.value)
