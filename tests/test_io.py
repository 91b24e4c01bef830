"""Atomic writes: file modes from the umask, a full disk as one line keeping the old file, stale
temporaries removed only when their writer is gone."""

import os
import resource
import signal
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nastk.inference.writer import write_label
from nastk.io import atomic_write_bytes, remove_stale_temps

from tinydata import save_nifti


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_get_the_mode_of_the_umask_not_0600(tmp_path, umask, mask):
    """Colleagues on a shared server read predictions: modes follow the umask as open() would."""
    umask(mask)
    source = tmp_path / "image.nii.gz"
    save_nifti(np.zeros((4, 4, 4), np.float32), source)
    written = [
        atomic_write_bytes(tmp_path / "plain.bin", b"data"),
        write_label(sitk.ReadImage(str(source), sitk.sitkUInt8), source, tmp_path / "pred" / "case.nii.gz"),
        write_label(sitk.ReadImage(str(source), sitk.sitkUInt8), source, tmp_path / "pred" / "case.mha"),
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

    return apply


def test_no_space_left_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good one")
    script = (
        "import sys\nfrom nastk.io import atomic_write_bytes\nfrom nastk.errors import OutputError\n"
        "try:\n    atomic_write_bytes(sys.argv[1], b'x' * 100_000)\n"
        "except OutputError as exc:\n    print(exc)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(10_000),
        timeout=60,
    )
    assert res.stdout.startswith(f"no space left writing {target}"), (res.stdout, res.stderr)
    assert target.read_bytes() == b"the last good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    host = socket.gethostname()
    stale = [
        tmp_path / f".log.csv.nastk-{dead}@{host}.abc_1234.tmp",
        tmp_path / f".case.nii.gz.nastk-{dead}@{host}.zz9yy8xx.tmp.nii.gz",
    ]
    kept = [
        tmp_path / f".log.csv.nastk-{os.getpid()}@{host}.abc_1234.tmp",  # a live writer
        tmp_path / f".log.csv.nastk-{dead}@elsewhere.example.org.abc_1234.tmp",  # another host
        tmp_path / ".log.csv.ab12cd34.tmp",  # not our naming
        tmp_path / "log.csv",
    ]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert remove_stale_temps(tmp_path / "absent") == []


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "file not found"),
        ("", "not valid JSON (line 1"),
        ('{"a": 1,\n  oops}', "not valid JSON (line 2"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "top level must be an object"),
        ("folder", "cannot read"),
    ],
)
def test_read_json_names_the_file_in_one_line(tmp_path, content, needle):
    """Every JSON file a user hands nastk or a plugin (dataset.json, arch.json, postprocessing.json) is read
    by one function: each way it can be wrong is one line naming the file."""
    from nastk.errors import DataError
    from nastk.io import read_json

    path = tmp_path / "x.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as exc:
        read_json(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg, msg


def test_read_json_reads_what_it_is_asked_for(tmp_path):
    from nastk.errors import DataError
    from nastk.io import read_json

    (tmp_path / "o.json").write_text('{"a": [1]}')
    (tmp_path / "l.json").write_text("[1, 2]")
    assert read_json(tmp_path / "o.json") == {"a": [1]} and read_json(tmp_path / "l.json", top=list) == [1, 2]
    with pytest.raises(DataError, match="top level must be a list"):
        read_json(tmp_path / "o.json", top=list)
    with pytest.raises(DataError, match="gone, expected a dataset.json"):
        read_json(tmp_path / "missing.json", missing="gone, expected a dataset.json")
