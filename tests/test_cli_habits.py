"""CLI habits of nnU-Net users (issue 16, part 3): --version, choices listed in --help, a strict --device,
--set overrides, NASTK_CACHE and relative roots, nnU-Net splits, predict's --save-probabilities and
--disable-tta. The CLI runs in this process, as in test_bad_inputs.py."""

from __future__ import annotations

import pytest
import torch

from nastk import __version__
from nastk.device import check_device_text, resolve_device
from nastk.errors import DataError

from conftest import cli_in_process


def nastk(capfd, *args) -> tuple[int, str, str]:
    return cli_in_process(capfd, *args)


def test_version_prints_the_package_version(capfd):
    code, out, _ = nastk(capfd, "--version")
    assert code == 0 and out.strip() == f"nastk {__version__}"


def test_help_offers_completion_and_lists_choices(capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = nastk(capfd, "--help")
    assert code == 0 and "--install-completion" in out and "--version" in out
    _, out, _ = nastk(capfd, "search", "--help")
    assert "off|bf16|fp16" in out
    _, out, _ = nastk(capfd, "predict", "--help")
    assert "final|best" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "x.yaml", "--amp", "fp8"], "--amp"),
        (["retrain", "x.yaml", "--arch", "a.json", "--amp", "fp8"], "--amp"),
        (["predict", "run", "--input", "in", "--model", "last"], "--model"),
        (["search", "x.yaml", "--logger", "wandb"], "--logger"),
        (["retrain", "x.yaml", "--arch", "a.json", "--logger", "wandb"], "--logger"),
        (["export", "run", "--format", "tflite", "--out", "o"], "--format"),
        (["export", "run", "--format", "pt2", "--out", "o", "--model", "last"], "--model"),
    ],
)
def test_a_choice_outside_the_enum_exits_2(capfd, args, needle):
    code, out, err = nastk(capfd, *args)
    assert code == 2 and needle in err and args[-1] in err, err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err  # one line, like every other bad input


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["report", "--missing", "skip"], ("nastk report", "--missing", "error", "empty")),
        (["search", "x.yaml", "--threads", "0"], ("nastk search", "--threads", "1")),
        (["decode", "--top-k", "x"], ("nastk decode", "--top-k", "integer")),
        (["search", "x.yaml", "--bogus"], ("nastk search", "--bogus")),
        (["search"], ("nastk search", "spec")),
        (["bogus"], ("bogus",)),
    ],
)
def test_usage_errors_are_one_line(capfd, args, needles):
    code, out, err = nastk(capfd, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(n in err for n in needles) and "--help" in err and "Value error" not in err, err
    assert "Traceback" not in out + err


def test_help_version_and_bare_command_exit_codes(capfd):
    assert nastk(capfd, "--help")[0] == 0
    assert nastk(capfd, "search", "--help")[0] == 0
    code, out, _ = nastk(capfd, "--version")
    assert code == 0 and out.startswith("nastk ")
    code, out, err = nastk(capfd)  # no command: the help, and 2 as click does
    assert code == 2 and "Commands" in out + err


@pytest.mark.parametrize(
    ("command", "choices"),
    [
        ("search", "csv, tensorboard or mlflow"),
        ("retrain", "csv, tensorboard or mlflow"),
        ("export", "torchscript|pt2|onnx"),
        ("export", "final|best"),
    ],
)
def test_help_lists_the_logger_format_and_model_choices(capfd, monkeypatch, command, choices):
    monkeypatch.setenv("COLUMNS", "200")  # at 80 rich breaks the longer choice lists inside the word
    code, out, _ = nastk(capfd, command, "--help")
    assert code == 0 and choices in out


@pytest.mark.parametrize(
    ("words", "choices"),
    [
        ("nastk search x.yaml --logger ", ["csv", "tensorboard", "mlflow"]),
        ("nastk export r --format ", ["torchscript", "pt2", "onnx"]),
    ],
)
def test_completion_offers_the_choices(capfd, monkeypatch, words, choices):
    monkeypatch.setenv("_NASTK_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split())))
    code, out, _ = nastk(capfd)
    assert code == 0 and out.split() == choices


def test_the_cli_choices_are_the_library_s():
    from nastk.cli.common import ExportFormat, Logger
    from nastk.export import FORMATS
    from nastk.trackers import LOGGERS

    assert tuple(m.value for m in Logger) == LOGGERS
    assert tuple(m.value for m in ExportFormat) == FORMATS


def _without(monkeypatch, *names):
    """importlib.util.find_spec as if the named optional packages were not installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a)
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["search", "x.yaml", "--logger", "mlflow"],
            "--logger mlflow: mlflow is not installed; pip install 'nastk[mlflow]'",
        ),
        (
            ["retrain", "x.yaml", "--arch", "a.json", "--logger", "tensorboard"],
            "pip install 'nastk[tensorboard]'",
        ),
        (
            ["export", "{run}", "--format", "onnx", "--out", "{run}/out"],
            "--format onnx needs onnx, onnxscript: pip install 'nastk[export]'",
        ),
    ],
)
def test_a_chosen_extra_that_is_missing_is_one_line_exit_2(capfd, monkeypatch, tmp_path, args, line):
    (tmp_path / "spec.yaml").write_text("seed: 1\n")
    _without(monkeypatch, "mlflow", "tensorboard", "onnx", "onnxscript")
    code, out, err = nastk(capfd, *(a.format(run=tmp_path) for a in args))
    assert code == 2 and line in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["gpu", "tpu", "cuda0", "cuda:", "cuda:-1", "CPU", "cuda:1:2"])
def test_device_text_is_cpu_cuda_or_cuda_index(text):
    with pytest.raises(DataError, match="is not cpu, cuda or cuda:N"):
        check_device_text(text)


@pytest.mark.parametrize("text", [None, "cpu", "cuda", "cuda:0", "cuda:12"])
def test_good_device_texts_pass(text):
    check_device_text(text)


def test_cuda_without_cuda_is_refused_for_cuda_and_an_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    for text in ("cuda", "cuda:0"):
        with pytest.raises(DataError, match=f"--device {text}: no CUDA device"):
            resolve_device(text)


def test_cuda_index_selects_that_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(DataError, match="there is no cuda:2; this machine has 2"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("command", ["search", "predict"])
@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:0"])
def test_bad_device_exits_2_with_one_line(capfd, monkeypatch, tmp_path, command, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = tmp_path / "s.yaml"
    spec.write_text("seed: 1\n")
    args = {
        "search": ["search", spec, "--out", tmp_path / "run"],
        "predict": ["predict", tmp_path, "--spec", spec, "--input", tmp_path],
    }[command]
    code, out, err = nastk(capfd, *args, "--device", device)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "--device" in err and device in err, err
    assert "Traceback" not in out + err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- --set


def _spec_file(tmp_path, text="search:\n  batch_size: 4\n"):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_set_overrides_fields_in_and_out_of_the_file(capfd, tmp_path):
    import yaml

    path = _spec_file(tmp_path)
    code, out, err = nastk(
        capfd,
        "validate",
        path,
        "--set",
        "search.batch_size=2",
        "--set",
        "retrain.patch_size=[64, 64, 32]",
        "--set",
        "losses[4].params.sigma=0.6",
        "--set",
        "dataset.root=data/Task",
    )
    assert code == 0, err
    resolved = yaml.safe_load(out.split("\n", 1)[1])  # what RUN/spec.yaml would hold (dump_spec)
    assert resolved["search"]["batch_size"] == 2
    assert resolved["retrain"]["patch_size"] == [64, 64, 32]
    assert resolved["losses"][4]["params"]["sigma"] == 0.6
    assert resolved["dataset"]["root"] == "data/Task"
    assert resolved["name"] == "s"


def test_the_last_set_of_a_field_wins_and_without_set_nothing_changes(tmp_path):
    from nastk.spec import dump_spec, load_spec

    path = _spec_file(tmp_path)
    assert load_spec(path, ["seed=3", "seed=5"]).seed == 5
    assert dump_spec(load_spec(path, [])) == dump_spec(load_spec(path))


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("search.batch_size=0", ["search.batch_size", "greater than or equal to 1"]),
        ("search.bogus=1", ["search.bogus", "Extra inputs"]),
        ("retrain.amp=fp8", ["retrain.amp"]),
        ("search.batch_size.x=1", ["search.batch_size.x", "not a mapping"]),
        ("losses[9].weight=1", ["losses[9]", "list of 5"]),
        ("search.batch_size", ["--set search.batch_size", "KEY.PATH=VALUE"]),
        ("search..lr=1", ["dotted field path"]),
        ("seed=[1, 2", ["not valid YAML"]),
    ],
)
def test_a_bad_set_is_a_spec_error_exit_2(capfd, tmp_path, monkeypatch, override, needles):
    monkeypatch.setenv("COLUMNS", "200")
    path = _spec_file(tmp_path)
    code, out, err = nastk(capfd, "validate", path, "--set", override)
    assert code == 2, out + err
    assert "Traceback" not in err and str(path.name) in err
    for needle in needles:
        assert needle in err, err


def test_a_retrain_with_set_into_a_search_run_records_what_it_trained_with(retrained, capfd, tmp_path):
    """RUN/spec.yaml and the fold's spec.yaml say the retraining's --set, RUN/search/spec.yaml keeps the
    search's; decode still reads the search's, and --resume with RUN/spec.yaml passes the spec check."""
    import shutil

    import yaml

    from nastk.runspec import search_spec_path

    tmp, _, searched = retrained  # searched and retrained with retrain.iters 4
    assert _iters(searched / "search" / "spec.yaml") == 4
    run = tmp_path / "run"  # the search alone, laid out as before RUN/search/spec.yaml was kept
    shutil.copytree(searched, run, ignore=shutil.ignore_patterns("retrain", "postprocessing.json"))
    (run / "search" / "spec.yaml").unlink()
    retrain = ["retrain", tmp / "spec.yaml", "--arch", run / "arch.json", "--fold", "0", "--quiet"]
    code, _, err = nastk(capfd, *retrain, "--set", "retrain.iters=2", "--set", "retrain.val_every=100")
    assert code == 0, err
    assert _iters(run / "spec.yaml") == _iters(run / "retrain" / "fold_0" / "spec.yaml") == 2
    assert _iters(run / "search" / "spec.yaml") == 4
    assert yaml.safe_load((run / "spec.yaml").read_text())["retrain"]["val_every"] == 100
    assert search_spec_path(run) == run / "search" / "spec.yaml"
    code, _, err = nastk(capfd, "decode", run, "--out", tmp_path / "again.json")
    assert code == 0 and (tmp_path / "again.json").read_text() == (run / "arch.json").read_text(), err
    resumed = [
        "retrain",
        run / "spec.yaml",
        "--arch",
        run / "arch.json",
        "--fold",
        "0",
        "--quiet",
        "--resume",
    ]
    code, _, err = nastk(capfd, *resumed)
    assert code == 0, err
    code, _, err = nastk(capfd, *retrain, "--resume")  # without the --set: refused, and not recorded
    assert code == 2 and "the spec changed" in err, err
    assert _iters(run / "spec.yaml") == _iters(run / "retrain" / "fold_0" / "spec.yaml") == 2


def _iters(path) -> int:
    import yaml

    return yaml.safe_load(path.read_text())["retrain"]["iters"]


@pytest.mark.parametrize("command", ["search", "retrain", "predict", "validate"])
def test_set_is_offered_where_a_spec_is_read(capfd, command):
    _, out, _ = nastk(capfd, command, "--help")
    assert "--set" in out


# ------------------------------------------------------------------------- the cache and relative roots


def test_nastk_cache_holds_the_cache_when_the_spec_sets_none(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from nastk.data.cache import cache_dir_for
    from nastk.data.fingerprint import fingerprint_path

    root = tmp_path / "Task09_Spleen"
    plain = SimpleNamespace(root=str(root), cache_dir=None)
    assert cache_dir_for(plain) == root / ".nastk-cache"
    monkeypatch.setenv("NASTK_CACHE", str(tmp_path / "shared"))
    assert cache_dir_for(plain) == tmp_path / "shared" / "Task09_Spleen"
    assert fingerprint_path(root).parent == tmp_path / "shared" / "Task09_Spleen"
    chosen = SimpleNamespace(root=str(root), cache_dir=str(tmp_path / "mine"))
    assert cache_dir_for(chosen) == tmp_path / "mine"  # the spec's own cache_dir wins


def test_preprocess_writes_to_nastk_cache_and_leaves_a_read_only_root_alone(tmp_path, monkeypatch, capfd):
    from tinydata import write_msd

    root = write_msd(tmp_path / "Task01_Tiny", cases=2)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"dataset: {{root: {root}, spacing: [2, 2, 3], num_folds: 2, num_workers: 0}}\n")
    monkeypatch.setenv("NASTK_CACHE", str(tmp_path / "shared"))
    before = sorted(p.name for p in root.iterdir())
    code, out, err = nastk(capfd, "preprocess", spec, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in root.iterdir()) == before
    assert (tmp_path / "shared" / "Task01_Tiny").is_dir() and str(tmp_path / "shared") in out


def test_relative_root_is_read_from_the_spec_folder_unless_it_exists_from_here(tmp_path, monkeypatch):
    from nastk.spec import load_spec

    (tmp_path / "project" / "data" / "Task").mkdir(parents=True)
    spec = tmp_path / "project" / "spec.yaml"
    spec.write_text("dataset: {root: data/Task}\n")
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec).dataset.root == str(tmp_path / "project" / "data" / "Task")
    (tmp_path / "data" / "Task").mkdir(parents=True)  # the working directory's wins, as before
    assert load_spec(spec).dataset.root == "data/Task"
    spec.write_text("dataset: {root: nowhere}\n")  # found nowhere: as written, for the error to name it
    assert load_spec(spec).dataset.root == "nowhere"


# ---------------------------------------------------------------------------------- nnU-Net's splits


def _tiny_task(tmp_path, splits=None, num_folds=2):
    import json

    from tinydata import write_msd

    root = write_msd(tmp_path / "Task01_Tiny", cases=4)
    lines = f"dataset: {{root: Task01_Tiny, spacing: [2, 2, 3], num_folds: {num_folds}, num_workers: 0"
    if splits is not None:
        (tmp_path / "splits_final.json").write_text(
            json.dumps(splits) if not isinstance(splits, str) else splits
        )
        lines += ", splits_file: splits_final.json"
    spec = tmp_path / "s.yaml"
    spec.write_text(lines + "}\n")
    return root, spec


NNUNET_SPLITS = [
    {"train": ["case_000", "case_001", "case_002"], "val": ["case_003"]},
    {"train": ["case_001", "case_002", "case_003"], "val": ["case_000"]},
]


def test_splits_final_json_gives_the_folds(tmp_path, monkeypatch):
    from nastk.data.preprocess import preprocess
    from nastk.spec import load_spec

    monkeypatch.chdir(tmp_path.parent)  # both paths relative to the spec's folder, not the working directory
    _, spec_file = _tiny_task(tmp_path, NNUNET_SPLITS)
    spec = load_spec(spec_file)
    assert spec.dataset.splits_file == str(tmp_path / "splits_final.json")
    cache = preprocess(spec.dataset, quiet=True)
    assert cache.splits() == NNUNET_SPLITS  # what retrain copies to RUN/splits.json


@pytest.mark.parametrize(
    ("splits", "needle"),
    [
        ("{not json", "not a readable JSON"),
        ({"train": []}, "expected a list"),
        ([{"train": ["case_000"], "val": "case_001"}], "expected a list"),
        (NNUNET_SPLITS[:1], "1 folds, but dataset.num_folds is 2"),
        ([NNUNET_SPLITS[0], {"train": ["case_000"], "val": ["spleen_9"]}], "fold 1 names cases"),
        ([NNUNET_SPLITS[0], {"train": ["case_000"], "val": ["case_000"]}], "case_000 in both"),
    ],
)
def test_a_bad_splits_file_exits_2_naming_it(tmp_path, capfd, monkeypatch, splits, needle):
    monkeypatch.chdir(tmp_path)
    root, spec_file = _tiny_task(tmp_path, splits)
    code, _, err = nastk(capfd, "preprocess", spec_file, "--quiet")
    assert code == 2 and "dataset.splits_file" in err and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (root / ".nastk-cache").exists()  # refused before anything is written


# ------------------------------------------------------------------- predict: probabilities and no TTA


def test_predict_saves_probabilities_and_disables_tta(retrained, capfd):
    import nibabel as nib
    import numpy as np

    tmp, root, run = retrained
    common = ["predict", run, "--input", root / "imagesTs", "--folds", "0", "--quiet"]
    common += ["--set", "inference.largest_component=false"]
    code, _, err = nastk(capfd, *common, "--output", tmp / "habits_a", "--save-probabilities")
    assert code == 0, err
    for case in ("synth_100", "synth_101"):
        labels = np.asarray(nib.load(tmp / "habits_a" / f"{case}.nii.gz").dataobj)
        with np.load(tmp / "habits_a" / f"{case}.npz") as data:
            probs = data["probabilities"].astype(np.float32)
        assert probs.shape == (3, *labels.shape)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)
        assert (probs.argmax(0) == labels).mean() > 0.95  # linear vs nearest resampling differ at edges
    # --disable-tta overrides the spec's flip_tta: the same labels as without TTA
    flipped = [*common, "--set", "inference.flip_tta=true", "--disable-tta"]
    code, _, err = nastk(capfd, *flipped, "--output", tmp / "habits_b")
    assert code == 0, err
    for case in ("synth_100", "synth_101"):
        a = np.asarray(nib.load(tmp / "habits_a" / f"{case}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp / "habits_b" / f"{case}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
        assert not (tmp / "habits_b" / f"{case}.npz").exists()


def test_flip_tta_changes_the_probabilities_and_disable_tta_turns_it_off(retrained, capfd, tmp_path):
    """Equal labels with --disable-tta would also hold if TTA did nothing: the probabilities show that
    flip_tta=true really averages other forwards, and that --disable-tta gives exactly flip_tta=false's."""
    import numpy as np

    tmp, root, run = retrained
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "synth_100.nii.gz").symlink_to(root / "imagesTs" / "synth_100.nii.gz")
    common = ["predict", run, "--input", tmp_path / "in", "--folds", "0", "--quiet", "--save-probabilities"]

    def probabilities(name: str, *extra) -> np.ndarray:
        code, _, err = nastk(capfd, *common, *extra, "--output", tmp_path / name)
        assert code == 0, err
        with np.load(tmp_path / name / "synth_100.npz") as data:
            return data["probabilities"].astype(np.float32)

    off = probabilities("off", "--set", "inference.flip_tta=false")
    on = probabilities("on", "--set", "inference.flip_tta=true")
    disabled = probabilities("disabled", "--set", "inference.flip_tta=true", "--disable-tta")
    assert np.abs(on - off).max() > 1e-2  # a conv net is not flip-equivariant: the flips' mean differs
    np.testing.assert_array_equal(disabled, off)


def test_predict_help_offers_the_nnunet_flags(capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = nastk(capfd, "predict", "--help")
    assert "--save-probabilities" in out and "--disable-tta" in out


# ------------------------------------------------------------------------------------ shared machines


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_in_cores(tmp_path, files, limit):
    from nastk.threads import cgroup_cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_threads_follow_affinity_quota_and_torchrun(tmp_path, monkeypatch):
    from nastk import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.usable_cpus(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # 2.5 cores: 3 threads
    assert threads.usable_cpus(tmp_path) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.default_threads(tmp_path) == 4


def test_set_threads_respects_the_user(monkeypatch):
    from nastk.threads import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) is None  # the user's OMP_NUM_THREADS stands
        assert set_threads(1) == 1 and torch.get_num_threads() == 1  # --threads wins over it
        with pytest.raises(DataError, match="--threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_threads_option_is_offered_and_checked(capfd):
    for command in ("search", "retrain", "predict", "preprocess", "quickstart"):
        _, out, _ = nastk(capfd, command, "--help")
        assert "--threads" in out, command
    code, _, err = nastk(capfd, "search", "x.yaml", "--threads", "0")
    assert code == 2 and "--threads" in err


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.get_num_threads()


def test_each_data_loader_worker_runs_one_thread():
    from nastk.data.sampler import make_loader

    loader = make_loader(_Threads(), batch_size=1, num_samples=2, num_workers=1)
    assert [int(b) for b in loader] == [1, 1]


def test_help_and_completion_do_not_import_torch():
    """Shell completion runs nastk at every TAB: importing torch made each answer take 1.5 s."""
    import subprocess
    import sys

    code = "import sys, nastk.cli; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
