"""Architecture pictures (Fig. 7 style) and importing MONAI DiNTS architecture files."""

import json
import struct
import zipfile
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from nastk.errors import DataError
from nastk_dints.architecture import Architecture
from nastk_dints.discretize import decode
from nastk_dints.monai_import import import_monai_arch
from nastk_dints.picture import draw

ROOT = Path(__file__).resolve().parents[3]  # the repository
PAPER_ARCH = ROOT / "specs" / "archs" / "dints-cvpr2021.json"
PAPER_CODES = Path("/work/shared/paper/dints-cvpr2021-arch.json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _paper_codes() -> dict[str, np.ndarray]:
    """MONAI-style codes for the paper architecture, built from the transcribed arch.json."""
    if PAPER_CODES.exists():
        raw = json.loads(PAPER_CODES.read_text())
        return {k: np.array(raw[k]) for k in ("edge_mask", "op_index", "node_active")}
    arch = Architecture.load(PAPER_ARCH)
    return {
        "edge_mask": arch.edge_mask.astype(int),
        "op_index": np.where(arch.edge_mask, arch.op_index, 0),
        "node_active": arch.node_active.astype(int),
    }


def _monai_dict(keys: str = "tutorial", one_hot: bool = False, tensors: bool = False) -> dict:
    codes = _paper_codes()
    code_a = codes["edge_mask"].astype(np.float64)  # MONAI's decode returns float matrices
    code_c = codes["op_index"].astype(np.int64)
    if one_hot:
        code_c = np.eye(5, dtype=np.int64)[code_c]
    node_a = codes["node_active"].astype(np.float64)
    if tensors:
        code_a, code_c, node_a = (torch.from_numpy(x) for x in (code_a, code_c, node_a))
    if keys == "tutorial":
        return {
            "node_a": node_a,
            "arch_code_a": code_a,
            "arch_code_a_max": code_a,
            "arch_code_c": code_c,
            "iter_num": 7,
            "epochs": 3,
            "best_dsc": np.float64(0.81),
        }
    return {"node_a": node_a, "code_a": code_a, "code_c": code_c}


def _save(tmp_path: Path, data, name: str = "arch.pth") -> Path:
    path = tmp_path / name
    torch.save(data, path)
    return path


def _cells(arch: Architecture):
    return arch.to_dict()["cells"]


# --- pictures -------------------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", raw[16:24])  # IHDR
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width)
    assert width > 300 and height > 200
    assert image.std() > 0  # something was drawn


@pytest.mark.parametrize("depths", [2, 3, 4])
def test_draw_writes_png(tmp_path, depths):
    rng = np.random.default_rng(depths)
    n_edges = 3 * depths - 2
    arch = decode(rng.standard_normal((4, n_edges)), rng.standard_normal((4, n_edges, 5)))
    out = draw(arch, tmp_path / "sub" / "arch.png")
    assert out == tmp_path / "sub" / "arch.png"
    _check_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["arch.png"]  # no temp file left behind


def test_draw_paper_arch_and_many_ops(tmp_path):
    _check_png(draw(Architecture.load(PAPER_ARCH), tmp_path / "paper.png"))
    rng = np.random.default_rng(0)
    many = decode(rng.standard_normal((6, 7)), rng.standard_normal((6, 7, 13)))  # > 10 ops: colours cycle
    _check_png(draw(many, tmp_path / "many.png"))


