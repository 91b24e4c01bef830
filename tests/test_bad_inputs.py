"""Bad inputs and faults (issue 14): each exits 2 with the culprit named, no traceback, and leaves the
run, cache and output folders exactly as they were (the same files with the same sizes, mtimes and
contents, and no new folder).

Most cases run the CLI in this process (``nastk.cli.main``), which is fast: an exception the CLI does
not turn into exit 2 fails the test with the traceback a user would have seen. Cases that need a
process of their own (a file-size limit, a crash that takes the process down, a second process
holding a lock) run one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from nastk.data.synthetic import write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.search import run_search

from conftest import cli_in_process
from tinydata import TINY_SPEC, merged

# ----------------------------------------------------------------------------------------- harness


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def nastk_in_process(capfd, *args) -> Result:
    return Result(*cli_in_process(capfd, *args))


def nastk_subprocess(*args, preexec_fn=None, timeout=120) -> Result:
    res = subprocess.run(
        [sys.executable, "-m", "nastk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return Result(res.returncode, res.stdout, res.stderr)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every folder and file under ``roots``: files with size, mtime and content hash."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not path.is_file():
                state[str(path)] = ("folder",) if path.is_dir() else ("other",)
                continue
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path)] = (stat.st_size, stat.st_mtime_ns, digest)
    return state


def assert_refused(res: Result, needles: list[str], one_line: bool) -> None:
    assert res.code == 2, (res.code, res.out[-2000:], res.err[-2000:])
    assert "Traceback" not in res.text, res.text[-3000:]
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    if one_line:  # a plain error is one line on stderr (a spec's is a table, a usage error a box)
        assert len(res.err.strip().splitlines()) == 1, res.err


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A synthetic task, its cache, a finished search run and a (fabricated, untrained) fold model,
    reference predictions and the spec that made them. Cases never change any of it."""
    from nastk.network import build_network, load_architecture, save_model
    from nastk.spec import load_spec

    root = tmp_path_factory.mktemp("bad")
    data = write_synthetic_task(root / "data" / "Synth", cases=4, size=24, test_cases=2)
    spec_path = root / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(merged(TINY_SPEC, {"dataset": {"root": str(data), "cache_dir": str(root / "cache")}}))
    )
    spec = load_spec(spec_path)
    run = root / "run"
    run_search(spec, RunOptions(out=run, quiet=True))
    space, arch = load_architecture(spec, run / "arch.json")
    net = build_network(spec, space, arch, spec.retrain.filter_multiplier)
    save_model(run / "retrain" / "fold_0" / "model_final.pt", net, arch, spec, 0, 1, None)
    shutil.copy(next(p for p in (root / "cache").iterdir() if p.is_dir()) / "plan.json", run / "plan.json")
    shutil.copytree(data / "labelsTs", root / "preds")
    return root


@dataclass
class Workspace:
    env: Path
    tmp: Path
    args: list = field(default_factory=list)

    @property
    def spec(self) -> Path:
        return self.env / "spec.yaml"

    @property
    def data(self) -> Path:
        return self.env / "data" / "Synth"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def spec_file(self, overrides: dict, name: str = "spec.yaml") -> Path:
        base = yaml.safe_load(self.spec.read_text())
        return self.write(name, yaml.safe_dump(merged(base, overrides)))

    def data_copy(self) -> Path:
        return Path(shutil.copytree(self.data, self.tmp / "Synth"))

    def spec_for_data(self, data: Path) -> Path:
        return self.spec_file({"dataset": {"root": str(data), "cache_dir": str(self.tmp / "cache")}})

    def cache_copy(self) -> tuple[Path, Path]:
        """A copy of the cache and a spec using it: (the hashed cache folder, spec)."""
        shutil.copytree(self.env / "cache", self.tmp / "cache")
        spec = self.spec_file({"dataset": {"cache_dir": str(self.tmp / "cache")}})
        return next(p for p in (self.tmp / "cache").iterdir() if p.is_dir()), spec

    def run_copy(self) -> Path:
        return Path(shutil.copytree(self.env / "run", self.tmp / "run"))

    def preds_copy(self) -> Path:
        return Path(shutil.copytree(self.env / "preds", self.tmp / "preds"))

    def a_file(self) -> Path:
        return self.write("a-file", "not a folder\n")


def _nifti_bytes(array: np.ndarray, affine=None) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_bytes())


def _giant_header() -> bytes:
    """A .nii.gz whose header claims 30000^3 float32 voxels (108 TB), followed by 8 voxels."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header["dim"][1:4] = 30000
    return gzip.compress(img.header.binaryblock + b"\0" * 4 + b"\0" * 32)


def _two_channels(image: Path) -> None:
    img = nib.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), image)


class _Pickled:
    """Anything torch's weights_only loader refuses."""


