"""Spec validation: paper defaults, one error table per bad spec, exit code 2, no traceback."""

import json

import pytest
import yaml

from nastk.spec import Spec, load_spec

from conftest import run_cli


def test_defaults_are_the_paper():
    s = Spec()
    assert s.search.batch_size == 8 and tuple(s.search.patch_size) == (96, 96, 96)
    assert (s.search.warmup_iters, s.search.weight_iters, s.search.joint_iters) == (1000, 10000, 10000)
    assert s.search.weights.momentum == 0.9 and s.search.weights.weight_decay == 4e-5
    assert (s.search.weights.lr_start, s.search.weights.lr) == (0.025, 0.2)
    assert (
        s.search.milestones == [8000, 16000] and s.search.arch.lr == 0.008 and s.search.arch.weight_decay == 0
    )
    assert s.retrain.iters == 40000 and s.retrain.milestones == [8000, 16000, 24000, 32000]
    assert s.retrain.filter_multiplier == 2 and s.retrain.batch_multiplier == 2
    losses = {loss.name: loss for loss in s.losses}
    assert losses["topology"].weight == 0.001 and losses["memory"].params == {"sigma": 0.8}
    assert s.ops == ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]
    assert tuple(s.inference.stride) == (16, 16, 16) and s.inference.ensemble == "vote"


def test_paper_search_spec():
    s = load_spec("specs/dints-msd-search.yaml")
    assert s.space.params == {"layers": 12, "depths": 4, "filters": 16}
    assert tuple(s.search.patch_size) == (96, 96, 96) and s.search.batch_size == 8
    assert {loss.name: loss.params for loss in s.losses}["memory"]["sigma"] == 0.8


def test_validate_prints_resolved_spec():
    res = run_cli("validate", "specs/dints-msd-search.yaml")
    assert res.returncode == 0, res.stderr
    body = res.stdout.split("\n", 1)[1]
    assert yaml.safe_load(body)["space"]["params"]["layers"] == 12


def test_spec_schema_is_json():
    res = run_cli("spec-schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["additionalProperties"] is False and "space" in schema["properties"]


BAD = [
    ("unknown top-level key", {"serch": {}}, "serch"),
    ("unknown nested key", {"search": {"batchsize": 2}}, "search.batchsize"),
    ("wrong type", {"search": {"batch_size": "eight"}}, "search.batch_size"),
    ("unknown op", {"ops": ["skip", "conv9x9x9"]}, "ops[1]"),
    ("unknown space", {"space": {"name": "nope"}}, "space.name"),
    ("unknown loss", {"losses": [{"name": "focal"}]}, "losses[0].name"),
    ("unknown discretizer", {"discretizer": {"name": "greedy"}}, "discretizer.name"),
    ("L < 1", {"space": {"params": {"layers": 0}}}, "space.params.layers"),
    ("D < 2", {"space": {"params": {"depths": 1}}}, "space.params.depths"),
    ("unknown space param", {"space": {"params": {"width": 3}}}, "space.params.width"),
    ("patch not divisible", {"search": {"patch_size": [96, 96, 80]}}, "search.patch_size"),
    ("retrain patch not divisible", {"retrain": {"patch_size": [64, 64, 48]}}, "retrain.patch_size"),
    (
        "unknown augmentation",
        {"dataset": {"augment": [{"name": "flip"}, {"name": "elastic"}]}},
        "dataset.augment[1]",
    ),
    ("bad augmentation param", {"dataset": {"augment": [{"name": "flip", "p": 2}]}}, "dataset.augment[0]"),
    ("unknown dataset format", {"dataset": {"format": "bids"}}, "dataset.format"),
]


@pytest.mark.parametrize("what,data,field", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_exits_2_naming_field(tmp_path, what, data, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    res = run_cli("validate", path)
    assert res.returncode == 2, (what, res.stdout, res.stderr)
    assert field in res.stderr and "bad.yaml" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize(
    "text,needle", [("search: [1, 2\n", "not valid YAML"), ("- just\n- a list\n", "mapping")]
)
def test_unparseable_spec(tmp_path, text, needle):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    res = run_cli("validate", path)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_missing_spec_file(tmp_path):
    res = run_cli("validate", tmp_path / "nope.yaml")
    assert res.returncode == 2 and "nope.yaml" in res.stderr and "not found" in res.stderr


def test_yaml_tags_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    res = run_cli("validate", path, cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "pwned").exists()


LOSS_BAD = [
    (
        "sigma out of range",
        {"losses": [{"name": "dice_ce"}, {"name": "memory", "params": {"sigma": 1.5}}]},
        "losses[1].params.sigma",
    ),
    ("unknown loss param", {"losses": [{"name": "dice_ce", "params": {"smoth": 1}}]}, "losses[0].params"),
    ("no segmentation loss", {"losses": [{"name": "topology"}]}, "losses"),
]


@pytest.mark.parametrize("what,data,field", LOSS_BAD, ids=[b[0] for b in LOSS_BAD])
def test_bad_loss_spec(what, data, field):
    from nastk.errors import SpecError
    from nastk.spec import validate

    with pytest.raises(SpecError) as exc:
        validate(data, "losses.yaml")
    assert field in [f for f, _ in exc.value.problems], exc.value.problems


def test_spec_reference_doc_is_up_to_date():
    """docs/spec-reference.md is generated from the models; regenerate it when a field changes."""
    from pathlib import Path

    from nastk.spec import markdown_reference

    doc = Path(__file__).parents[1] / "docs" / "spec-reference.md"
    assert doc.read_text().strip() == markdown_reference().strip(), (
        "run: nastk spec-schema --markdown > docs/spec-reference.md"
    )


def test_a_spec_without_losses_or_ops_gets_its_spaces():
    """The losses belong to the space: the paper's five regularise DiNTS, a space without its own gets
    the segmentation loss alone, and listed losses always win."""
    from nastk.errors import SpecError
    from nastk.spec import validate

    dints = validate({"space": {"name": "dints"}})
    assert [(x.name, x.weight, x.params) for x in dints.losses] == [
        ("dice_ce", 1.0, {}),
        ("entropy_alpha", 1.0, {}),
        ("entropy_eta", 1.0, {}),
        ("topology", 0.001, {}),
        ("memory", 1.0, {"sigma": 0.8}),
    ]
    vnas = validate({"space": {"name": "vnas"}, "ops": ["skip", "conv3x3x3"]})
    assert [x.name for x in vnas.losses] == ["dice_ce"]
    # and so do the cell ops: V-NAS chooses among 3D, 2D and P3D convolutions, DiNTS among the paper's five
    assert validate({"space": {"name": "vnas"}}).ops == ["conv3x3x3", "vnas.conv3x3x1", "p3d_3x3x1"]
    assert dints.ops == ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]
    assert validate({"space": {"name": "vnas"}, "ops": ["conv3x3x3"]}).ops == ["conv3x3x3"]
    with pytest.raises(SpecError, match="ops: listed twice: skip"):
        validate({"ops": ["skip", "conv3x3x3", "skip"]})
    listed = validate({"space": {"name": "dints"}, "losses": [{"name": "dice_ce"}, {"name": "topology"}]})
    assert [x.name for x in listed.losses] == ["dice_ce", "topology"]
