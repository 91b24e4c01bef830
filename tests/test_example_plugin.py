"""plugins/example-ops: a real, separately installed distribution adding one cell op.

The test installs the plugin itself (CI installs only what pyproject.toml lists), the way a user
would (``pip install -e``), then checks that nastk finds it, that a spec can swap it in by name,
that a search with it runs and its memory cost is measured, and that a decoded architecture
choosing it builds and runs.
"""

import importlib
import importlib.metadata as md
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import tiny_spec

import nastk_dints
from nastk import registry
from nastk.data.synthetic import write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.search import build_supernet, run_search

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "plugins" / "example-ops"
DIST = "nastk-example-ops"
OP = "example.dwconv3x3x3"
OPS = ["skip", "conv3x3x3", OP]


def _activate(dist_name: str) -> None:
    """Make a distribution installed after start-up importable here: its .pth files are only read by
    ``site`` when an interpreter starts. Lines are handled as ``site`` does: ``import ...`` lines are
    executed, other lines are directories to add to sys.path."""
    importlib.invalidate_caches()
    dist = md.distribution(dist_name)
    for file in dist.files or []:
        if file.suffix != ".pth":
            continue
        pth = Path(dist.locate_file(file))
        for line in pth.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(("import ", "import\t")):
                exec(line, {})  # the .pth file pip just wrote for this distribution
            else:
                path = str((pth.parent / line).resolve())
                if path not in sys.path:
                    sys.path.append(path)
    importlib.invalidate_caches()


def _can_build_here() -> bool:
    """Whether this environment can build the plugin without pip's isolated build environment (no
    index needed): setuptools must be installed here (a fresh Python >= 3.12 venv has none), and
    before setuptools 70.1 also wheel. Otherwise pip fetches them into an isolated environment."""
    try:
        version = tuple(int(p) for p in md.version("setuptools").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return False
    if version < (68, 0):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed():
    """``pip install -e plugins/example-ops`` into this interpreter's environment (idempotent; the
    plugin stays installed afterwards, which changes nothing for the other tests)."""
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"pip is not available in {sys.executable}: {pip.stderr.strip()[-300:]}")
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", *isolation, "-e", str(PLUGIN_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, (
        f"pip install -e {PLUGIN_DIR} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    )
    _activate(DIST)
    registry.refresh()
    yield
    registry.refresh()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_task(tmp_path_factory.mktemp("data") / "Synth", cases=4, size=24, test_cases=1)


def test_registered_with_its_distribution(installed):
    entry = registry.entry("ops", OP)
    assert entry.distribution == DIST and entry.value == "nastk_example_ops.ops:dwconv3x3x3"
    op = registry.load("ops", OP)
    x = torch.randn(2, 8, 6, 5, 4)
    module = op(8)
    assert module(x).shape == x.shape
    # depthwise 3x3x3 (27 C) + pointwise (C^2) + affine norm (2 C): far fewer weights than conv3x3x3
    assert sum(p.numel() for p in module.parameters()) == 27 * 8 + 8 * 8 + 2 * 8


def test_plugins_command_lists_it(installed):
    res = run_cli("plugins")
    assert res.returncode == 0, res.stderr
    line = next((row for row in res.stdout.splitlines() if OP in row), None)
    assert line is not None, res.stdout
    assert DIST in line and "nastk.ops" in line and "nastk_example_ops.ops:dwconv3x3x3" in line
    # and a fresh interpreter imports it through the installed distribution (no sys.path tricks)
    code = f"from nastk import registry; print(type(registry.load('ops', {OP!r})(4)).__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "DWConv3x3x3", res.stderr


def test_search_with_it_and_decode_a_network_that_uses_it(installed, synth, tmp_path):
    path, spec = tiny_spec(tmp_path, synth, ops=OPS, **{"search.joint_iters": 2})
    assert spec.ops == OPS
    index = spec.ops.index(OP)

    # its memory cost was measured automatically: nothing in the plugin declares one
    torch.manual_seed(spec.seed)
    net = build_supernet(spec)
    assert net.op_logits.shape[-1] == len(OPS)
    _, op_cost = net.memory_costs()
    assert (op_cost[:, index] > 0).all(), op_cost
    assert (op_cost[:, spec.ops.index("skip")] == 0).all()
    # ReLU -> dw -> pw -> norm keeps one activation more than ReLU -> conv -> norm
    assert (op_cost[:, index] > op_cost[:, spec.ops.index("conv3x3x3")]).all(), op_cost

    run = run_search(spec, RunOptions(out=tmp_path / "run", quiet=True, deterministic=True))
    searched = json.loads((run / "arch.json").read_text())
    assert searched["ops"] == OPS

    # A 6-iteration search need not pick the new op; push its logits up and decode: the op is
    # selectable like any built-in one and the arch.json names it.
    with np.load(run / "search" / "arch_params.npz") as data:
        params = {k: data[k] for k in data.files}
    params["op_logits"][..., index] += 10.0
    arch = nastk_dints.decode(
        params["edge_logits"], params["op_logits"], op_names=spec.ops, space_params=spec.space.params
    )
    arch.save(tmp_path / "arch.json")
    saved = json.loads((tmp_path / "arch.json").read_text())
    used = {cell["op"] for layer in saved["cells"] for cell in layer}
    assert used == {OP}, used

    space = registry.load("spaces", spec.space.name)
    ops = {name: registry.load("ops", name) for name in spec.ops}
    network = space.build_network(space.load_arch(tmp_path / "arch.json"), ops, 1, spec.dataset.num_classes)
    modules = list(network.modules())
    assert any(type(m).__module__ == "nastk_example_ops.ops" for m in modules)
    out = network(torch.randn(1, 1, *spec.search.patch_size))
    assert out.shape == (1, spec.dataset.num_classes, *spec.search.patch_size)
    assert torch.isfinite(out).all()