def _torch_save(path: Path, obj) -> None:
    torch.save(obj, path)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _billion_laughs() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\nseed: *a9\n"


# ------------------------------------------------------------------------------------------- cases
# Each case prepares its bad input in the workspace and returns (command args, strings stderr must hold).


def spec_case(text: str | bytes, *needles: str):
    def setup(w: Workspace):
        path = w.write("bad.yaml", text)
        return ["validate", path], ["bad.yaml", *needles]

    return setup


def spacing_case(command: str, spacing):
    def setup(w: Workspace):
        path = w.spec_file({"dataset": {"spacing": spacing}}, "bad.yaml")
        args = [command, path] + (["--quiet"] if command == "preprocess" else [])
        return args, ["bad.yaml", "dataset.spacing"]

    return setup


def two_channel_image(w: Workspace):
    data = w.data_copy()
    _two_channels(data / "imagesTr" / "synth_002.nii.gz")
    return ["preprocess", w.spec_for_data(data), "--quiet"], [
        "synth_002.nii.gz",
        "2 channel(s)",
        "declares 1",
    ]


def giant_image_header(w: Workspace):
    data = w.data_copy()
    (data / "imagesTr" / "synth_001.nii.gz").write_bytes(_giant_header())
    return ["preprocess", w.spec_for_data(data), "--quiet"], ["synth_001.nii.gz", "voxels", "limit"]


def giant_label_header(w: Workspace):
    data = w.data_copy()
    (data / "labelsTr" / "synth_003.nii.gz").write_bytes(_giant_header())
    return ["preprocess", w.spec_for_data(data), "--quiet"], ["labelsTr/synth_003.nii.gz", "voxels"]


def cache_case(name: str, damage, command: str = "preprocess", *needles: str):
    def setup(w: Workspace):
        folder, spec = w.cache_copy()
        damage(folder / name)
        args = [command, spec, "--quiet"]
        if command == "search":
            args += ["--out", w.tmp / "out" / "run"]
        return args, [name, *needles]

    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _reshape_label(path: Path) -> None:
    label = np.load(path)
    np.save(path, label[:-1])


def _corrupt_json(path: Path) -> None:
    path.write_text(path.read_text()[:40])


def _drop_stats(path: Path) -> None:
    data = json.loads(path.read_text())
    del data["ct_statistics"]
    path.write_text(json.dumps(data))


def _other_plan(path: Path) -> None:
    data = json.loads(path.read_text())
    data["plan"]["spacing"] = [9.0, 9.0, 9.0]
    path.write_text(json.dumps(data))


def option_case(command: str, *extra: str, needles=("--workers",)):
    def setup(w: Workspace):
        args = [command, w.spec, *extra]
        if command in ("search", "retrain"):
            args += ["--out", w.tmp / "out"]
        if command == "retrain":
            args += ["--arch", w.env / "run" / "arch.json"]
        return args, list(needles)

    return setup


def resume_case(damage, *needles: str):
    def setup(w: Workspace):
        run = w.run_copy()
        ckpt = run / "search" / "checkpoint.pt"
        damage(ckpt)
        return ["search", w.spec, "--out", run, "--resume", "--quiet"], ["search/checkpoint.pt", *needles]

    return setup


def _wrong_shape(path: Path) -> None:
    state = _state(path)
    key = next(k for k, v in state["model"].items() if v.ndim == 5)
    state["model"][key] = torch.zeros(3, 3, 3, 3, 3)
    _torch_save(path, state)


def _iteration_text(path: Path) -> None:
    state = _state(path)
    state["iteration"] = "eight"
    _torch_save(path, state)


def out_case(command: str, where: str):
    def setup(w: Workspace):
        target = w.a_file() / "run" if where == "file" else Path("/proc/nastk-bad-input/run")
        if command == "search":
            args = ["search", w.spec, "--out", target, "--quiet"]
        elif command == "predict":
            run = w.env / "run"
            args = ["predict", run, "--input", w.data / "imagesTs", "--output", target, "--quiet"]
        else:
            args = ["report", "--pred", w.env / "preds", "--ref", w.data / "dataset.json", "--out", target]
            args += ["--quiet"]
        return args, [str(target.parent), "cannot create"]

    return setup


def arch_depths(w: Workspace):
    arch = json.loads((w.env / "run" / "arch.json").read_text())
    arch["depths"] = 7
    path = w.write("arch.json", json.dumps(arch))
    return ["retrain", w.spec, "--arch", path, "--out", w.tmp / "out", "--quiet"], ["arch.json", "depths"]