def test_draw_replaces_existing_file(tmp_path):
    target = tmp_path / "arch.png"
    target.write_text("old")
    draw(Architecture.load(PAPER_ARCH), target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE


# --- MONAI import ---------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["tutorial", "auto3dseg"])
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("tensors", [False, True])
def test_import_matches_paper_arch(tmp_path, keys, one_hot, tensors):
    path = _save(tmp_path, _monai_dict(keys, one_hot, tensors), "arch_code_cvpr.pth")
    arch = import_monai_arch(path)
    paper = Architecture.load(PAPER_ARCH)
    assert _cells(arch) == _cells(paper)
    assert arch.depths == 4 and arch.layers == 12
    assert arch.input_depths == [0, 1, 2]
    assert arch.op_names == paper.op_names
    assert arch.space == {"name": "dints", "params": {"layers": 12, "depths": 4, "filters": 16}}
    assert "arch_code_cvpr.pth" in arch.extra["provenance"]
    # round trip through arch.json
    assert _cells(Architecture.from_dict(json.loads(arch.to_json()))) == _cells(paper)


def test_import_records_filters_and_checks_layers(tmp_path):
    path = _save(tmp_path, _monai_dict())
    assert import_monai_arch(path, filters=32, layers=12).space["params"]["filters"] == 32
    with pytest.raises(DataError, match="arch_code_a"):
        import_monai_arch(path, layers=10)


def test_import_ignores_ops_on_inactive_edges(tmp_path):
    data = _monai_dict()
    codes = data["arch_code_c"].copy()
    codes[data["arch_code_a"] == 0] = 99
    data["arch_code_c"] = codes
    assert _cells(import_monai_arch(_save(tmp_path, data))) == _cells(Architecture.load(PAPER_ARCH))


def test_import_numpy1_pickles(tmp_path):
    """Files written under numpy 1.x name numpy.core.multiarray instead of numpy._core."""
    new = _save(tmp_path, _monai_dict(), "new.pth")
    old = tmp_path / "old.pth"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for name in src.namelist():
            blob = src.read(name)
            if name.endswith("data.pkl"):
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in blob
            dst.writestr(name.replace("new/", "old/", 1), blob)
    assert _cells(import_monai_arch(old)) == _cells(Architecture.load(PAPER_ARCH))


def _write_marker(path: str) -> str:
    Path(path).write_text("constructed")
    return path


class Payload:
    """Unpickling this writes a marker file: proof that arbitrary code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def test_payload_is_never_constructed(tmp_path):
    marker = tmp_path / "marker"
    data = _monai_dict()
    data["extra"] = Payload(marker)
    path = _save(tmp_path, data)
    with pytest.raises(DataError, match="arch.pth") as info:
        import_monai_arch(path)
    assert "_write_marker" in str(info.value)
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_non_allowlisted_objects_are_refused(tmp_path):
    path = _save(tmp_path, OrderedDict(node_a=Fraction(1, 3)))
    with pytest.raises(DataError, match="fractions.Fraction"):
        import_monai_arch(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a loadable"),
        (b"not a torch file", "not a loadable"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        import_monai_arch(path)
    with pytest.raises(DataError, match="not found"):
        import_monai_arch(tmp_path / "missing.pth")
    with pytest.raises(DataError, match="dict"):
        import_monai_arch(_save(tmp_path, [np.zeros(3)], "list.pth"))


@pytest.mark.parametrize("key", ["node_a", "arch_code_a", "arch_code_c"])
def test_missing_key(tmp_path, key):
    data = _monai_dict()
    del data[key]
    if key == "arch_code_a":
        del data["arch_code_a_max"]
    with pytest.raises(DataError, match=key) as info:
        import_monai_arch(_save(tmp_path, data))
    assert "arch.pth" in str(info.value) and "\n" not in str(info.value)


def test_missing_auto3dseg_key(tmp_path):
    data = _monai_dict("auto3dseg")
    del data["code_c"]
    with pytest.raises(DataError, match="code_c"):
        import_monai_arch(_save(tmp_path, data))


@pytest.mark.parametrize(
    "key, value",
    [
        ("arch_code_a", np.ones((12, 9))),  # E = 9 is not 3D - 2
        ("arch_code_a", np.ones(10)),
        ("arch_code_a", np.full((12, 10), 2.0)),
        ("arch_code_c", np.zeros((12, 7), dtype=np.int64)),
        ("arch_code_c", np.zeros((12, 10, 4), dtype=np.int64)),  # one-hot over 4 ops
        ("arch_code_c", np.full((12, 10), 5)),  # op index out of range
        ("arch_code_c", np.zeros((12, 10, 5))),  # not one-hot
        ("node_a", np.ones((12, 4))),
        ("node_a", np.ones((13, 3))),
        ("node_a", "not an array"),
    ],
)
def test_bad_shapes_and_values(tmp_path, key, value):
    data = _monai_dict()
    data[key] = value
    with pytest.raises(DataError, match=key) as info:
        import_monai_arch(_save(tmp_path, data))
    assert "arch.pth" in str(info.value)


def test_empty_layer_is_refused(tmp_path):
    data = _monai_dict()
    data["arch_code_a"] = data["arch_code_a"].copy()
    data["arch_code_a"][4] = 0
    with pytest.raises(DataError, match="arch_code_a"):
        import_monai_arch(_save(tmp_path, data))


@pytest.mark.parametrize("row, depth", [(0, 3), (5, 2), (12, 1)])
def test_node_a_mismatch(tmp_path, row, depth):
    data = _monai_dict()
    data["node_a"] = data["node_a"].copy()
    data["node_a"][row, depth] = 1 - data["node_a"][row, depth]
    with pytest.raises(DataError, match=f"'node_a' row {row}") as info:
        import_monai_arch(_save(tmp_path, data))
    assert "arch.pth" in str(info.value)


def test_infeasible_code_is_refused(tmp_path):
    data = _monai_dict()
    data["arch_code_a"] = data["arch_code_a"].copy()
    data["arch_code_a"][11, 1] = 0  # layer 12 no longer reads depth 1, which layer 11 produces
    with pytest.raises(DataError, match="arch_code_a.*infeasible"):
        import_monai_arch(_save(tmp_path, data))
