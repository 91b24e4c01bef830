"""`nastk decode` and the arch.json round trip."""

import json

import numpy as np
import pytest

from nastk_dints import decode
from nastk_dints.architecture import Architecture

from conftest import run_cli


def test_arch_json_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arch = decode(rng.normal(size=(5, 10)), rng.normal(size=(5, 10, 5)), space_params={"filters": 16})
    path = arch.save(tmp_path / "arch.json")
    data = json.loads(path.read_text())
    assert data["format"] == "nastk.arch" and data["version"] == 1
    assert data["space"] == {"name": "dints", "params": {"layers": 5, "depths": 4, "filters": 16}}
    assert all(isinstance(c["edge"], list) and len(c["edge"]) == 2 for layer in data["cells"] for c in layer)
    back = Architecture.load(path)
    assert back.to_dict() == arch.to_dict()
    assert (back.edge_mask == arch.edge_mask).all() and back.gap == arch.gap


def test_paper_arch_file_is_feasible():
    arch = Architecture.load("specs/archs/dints-cvpr2021.json")
    assert arch.layers == 12 and arch.depths == 4 and arch.is_feasible()
    # edges per layer as listed with the published architecture
    assert arch.edge_mask.sum(1).tolist() == [7, 8, 9, 8, 9, 9, 8, 8, 9, 9, 8, 5]
    assert arch.layer_edges(11) == [
        (0, 0, "p3d_1x3x3"),
        (1, 0, "p3d_1x3x3"),
        (3, 2, "skip"),
        (2, 3, "p3d_3x3x1"),
        (3, 3, "conv3x3x3"),
    ]


def test_decode_bare_params(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "p.npz", edge_logits=rng.normal(size=(4, 7)), op_logits=rng.normal(size=(4, 7, 5)))
    res = run_cli("decode", "--params", tmp_path / "p.npz", "--out", tmp_path / "a.json")
    assert res.returncode == 0, res.stderr
    arch = Architecture.load(tmp_path / "a.json")
    assert arch.depths == 3 and arch.layers == 4 and arch.is_feasible()
    assert arch.space["params"] == {"layers": 4, "depths": 3, "filters": 16}  # arrays decide L and D
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer  1" in res.stdout


def test_decode_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "spec.yaml").write_text(
        "space: {params: {layers: 3, depths: 2, filters: 8}}\nops: [skip, conv3x3x3]\n"
        "search: {patch_size: [16, 16, 16]}\nretrain: {patch_size: [16, 16, 16]}\n"
        "inference: {patch_size: [16, 16, 16], stride: [8, 8, 8]}\n"
    )
    rng = np.random.default_rng(2)
    np.savez(
        run / "search" / "arch_params.npz",
        edge_logits=rng.normal(size=(3, 4)),
        op_logits=rng.normal(size=(3, 4, 2)),
    )
    res = run_cli("decode", run, "--no-picture", "--memory", "--batch", "3")
    assert res.returncode == 0, res.stderr
    assert "batch 3" in res.stdout and "total" in res.stdout and not (run / "arch.png").exists()
    arch = Architecture.load(run / "arch.json")
    assert arch.op_names == ["skip", "conv3x3x3"] and arch.space["params"]["filters"] == 8


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"edge_logits": np.zeros((3, 10))}, "op_logits"),
        ({"edge_logits": np.zeros((3, 9)), "op_logits": np.zeros((3, 9, 5))}, "E=9"),
        ({"edge_logits": np.zeros((3, 10)), "op_logits": np.zeros((3, 10, 4))}, "--ops"),
    ],
)
def test_decode_bad_params(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    res = run_cli("decode", "--params", tmp_path / "bad.npz", "--out", tmp_path / "a.json")
    assert res.returncode == 2 and needle in res.stderr and "bad.npz" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "a.json").exists()


def test_decode_missing_file(tmp_path):
    res = run_cli("decode", "--params", tmp_path / "none.npz")
    assert res.returncode == 2 and "none.npz" in res.stderr and "Traceback" not in res.stderr


def test_load_bad_arch_json(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(
        json.dumps(
            {
                "format": "nastk.arch",
                "version": 1,
                "depths": 2,
                "ops": ["skip"],
                "cells": [[{"edge": [0, 3], "op": "skip"}]],
            }
        )
    )
    with pytest.raises(Exception) as exc:
        Architecture.load(path)
    assert "cells[0][0].edge" in str(exc.value)