def retrain_resume_empty(w: Workspace):
    run = w.run_copy()
    ckpt = run / "retrain" / "fold_1" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    _torch_save(ckpt, {})
    args = ["retrain", w.spec, "--arch", run / "arch.json", "--fold", "1", "--resume", "--quiet"]
    return args, ["fold_1/checkpoint.pt", "not a nastk checkpoint"]


def model_case(damage, *needles: str):
    def setup(w: Workspace):
        run = w.run_copy()
        damage(run / "retrain" / "fold_0" / "model_final.pt")
        return ["predict", run, "--input", w.data / "imagesTs", "--quiet"], ["model_final.pt", *needles]

    return setup


def _arch_not_json(path: Path) -> None:
    state = _state(path)
    state["arch"] = "{not json"
    _torch_save(path, state)


def predict_case(damage, *needles: str, device: str | None = None):
    def setup(w: Workspace):
        run = w.run_copy()
        inputs = Path(shutil.copytree(w.data / "imagesTs", w.tmp / "inputs"))
        culprit = damage(run, inputs)
        args = ["predict", run, "--input", inputs, "--quiet"] + (["--device", device] if device else [])
        return args, [*([culprit] if culprit else []), *needles]

    return setup


def _plan_corrupt(run: Path, inputs: Path) -> str:
    _corrupt_json(run / "plan.json")
    return "plan.json"


def _input_giant(run: Path, inputs: Path) -> str:
    (inputs / "synth_100.nii.gz").write_bytes(_giant_header())
    return "synth_100.nii.gz"


def _postprocessing_corrupt(run: Path, inputs: Path) -> str:
    (run / "postprocessing.json").write_text('{"largest_component": [1,')
    return "postprocessing.json"


def _postprocessing_unknown_class(run: Path, inputs: Path) -> str:
    (run / "postprocessing.json").write_text(json.dumps({"largest_component": [1, 7]}))
    return "postprocessing.json"


def run_splits_corrupt(w: Workspace):
    run = w.run_copy()
    (run / "splits.json").write_text('[{"val": ["synth_000", 3]}]')
    return ["report", run, "--quiet"], ["splits.json", "'val'"]


def _input_two_channels(run: Path, inputs: Path) -> str:
    _two_channels(inputs / "synth_101.nii.gz")
    return "synth_101.nii.gz"


def report_case(*options: str, damage=None, needles=()):
    def setup(w: Workspace):
        preds = w.preds_copy()
        culprit = damage(preds) if damage else None
        args = ["report", "--pred", preds, "--ref", w.data / "dataset.json", "--out", w.tmp / "report"]
        return args + ["--quiet", *options], [*([culprit] if culprit else []), *needles]

    return setup


def _truncate_prediction(preds: Path) -> str:
    _truncate(preds / "synth_101.nii.gz")
    return "synth_101.nii.gz"


def _missing_prediction(preds: Path) -> str:
    (preds / "synth_100.nii.gz").unlink()
    return "synth_100"


def _giant_prediction(preds: Path) -> str:
    (preds / "synth_100.nii.gz").write_bytes(_giant_header())
    return "synth_100.nii.gz"


def run_tolerance(w: Workspace):
    run = w.tmp / "scored"
    shutil.copytree(w.env / "preds", run / "predictions")
    spec = yaml.safe_load(w.spec.read_text())
    spec["dataset"]["nsd_tolerance"] = {9: 1.0}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    return ["report", run, "--quiet"], ["scored/spec.yaml", "dataset.nsd_tolerance", "[9]"]


CASES = {
    # --------------------------------------------------------------------------- specs
    "spec-empty": spec_case("", "empty"),
    "spec-only-comments": spec_case("# nothing here\n", "empty"),
    "spec-duplicate-key": spec_case("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
    "spec-duplicate-nested-key": spec_case(
        "search:\n  batch_size: 2\n  batch_size: 4\n", "duplicate key 'batch_size'"
    ),
    "spec-alias": spec_case("seed: &s 1\nname: *s\n", "alias"),
    "spec-too-large": spec_case("seed: 1\n" + ("# padding " * 100 + "\n") * 5300, "larger than 4 MB"),
    "spec-not-utf8": spec_case(b"seed: 1\nname: caf\xe9\n", "not UTF-8"),
    "spec-nested-too-deeply": spec_case("seed: " + "[" * 50000 + "]" * 50000 + "\n", "nested too deeply"),
    "spec-spacing-zero": spacing_case("validate", [0, 1, 1]),
    "spec-spacing-negative": spacing_case("preprocess", [1, -1, 1]),
    "spec-spacing-nan": spacing_case("validate", [1, float("nan"), 1]),
    "spec-largest-component-not-a-class": lambda w: (
        ["validate", w.spec_file({"inference": {"largest_component": [1, 3]}}, "bad.yaml")],
        ["bad.yaml", "inference.largest_component", "[3]"],
    ),
    "spec-nsd-tolerance-negative": lambda w: (
        ["validate", w.spec_file({"dataset": {"nsd_tolerance": {1: -1.0}}}, "bad.yaml")],
        ["bad.yaml", "dataset.nsd_tolerance"],
    ),
    # --------------------------------------------------------------------------- datasets and the cache
    "image-wrong-channel-count": two_channel_image,
    "image-giant-header": giant_image_header,
    "label-giant-header": giant_label_header,
    "cache-image-truncated": cache_case("synth_000_image.npy", _truncate, "preprocess", "damaged"),
    "cache-image-zero-bytes": cache_case("synth_001_image.npy", _empty, "search", "damaged"),
    "cache-label-wrong-shape": cache_case("synth_002_label.npy", _reshape_label, "preprocess", "shape"),
    "cache-foreground-missing": cache_case("synth_003_fg.npy", Path.unlink, "preprocess", "missing"),
    "cache-case-json-corrupt": cache_case("synth_000.json", _corrupt_json, "preprocess", "damaged"),
    "cache-plan-corrupt": cache_case("plan.json", _corrupt_json, "preprocess", "not a readable"),
    "cache-plan-incomplete": cache_case("plan.json", _drop_stats, "search", "ct_statistics"),
    "cache-plan-of-another-plan": cache_case("plan.json", _other_plan, "preprocess", "not the one"),
    # --------------------------------------------------------------------------- command-line options
    "preprocess-workers-negative": option_case("preprocess", "--workers", "-1"),
    "search-workers-negative": option_case("search", "--workers", "-1"),
    "retrain-workers-negative": option_case("retrain", "--workers", "-1"),
    "search-device-cuda-without-cuda": option_case("search", "--device", "cuda", needles=("--device cuda",)),
    "search-device-unknown": option_case("search", "--device", "tpu", needles=("--device", "'tpu'")),
    # --------------------------------------------------------------------------- search and retrain runs
    "resume-checkpoint-empty-dict": resume_case(lambda p: _torch_save(p, {}), "not a nastk checkpoint"),
    "resume-checkpoint-pickled-object": resume_case(
        lambda p: _torch_save(p, {"model": _Pickled()}), "not a nastk checkpoint"
    ),
    "resume-checkpoint-garbage": resume_case(lambda p: p.write_bytes(b"\x80\x02garbage"), "not a loadable"),
    "resume-checkpoint-wrong-shape": resume_case(_wrong_shape, "'model' does not fit"),
    "resume-checkpoint-iteration-text": resume_case(_iteration_text, "'iteration'"),
    "search-out-under-a-file": out_case("search", "file"),
    "search-out-under-proc": out_case("search", "proc"),
    "retrain-arch-depths-disagree": arch_depths,
    "retrain-resume-empty-dict": retrain_resume_empty,
    # --------------------------------------------------------------------------- predict
    "model-arch-not-json": model_case(_arch_not_json, "'arch'"),
    "model-wrong-shape": model_case(_wrong_shape, "'model' does not fit"),
    "model-empty-dict": model_case(lambda p: _torch_save(p, {}), "not a nastk checkpoint"),
    "model-pickled-object": model_case(
        lambda p: _torch_save(p, {"model": _Pickled()}), "not a nastk checkpoint"
    ),
    "predict-device-cuda-without-cuda": predict_case(lambda r, i: None, "--device cuda", device="cuda"),
    "predict-output-under-a-file": out_case("predict", "file"),
    "predict-run-plan-corrupt": predict_case(_plan_corrupt, "not a readable"),
    "predict-input-giant-header": predict_case(_input_giant, "voxels"),
    "predict-input-wrong-channel-count": predict_case(_input_two_channels, "2 channel(s)"),
    "predict-postprocessing-corrupt": predict_case(_postprocessing_corrupt, "not valid JSON"),
    "predict-postprocessing-unknown-class": predict_case(_postprocessing_unknown_class, "[7]"),
    # --------------------------------------------------------------------------- report
    "report-tolerance-unknown-class": report_case(
        "--tolerance", "9=1", needles=("--tolerance", "dataset.json")
    ),
    "report-tolerance-background": report_case("--tolerance", "0=1", needles=("--tolerance", "[0]")),
    "report-tolerance-negative": report_case("--tolerance", "1=-1", needles=("--tolerance", "'1=-1'")),
    "report-tolerance-nan": report_case("--tolerance", "1=nan", needles=("--tolerance", "'1=nan'")),
    "report-tolerance-inf": report_case("--tolerance", "1=inf", needles=("--tolerance", "'1=inf'")),
    "report-spec-tolerance-unknown-class": run_tolerance,
    "report-prediction-truncated": report_case(damage=_truncate_prediction, needles=("cannot read",)),
    "report-prediction-missing": report_case(damage=_missing_prediction, needles=("--missing empty",)),
    "report-prediction-giant-header": report_case(damage=_giant_prediction, needles=("voxels",)),
    "report-missing-policy-unknown": report_case("--missing", "skip", needles=("--missing",)),
    "report-out-under-a-file": out_case("report", "file"),
    "report-run-splits-corrupt": run_splits_corrupt,
}
# Errors shown as a table (specs) or a usage box (typer's own option checks) span several lines.
MULTI_LINE = {name for name in CASES if name.startswith("spec-")} | {
    name for name in CASES if name.endswith("workers-negative")
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_naming_it_and_changes_nothing(name, env, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same cases on a GPU machine
    w = Workspace(env, tmp_path)
    args, needles = CASES[name](w)
    before = snapshot(env, tmp_path)
    res = nastk_in_process(capfd, *args)
    assert_refused(res, needles, one_line=name not in MULTI_LINE)
    assert snapshot(env, tmp_path) == before


# ------------------------------------------------------------------------ cases with their own process


def test_yaml_bomb_is_refused_at_once(env, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_billion_laughs())
    before = snapshot(env, tmp_path)
    res = nastk_subprocess("validate", path, timeout=60)
    assert_refused(res, ["bomb.yaml", "alias *a0"], one_line=False)
    assert snapshot(env, tmp_path) == before


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG

    return apply


def test_no_space_left_exits_2_and_keeps_everything(env, tmp_path):
    run = Path(shutil.copytree(env / "run", tmp_path / "run"))
    spec_yaml = (run / "spec.yaml").stat().st_size
    before = snapshot(env, tmp_path)
    res = nastk_subprocess(
        "search",
        env / "spec.yaml",
        "--out",
        run,
        "--resume",
        "--quiet",
        preexec_fn=_file_size_limit(spec_yaml // 2),
    )
    assert_refused(res, [f"no space left writing {run / 'spec.yaml'}"], one_line=True)
    assert snapshot(env, tmp_path) == before


def test_no_space_for_a_checkpoint_keeps_the_last_good_one(env, tmp_path):
    run = Path(shutil.copytree(env / "run", tmp_path / "run"))
    ckpt = run / "search" / "checkpoint.pt"
    good = ckpt.read_bytes()
    res = nastk_subprocess(
        "search",
        env / "spec.yaml",
        "--out",
        run,
        "--resume",
        "--quiet",
        preexec_fn=_file_size_limit(len(good) // 2),
    )
    assert_refused(res, [f"no space left writing {ckpt}"], one_line=True)
    assert ckpt.read_bytes() == good
    assert not [p.name for p in run.rglob(".*")]  # no temporary file and no lock left behind


def test_a_locked_run_directory_exits_2_naming_the_holder(env, tmp_path, capfd):
    """A second process refuses a run directory in use, naming the holder's PID; once the holder is
    killed, its lock file stays behind but does not block --resume."""
    run = Path(shutil.copytree(env / "run", tmp_path / "run"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom nastk.lock import run_lock\n"
            "lock = run_lock(sys.argv[1])\nlock.__enter__()\nprint('locked', flush=True)\ntime.sleep(300)\n",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(env, tmp_path)
        resumed = nastk_in_process(capfd, "search", env / "spec.yaml", "--out", run, "--resume", "--quiet")
        assert_refused(resumed, [str(run), f"pid {holder.pid}"], one_line=True)
        fresh = nastk_in_process(capfd, "retrain", env / "spec.yaml", "--arch", run / "arch.json", "--quiet")
        assert_refused(fresh, [f"pid {holder.pid}"], one_line=True)
        assert snapshot(env, tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    lock = run / ".nastk.lock"
    assert lock.read_text().strip() == str(holder.pid)  # stale: its holder is dead
    again = nastk_in_process(capfd, "search", env / "spec.yaml", "--out", run, "--resume", "--quiet")
    assert again.code == 0, again.err
    assert not lock.exists()
